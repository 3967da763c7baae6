package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tcpgate/tcpgate/gateway/console"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/config"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// serveOptions are the serve flags that are not fields of server.Config.
type serveOptions struct {
	logLevel, logFormat string
	tokenFile           string
	ui                  bool
	cluster             clusterOptions
}

func newServeCmd() *cobra.Command {
	var (
		cfg server.Config
		o   serveOptions
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway daemon",
		Long: "Run the gateway: the gRPC control plane (with reflection and health) and\n" +
			"its REST front with event streams, OpenAPI and Prometheus metrics.\n\n" +
			"Every flag can also be set by an environment variable: TCPGATE_ and the\n" +
			"flag's name in capitals with _ for -, e.g. TCPGATE_GRPC_ADDR. Flags win.\n" +
			"SIGINT or SIGTERM shuts down gracefully within --shutdown-timeout; a second\n" +
			"signal exits at once.\n\n" +
			"The flags marked (reloadable) change while the gateway runs, when a reload\n" +
			"re-reads them: the policies, --max-listeners, --max-subscribers,\n" +
			"--cors-origins, the token file (read again, so a rewritten file rotates the\n" +
			"token; browser sessions end) and the TLS certificate and key (read again;\n" +
			"new handshakes get the new certificate). Each holds for what comes next;\n" +
			"open connections and streams are left alone. A change to any other flag\n" +
			"is reported as needing a restart and is not applied.\n\n" +

			"--config FILE (YAML) declares listeners, outbound connections and, under\n" +
			"serve:, these flags by name, below the command line and TCPGATE_* in\n" +
			"precedence. SIGHUP (or POST /v1/config:reload) re-reads it and applies the\n" +
			"difference; a file that does not load changes nothing.",
		Example: "  tcpgate serve\n" +
			"  tcpgate serve --grpc-addr 127.0.0.1:0 --log-format json\n" +
			"  TCPGATE_LOG_LEVEL=debug tcpgate serve\n" +
			"  tcpgate serve --config /etc/tcpgate/tcpgate.yaml",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			// Set by the command line or TCPGATE_*: a reloaded file cannot
			// change them.
			pinned := changedFlags(cmd.Flags())
			if err := applyConfigFlags(cmd.Flags(), cfg.ConfigFile); err != nil {
				return err
			}
			token, err := readToken(o.tokenFile)
			if err != nil {
				return err
			}
			cfg.AuthToken = token
			cfg.NoConsole = !o.ui
			log, err := newLogger(o.logLevel, o.logFormat)
			if err != nil {
				return err
			}
			cfg.Logger = log
			if cfg.Cluster, err = o.cluster.config(); err != nil {
				return err
			}
			if cfg.Cluster != nil {
				// Left at their defaults, these fit the NATS server's
				// max_payload by themselves (server.joinCluster); given,
				// one that does not fit stops the start.
				for name, v := range map[string]*int{"max-frame-bytes": &cfg.MaxFrameBytes, "max-reply-bytes": &cfg.MaxReplyBytes, "max-send-bytes": &cfg.MaxSendBytes} {
					if !cmd.Flags().Changed(name) {
						*v = 0
					}
				}
			}
			// On a copy: the flags keep the values they were given, which
			// a reload compares with (reloadFlags).
			run := cfg
			connectionDefaults(cmd.Flags(), &run, openFileLimit())
			// The serve flags alone (cobra adds --help to cmd's), sharing
			// their values with cmd's.
			running := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			cmd.Flags().VisitAll(func(f *pflag.Flag) {
				if f.Name != "help" {
					running.AddFlag(f)
				}
			})
			var srv *server.Server // set before any reload can run
			run.ReloadFlags = func(_, next *config.File) ([]string, []string, error) {
				return reloadFlags(srv, running, pinned, next.FlagValues())
			}
			srv, err = server.New(run)
			if err != nil {
				return err
			}
			return runUntilSignal(cmd.Context(), srv, log)
		},
	}
	serveFlags(cmd.Flags(), &cfg, &o)
	return cmd
}

// serveFlags defines the serve flags on f, bound to cfg and o, and marks
// the reloadable ones.
func serveFlags(f *pflag.FlagSet, cfg *server.Config, o *serveOptions) {
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", server.DefaultGRPCAddr, "gRPC listen address (port 0 picks a free port)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", server.DefaultHTTPAddr, "REST listen address (empty: no REST gateway)")
	f.StringSliceVar(&cfg.CORSOrigins, "cors-origins", nil, "browser origins allowed to call the REST API, comma-separated (\"*\": any; default: CORS off)")
	f.BoolVar(&o.ui, "ui", true, "serve the web console at the REST address's / (--ui=false: the API only)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", server.DefaultShutdownTimeout, "how long a shutdown may take, whatever is in flight (a second signal exits at once)")
	f.DurationVar(&cfg.MaxDrainTimeout, "max-drain-timeout", server.DefaultMaxDrainTimeout, "longest drain_timeout a StopListener may ask for")
	f.IntVar(&cfg.ReplayBytes, "replay-bytes", server.DefaultReplayBytes, "bytes of recent events kept for since_sequence replay (negative disables)")
	f.IntVar(&cfg.SubscriberQueueBytes, "subscriber-queue-bytes", server.DefaultSubscriberQueueBytes, "bytes queued per subscriber before its slow-consumer policy applies")
	f.IntVar(&cfg.MaxQueuedBytes, "max-queued-bytes", server.DefaultMaxQueuedBytes, "bytes queued for all subscribers together before each one's slow-consumer policy applies (negative: no bound)")
	f.IntVar(&cfg.MaxListeners, "max-listeners", defaultMaxListeners, "most listeners at once (0: no limit)")
	f.IntVar(&cfg.MaxConnections, "max-connections", defaultMaxConnections(openFileLimit(), server.FDReserve),
		fmt.Sprintf("most open connections over all listeners (default: the open-file limit less the control plane's reserve, --max-http-connections plus --max-grpc-connections plus %d; %d when the limit is above 2^24; 0: no limit)", server.FDSlack, unlimitedMaxConnections))
	f.IntVar(&cfg.MaxOutboundConnections, "max-outbound-connections", server.DefaultMaxOutboundConnections, "most managed outbound connections (Connect), each counted from Connect until closed for good, connected or not; each also counts toward --max-connections while it holds a socket (0: no limit)")
	f.IntVar(&cfg.MaxQueueWhileDownBytes, "max-queue-while-down-bytes", server.DefaultMaxQueueWhileDownBytes, "largest queue_while_down_bytes a Connect may ask for: the Sends one outbound connection holds while down")
	f.IntVar(&cfg.MaxConnectionsPerIP, "max-connections-per-ip", 0, "most open connections of one peer IP over all listeners (default: a quarter of --max-connections, loopback peers exempt unless this is set; 0: no limit)")
	f.IntVar(&cfg.MaxHTTPConnections, "max-http-connections", server.DefaultMaxHTTPConnections, "most open REST connections; more are closed at once (0: no limit)")
	f.IntVar(&cfg.MaxGRPCConnections, "max-grpc-connections", server.DefaultMaxGRPCConnections, "most open gRPC connections; more are closed at once (0: no limit)")
	f.IntVar(&cfg.MaxGRPCStreams, "max-grpc-streams", server.DefaultMaxGRPCStreams, "most concurrent calls on one gRPC connection; more wait in the client")
	f.IntVar(&cfg.MaxHealthWatchers, "max-health-watchers", server.DefaultMaxHealthWatchers, "most health Watch streams at once, which need no token (0: no limit)")
	f.DurationVar(&cfg.HTTPIdleTimeout, "http-idle-timeout", server.DefaultHTTPIdleTimeout, "close a kept-alive REST connection with no request this long (negative: never)")
	f.DurationVar(&cfg.HTTPReadTimeout, "http-read-timeout", server.DefaultHTTPReadTimeout, "longest a REST request may take to send its headers (at most 10s) and body (negative: no bound)")
	f.DurationVar(&cfg.GRPCIdleTimeout, "grpc-idle-timeout", server.DefaultGRPCIdleTimeout, "close a gRPC connection with no call this long (negative: never)")
	f.IntVar(&cfg.MaxSubscribers, "max-subscribers", defaultMaxSubscribers, "most Subscribe streams at once (0: no limit)")
	f.IntVar(&cfg.MaxHandlers, "max-handlers", server.DefaultMaxHandlers, "most Handle streams at once; each holds up to its max_in_flight frames")
	f.IntVar(&cfg.MaxSendBytes, "max-send-bytes", server.DefaultMaxSendBytes, "largest Send payload in bytes")
	f.StringVar(&o.tokenFile, "auth-token-file", "", "require the bearer token in this file on every call (or set TCPGATE_AUTH_TOKEN)")
	f.DurationVar(&cfg.SessionTTL, "session-ttl", console.DefaultTTL, "how long a browser session (POST /v1/session with the token) lasts, 1m to 720h")
	f.BoolVar(&cfg.PublicReflection, "public-reflection", false, "leave gRPC reflection open without the token")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate: gRPC and REST speak TLS")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&cfg.ClientCA, "client-ca", "", "PEM CA certificates: clients must present a certificate they signed (mutual TLS)")
	f.StringVar(&cfg.StateFile, "state-file", "", "save everything made through the API to this file, each change before its call returns, and restore it at start (locked: one gateway per file; default: none, nothing outlives the process; not with --cluster, which keeps it in NATS)")
	f.BoolVar(&cfg.StateInlineKeys, "state-inline-keys", false, "save inline TLS private keys (key_pem) in --state-file too; without it a listener or connection with one is saved without it and not restored")
	f.StringVar(&cfg.TLSFilesDir, "tls-files-dir", "", "the directory whose files StartListener and Send may name as cert_file, key_file, ca_file, client_ca_file (default: none, PEM inline only)")
	f.StringVar(&cfg.DebugAddr, "debug-addr", "", "serve net/http/pprof profiles on this loopback address (default: off)")
	f.BoolVar(&cfg.Insecure, "insecure", false, "allow a non-loopback --grpc-addr or --http-addr without a token or mutual TLS")
	f.StringVar(&cfg.AllowListen, "allow-listen", "", "where listeners may bind: HOST[:PORTS] rules, comma-separated (default \"*:1024-65535\")")
	f.StringVar(&cfg.AllowDial, "allow-dial", "", "where Send may connect: HOST|CIDR[:PORTS] rules (default: anywhere but link-local and cloud metadata)")
	f.StringVar(&cfg.DenyDial, "deny-dial", "", "where Send may never connect: HOST|CIDR[:PORTS] rules, checked first")
	f.DurationVar(&cfg.HandlerTimeout, "handler-timeout", server.DefaultHandlerTimeout, "how long a Handle stream has to answer a frame, for a listener or connection whose auto_reply sets no handler_timeout (at most 1h)")
	f.DurationVar(&cfg.WriteTimeout, "write-timeout", server.DefaultWriteTimeout, "how long a write to a connection may block before it is closed")
	f.IntVar(&cfg.MaxWriteBufferBytes, "max-write-buffer-bytes", server.DefaultMaxWriteBufferBytes, "bytes queued for writing over all connections together; past it, reads that would queue more wait")
	f.IntVar(&cfg.MaxFrameBytes, "max-frame-bytes", rpc.MaxFrameLimit, "largest max_frame_bytes (and fixed_size) a framing may ask for; an unset one is 1 MiB or this if smaller (at most 3 MiB)")
	f.IntVar(&cfg.MaxReplyBytes, "max-reply-bytes", rpc.MaxFrameLimit, "largest await_reply.max_bytes a Send may ask for; an unset one is 1 MiB or this if smaller (at most 3 MiB)")
	f.IntVar(&cfg.ListenerMaxConnections, "listener-max-connections", 0, "max_connections of a listener that sets none, and the most one may set (0: no bound of a listener's own)")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "close connections silent this long, on listeners that set no idle_timeout (0: never)")
	f.StringVar(&cfg.ConfigFile, "config", "", "YAML file of listeners, outbound connections and serve: flags, started with the gateway and re-read on SIGHUP (default: none)")
	f.StringVar(&cfg.NodeID, "node-id", rpc.DefaultNodeID(), "this gateway's name in every response header and event stream: 1 to 64 of A-Z a-z 0-9 . _ ~ -")
	clusterFlags(f, cfg, &o.cluster)
	for name := range reloadable {
		f.Lookup(name).Usage += " (reloadable)"
	}
}

// runUntilSignal runs srv until the first SIGINT or SIGTERM, which starts
// its shutdown. A second signal exits at once, with status 128 plus the
// signal's number as a shell reports a process the signal killed: an
// operator who signals twice wants the process gone, not a clean exit.
func runUntilSignal(ctx context.Context, srv *server.Server, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	ran := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(ran)
	wg.Go(func() { reloadOnHUP(ctx, srv, log, hups, ran) })
	wg.Go(func() {
		select {
		case sig := <-sigs:
			log.Info("signal received; shutting down (a second signal exits at once)", "signal", sig.String())
			cancel()
		case <-ran:
			return
		}
		select {
		case sig := <-sigs:
			log.Error("second signal; exiting at once without finishing the shutdown", "signal", sig.String())
			code := 1
			if n, ok := sig.(syscall.Signal); ok {
				code = 128 + int(n)
			}
			os.Exit(code)
		case <-ran:
		}
	})
	return srv.Run(ctx)
}

// reloadOnHUP reloads the config file at every SIGHUP until ran is
// closed, one reload at a time, and logs what it did. A SIGHUP during a
// reload is kept (the channel holds one) and reloads once more after it.
func reloadOnHUP(ctx context.Context, srv *server.Server, log *slog.Logger, hups <-chan os.Signal, ran <-chan struct{}) {
	for {
		select {
		case <-hups:
		case <-ran:
			return
		}
		log.Info("SIGHUP received; reloading the config file")
		resp, err := srv.Reload(ctx)
		if err != nil {
			log.Error("reload failed", "error", err)
			continue
		}
		log.Info("reload done", "file", resp.GetFile(),
			"listeners_added", resp.GetListeners().GetAdded(), "listeners_changed", resp.GetListeners().GetChanged(),
			"listeners_removed", resp.GetListeners().GetRemoved(), "listeners_unchanged", resp.GetListeners().GetUnchanged(),
			"connections_added", resp.GetConnections().GetAdded(), "connections_changed", resp.GetConnections().GetChanged(),
			"connections_removed", resp.GetConnections().GetRemoved(), "connections_unchanged", resp.GetConnections().GetUnchanged(),
			"flags_applied", resp.GetFlagsApplied(), "flags_need_restart", resp.GetFlagsNeedRestart())
	}
}

// applyConfigFlags sets the flags of the config file's serve: section
// that neither the command line nor a TCPGATE_* variable set. A key that
// is not a flag of serve is an error naming its line.
func applyConfigFlags(flags *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	file, err := config.Load(path)
	if err != nil {
		return err
	}
	for _, fl := range file.Serve {
		f := flags.Lookup(fl.Name)
		if f == nil || fl.Name == "config" {
			return &config.Error{File: path, Line: fl.Line, Field: "serve." + fl.Name, Msg: "not a flag of tcpgate serve (see tcpgate serve --help)"}
		}
		if f.Changed {
			continue
		}
		if err := flags.Set(fl.Name, strings.Join(fl.Values, ",")); err != nil {
			return &config.Error{File: path, Line: fl.Line, Field: "serve." + fl.Name, Msg: err.Error()}
		}
	}
	return nil
}

// Limits of `tcpgate serve` unless flags say otherwise.
const (
	// defaultMaxListeners is far more ports than one gateway is meant to
	// serve, yet stops a runaway script before it takes every port.
	defaultMaxListeners = 1024
	// defaultMaxSubscribers bounds the memory of stuck subscribers: each may
	// hold up to --subscriber-queue-bytes of events.
	defaultMaxSubscribers = 256
	// unlimitedMaxConnections is --max-connections when the open-file
	// limit is above 2^24 (LimitNOFILE=infinity): the limit bounds
	// nothing then, and each connection costs memory, so the bound is a
	// number instead.
	unlimitedMaxConnections = 100_000
	// minMaxConnections is the least default --max-connections, however
	// low the open-file limit.
	minMaxConnections = 64
)

// openFileLimit returns the soft open-file limit (which Go raises to the
// hard one at start), or 0 when it cannot be read.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}

// defaultMaxConnections leaves reserve descriptors of the open-file limit
// to the control plane, so that an excess data connection is refused with
// a close reason instead of the control plane running out of descriptors.
// Above 2^24 (or unknown), the limit is no bound: unlimitedMaxConnections.
func defaultMaxConnections(limit uint64, reserve int) int {
	if limit == 0 || limit > 1<<24 {
		return unlimitedMaxConnections
	}
	return max(int(limit)-reserve, minMaxConnections)
}

// connectionDefaults fills in the data plane's defaults that depend on
// other flags: --max-connections leaves the control plane's caps as set
// (not only their defaults), and --max-connections-per-ip is a quarter of
// --max-connections, loopback peers exempt unless it was set.
func connectionDefaults(f *pflag.FlagSet, cfg *server.Config, limit uint64) {
	if !f.Changed("max-connections") && cfg.MaxHTTPConnections > 0 && cfg.MaxGRPCConnections > 0 {
		cfg.MaxConnections = defaultMaxConnections(limit, cfg.MaxHTTPConnections+cfg.MaxGRPCConnections+server.FDSlack)
	}
	if f.Changed("max-connections-per-ip") {
		cfg.PerIPLoopback = true
		return
	}
	cfg.MaxConnectionsPerIP = cfg.MaxConnections / 4
}

// readToken takes the control plane's token from --auth-token-file, or
// else from TCPGATE_AUTH_TOKEN (never from a flag's value, which every user
// of the host could read in the process list).
func readToken(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv("TCPGATE_AUTH_TOKEN")), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--auth-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("--auth-token-file %s is empty", file)
	}
	return token, nil
}

// durationText logs durations as text ("1.5s") in every format: the JSON
// handler would write nanoseconds, a number nobody reads as a duration.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// newLogger builds the daemon's logger. Payload bytes are never logged.
func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: durationText}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}
