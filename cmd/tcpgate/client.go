package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// client holds what every client subcommand shares: the --server flag and
// the connection made from it.
type client struct {
	server                 string
	timeout                time.Duration
	token                  string
	useTLS                 bool
	tlsCA, tlsCert, tlsKey string
	cc                     *grpc.ClientConn
	api                    tcpgatev1.GatewayServiceClient
}

// addFlags gives a client command the connection flags; every one can also
// be set from the environment (TCPGATE_SERVER, TCPGATE_TOKEN, ...).
func (c *client) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.server, "server", "127.0.0.1:50051", "the gateway's gRPC address (env TCPGATE_SERVER)")
	f.DurationVar(&c.timeout, "call-timeout", 30*time.Second, "how long a unary call may take (env TCPGATE_CALL_TIMEOUT)")
	f.StringVar(&c.token, "token", "", "bearer token of a gateway that requires one (env TCPGATE_TOKEN, which keeps it out of the process list)")
	f.BoolVar(&c.useTLS, "tls", false, "speak TLS to the gateway, trusting the system's CAs (implied by --tls-ca and --tls-cert)")
	f.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA certificates to trust for the gateway's certificate (env TCPGATE_TLS_CA)")
	f.StringVar(&c.tlsCert, "tls-cert", "", "PEM client certificate for mutual TLS (env TCPGATE_CLIENT_CERT)")
	f.StringVar(&c.tlsKey, "tls-key", "", "PEM key of --tls-cert (env TCPGATE_CLIENT_KEY)")
	// serve's --tls-cert and --tls-key are the gateway's own certificate,
	// read from TCPGATE_TLS_CERT and TCPGATE_TLS_KEY: a client certificate
	// exported for the CLI must not become the server's.
	setEnvName(f, "tls-cert", "TCPGATE_CLIENT_CERT")
	setEnvName(f, "tls-key", "TCPGATE_CLIENT_KEY")
}

// bearer sends the token with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false so a token also works over plain
// loopback; across hosts, use TLS.
func (bearer) RequireTransportSecurity() bool { return false }

func (c *client) transport() (credentials.TransportCredentials, error) {
	if !c.tlsOn() {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.tlsCA != "" {
		pem, err := os.ReadFile(c.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s holds no PEM certificate", c.tlsCA)
		}
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together: a client certificate needs its key")
	}
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert and --tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// connect reads the environment for flags not given and dials the gateway.
func (c *client) connect(cmd *cobra.Command) error {
	if err := applyEnv(cmd.Flags()); err != nil {
		return err
	}
	creds, err := c.transport()
	if err != nil {
		return err
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}
	if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(c.token)))
	}
	cc, err := grpc.NewClient(c.server, opts...)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", c.server, err)
	}
	c.cc, c.api = cc, tcpgatev1.NewGatewayServiceClient(cc)
	return nil
}

func (c *client) close() {
	if c.cc != nil {
		c.cc.Close()
	}
}

// ctx bounds one unary call by --call-timeout and ends it on SIGINT or
// SIGTERM.
func (c *client) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return c.ctxAtLeast(cmd, 0)
}

// ctxAtLeast is ctx for a call that the gateway itself bounds by d: the
// call may take d when that is longer than --call-timeout, so that the
// gateway's own timeout, and the error that says what timed out, comes
// first.
func (c *client) ctxAtLeast(cmd *cobra.Command, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, max(c.timeout, d))
	return ctx, func() { cancel(); stop() }
}

// sendCallMargin is how much longer than its --timeout a send's call may
// take: room for the request and the answer to cross the network and for a
// busy gateway, so that --timeout governs however short --call-timeout is.
const sendCallMargin = 5 * time.Second

// callError makes a failed call read like the gateway's answer, and says
// what to check when the gateway cannot be reached. It tells the two by
// the ErrorInfo every answer of the gateway carries, never by the message:
// an Unavailable without one is gRPC's own, from a gateway that is not
// there (a refused connection to the gateway's target is the gateway's
// answer, CONNECTION_REFUSED).
func (c *client) callError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if reason, _ := rpc.ReasonOf(err); st.Code() == codes.Unavailable && reason == tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		// No gateway answered: nothing listens there, or a plain client
		// reached a TLS gateway and saw only a broken connection.
		msg := fmt.Sprintf("no gateway at %s (is `tcpgate serve` running? --server or TCPGATE_SERVER point elsewhere): Unavailable: %s", c.server, st.Message())
		if !c.tlsOn() {
			msg += "; if the gateway serves TLS, pass --tls-ca CA.pem, or --tls for a certificate the system trusts"
		}
		return errors.New(msg)
	}
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	// What to pass instead: the gateway's token advice speaks of HTTP
	// headers, not of flags.
	switch st.Code() {
	case codes.Unauthenticated:
		if c.token == "" {
			msg = "Unauthenticated: the gateway requires a token: pass --token TOKEN or set TCPGATE_TOKEN"
		} else {
			msg += " (check --token or TCPGATE_TOKEN)"
		}
	}
	var h hinted
	if errors.As(err, &h) {
		msg += "; " + h.hint
	}
	return errors.New(msg)
}

// retryDelay returns the google.rpc.RetryInfo of a failed call: how long
// until what failed may succeed.
func retryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// hinted is a failed call with advice on what to change, appended to the
// gateway's message by callError.
type hinted struct {
	error
	hint string
}

func (h hinted) Unwrap() error { return h.error }

// GRPCStatus is the status of the gateway's answer, so that
// status.FromError reads the gateway's code and message rather than the
// text of the whole chain ("rpc error: code = ... desc = ...").
func (h hinted) GRPCStatus() *status.Status { return status.Convert(h.error) }

// tlsOn reports whether the flags ask for TLS to the gateway.
func (c *client) tlsOn() bool {
	return c.useTLS || c.tlsCA != "" || c.tlsCert != "" || c.tlsKey != ""
}

// run wraps a client subcommand's body with connect, close and error
// formatting.
func (c *client) run(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := c.connect(cmd); err != nil {
			return err
		}
		defer c.close()
		if err := fn(cmd, args); err != nil {
			return c.callError(err)
		}
		return nil
	}
}

// needArgs accepts exactly the arguments named, and names the first one
// missing rather than counting them.
func needArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < len(names) {
			return fmt.Errorf("missing %s: usage: %s", names[len(args)], cmd.UseLine())
		}
		if len(args) > len(names) {
			return fmt.Errorf("too many arguments (%q): usage: %s", args[len(names):], cmd.UseLine())
		}
		return nil
	}
}

func addClientCommands(root *cobra.Command) {
	c := &client{}
	for _, cmd := range []*cobra.Command{
		newListenCmd(c),
		newUpdateCmd(c),
		newStopCmd(c),
		newConnectCmd(c),
		newLsCmd(c),
		newListenerCmd(c),
		newConnsCmd(c),
		newConnCmd(c),
		newCloseCmd(c),
		newSendCmd(c),
		newSubscribeCmd(c),
		newHandleCmd(c),
	} {
		c.addFlags(cmd)
		root.AddCommand(cmd)
	}
	// Its subcommands take the client's flags.
	root.AddCommand(newConfigCmd(c))
	addBuiltinExamples(root)
}

// builtinExamples are the examples of the commands cobra adds by itself,
// by their path under the root, so that every command's help shows how it
// is used.
var builtinExamples = map[string]string{
	"help": "  tcpgate help send\n  tcpgate help completion bash",
	"completion": "  source <(tcpgate completion bash)\n" +
		"  tcpgate completion zsh > \"${fpath[1]}/_tcpgate\"",
	"completion bash": "  source <(tcpgate completion bash)\n" +
		"  tcpgate completion bash > /etc/bash_completion.d/tcpgate",
	"completion zsh":        "  tcpgate completion zsh > \"${fpath[1]}/_tcpgate\"",
	"completion fish":       "  tcpgate completion fish > ~/.config/fish/completions/tcpgate.fish",
	"completion powershell": "  tcpgate completion powershell | Out-String | Invoke-Expression",
}

// addBuiltinExamples makes cobra add its help and completion commands now
// rather than at Execute, and gives them examples.
func addBuiltinExamples(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var walk func(cmd *cobra.Command, path string)
	walk = func(cmd *cobra.Command, path string) {
		if ex, ok := builtinExamples[path]; ok && cmd.Example == "" {
			cmd.Example = ex
		}
		for _, sub := range cmd.Commands() {
			walk(sub, strings.TrimSpace(path+" "+sub.Name()))
		}
	}
	walk(root, "")
}

// parseFraming reads raw | line | delim:HEX | len:N[le] | fixed:N.
func parseFraming(s string) (*tcpgatev1.Framing, error) {
	mode, arg, _ := strings.Cut(s, ":")
	switch mode {
	case "raw":
		return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW}, nil
	case "line":
		return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}, nil
	case "delim":
		d, err := hex.DecodeString(arg)
		if err != nil || len(d) == 0 {
			return nil, fmt.Errorf("--framing %s: delim needs the delimiter in hex, e.g. delim:0d0a", s)
		}
		return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: d}, nil
	case "len":
		le := strings.HasSuffix(arg, "le")
		n, err := strconv.ParseUint(strings.TrimSuffix(arg, "le"), 10, 8)
		if err != nil {
			return nil, fmt.Errorf("--framing %s: len needs the prefix size, e.g. len:4 or len:2le", s)
		}
		return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: uint32(n), LittleEndian: le}, nil
	case "fixed":
		n, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--framing %s: fixed needs the frame size, e.g. fixed:16", s)
		}
		return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: uint32(n)}, nil
	}
	return nil, fmt.Errorf("--framing %q: want raw, line, delim:HEX, len:N[le] or fixed:N", s)
}

func framingString(f *tcpgatev1.Framing) string {
	switch f.GetMode() {
	case tcpgatev1.FramingMode_FRAMING_MODE_LINE:
		return "line"
	case tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER:
		return "delim:" + hex.EncodeToString(f.GetDelimiter())
	case tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX:
		s := "len:" + strconv.Itoa(int(f.GetPrefixBytes()))
		if f.GetLittleEndian() {
			s += "le"
		}
		return s
	case tcpgatev1.FramingMode_FRAMING_MODE_FIXED:
		return "fixed:" + strconv.Itoa(int(f.GetFixedSize()))
	}
	return "raw"
}

// listenOptions are listen's flags.
type listenOptions struct {
	host, id, framing, reply string
	forward, banner, node    string
	everyNode                bool
	proxy                    string
	rules                    []string
	target                   targetTLS
	echo                     bool
	maxFrame, maxConns       uint32
	idle, halfClose          time.Duration
}

func (o *listenOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.host, "host", "", "host or IP to bind (default 0.0.0.0, every IPv4 interface)")
	f.StringVar(&o.id, "id", "", "listener id (default: generated)")
	f.StringVar(&o.framing, "framing", "", "raw | line | delim:HEX | len:N[le] | fixed:N (default raw)")
	f.Uint32Var(&o.maxFrame, "max-frame", 0, "largest frame in bytes (default 1 MiB)")
	f.BoolVar(&o.echo, "echo", false, "write every frame back")
	f.StringVar(&o.reply, "reply", "", "write this text back for every frame")
	f.StringArrayVar(&o.rules, "rule", nil, ruleHelp)
	f.StringVar(&o.banner, "banner", "", "write this template first on every accepted connection, as it is (no framing): {{.connection_id}} {{.remote_address}} {{.listener_id}} {{.time}} {{.unix_ms}}")
	f.Uint32Var(&o.maxConns, "max-conns", 0, "most connections open at once (default: the gateway's --listener-max-connections)")
	f.DurationVar(&o.idle, "idle", 0, "close connections silent this long (default: the gateway's --idle-timeout)")
	f.DurationVar(&o.halfClose, "half-close", 0, "keep a connection writable this long after its client shuts down writing, so 'send --to-conn' can answer it (default: close at once)")
	f.StringVar(&o.forward, "forward", "", "relay every accepted connection to this HOST:PORT, both ways (checked against the gateway's --allow-dial at every dial)")
	f.StringVar(&o.node, "node", "", "start it on this node of the cluster, by its --node-id (default: the node called; a single gateway is its only node)")
	f.BoolVar(&o.everyNode, "every-node", false, "start it on every node of the cluster, each on its own address and the same port, for a load balancer in front (a single gateway: on itself)")
	f.StringVar(&o.proxy, "proxy-protocol", "", "v1 | v2 | any: every connection must begin with a PROXY protocol header of these versions, as a load balancer in front sends it; the connection is then the client it names (only behind a balancer you control: see docs/SECURITY.md)")
	o.target.addFlags(f)
}

// proxyProtocols are --proxy-protocol's values.
var proxyProtocols = map[string]tcpgatev1.ProxyProtocol{
	"v1":  tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1,
	"v2":  tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2,
	"any": tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_ANY,
}

// request is the StartListenerRequest the flags ask for; changed reports
// whether a flag was given.
func (o *listenOptions) request(portArg string, changed func(flag string) bool) (*tcpgatev1.StartListenerRequest, error) {
	port, err := strconv.ParseUint(portArg, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("PORT %q is not a number", portArg)
	}
	if o.node != "" && o.everyNode {
		return nil, errors.New("--node and --every-node exclude each other: a listener runs on one node or on every node")
	}
	req := &tcpgatev1.StartListenerRequest{ListenerId: o.id, Host: o.host, Port: uint32(port), MaxConnections: o.maxConns,
		NodeId: o.node, EveryNode: o.everyNode}
	if o.idle > 0 {
		req.IdleTimeout = durationpb.New(o.idle)
	}
	if o.halfClose > 0 {
		req.HalfCloseTimeout = durationpb.New(o.halfClose)
	}
	if o.framing != "" {
		if req.Framing, err = parseFraming(o.framing); err != nil {
			return nil, err
		}
	}
	if o.maxFrame > 0 {
		if req.Framing == nil {
			req.Framing = &tcpgatev1.Framing{}
		}
		req.Framing.MaxFrameBytes = o.maxFrame
	}
	switch {
	case o.echo && changed("reply"):
		return nil, errors.New("--echo and --reply exclude each other")
	case o.echo:
		req.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}
	case changed("reply"):
		req.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: o.reply}}
	}
	rules, err := parseRules(o.rules)
	if err != nil {
		return nil, err
	}
	req.AutoReply = autoReplyWithRules(req.AutoReply, rules)
	if changed("banner") {
		req.OnConnect = &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: o.banner}}
	}
	if o.proxy != "" {
		p, ok := proxyProtocols[strings.ToLower(o.proxy)]
		if !ok {
			return nil, fmt.Errorf("--proxy-protocol %q: want v1, v2 or any", o.proxy)
		}
		req.ProxyProtocol = p
	}
	tls, err := o.target.dialTLS()
	if err != nil {
		return nil, err
	}
	switch {
	case o.forward != "" && req.OnConnect != nil:
		return nil, errBannerForward
	case o.forward != "":
		req.Forward = &tcpgatev1.Forward{Address: o.forward, Tls: tls}
	case tls != nil:
		return nil, errors.New("--target-tls and its kin are for --forward's target")
	}
	return req, nil
}

func newListenCmd(c *client) *cobra.Command {
	var o listenOptions
	cmd := &cobra.Command{
		Use:   "listen PORT",
		Short: "Start a listener (kn-sock's start_tcp_server)",
		Example: "  tcpgate listen 9000 --host 127.0.0.1 --reply 'Message received'\n" +
			"  tcpgate listen 0 --framing line --echo\n" +
			"  tcpgate listen 7000 --id sensors --framing len:2le\n" +
			"  tcpgate listen 8080 --framing line --half-close 5s   # answer clients that shut down writing\n" +
			"  tcpgate listen 8443 --forward 127.0.0.1:8080 --framing line   # relay to a server, as socat; subscribe --include-sent shows both ways\n" +
			"  tcpgate listen 9000 --framing line --proxy-protocol v2   # behind a load balancer that sends PROXY headers\n" +
			"  tcpgate listen 9100 --framing line --banner 'hello {{.remote_address}}' --rule 'PING=PONG' --rule 're:^GET (\\S+)$=you asked for {{1}}' --rule 'QUIT=bye;close'",
		Args: needArgs("PORT"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args[0], cmd.Flags().Changed)
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.StartListener(ctx, req)
			if err != nil {
				return err
			}
			l := resp.GetListener()
			fmt.Fprintf(cmd.OutOrStdout(), "listener %s listening on %s (framing %s)\n", l.GetListenerId(), l.GetAddress(), framingString(l.GetFraming()))
			return nil
		}),
	}
	o.addFlags(cmd.Flags())
	return cmd
}

func newStopCmd(c *client) *cobra.Command {
	var drain time.Duration
	cmd := &cobra.Command{
		Use:     "stop LISTENER",
		Short:   "Stop a listener, letting open connections finish for --drain",
		Example: "  tcpgate stop demo\n  tcpgate stop demo --drain 5s",
		Args:    needArgs("LISTENER"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: args[0], DrainTimeout: durationpb.New(drain)})
			if err != nil {
				return err
			}
			l := resp.GetListener()
			fmt.Fprintf(cmd.OutOrStdout(), "listener %s stopped: %d connections, %d bytes in, %d bytes out\n",
				l.GetListenerId(), l.GetConnectionsTotal(), l.GetBytesIn(), l.GetBytesOut())
			return nil
		}),
	}
	cmd.Flags().DurationVar(&drain, "drain", 0, "how long open connections may go on (0 closes them now)")
	return cmd
}

func newCloseCmd(c *client) *cobra.Command {
	return &cobra.Command{
		Use:   "close CONNECTION",
		Short: "Close one connection for good: an accepted one, or an outbound one, whose reconnects stop",
		Example: "  tcpgate close c-k3v7q2m5xa   # an id that conns or subscribe printed\n" +
			"  tcpgate close feed           # an outbound connection: no more reconnects",
		Args: needArgs("CONNECTION"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: args[0]})
			if err != nil {
				return err
			}
			cn := resp.GetConnection()
			if cn.GetOrigin() == tcpgatev1.Origin_ORIGIN_OUTBOUND {
				lived := "it never connected"
				if g := cn.GetGeneration(); g > 0 {
					lived = fmt.Sprintf("after %d generation%s", g, plural(g))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "connection %s to %s closed (%s): no more reconnects\n", cn.GetConnectionId(), cn.GetAddress(), lived)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "connection %s closed (%s)\n", cn.GetConnectionId(), cn.GetRemoteAddress())
			return nil
		}),
	}
}

func newSendCmd(c *client) *cobra.Command {
	var (
		hexData, file, toConn, toListener, await string
		stdin, newline, framed                   bool
		timeout                                  time.Duration
		maxReply                                 uint32
		target                                   targetTLS
	)
	cmd := &cobra.Command{
		Use:   "send [HOST:PORT] [TEXT]",
		Short: "Send text or bytes, and print the reply (kn-sock's send_tcp_message)",
		Long: "Send text or bytes to an address (connect, write, optionally read the reply, close),\n" +
			"to a connection the gateway holds (--to-conn: accepted, or kept by `tcpgate connect`)\n" +
			"or to every connection of a listener (--to-listener). The reply is printed to stdout\n" +
			"as it came; a summary goes to stderr.",
		Example: "  tcpgate send 127.0.0.1:9000 'Hello, World!' --await first\n" +
			"  tcpgate send 127.0.0.1:9000 --hex 01020304\n" +
			"  tcpgate send 127.0.0.1:7000 PING --framed --await line    # a line protocol\n" +
			"  tcpgate send --to-conn c-k3v7q2m5xa status --framed      # one frame of its listener's framing\n" +
			"  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | tcpgate send example.test:80 --stdin --await close\n" +
			"  tcpgate send --to-conn c-k3v7q2m5xa 'hello back'\n" +
			"  tcpgate send --to-conn feed STATUS --framed --await line   # a connection kept by connect\n" +
			"  tcpgate send --to-listener demo 'to everyone'",
		Args: cobra.MaximumNArgs(2),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			req := &tcpgatev1.SendRequest{Timeout: durationpb.New(timeout)}
			switch {
			case toConn != "" && toListener != "":
				return errors.New("--to-conn and --to-listener exclude each other")
			case toConn != "":
				req.Target = &tcpgatev1.SendRequest_ConnectionId{ConnectionId: toConn}
			case toListener != "":
				req.Target = &tcpgatev1.SendRequest_ListenerId{ListenerId: toListener}
			default:
				if len(args) == 0 {
					return errors.New("give HOST:PORT, or --to-conn or --to-listener")
				}
				req.Target = &tcpgatev1.SendRequest_Address{Address: args[0]}
				args = args[1:]
			}
			if err := setPayload(req, cmd, args, hexData, file, stdin); err != nil {
				return err
			}
			var err error
			if req.Tls, err = target.dialTLS(); err != nil {
				return err
			}
			if req.Tls != nil && toConn+toListener != "" {
				return errors.New("--target-tls and its kin are for an address: a connection the gateway holds speaks as it was made")
			}
			if newline && framed {
				return errors.New("--newline and --framed exclude each other: --framed already ends a line with its newline")
			}
			req.Framed = framed
			if newline {
				switch p := req.Payload.(type) {
				case *tcpgatev1.SendRequest_Text:
					p.Text += "\n"
				case *tcpgatev1.SendRequest_Data:
					p.Data = append(p.Data, '\n')
				}
			}
			if req.AwaitReply, err = parseAwait(await, maxReply, toConn != ""); err != nil {
				return err
			}
			// The gateway bounds the send by --timeout (its default when 0).
			bound := timeout
			if bound <= 0 {
				bound = rpc.DefaultSendTimeout
			}
			ctx, cancel := c.ctxAtLeast(cmd, bound+sendCallMargin)
			defer cancel()
			resp, err := c.api.Send(ctx, req)
			if err != nil {
				reason, meta := rpc.ReasonOf(err)
				switch {
				case reason == tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TIMEOUT && !framed && !endsWithNewline(req):
					return hinted{err, "a line protocol answers only a whole line: send it framed (--framed), or end the payload with a newline (--newline)"}
				case meta[rpc.MetaField] == "framed":
					return hinted{err, "to an address, --framed encodes with the framing of --await line"}
				case reason == tcpgatev1.ErrorReason_ERROR_REASON_NOT_CONNECTED:
					retry := "retry once it is up"
					if d, ok := retryDelay(err); ok {
						retry = "retry in " + shortDuration(d)
					}
					return hinted{err, fmt.Sprintf("the connection is down and holds no sends: %s, or connect it with --queue SIZE (tcpgate connect --queue 64KiB) so that sends wait for the reconnect", retry)}
				case reason == tcpgatev1.ErrorReason_ERROR_REASON_QUEUE_FULL:
					return hinted{err, "the sends held while the connection is down fill its --queue: retry once it is up, or connect it with a larger --queue"}
				}
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "sent %d bytes to %d connection(s)\n", resp.GetBytesWritten(), resp.GetConnectionsReached())
			if r := resp.GetReply(); r != nil {
				// The bytes as they came: a newline of our own only
				// where a person reads them, never into a file or pipe.
				out := cmd.OutOrStdout()
				d := payload(r.GetData(), r.GetText())
				if _, err := out.Write(d); err != nil {
					return fmt.Errorf("writing the reply: %w", err)
				}
				if len(d) > 0 && d[len(d)-1] != '\n' && isTerminal(out) {
					fmt.Fprintln(out)
				}
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&hexData, "hex", "", "send these bytes, in hex")
	f.StringVar(&file, "file", "", "send the bytes of this file")
	f.BoolVar(&stdin, "stdin", false, "send what stdin holds until EOF")
	f.StringVar(&toConn, "to-conn", "", "send to this connection (accepted, or kept by connect) instead of an address")
	f.StringVar(&toListener, "to-listener", "", "send to every connection of this listener")
	f.BoolVar(&newline, "newline", false, "end the payload with a newline (\\n); --framed does it for a line connection or --await line, and adds a length-prefixed one's prefix")
	f.BoolVar(&framed, "framed", false, "send the payload as one frame of the connection's or listener's framing (a line gets its \\n, a length-prefixed frame its prefix); to an address, of --await line's")
	f.StringVar(&await, "await", "", "wait for a reply: first (one read), line (one line; with --to-conn, one frame of the connection's framing), close (until the peer closes)")
	f.Uint32Var(&maxReply, "max-reply", 0, "largest reply in bytes (default 1 MiB)")
	f.DurationVar(&timeout, "timeout", rpc.DefaultSendTimeout, "bounds connect, write and reply (the call may take this long even past --call-timeout)")
	target.addFlags(f)
	return cmd
}

// setPayload takes the bytes to send from exactly one source.
func setPayload(req *tcpgatev1.SendRequest, cmd *cobra.Command, args []string, hexData, file string, stdin bool) error {
	sources := len(args)
	for _, set := range []bool{hexData != "", file != "", stdin} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return errors.New("give exactly one of TEXT, --hex, --file or --stdin")
	}
	var b []byte
	var err error
	switch {
	case len(args) == 1:
		req.Payload = &tcpgatev1.SendRequest_Text{Text: args[0]}
		return nil
	case hexData != "":
		if b, err = hex.DecodeString(strings.ReplaceAll(hexData, " ", "")); err != nil {
			return fmt.Errorf("--hex: %w", err)
		}
	case file != "":
		if b, err = os.ReadFile(file); err != nil {
			return err
		}
	default:
		if b, err = io.ReadAll(cmd.InOrStdin()); err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
	req.Payload = &tcpgatev1.SendRequest_Data{Data: b}
	return nil
}

// endsWithNewline reports whether a send's payload ends a line.
func endsWithNewline(req *tcpgatev1.SendRequest) bool {
	switch p := req.Payload.(type) {
	case *tcpgatev1.SendRequest_Text:
		return strings.HasSuffix(p.Text, "\n")
	case *tcpgatev1.SendRequest_Data:
		return len(p.Data) > 0 && p.Data[len(p.Data)-1] == '\n'
	}
	return false
}

// isTerminal reports whether w is a terminal, where a reply that does not
// end a line gets one so the prompt starts on its own line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// parseAwait reads --await. On an accepted connection (toConn) the
// listener's framing cuts replies and the gateway refuses a framing of the
// request's own, so line asks for the next frame.
func parseAwait(s string, maxReply uint32, toConn bool) (*tcpgatev1.AwaitReply, error) {
	a := &tcpgatev1.AwaitReply{MaxBytes: maxReply}
	switch s {
	case "":
		return nil, nil
	case "first":
		a.Mode = tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ
	case "line":
		a.Mode = tcpgatev1.AwaitMode_AWAIT_MODE_FRAME
		if !toConn {
			a.Framing = &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
		}
	case "close":
		a.Mode = tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE
	default:
		return nil, fmt.Errorf("--await %q: want first, line or close", s)
	}
	return a, nil
}

// kindNames are the event kinds --kinds takes: the enum's names without
// EVENT_KIND_, in lower case.
var kindNames = map[string]tcpgatev1.EventKind{
	"listener_started":    tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED,
	"listener_stopped":    tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED,
	"connection_opened":   tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED,
	"data":                tcpgatev1.EventKind_EVENT_KIND_DATA,
	"connection_closed":   tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	"reconnect_scheduled": tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED,
	"listener_updated":    tcpgatev1.EventKind_EVENT_KIND_LISTENER_UPDATED,
}

// parseKind reads one --kinds value: a short name such as data, or the
// enum's full name such as EVENT_KIND_DATA that the JSON output prints, in
// any case.
func parseKind(s string) (tcpgatev1.EventKind, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	if kind, ok := kindNames[strings.TrimPrefix(name, "event_kind_")]; ok {
		return kind, nil
	}
	return 0, fmt.Errorf("--kinds %q: want listener_started, listener_stopped, connection_opened, data, connection_closed, reconnect_scheduled or listener_updated (or the full names, e.g. EVENT_KIND_DATA)", s)
}

var policyNames = map[string]tcpgatev1.SlowConsumerPolicy{
	"drop-oldest":  tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST,
	"disconnect":   tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT,
	"backpressure": tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
}

func newSubscribeCmd(c *client) *cobra.Command {
	var (
		listeners, conns, kinds []string
		origins                 []string
		since, sinceInc         string
		policy, format          string
		includeSent             bool
	)
	cmd := &cobra.Command{
		Use:   "subscribe",
		Short: "Print events as they happen, one line each, until interrupted",
		Long: "Print events as they happen, one line each, until interrupted.\n\n" +
			"The first line, stream_started, names the gateway's incarnation (its sequence\n" +
			"space: a new one at every start), its node and its newest sequence, and says\n" +
			"how to resume: --since INCARNATION-SEQUENCE replays from SEQUENCE of that\n" +
			"incarnation. After the last event #N you saw, resume with\n" +
			"--since INCARNATION-(N+1): nothing is missed that the gateway still holds,\n" +
			"and EVENTS_DROPPED says how many it no longer had. If the gateway restarted\n" +
			"meanwhile, an incarnation_changed line follows and the replay starts from\n" +
			"what the new gateway holds: sequences start again, so tell events apart by\n" +
			"(incarnation, sequence), never by sequence alone.\n\n" +
			"Events of an outbound connection (tcpgate connect) carry gen=N, the number of its\n" +
			"socket; reconnect_scheduled says it is down and dials again: attempt=N after\n" +
			"delay=D, with error= saying why it is down.",
		Example: "  tcpgate subscribe\n" +
			"  tcpgate subscribe --listener demo --kinds data\n" +
			"  tcpgate subscribe --origin accepted\n" +
			"  tcpgate subscribe --include-sent   # both sides of every conversation\n" +
			"  tcpgate subscribe --conn feed --kinds connection_closed,reconnect_scheduled   # an outbound connection's drops\n" +
			"  tcpgate subscribe --since 1 --format json | jq .text\n" +
			"  tcpgate subscribe --since hb4k2xq7zv3wma6c-42   # resume at 42 of that incarnation",
		Args: cobra.NoArgs,
		RunE: c.run(func(cmd *cobra.Command, _ []string) error {
			req := &tcpgatev1.SubscribeRequest{ListenerIds: listeners, ConnectionIds: conns, SinceIncarnation: sinceInc, IncludeSent: includeSent}
			if since != "" {
				inc, seq, err := parseSince(since)
				if err != nil {
					return err
				}
				if inc != "" && sinceInc != "" && inc != sinceInc {
					return fmt.Errorf("--since %s names incarnation %s, --since-incarnation %s: give one", since, inc, sinceInc)
				}
				req.SinceSequence = seq
				if inc != "" {
					req.SinceIncarnation = inc
				}
			}
			for _, k := range kinds {
				kind, err := parseKind(k)
				if err != nil {
					return err
				}
				req.Kinds = append(req.Kinds, kind)
			}
			os, err := parseOrigins(origins)
			if err != nil {
				return err
			}
			req.Origins = os
			p, ok := policyNames[policy]
			if !ok {
				return fmt.Errorf("--policy %q: want drop-oldest, disconnect or backpressure", policy)
			}
			req.SlowConsumer = p
			if format != "text" && format != "json" {
				return fmt.Errorf("--format %q: want text or json", format)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			stream, err := c.api.Subscribe(ctx, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for {
				resp, err := stream.Recv()
				if err != nil {
					if ctx.Err() != nil {
						return nil // interrupted
					}
					return err
				}
				for _, e := range resp.GetEvents() {
					if format == "json" {
						b, err := protojson.Marshal(e)
						if err != nil {
							return err
						}
						fmt.Fprintf(out, "%s\n", b)
						continue
					}
					fmt.Fprintln(out, eventLine(e))
				}
			}
		}),
	}
	f := cmd.Flags()
	f.StringArrayVar(&listeners, "listener", nil, "only events of this listener (repeatable)")
	f.StringArrayVar(&conns, "conn", nil, "only events of this connection (repeatable)")
	f.StringSliceVar(&kinds, "kinds", nil, "only these kinds, comma-separated: listener_started, listener_stopped, connection_opened, data, connection_closed, reconnect_scheduled, listener_updated (or EVENT_KIND_DATA, ...)")
	f.StringSliceVar(&origins, "origin", nil, "only events of connections of these origins, comma-separated or repeated: accepted or outbound (listener events are left out)")
	f.StringVar(&since, "since", "", "replay from this sequence before live events: INCARNATION-SEQUENCE, or SEQUENCE of the gateway's incarnation (default: live only)")
	f.StringVar(&sinceInc, "since-incarnation", "", "the incarnation --since SEQUENCE belongs to, as stream_started printed it")
	f.StringVar(&policy, "policy", "drop-oldest", "when this subscriber falls behind: drop-oldest, disconnect or backpressure")
	f.StringVar(&format, "format", "text", "text or json (one protojson object per line)")
	f.BoolVar(&includeSent, "include-sent", false, "also print what the gateway wrote (sends, auto replies, on-connect, heartbeats, a forwarding listener's target), marked sent")
	return cmd
}

// parseSince reads --since: INCARNATION-SEQUENCE, as an SSE id or a
// stream_started line gives them, or a bare SEQUENCE.
func parseSince(v string) (inc string, seq uint64, err error) {
	num := v
	if i := strings.LastIndexByte(v, '-'); i >= 0 {
		inc, num = v[:i], v[i+1:]
		if inc == "" {
			return "", 0, fmt.Errorf("--since %q: want INCARNATION-SEQUENCE or SEQUENCE", v)
		}
	}
	seq, err = strconv.ParseUint(num, 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("--since %q: want INCARNATION-SEQUENCE or SEQUENCE, such as hb4k2xq7zv3wma6c-42", v)
	}
	return inc, seq, nil
}

// eventLine renders an event as one line of text.
func eventLine(e *tcpgatev1.Event) string {
	kind := strings.ToLower(strings.TrimPrefix(e.GetKind().String(), "EVENT_KIND_"))
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s", e.GetSequence(), e.GetTime().AsTime().Local().Format("15:04:05.000"), kind)
	if e.GetListenerId() != "" {
		fmt.Fprintf(&b, " listener=%s", e.GetListenerId())
	}
	if e.GetConnectionId() != "" {
		fmt.Fprintf(&b, " conn=%s", e.GetConnectionId())
	}
	if g := e.GetGeneration(); g > 0 {
		fmt.Fprintf(&b, " gen=%d", g) // an outbound connection's socket
	}
	switch e.GetKind() {
	case tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED, tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED, tcpgatev1.EventKind_EVENT_KIND_LISTENER_UPDATED:
		fmt.Fprintf(&b, " address=%s", e.GetLocalAddress())
	case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED:
		fmt.Fprintf(&b, " remote=%s", e.GetRemoteAddress())
	case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
		fmt.Fprintf(&b, " remote=%s reason=%s", orDash(e.GetRemoteAddress()), closeReasonString(e.GetCloseReason()))
		if r := e.GetTargetCloseReason(); r != tcpgatev1.CloseReason_CLOSE_REASON_UNSPECIFIED {
			fmt.Fprintf(&b, " target_reason=%s", closeReasonString(r))
		}
		if e.GetError() != "" {
			fmt.Fprintf(&b, " error=%q", e.GetError())
		}
	case tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED:
		fmt.Fprintf(&b, " attempt=%d delay=%s", e.GetAttempt(), shortDuration(e.GetDelay().AsDuration()))
		if e.GetError() != "" {
			fmt.Fprintf(&b, " error=%q", e.GetError())
		}
	case tcpgatev1.EventKind_EVENT_KIND_DATA:
		if e.GetDirection() == tcpgatev1.Direction_DIRECTION_SENT {
			b.WriteString(" sent") // what the gateway wrote, not what it received
		}
	case tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED:
		fmt.Fprintf(&b, " dropped=%d", e.GetDropped())
	case tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED:
		h := e.GetHeader()
		fmt.Fprintf(&b, " incarnation=%s node=%s last_sequence=%d (resume after #N with --since %s-N+1)",
			h.GetIncarnation(), h.GetNodeId(), h.GetLastSequence(), h.GetIncarnation())
	case tcpgatev1.EventKind_EVENT_KIND_INCARNATION_CHANGED:
		fmt.Fprintf(&b, " incarnation=%s (the gateway restarted: sequences start again, replaying what it holds)", e.GetHeader().GetIncarnation())
	}
	if e.GetPartial() {
		b.WriteString(" partial") // an unfinished frame, right before the close
	}
	if d := payload(e.GetData(), e.GetText()); len(d) > 0 {
		if utf8.Valid(d) {
			fmt.Fprintf(&b, " %d bytes %q", len(d), d)
		} else {
			fmt.Fprintf(&b, " %d bytes hex=%s", len(d), hex.EncodeToString(d))
		}
	}
	return b.String()
}

// closeReasonString is a close reason as subscribe prints it: the enum's
// name without CLOSE_REASON_, in lower case.
func closeReasonString(r tcpgatev1.CloseReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "CLOSE_REASON_"))
}

// shortDuration rounds a jittered delay to what a person reads: 1.234s,
// 87ms; below a millisecond as it is.
func shortDuration(d time.Duration) string {
	if d >= time.Millisecond {
		d = d.Round(time.Millisecond)
	}
	return d.String()
}

// payload returns the bytes of an event or reply: data when it came as
// data, text otherwise (PAYLOAD_FORMAT_TEXT_OR_DATA, the default, sends
// valid UTF-8 as text only).
func payload(data []byte, text string) []byte {
	if len(data) > 0 {
		return data
	}
	return []byte(text)
}
