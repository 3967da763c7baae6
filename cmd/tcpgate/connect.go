package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// defaultConnectTimeout is how long the gateway waits for a Connect's first
// attempt when the request sets none (ConnectRequest.timeout).
const defaultConnectTimeout = 10 * time.Second

// targetTLS are the flags that make the gateway speak TLS to the address it
// dials (DialTLS), apart from --tls and its kin, which are about the
// gateway itself. Certificates are read here and sent as PEM, so that the
// files need only be on the machine the command runs on.
type targetTLS struct {
	on                 bool
	ca, cert, key, sni string
	insecure           bool
}

func (tt *targetTLS) addFlags(f *pflag.FlagSet) {
	f.BoolVar(&tt.on, "target-tls", false, "the gateway speaks TLS to the target, trusting the gateway's system CAs (implied by the other --target-* flags)")
	f.StringVar(&tt.ca, "target-ca", "", "PEM CA certificates to trust for the target's certificate, read here")
	f.StringVar(&tt.cert, "target-cert", "", "PEM client certificate the gateway shows the target (mutual TLS), read here")
	f.StringVar(&tt.key, "target-key", "", "PEM key of --target-cert, read here")
	f.StringVar(&tt.sni, "target-server-name", "", "the name the target's certificate must carry (default: the host of the address)")
	f.BoolVar(&tt.insecure, "target-insecure", false, "accept any certificate of the target: for tests only, it gives up knowing who answers")
}

// dialTLS returns the DialTLS the flags ask for, or nil for plain TCP.
func (tt *targetTLS) dialTLS() (*tcpgatev1.DialTLS, error) {
	if !tt.on && tt.ca == "" && tt.cert == "" && tt.key == "" && tt.sni == "" && !tt.insecure {
		return nil, nil
	}
	d := &tcpgatev1.DialTLS{ServerName: tt.sni, InsecureSkipVerify: tt.insecure}
	if (tt.cert == "") != (tt.key == "") {
		return nil, errors.New("--target-cert and --target-key go together: a client certificate needs its key")
	}
	for _, f := range []struct {
		flag, path string
		into       *string
	}{{"--target-ca", tt.ca, &d.CaPem}, {"--target-cert", tt.cert, &d.CertPem}, {"--target-key", tt.key, &d.KeyPem}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.flag, err)
		}
		*f.into = string(b)
	}
	return d, nil
}

// parseSize reads a byte count such as 1000, 64KiB, 1MiB or 2MB (KiB,
// MiB and GiB are powers of 1024; KB, MB and GB of 1000; the unit's case
// does not matter) for flag.
func parseSize(flag, s string) (uint64, error) {
	bad := fmt.Errorf("%s %q: want a size in bytes such as 1000, 64KiB or 1MiB", flag, s)
	num := strings.TrimSpace(s)
	unit := strings.TrimLeft(num, "0123456789")
	num = strings.TrimSuffix(num, unit)
	mult := map[string]uint64{"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1e3, "mb": 1e6, "gb": 1e9}[strings.ToLower(strings.TrimSpace(unit))]
	if num == "" || mult == 0 {
		return 0, bad
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > math.MaxUint64/mult {
		return 0, bad
	}
	return n * mult, nil
}

// parseBackoff reads --backoff INITIAL[:MAX], such as 100ms:30s or 1s.
func parseBackoff(s string) (initial, maxDelay time.Duration, err error) {
	first, second, hasMax := strings.Cut(s, ":")
	bad := func(part string, err error) error {
		return fmt.Errorf("--backoff %q: %s: %w (want INITIAL[:MAX], such as 100ms:30s)", s, part, err)
	}
	if initial, err = time.ParseDuration(first); err != nil {
		return 0, 0, bad("the initial delay", err)
	}
	if hasMax {
		if maxDelay, err = time.ParseDuration(second); err != nil {
			return 0, 0, bad("the longest delay", err)
		}
	}
	return initial, maxDelay, nil
}

// parseHeartbeat reads --heartbeat INTERVAL:TEXT, such as 10s:PING.
func parseHeartbeat(s string) (time.Duration, string, error) {
	iv, text, ok := strings.Cut(s, ":")
	if !ok || text == "" {
		return 0, "", fmt.Errorf("--heartbeat %q: want INTERVAL:TEXT, such as 10s:PING", s)
	}
	d, err := time.ParseDuration(iv)
	if err != nil {
		return 0, "", fmt.Errorf("--heartbeat %q: the interval: %w (want INTERVAL:TEXT, such as 10s:PING)", s, err)
	}
	return d, text, nil
}

// connectOptions are the flags of connect, turned into a ConnectRequest by
// request.
type connectOptions struct {
	id, framing, onConnect, onConnectHex string
	expect, heartbeat, heartbeatExpect   string
	rules                                []string
	backoff, queue, keepAlive, node      string
	noReconnect, framed, takeOver        bool
	maxFrame, maxAttempts                uint32
	expectTimeout, idle, timeout         time.Duration
	userTimeout                          time.Duration
	target                               targetTLS
}

func (o *connectOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.id, "id", "", "connection id, kept across reconnects (default: generated)")
	f.StringVar(&o.framing, "framing", "", "raw | line | delim:HEX | len:N[le] | fixed:N: how what the server says is cut into frames (default raw)")
	f.Uint32Var(&o.maxFrame, "max-frame", 0, "largest frame in bytes (default 1 MiB)")
	f.BoolVar(&o.noReconnect, "no-reconnect", false, "never dial again: a failed first attempt is an error, and the first drop closes the connection for good")
	f.StringVar(&o.backoff, "backoff", "", "INITIAL[:MAX] delays between attempts, doubling from INITIAL up to MAX, each a random part of half to all of it (default 100ms:30s; at least 10ms)")
	f.Uint32Var(&o.maxAttempts, "max-attempts", 0, "give up after this many failed attempts in a row, closing the connection for good (default: never)")
	f.StringVar(&o.onConnect, "on-connect", "", "write this text first on every connection, before any send")
	f.StringVar(&o.onConnectHex, "on-connect-hex", "", "write these bytes, in hex, first on every connection")
	f.StringVar(&o.expect, "expect", "", "after --on-connect, await a frame that starts with this text before the connection counts as up")
	f.DurationVar(&o.expectTimeout, "expect-timeout", 0, "how long --expect waits; past it the connection is closed (on_connect_failed) and dialed again (default 10s)")
	f.StringVar(&o.heartbeat, "heartbeat", "", "INTERVAL:TEXT: write TEXT after INTERVAL without any write, such as 10s:PING")
	f.StringVar(&o.heartbeatExpect, "heartbeat-expect", "", "await a frame that starts with this text after each heartbeat, within its interval; none means the peer is dead (heartbeat_failed) and it is dialed again")
	f.BoolVar(&o.framed, "framed", false, "send --on-connect and --heartbeat as one frame of --framing (a line gets its \\n, a length-prefixed frame its prefix)")
	f.DurationVar(&o.idle, "idle", 0, "take the server as dead after this long without a received byte, and dial again (default: never)")
	f.StringVar(&o.queue, "queue", "", "bytes of sends held while the connection is down, such as 64KiB or 1MiB, written in order once it is up (default 0: such a send fails at once)")
	f.StringVar(&o.keepAlive, "keepalive", "", "TCP keep-alive probes: IDLE[:INTERVAL[:COUNT]] such as 30s:10s:3, or off (default 15s:15s:9)")
	f.DurationVar(&o.userTimeout, "user-timeout", 0, "TCP_USER_TIMEOUT: drop the connection when written bytes stay unacknowledged this long, a dead peer found while writing (default: the kernel's, about 15 minutes)")
	f.DurationVar(&o.timeout, "timeout", defaultConnectTimeout, "how long to wait for the first attempt; past it connect prints the connection as it is, and the gateway goes on trying")
	f.StringArrayVar(&o.rules, "rule", nil, ruleHelp)
	f.StringVar(&o.node, "node", "", "keep it on this node of the cluster, by its --node-id (default: the node called; a single gateway is its only node)")
	f.BoolVar(&o.takeOver, "take-over", false, "when its node is lost, another node of the cluster dials it afresh (not with --no-reconnect; a single gateway ignores it)")
	o.target.addFlags(f)
}

// request is the ConnectRequest the flags ask for; changed reports whether
// a flag was given, so that a flag left out leaves its field unset for the
// gateway's default.
func (o *connectOptions) request(addr string, changed func(flag string) bool) (*tcpgatev1.ConnectRequest, error) {
	opt := func(flag string, d time.Duration) *durationpb.Duration {
		if !changed(flag) {
			return nil
		}
		return durationpb.New(d)
	}
	if o.takeOver && o.noReconnect {
		return nil, errors.New("--take-over needs reconnect: the node taking the connection over dials it again; drop --no-reconnect or --take-over")
	}
	req := &tcpgatev1.ConnectRequest{ConnectionId: o.id, Address: addr, IdleTimeout: opt("idle", o.idle),
		TcpUserTimeout: opt("user-timeout", o.userTimeout), Timeout: opt("timeout", o.timeout),
		NodeId: o.node, TakeOver: o.takeOver}
	var err error
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
	if req.Tls, err = o.target.dialTLS(); err != nil {
		return nil, err
	}

	reconnect := &tcpgatev1.Reconnect{Disabled: o.noReconnect, MaxAttempts: o.maxAttempts}
	if o.backoff != "" {
		initial, maxDelay, err := parseBackoff(o.backoff)
		if err != nil {
			return nil, err
		}
		reconnect.InitialBackoff = durationpb.New(initial)
		if maxDelay != 0 {
			reconnect.MaxBackoff = durationpb.New(maxDelay)
		}
	}
	switch {
	case o.noReconnect && (o.backoff != "" || o.maxAttempts != 0):
		return nil, errors.New("--no-reconnect excludes --backoff and --max-attempts: they say how to reconnect")
	case o.noReconnect || o.backoff != "" || o.maxAttempts != 0:
		req.Reconnect = reconnect
	}

	switch {
	case o.onConnect != "" && o.onConnectHex != "":
		return nil, errors.New("--on-connect and --on-connect-hex exclude each other: give the handshake once")
	case o.onConnect != "":
		req.OnConnect = &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: o.onConnect}}
	case o.onConnectHex != "":
		b, err := hex.DecodeString(strings.ReplaceAll(o.onConnectHex, " ", ""))
		if err != nil {
			return nil, fmt.Errorf("--on-connect-hex: %w", err)
		}
		req.OnConnect = &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Data{Data: b}}
	case o.expect != "" || changed("expect-timeout"):
		return nil, errors.New("--expect and --expect-timeout need --on-connect or --on-connect-hex: they await its reply")
	}
	if oc := req.OnConnect; oc != nil {
		oc.Framed = o.framed
		if o.expect != "" {
			oc.Expect = &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: o.expect}}
			oc.Timeout = opt("expect-timeout", o.expectTimeout)
		} else if changed("expect-timeout") {
			return nil, errors.New("--expect-timeout needs --expect: it bounds the wait for that reply")
		}
	}

	switch {
	case o.heartbeat != "":
		interval, text, err := parseHeartbeat(o.heartbeat)
		if err != nil {
			return nil, err
		}
		req.Heartbeat = &tcpgatev1.Heartbeat{Interval: durationpb.New(interval),
			Payload: &tcpgatev1.Heartbeat_Text{Text: text}, Framed: o.framed}
		if o.heartbeatExpect != "" {
			req.Heartbeat.Expect = &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: o.heartbeatExpect}}
		}
	case o.heartbeatExpect != "":
		return nil, errors.New("--heartbeat-expect needs --heartbeat: it awaits the heartbeat's reply")
	}
	if o.framed && req.OnConnect == nil && req.Heartbeat == nil {
		return nil, errors.New("--framed encodes --on-connect and --heartbeat: give one of them")
	}

	rules, err := parseRules(o.rules)
	if err != nil {
		return nil, err
	}
	req.AutoReply = autoReplyWithRules(req.AutoReply, rules)

	if o.keepAlive != "" {
		if req.KeepAlive, err = parseKeepAlive(o.keepAlive); err != nil {
			return nil, err
		}
	}
	if o.queue != "" {
		if req.QueueWhileDownBytes, err = parseSize("--queue", o.queue); err != nil {
			return nil, err
		}
	}
	return req, nil
}

// parseKeepAlive reads --keepalive: off, or IDLE[:INTERVAL[:COUNT]].
func parseKeepAlive(s string) (*tcpgatev1.TcpKeepAlive, error) {
	if s == "off" {
		return &tcpgatev1.TcpKeepAlive{Disabled: true}, nil
	}
	parts := strings.Split(s, ":")
	bad := func(what string, err error) error {
		return fmt.Errorf("--keepalive %q: %s: %w (want IDLE[:INTERVAL[:COUNT]], such as 30s:10s:3, or off)", s, what, err)
	}
	if len(parts) > 3 {
		return nil, bad("too many parts", errors.New("three at most"))
	}
	ka := &tcpgatev1.TcpKeepAlive{}
	for i, p := range parts {
		switch i {
		case 0, 1:
			d, err := time.ParseDuration(p)
			if err != nil {
				return nil, bad([]string{"the idle time", "the interval"}[i], err)
			}
			if i == 0 {
				ka.Idle = durationpb.New(d)
			} else {
				ka.Interval = durationpb.New(d)
			}
		case 2:
			n, err := strconv.ParseUint(p, 10, 32)
			if err != nil {
				return nil, bad("the count", err)
			}
			ka.Count = uint32(n)
		}
	}
	return ka, nil
}

func newConnectCmd(c *client) *cobra.Command {
	var o connectOptions
	cmd := &cobra.Command{
		Use:   "connect HOST:PORT",
		Short: "Keep a connection to a server, reconnecting when it drops",
		Long: "Open a managed outbound connection: the gateway dials HOST:PORT and keeps the\n" +
			"connection up, dialing again with a growing, jittered backoff whenever it drops or an\n" +
			"attempt fails. What the server says streams to `tcpgate subscribe` like an accepted\n" +
			"connection's; `tcpgate send --to-conn ID` writes to it (with --await line, the reply\n" +
			"is one frame of --framing); `tcpgate close ID` closes it for good.\n\n" +
			"connect prints the connection after the first attempt: open, or waiting to reconnect\n" +
			"with the error (the gateway goes on trying). With --no-reconnect a failed first\n" +
			"attempt is an error and nothing is kept.\n\n" +
			"--on-connect is written first on every connection (a login, a handshake); with\n" +
			"--expect the connection counts as up only once a frame starting with that text came.\n" +
			"--heartbeat writes its text after INTERVAL without a write; with --heartbeat-expect\n" +
			"a missing answer counts as a dead peer. --queue holds Sends while the connection is\n" +
			"down, written in order once it is up again; without it such a Send fails at once.",
		Example: "  tcpgate connect 127.0.0.1:7000 --id feed --framing line\n" +
			"  tcpgate connect plc.example:502 --framing len:2 --on-connect-hex 0001 --queue 64KiB\n" +
			"  tcpgate connect 10.0.0.9:4000 --framing line --on-connect 'LOGIN demo' --framed --expect OK\n" +
			"  tcpgate connect 127.0.0.1:7000 --framing line --heartbeat 10s:PING --heartbeat-expect PONG\n" +
			"  tcpgate connect 127.0.0.1:7000 --backoff 500ms:1m --max-attempts 20\n" +
			"  tcpgate connect 127.0.0.1:7000 --keepalive 30s:10s:3 --user-timeout 30s   # find a dead peer sooner\n" +
			"  tcpgate connect 127.0.0.1:7000 --no-reconnect      # fail now if nothing answers\n" +
			"  tcpgate connect 127.0.0.1:7000 --framing line --rule 'PING=PONG'   # answer the server's pings in the gateway\n" +
			"  tcpgate connect mail.example:465 --target-tls --framing line",
		Args: needArgs("HOST:PORT"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args[0], cmd.Flags().Changed)
			if err != nil {
				return err
			}
			// The gateway bounds the call by --timeout (its default when
			// unset), after which it answers with the connection as it is.
			bound := o.timeout
			if bound <= 0 {
				bound = defaultConnectTimeout
			}
			ctx, cancel := c.ctxAtLeast(cmd, bound+sendCallMargin)
			defer cancel()
			resp, err := c.api.Connect(ctx, req)
			if err != nil {
				return connectError(err, req.GetConnectionId(), o.noReconnect)
			}
			fmt.Fprintln(cmd.OutOrStdout(), connectionLine(resp.GetConnection(), time.Now()))
			return nil
		}),
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// connectFlags are the flags that set ConnectRequest's fields, by the
// field's path or the path's first part, so that the gateway's error
// about a field says which flag to change.
var connectFlags = map[string]string{
	"connection_id":             "--id",
	"address":                   "HOST:PORT",
	"framing":                   "--framing (--max-frame)",
	"framing.max_frame_bytes":   "--max-frame",
	"tls":                       "--target-tls and its kin",
	"reconnect":                 "--backoff",
	"reconnect.max_attempts":    "--max-attempts",
	"on_connect":                "--on-connect or --on-connect-hex",
	"on_connect.expect":         "--expect",
	"on_connect.timeout":        "--expect-timeout",
	"heartbeat":                 "--heartbeat",
	"heartbeat.expect":          "--heartbeat-expect",
	"idle_timeout":              "--idle",
	"queue_while_down_bytes":    "--queue",
	"timeout":                   "--timeout",
	"keep_alive":                "--keepalive",
	"tcp_user_timeout":          "--user-timeout",
	"reconnect.initial_backoff": "--backoff",
	"reconnect.max_backoff":     "--backoff",
	"node_id":                   "--node",
	"take_over":                 "--take-over",
}

// flagOfField returns the connect flag that sets field, or "".
func flagOfField(field string) string {
	for f := field; f != ""; {
		if flag, ok := connectFlags[f]; ok {
			return flag
		}
		i := strings.LastIndexByte(f, '.')
		if i < 0 {
			break
		}
		f = f[:i]
	}
	return ""
}

// connectError adds what to do to a failed Connect: the flag that sets a
// field the gateway refused, or that without --no-reconnect the gateway
// would have kept dialing.
func connectError(err error, id string, noReconnect bool) error {
	reason, meta := rpc.ReasonOf(err)
	if flag := flagOfField(meta[rpc.MetaField]); flag != "" {
		return hinted{err, "set by " + flag}
	}
	switch reason {
	case tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_EXISTS:
		return hinted{err, fmt.Sprintf("give another --id, or close that connection first (tcpgate close %s)", id)}
	case tcpgatev1.ErrorReason_ERROR_REASON_ON_CONNECT_FAILED:
		return hinted{err, "nothing was kept: check --on-connect, --expect and --expect-timeout; without --no-reconnect the gateway keeps trying"}
	case tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_REFUSED, tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_UNREACHABLE,
		tcpgatev1.ErrorReason_ERROR_REASON_HOST_NOT_FOUND, tcpgatev1.ErrorReason_ERROR_REASON_TIMEOUT,
		tcpgatev1.ErrorReason_ERROR_REASON_TLS_HANDSHAKE_FAILED, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_BROKEN:
		if noReconnect {
			return hinted{err, "nothing was kept; without --no-reconnect the gateway keeps dialing until the address answers"}
		}
	}
	return err
}

// connectionLine says where an outbound connection stands, as connect
// prints it: open, waiting to reconnect (with why and when), still
// connecting, or closed.
func connectionLine(cn *tcpgatev1.Connection, now time.Time) string {
	id, addr := cn.GetConnectionId(), cn.GetAddress()
	switch cn.GetState() {
	case tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN, tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED:
		at := ""
		if r := cn.GetRemoteAddress(); r != "" && r != addr {
			at = " at " + r
		}
		return fmt.Sprintf("connection %s open to %s%s (generation %d)", id, addr, at, cn.GetGeneration())
	case tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING:
		s := fmt.Sprintf("connection %s waiting to reconnect to %s", id, addr)
		if next := cn.GetNextAttemptAt(); next != nil {
			s += fmt.Sprintf(" in %v", max(next.AsTime().Sub(now), 0).Round(time.Millisecond))
		}
		if n := cn.GetAttempts(); n > 0 {
			s += fmt.Sprintf(" (%d failed attempt%s)", n, plural(n))
		}
		return s + ": " + lastError(cn)
	case tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING:
		s := fmt.Sprintf("connection %s connecting to %s (--timeout passed first; the gateway goes on trying)", id, addr)
		if e := cn.GetLastError(); e != "" {
			s += ": " + e
		}
		return s
	}
	return fmt.Sprintf("connection %s to %s %s: %s", id, addr, connStateString(cn.GetState()), lastError(cn))
}

// lastError is a connection's last error, or a dash when nothing went wrong.
func lastError(cn *tcpgatev1.Connection) string {
	if e := cn.GetLastError(); e != "" {
		return e
	}
	return "-"
}

// plural is "s" unless n is 1.
func plural[N ~uint32 | ~int | ~uint64](n N) string {
	if n == 1 {
		return ""
	}
	return "s"
}
