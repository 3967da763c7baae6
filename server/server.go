package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tcpgate/tcpgate/gateway"
	"github.com/tcpgate/tcpgate/gateway/console"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/config"
	"github.com/tcpgate/tcpgate/server/internal/cluster"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
	"github.com/tcpgate/tcpgate/server/internal/policy"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/state"
)

// The hub publishes a connection's sent data without waiting when it can:
// this keeps the fast path from going away unnoticed.
var _ conn.TryPublisher = (*hub.Hub)(nil)

// Defaults of Config.
const (
	DefaultGRPCAddr = "127.0.0.1:50051"
	// DefaultHTTPAddr is the REST gateway's address of `tcpgate serve`.
	DefaultHTTPAddr = "127.0.0.1:50080"
	// DefaultShutdownTimeout bounds a whole shutdown: in-flight calls get
	// most of it before the gRPC server is stopped hard (see doc.go).
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultReplayBytes bounds the replay ring (see hub.DefaultReplayBytes).
	DefaultReplayBytes = hub.DefaultReplayBytes
	// DefaultSubscriberQueueBytes bounds each subscriber's queue (see hub.DefaultQueueBytes).
	DefaultSubscriberQueueBytes = hub.DefaultQueueBytes
	// DefaultMaxQueuedBytes bounds all subscriber queues together (see hub.DefaultMaxQueuedBytes).
	DefaultMaxQueuedBytes = hub.DefaultMaxQueuedBytes
	// DefaultWriteTimeout bounds each write to a connection (see conn.DefaultWriteTimeout).
	DefaultWriteTimeout = conn.DefaultWriteTimeout
	// DefaultMaxSendBytes bounds a Send payload (see rpc.DefaultMaxSendBytes).
	DefaultMaxSendBytes = rpc.DefaultMaxSendBytes
	// DefaultMaxDrainTimeout bounds StopListener's drain_timeout (see
	// listener.DefaultMaxDrainTimeout).
	DefaultMaxDrainTimeout = listener.DefaultMaxDrainTimeout
	// DefaultMaxWriteBufferBytes bounds all connections' queued writes
	// together (see registry.DefaultMaxWriteBufferBytes).
	DefaultMaxWriteBufferBytes = registry.DefaultMaxWriteBufferBytes
	// DefaultMaxOutboundConnections bounds the managed outbound
	// connections of `tcpgate serve`: each holds a supervisor goroutine
	// and, while connected, a socket, so a few thousand cost little, but a
	// client looping on Connect must not exhaust the descriptors that
	// accepted connections need.
	DefaultMaxOutboundConnections = 1024
	// DefaultMaxHandlers bounds the Handle streams (see
	// handler.DefaultMaxStreams): each holds up to its max_in_flight
	// frames in memory.
	DefaultMaxHandlers = handler.DefaultMaxStreams
	// DefaultHandlerTimeout is --handler-timeout's default: how long a
	// Handle stream has to answer a frame.
	DefaultHandlerTimeout = conn.DefaultHandlerTimeout
	// DefaultMaxQueueWhileDownBytes bounds one Connect's
	// queue_while_down_bytes (see outbound.DefaultMaxQueueWhileDownBytes).
	DefaultMaxQueueWhileDownBytes = outbound.DefaultMaxQueueWhileDownBytes
)

// gRPC transport sizes, chosen for streaming throughput: a window of 1 MiB
// per stream and 4 MiB per connection lets a Subscribe stream keep a
// loopback or LAN link full without waiting for window updates.
const (
	streamWindow = 1 << 20
	connWindow   = 4 << 20
)

// Config configures a Server. The zero value serves gRPC on DefaultGRPCAddr.
type Config struct {
	// GRPCAddr is the control plane's address; empty means DefaultGRPCAddr.
	// Port 0 picks a free port; GRPCAddr() tells which.
	GRPCAddr string
	// HTTPAddr is the REST gateway's address; empty means no REST gateway.
	// Port 0 picks a free port; HTTPAddr() tells which.
	HTTPAddr string
	// CORSOrigins are the browser origins allowed to call the REST gateway;
	// empty means CORS is off.
	CORSOrigins []string
	// NoConsole turns the web console off; false serves it at the REST
	// gateway's / (serve --ui).
	NoConsole bool
	// ReplayBytes bounds the replay ring; 0 means hub.DefaultReplayBytes.
	ReplayBytes int
	// SubscriberQueueBytes bounds each subscriber's queue; 0 means hub.DefaultQueueBytes.
	SubscriberQueueBytes int
	// MaxQueuedBytes bounds all subscriber queues together; 0 means
	// DefaultMaxQueuedBytes, a negative value no bound.
	MaxQueuedBytes int
	// MaxListeners bounds running listeners; 0 means no bound.
	MaxListeners int
	// MaxConnections bounds open connections over all listeners, and the
	// sockets of outbound connections; 0 means no bound.
	MaxConnections int
	// MaxOutboundConnections bounds the managed outbound connections, each
	// from Connect until closed for good; 0 means no bound.
	MaxOutboundConnections int
	// MaxQueueWhileDownBytes bounds a Connect's queue_while_down_bytes; 0
	// means DefaultMaxQueueWhileDownBytes.
	MaxQueueWhileDownBytes int
	// HandlerTimeout is how long a Handle stream has to answer a frame,
	// for a listener or connection that sets no handler_timeout; 0 means
	// 5 s (conn.DefaultHandlerTimeout).
	HandlerTimeout time.Duration
	// DialResolver resolves the names that Send and outbound connections
	// dial; nil means the system's resolver. For tests that need a name
	// to resolve to loopback, or to change what it resolves to.
	DialResolver policy.Resolver
	// MaxSubscribers bounds open Subscribe streams; 0 means no bound.
	MaxSubscribers int
	// MaxHandlers bounds open Handle streams; 0 means
	// handler.DefaultMaxStreams.
	MaxHandlers int
	// MaxConnectionsPerIP bounds one peer IP's open connections over all
	// listeners; 0 means no bound.
	MaxConnectionsPerIP int
	// PerIPLoopback applies MaxConnectionsPerIP to loopback peers too;
	// false exempts them (benchmarks, local tools).
	PerIPLoopback bool

	// The control plane's own limits, which callers without the token
	// meet too (see limits.go for the defaults of `tcpgate serve`).

	// MaxHTTPConnections bounds the REST gateway's open connections; 0
	// means no bound.
	MaxHTTPConnections int
	// MaxGRPCConnections bounds the gRPC listener's open connections; 0
	// means no bound.
	MaxGRPCConnections int
	// MaxGRPCStreams bounds the concurrent calls of one gRPC connection;
	// 0 means DefaultMaxGRPCStreams.
	MaxGRPCStreams int
	// MaxHealthWatchers bounds the health Watch streams; 0 means no bound.
	MaxHealthWatchers int
	// HTTPIdleTimeout closes a kept-alive REST connection idle this long; 0
	// means DefaultHTTPIdleTimeout, a negative value never.
	HTTPIdleTimeout time.Duration
	// HTTPReadTimeout bounds the reading of a REST request, headers and
	// body; 0 means DefaultHTTPReadTimeout, a negative value no bound.
	HTTPReadTimeout time.Duration
	// GRPCIdleTimeout closes a gRPC connection with no call this long; 0
	// means DefaultGRPCIdleTimeout, a negative value never.
	GRPCIdleTimeout time.Duration
	// MaxSendBytes bounds a Send payload; 0 means DefaultMaxSendBytes.
	MaxSendBytes int
	// MaxFrameBytes bounds a framing's max_frame_bytes and fixed_size; 0
	// means rpc.MaxFrameLimit (3 MiB), also the most it may be. An unset
	// max_frame_bytes is 1 MiB or this, whichever is smaller.
	MaxFrameBytes int
	// MaxReplyBytes bounds Send's await_reply.max_bytes; 0 means
	// rpc.MaxFrameLimit (3 MiB), also the most it may be. An unset max_bytes
	// is 1 MiB or this, whichever is smaller.
	MaxReplyBytes int
	// ListenerMaxConnections is the max_connections of a listener that
	// sets none, and the most one may set; 0 means no bound of a listener's
	// own (MaxConnections still holds).
	ListenerMaxConnections int
	// IdleTimeout closes connections silent this long on listeners that set
	// no idle_timeout of their own; 0 means never.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to an accepted connection; 0 means 10 s.
	WriteTimeout time.Duration
	// MaxWriteBufferBytes bounds the bytes queued for writing over every
	// accepted connection together; 0 means DefaultMaxWriteBufferBytes.
	MaxWriteBufferBytes int
	// ShutdownTimeout bounds the whole shutdown, whatever is in flight; 0
	// means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// MaxDrainTimeout bounds StopListener's drain_timeout; 0 means
	// DefaultMaxDrainTimeout.
	MaxDrainTimeout time.Duration
	// NodeID names this gateway in every ResponseHeader and event stream
	// (--node-id); empty means the host name (rpc.DefaultNodeID).
	NodeID string
	// Logger receives the gateway's logs; nil means slog.Default().
	Logger *slog.Logger
	// NodeHost is the host a listener binds when its request names none
	// (--node-host); empty means 0.0.0.0.
	NodeHost string
	// Cluster, when set, makes the gateway a node of a cluster on NATS
	// JetStream (--cluster); nil runs it alone, as by default.
	Cluster *ClusterConfig

	// AuthToken, when set, is required as "authorization: Bearer TOKEN" on
	// every gRPC call and REST request except health checks.
	AuthToken string
	// SessionTTL is how long a browser session, which the REST gateway's
	// POST /v1/session gives for the token, lasts; 0 means
	// console.DefaultTTL. Without AuthToken there are no sessions.
	SessionTTL time.Duration
	// PublicReflection leaves gRPC reflection open without the token.
	PublicReflection bool
	// TLSCert and TLSKey are PEM files; set, both gRPC and REST speak TLS.
	TLSCert, TLSKey string
	// ClientCA is a PEM file of CAs; set, gRPC and REST clients must present
	// a certificate one of them signed (mutual TLS). Needs TLSCert.
	ClientCA string
	// Insecure allows a non-loopback control-plane address without a token
	// or mutual TLS.
	Insecure bool
	// DebugAddr, when set, serves net/http/pprof there (loopback only,
	// unless Insecure). Empty means no profiling endpoint.
	DebugAddr string
	// TLSFilesDir is the one directory whose files the API may name as
	// cert_file, key_file, ca_file and client_ca_file (and saved state,
	// which API callers wrote): regular files inside it, after symlinks,
	// of at most 1 MiB. Empty means paths are refused and PEM is given
	// inline. See package pemfile.
	TLSFilesDir string
	// StateFile, when set, is where everything made through the API is
	// saved (--state-file): each change before its call returns, group
	// committed, and restored at the next start with the same ids. The
	// file is locked: a second gateway on it refuses to start. Empty means
	// nothing outlives the process.
	StateFile string
	// StateInlineKeys saves inline TLS private keys (key_pem) in the state
	// file; false leaves them out, and a listener or connection saved
	// without its key is not restored.
	StateInlineKeys bool
	// AllowListen, AllowDial and DenyDial are rule lists (see package
	// policy) deciding what listeners may bind and what Send may dial. Empty
	// means the defaults: listeners on any host above port 1023; dials
	// anywhere but link-local and cloud metadata addresses.
	AllowListen, AllowDial, DenyDial string

	// ConfigFile is the config file (serve --config): its listeners and
	// outbound connections start with the gateway, as SOURCE_CONFIG, and
	// Reload (or SIGHUP) applies its changes. Empty means none: Reload is
	// refused with NO_CONFIG.
	ConfigFile string
	// ReloadFlags applies the reloadable flags of a reloaded file's serve:
	// section and lists those that need a restart; nil reports every
	// changed flag as needing a restart.
	ReloadFlags config.FlagsFunc
}

// Server is a whole gateway: the engine, the gRPC service and its listener.
type Server struct {
	cfg       Config
	log       *slog.Logger
	hub       *hub.Hub
	cluster   *cluster.Cluster   // nil in a single gateway
	built     chan struct{}      // closed once New has made everything, in a cluster
	conns     *registry.Registry // every live connection
	listeners *listener.Registry
	dialer    *dialer.Dialer
	outbound  *outbound.Manager
	handlers  *handler.Manager
	grpc      *grpc.Server
	health    *health.Server
	grpcLn    net.Listener
	tls       *tls.Config // the control plane's, nil without TLSCert
	// cert is the control plane's certificate that tls serves, replaced
	// by Reconfigure; nil without TLSCert.
	cert atomic.Pointer[tls.Certificate]

	// clusterHandlers serves Handle streams across the cluster; nil in a
	// single gateway.
	clusterHandlers *cluster.Handlers

	// reconf serializes Reconfigure, and guards live.
	reconf    sync.Mutex
	live      Reloadable // the reloadable settings in force
	grpcTLSLn net.Listener
	auth      *rpc.Auth         // nil without AuthToken
	sessions  *console.Sessions // the REST gateway's; nil without AuthToken or HTTPAddr
	internal  *bufconn.Listener // the REST gateway's way to gRPC
	debugSrv  *http.Server      // nil without DebugAddr
	debugLn   net.Listener
	rest      *gateway.Gateway // nil without HTTPAddr
	httpSrv   *http.Server
	httpLn    net.Listener
	metrics   *prometheus.Registry
	rpcs      *rpcMetrics
	inflight  *inflight

	closeOnce sync.Once

	svc        *rpc.Service
	grpcConns  *rpc.ConnTracker // the gRPC listener's connections
	eventsOnce sync.Once
	events     *rpc.EventSource // the REST event stream's; made by Events

	handlesOnce sync.Once
	handleSrc   *rpc.HandleSource // the Handle WebSocket's; made by Handles

	declared      *config.Declared // nil without ConfigFile
	state         gatewayState     // the API-made objects; saved with StateFile, or in the cluster
	restoreReport []string
}

// gatewayState is where the API-made objects are kept: a state.State
// (in memory, or with --state-file), or in a cluster its state bucket
// (state.Cluster). Restore makes them again at start.
type gatewayState interface {
	rpc.State
	Restore(ctx context.Context, r state.Restorer, declared func(kind, id string) bool) state.Report
	Close() error
}

// New builds a gateway and binds its gRPC address, so GRPCAddr is known
// before Run.
func New(cfg Config) (*Server, error) {
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = DefaultGRPCAddr
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	sendSet := cfg.MaxSendBytes > 0
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = DefaultMaxSendBytes
	}
	if cfg.MaxDrainTimeout < 0 {
		return nil, fmt.Errorf("--max-drain-timeout %s: must not be negative (0 means %s)", cfg.MaxDrainTimeout, DefaultMaxDrainTimeout)
	}
	if cfg.MaxWriteBufferBytes < 0 {
		return nil, fmt.Errorf("--max-write-buffer-bytes %d: must be positive, or 0 for %d", cfg.MaxWriteBufferBytes, DefaultMaxWriteBufferBytes)
	}
	if cfg.HandlerTimeout < 0 || cfg.HandlerTimeout > listener.MaxHandlerTimeout {
		return nil, fmt.Errorf("--handler-timeout %s: must be 0 (5 s) to %s", cfg.HandlerTimeout, listener.MaxHandlerTimeout)
	}
	if cfg.MaxOutboundConnections < 0 {
		return nil, fmt.Errorf("--max-outbound-connections %d: must not be negative (0 means no limit)", cfg.MaxOutboundConnections)
	}
	if cfg.MaxQueueWhileDownBytes < 0 {
		return nil, fmt.Errorf("--max-queue-while-down-bytes %d: must be positive, or 0 for %d", cfg.MaxQueueWhileDownBytes, DefaultMaxQueueWhileDownBytes)
	}
	if err := rpc.CheckNodeID(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("--node-id: %w", err)
	}
	// Defaulted here, so that the engine (which stamps it on every
	// listener, connection and event) and the API agree.
	if cfg.NodeID == "" {
		cfg.NodeID = rpc.DefaultNodeID()
	}
	if err := console.CheckTTL(cfg.SessionTTL); err != nil {
		return nil, err
	}
	if err := checkExposure(cfg); err != nil {
		return nil, err
	}
	if err := controlDefaults(&cfg); err != nil {
		return nil, err
	}
	checkFDReserve(cfg, log)
	for _, l := range []struct {
		flag string
		v    int
	}{{"--max-frame-bytes", cfg.MaxFrameBytes}, {"--max-reply-bytes", cfg.MaxReplyBytes}} {
		if l.v < 0 || l.v > rpc.MaxFrameLimit {
			return nil, fmt.Errorf("%s %d: must be 1 to %d (a frame or reply must fit one gRPC message), or 0 for %d", l.flag, l.v, rpc.MaxFrameLimit, rpc.MaxFrameLimit)
		}
	}
	warnCleartextToken(cfg, log)
	s := &Server{cfg: cfg, log: log, inflight: newInflight(), live: reloadableOf(cfg)}
	tlsCfg, err := serverTLS(cfg, &s.cert)
	if err != nil {
		return nil, err
	}
	s.tls = tlsCfg
	pol, err := newPolicy(cfg)
	if err != nil {
		return nil, err
	}
	tlsFiles, err := pemfile.New(cfg.TLSFilesDir)
	if err != nil {
		return nil, fmt.Errorf("--tls-files-dir: %w", err)
	}
	var file *config.File
	if cfg.ConfigFile != "" {
		// Read and decoded before anything binds: a file that does not
		// load stops the daemon naming its line.
		if file, err = config.Load(cfg.ConfigFile); err != nil {
			return nil, err
		}
	}
	// The state file first: a second gateway on it stops here, before it
	// binds anything.
	if cfg.StateFile != "" && cfg.Cluster != nil {
		return nil, errors.New("--state-file: not with --cluster: a cluster keeps what the API made in its own key-value bucket (TCPGATE_<NAME>_STATE on NATS), which every node restores its share of; drop --state-file")
	}
	if cfg.StateFile != "" {
		if s.state, err = state.Open(cfg.StateFile, cfg.StateInlineKeys, log); err != nil {
			return nil, fmt.Errorf("--state-file: %w", err)
		}
	} else if cfg.Cluster == nil {
		s.state = state.New(log)
	}
	built := false
	defer func() {
		if !built {
			if s.state != nil {
				s.state.Close()
			}
			if s.cluster != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = s.cluster.Close(ctx)
				cancel()
			}
		}
	}()
	if cfg.Cluster != nil {
		// Its connections are made below; by the time the cluster could
		// call this, they are there.
		s.built = make(chan struct{})
		selfLost := func() {
			select {
			case <-s.built:
			default:
				return // nothing is connected before New returns
			}
			if n := s.conns.CloseSockets(event.ReasonNodeLost); n > 0 {
				log.Warn("connections closed: the cluster reported them closed when it declared this node lost", "connections", n)
			}
		}
		if s.cluster, err = joinCluster(&cfg, sendSet, log, selfLost); err != nil {
			return nil, err
		}
		s.cfg = cfg // with the limits fitted to the cluster
		s.state = state.NewCluster(s.cluster.State(), s.cluster, cfg.NodeID, cfg.StateInlineKeys, log)
	}
	var auth *rpc.Auth
	if cfg.AuthToken != "" {
		auth = rpc.NewAuth(cfg.AuthToken, cfg.PublicReflection)
		s.auth = auth
	}
	hc := hub.Config{ReplayBytes: cfg.ReplayBytes, MaxQueuedBytes: cfg.MaxQueuedBytes, MaxSubscribers: cfg.MaxSubscribers, Node: cfg.NodeID}
	if s.cluster != nil {
		// The node's hub holds the cluster's stream: numbered by it,
		// named by it, and read back from it past the ring.
		hc.External, hc.Incarnation, hc.StartSequence, hc.Archive = true, s.cluster.Incarnation(), s.cluster.StartSequence(), s.cluster.Archive()
	}
	s.hub = hub.New(hc)
	// Decided by the connection registry, which counts every connection
	// together, whoever opened it.
	// The handler manager looks up listeners and connections through
	// targets, filled in below: the registries take it as their
	// connections' Handler when they are made.
	targets := &handlerTargets{}
	hm := newHandlerMetrics()
	s.handlers = handler.New(handler.Config{
		Listeners:  targets,
		Conns:      targets,
		MaxStreams: cfg.MaxHandlers,
		Metrics:    handler.Metrics{Latency: hm.observe},
	})
	hm.m = s.handlers
	if s.cluster != nil {
		if s.clusterHandlers, err = s.cluster.Handlers(s.handlers, cfg.MaxHandlers); err != nil {
			return nil, fmt.Errorf("--cluster: %w", err)
		}
	}
	s.conns = registry.New(registry.Config{
		Node:                cfg.NodeID,
		Handler:             s.handlers,
		MaxConnections:      cfg.MaxConnections,
		MaxOutbound:         cfg.MaxOutboundConnections,
		MaxConnectionsPerIP: cfg.MaxConnectionsPerIP,
		PerIPLoopback:       cfg.PerIPLoopback,
		MaxWriteBufferBytes: cfg.MaxWriteBufferBytes,
	})
	// The dialer resolves and checks every address it dials itself.
	s.dialer = &dialer.Dialer{Policy: pol}
	s.listeners = listener.New(listener.Config{
		Publisher: s.publisher(),
		Conns:     s.conns,
		// Decided by the listener registry, so that every way of starting
		// a listener takes the same path: the listen policy, the port
		// chosen under it.
		Policy:       pol,
		MaxListeners: cfg.MaxListeners,
		// A listener's defaults and bounds, decided by the registry for
		// the same reason.
		ListenerMaxConnections: cfg.ListenerMaxConnections,
		IdleTimeout:            cfg.IdleTimeout,
		WriteTimeout:           cfg.WriteTimeout,
		HandlerTimeout:         cfg.HandlerTimeout,
		// Decided by the registry, so every way of stopping a listener
		// meets the same bound.
		MaxDrainTimeout: cfg.MaxDrainTimeout,
		Logger:          log,
		Node:            cfg.NodeID,
		// Forwarding listeners dial their targets through it, so the dial
		// policy holds for every connection they relay.
		Dialer: s.dialer,
	})
	// Decided by the outbound manager: its defaults, bounds and backoff,
	// whatever the way a connection is asked for.
	s.outbound = outbound.New(outbound.Config{
		Conns:                  s.conns,
		Dialer:                 s.dialer,
		Publisher:              s.publisher(),
		MaxQueueWhileDownBytes: cfg.MaxQueueWhileDownBytes,
		MaxSendBytes:           cfg.MaxSendBytes,
		WriteTimeout:           cfg.WriteTimeout,
		HandlerTimeout:         cfg.HandlerTimeout,
	})
	targets.listeners, targets.conns = s.listeners, s.conns
	s.rpcs = newRPCMetrics()
	s.metrics = newMetrics(s.hub, s.listeners, s.conns, s.dialer, s.outbound, s.rpcs)
	s.metrics.MustRegister(hm)
	if s.cluster != nil {
		s.metrics.MustRegister(clusterMetrics(s.cluster)...)
	}
	s.grpcConns = rpc.NewConnTracker()
	var peers rpc.Peers // a nil *cluster.Cluster would not be a nil Peers
	if s.cluster != nil {
		peers = s.cluster
	}
	svc := rpc.New(rpc.Config{
		Peers:                peers,
		NodeHost:             cfg.NodeHost,
		Conns:                s.grpcConns,
		Listeners:            s.listeners,
		Connections:          s.conns,
		Outbound:             s.outbound,
		Hub:                  s.hub,
		Dialer:               s.dialer,
		Handlers:             s.handlersFor(),
		State:                s.state,
		SubscriberQueueBytes: cfg.SubscriberQueueBytes,
		MaxFrameBytes:        cfg.MaxFrameBytes,
		MaxReplyBytes:        cfg.MaxReplyBytes,
		MaxSendBytes:         cfg.MaxSendBytes,
		TLSFiles:             tlsFiles,
		NodeID:               cfg.NodeID,
		Logger:               log,
		ConfigFile:           cfg.ConfigFile,
		Reloader:             s.reloader(),
	})

	unary := []grpc.UnaryServerInterceptor{s.unaryInterceptor, rpc.UnaryReasons}
	stream := []grpc.StreamServerInterceptor{s.streamInterceptor, rpc.StreamReasons}
	if auth != nil {
		// After the metrics and log interceptors, so refused calls are
		// counted and logged (never with the token).
		unary = append(unary, auth.Unary)
		stream = append(stream, auth.Stream)
	}
	// After authentication: a request that did not decode is the caller's
	// InvalidArgument, answered before any method runs.
	unary = append(unary, rpc.Decoded)
	stream = append(stream, rpc.DecodedStream)
	s.grpc = grpc.NewServer(
		// Calls run on a pool of goroutines whose stacks have grown to
		// what a call needs, instead of a new goroutine per call whose
		// stack is copied larger several times over (grpc-go's default):
		// in `make bench`'s reqresp32, a Send with its reply to a kept
		// connection, about a tenth of the gateway's calls/s. When every
		// worker is busy (a long Subscribe holds one), a call gets a new
		// goroutine as before.
		grpc.NumStreamWorkers(grpcStreamWorkers),
		// Room for the largest payload and the request around it, so an
		// oversized Send gets tcpgate's message naming max_send_bytes.
		grpc.MaxRecvMsgSize(cfg.MaxSendBytes+64<<10),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ForceServerCodecV2(rpc.Codec{}), // protobuf; encodes Subscribe's batches itself
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Callers without the token can open connections and streams:
		// each connection carries at most MaxGRPCStreams calls, goes after
		// GRPCIdleTimeout without one, and after a ping it does not answer.
		grpc.MaxConcurrentStreams(uint32(cfg.MaxGRPCStreams)),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: max(cfg.GRPCIdleTimeout, 0), // 0: never
			Time:              grpcPingInterval,
			Timeout:           grpcPingTimeout,
		}),
		// A connection that has not finished its TLS handshake and HTTP/2
		// preface in this time is closed (grpc-go's default is 120 s), as
		// REST gives a request's headers httpHeaderTimeout: a slot of
		// --max-grpc-connections is not held by a client that sends nothing.
		grpc.ConnectionTimeout(httpHeaderTimeout),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	)
	tcpgatev1.RegisterGatewayServiceServer(s.grpc, svc)
	s.svc = svc
	if s.cluster != nil {
		err := s.cluster.Feed(s.hub)
		if err == nil {
			err = s.cluster.Serve(svc.ServePeer)
		}
		if err != nil {
			s.grpc.Stop()
			s.listeners.Close()
			s.hub.Close()
			return nil, fmt.Errorf("--cluster: %w", err)
		}
	}
	s.health = health.NewServer()
	hs := &healthService{Server: s.health}
	if cfg.MaxHealthWatchers > 0 {
		hs.watchers = make(chan struct{}, cfg.MaxHealthWatchers)
	}
	healthpb.RegisterHealthServer(s.grpc, hs)
	// Reflection from descriptors with their comments (reflection.go).
	if err := registerReflection(s.grpc); err != nil {
		s.grpc.Stop() // its stream workers
		s.listeners.Close()
		s.hub.Close()
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		s.grpc.Stop() // its stream workers
		s.listeners.Close()
		s.hub.Close()
		return nil, fmt.Errorf("binding gRPC address %s: %w", cfg.GRPCAddr, err)
	}
	// Bounded, so the gRPC connections stay within the descriptors kept
	// for the control plane (see checkFDReserve).
	ln = newLimitListener(ln, cfg.MaxGRPCConnections, "--max-grpc-connections", log)
	// Every gRPC connection is recorded, so that a Subscribe stream whose
	// client does not read can be ended (see rpc.ConnTracker).
	ln = s.grpcConns.Listener(ln)
	s.grpcLn = ln
	if tlsCfg != nil {
		// TLS at the listener, so the REST gateway's in-memory connection
		// (below) stays plain; gRPC clients need ALPN "h2".
		c := tlsCfg.Clone()
		c.NextProtos = []string{"h2"}
		s.grpcTLSLn = tls.NewListener(ln, c)
	}

	if cfg.HTTPAddr != "" {
		if err := s.newREST(); err != nil {
			ln.Close()
			s.grpc.Stop()
			s.listeners.Close()
			s.hub.Close()
			return nil, err
		}
	}
	if cfg.DebugAddr != "" {
		if err := s.newDebug(); err != nil {
			ln.Close()
			if s.httpLn != nil {
				s.httpLn.Close()
				s.rest.Close()
			}
			s.grpc.Stop()
			s.listeners.Close()
			s.hub.Close()
			return nil, err
		}
	}
	if file != nil {
		// Changed listeners take UpdateListener's path where it can.
		s.declared = config.New(file, svc, config.Options{Update: svc.UpdateDeclaredListener, Flags: cfg.ReloadFlags, Logger: log})
		// Every declared object is checked, then all start, or none.
		if err := s.declared.Start(context.Background()); err != nil {
			s.unbind(ln)
			return nil, err
		}
	}
	if s.cluster != nil {
		if err := s.startLeases(); err != nil {
			s.unbind(ln)
			return nil, err
		}
	}
	built = true
	if s.built != nil {
		close(s.built)
	}
	// Last, once everything is bound: what the state file holds comes
	// back through the API's own path; what the config file declares
	// keeps the config's (the config wins).
	rep := s.state.Restore(context.Background(), s.svc, s.declaredID)
	s.restoreReport = rep.Lines
	return s, nil
}

// unbind undoes what New bound and started once everything was bound,
// when a last step of New fails.
func (s *Server) unbind(ln net.Listener) {
	ln.Close()
	if s.httpLn != nil {
		s.httpLn.Close()
		s.rest.Close()
	}
	if s.debugLn != nil {
		s.debugLn.Close()
	}
	s.grpc.Stop()
	s.outbound.Close()
	s.listeners.Close()
	s.hub.Close()
}

// reloader is the Reload RPC's: nil without a config file.
func (s *Server) reloader() rpc.Reloader {
	if s.cfg.ConfigFile == "" {
		return nil
	}
	return serverReloader{s}
}

type serverReloader struct{ s *Server }

func (r serverReloader) Reload(ctx context.Context) (*tcpgatev1.ReloadResponse, error) {
	return r.s.Reload(ctx)
}

// Reload re-reads the config file and applies the difference, as the
// Reload RPC does (SIGHUP in the daemon). It returns an error wrapping
// rpc.ErrNoConfig without a config file, and one wrapping
// rpc.ErrConfigInvalid, with nothing changed, for a file that does not
// load.
func (s *Server) Reload(ctx context.Context) (*tcpgatev1.ReloadResponse, error) {
	if s.declared == nil {
		return nil, fmt.Errorf("reloading: %w", rpc.ErrNoConfig)
	}
	return s.declared.Reload(ctx)
}

// declaredID reports whether the config file declares the object of
// kind ("listener" or "connection") and id: the state file's restore
// skips those (the config wins).
func (s *Server) declaredID(kind, id string) bool {
	return s.declared != nil && s.declared.Declares(kind, id)
}

// RestoreReport is what the start's restore from the state file could not
// bring back as it was, one line each; empty when everything came back.
func (s *Server) RestoreReport() []string { return s.restoreReport }

func (s *Server) newREST() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("binding HTTP address %s: %w", s.cfg.HTTPAddr, err)
	}
	// Bounded, so the REST connections stay within the descriptors kept
	// for the control plane (see checkFDReserve).
	ln = newLimitListener(ln, s.cfg.MaxHTTPConnections, "--max-http-connections", s.log)
	// The REST gateway reaches the gRPC server over an in-memory
	// connection: a real gRPC client, behind the HTTP side's own TLS and
	// token checks, that no one else can dial. The event stream does not
	// go through it: REST clients are hub subscribers of their own
	// (Events), so no gRPC stream buffers what they have not read.
	s.internal = bufconn.Listen(internalBuffer)
	gcfg := gateway.Config{
		Dial:         func(ctx context.Context) (net.Conn, error) { return s.internal.DialContext(ctx) },
		Events:       s.Events(),
		Handle:       s.Handles(),
		CORSOrigins:  s.cfg.CORSOrigins,
		Metrics:      promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{}),
		Logger:       s.log,
		LoopbackOnly: isLoopback(s.cfg.HTTPAddr),
		Refused:      s.rpcs.refuse,
		TLS:          s.tls != nil,
		MaxSendBytes: s.cfg.MaxSendBytes,
	}
	if s.auth != nil {
		gcfg.Auth = s.auth
		sessions, err := console.NewSessions(console.Config{Token: s.cfg.AuthToken, TTL: s.cfg.SessionTTL})
		if err != nil {
			ln.Close()
			return err
		}
		gcfg.Sessions = sessions
		s.sessions = sessions
	}
	if !s.cfg.NoConsole {
		ui, err := console.New()
		if err != nil {
			ln.Close()
			return fmt.Errorf("loading the web console: %w", err)
		}
		gcfg.Console = ui
	}
	rest, err := gateway.New(gcfg)
	if err != nil {
		ln.Close()
		return err
	}
	s.rest, s.httpLn = rest, ln
	headerTimeout := httpHeaderTimeout
	if s.cfg.HTTPReadTimeout > 0 {
		headerTimeout = min(headerTimeout, s.cfg.HTTPReadTimeout)
	}
	s.httpSrv = &http.Server{
		Handler:           rest,
		ReadHeaderTimeout: headerTimeout,
		// Bounds the request's headers and body only: net/http lifts the
		// deadline once the body is read, so a handler that runs long (an
		// event stream, a StopListener drain) is not cut.
		ReadTimeout: max(s.cfg.HTTPReadTimeout, 0), // 0: no bound
		// Kept-alive connections go when idle, a 401's included, so that
		// callers without the token cannot hold connections for good.
		IdleTimeout: s.cfg.HTTPIdleTimeout,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if s.tls != nil {
		c := s.tls.Clone()
		c.NextProtos = []string{"h2", "http/1.1"}
		s.httpSrv.TLSConfig = c
	}
	return nil
}

// Events returns the source of the REST event stream: REST clients are hub
// subscribers of their own, validated as Subscribe validates, and counted
// in tcpgate_grpc_calls_total as Subscribe calls. A REST gateway of
// another process's making (tests) takes it as gateway.Config.Events.
func (s *Server) Events() *rpc.EventSource {
	s.eventsOnce.Do(func() {
		s.events = rpc.NewEventSource(s.svc, func(err error, start time.Time) {
			s.rpcs.observe(subscribeMethod, err, start)
		})
	})
	return s.events
}

// Handles returns the source of the Handle WebSocket: its streams are
// served as Handle calls are, and counted in tcpgate_grpc_calls_total as
// Handle calls. A REST gateway of another process's making (tests) takes
// it as gateway.Config.Handle.
func (s *Server) Handles() *rpc.HandleSource {
	s.handlesOnce.Do(func() {
		s.handleSrc = rpc.NewHandleSource(s.svc, func(err error, start time.Time) {
			s.rpcs.observe(handleMethod, err, start)
		})
	})
	return s.handleSrc
}

// handleMethod names Handle WebSocket streams in the call metrics.
const handleMethod = "/tcpgate.v1.GatewayService/Handle"

// subscribeMethod names REST event streams in the call metrics.
const subscribeMethod = "/tcpgate.v1.GatewayService/Subscribe"

// GRPCAddr returns the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// HTTPAddr returns the bound REST address, or "" without one.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Run serves until ctx is done, then shuts down in order (see doc.go) and
// returns. It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	grpcErr := make(chan error, 1)
	grpcLn := s.grpcLn
	if s.grpcTLSLn != nil {
		grpcLn = s.grpcTLSLn
	}
	go func() { grpcErr <- s.grpc.Serve(grpcLn) }()
	internalErr := make(chan error, 1)
	if s.internal != nil {
		go func() { internalErr <- s.grpc.Serve(s.internal) }()
	} else {
		internalErr <- nil
	}
	httpErr := make(chan error, 1)
	if s.httpSrv != nil {
		go func() {
			if s.tls != nil {
				httpErr <- s.httpSrv.ServeTLS(s.httpLn, "", "")
				return
			}
			httpErr <- s.httpSrv.Serve(s.httpLn)
		}()
		s.log.Info("gateway serving", "grpc_addr", s.GRPCAddr(), "http_addr", s.HTTPAddr())
	} else {
		s.log.Info("gateway serving", "grpc_addr", s.GRPCAddr())
	}

	debugErr := make(chan error, 1)
	if s.debugSrv != nil {
		go func() { debugErr <- s.debugSrv.Serve(s.debugLn) }()
		s.log.Info("profiling served", "debug_addr", s.DebugAddr())
	}

	var failed error
	select {
	case <-ctx.Done():
	case err := <-grpcErr:
		failed = fmt.Errorf("serving gRPC: %w", err)
		grpcErr <- err
	case err := <-httpErr:
		failed = fmt.Errorf("serving HTTP: %w", err)
		httpErr <- err
	}
	if err := s.shutdown(); err != nil {
		// Something ignored every cancellation; its goroutines are left to
		// the process's exit rather than holding it past the deadline
		// (grpc's Serve returns only once every handler has).
		return err
	}
	if err := <-grpcErr; failed == nil && err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		failed = fmt.Errorf("serving gRPC: %w", err)
	}
	<-internalErr
	if s.httpSrv != nil {
		if err := <-httpErr; failed == nil && !errors.Is(err, http.ErrServerClosed) {
			failed = fmt.Errorf("serving HTTP: %w", err)
		}
	}
	return failed
}

// Shutdown timing (see doc.go).
const (
	// hardStopShare is the part of the shutdown timeout kept for the hard
	// stop after the graceful part, at most maxHardStop: closing sockets
	// and cancelling calls takes milliseconds, but a -race build on a
	// loaded machine needs some room.
	hardStopShare = 4
	maxHardStop   = time.Second
	// waitLogInterval is how often a shutdown logs what it still waits for.
	waitLogInterval = time.Second
)

// shutdown runs the shutdown order of doc.go once, within
// cfg.ShutdownTimeout whatever is in flight. It returns an error when
// something was still running at the deadline and was left behind.
func (s *Server) shutdown() error {
	var err error
	s.closeOnce.Do(func() { err = s.shutdownOnce() })
	return err
}

func (s *Server) shutdownOnce() error {
	start := time.Now()
	timeout := s.cfg.ShutdownTimeout
	s.log.Info("gateway shutting down", "timeout", timeout)
	// One deadline for every step: the timeout bounds the whole shutdown,
	// not each step.
	deadline := start.Add(timeout)
	graceful := deadline.Add(-min(timeout/hardStopShare, maxHardStop))

	// The data plane first: no new client connects, and drains in progress
	// are cut, which also ends the StopListener calls waiting on them.
	s.listeners.StopAccepting()
	s.health.Shutdown()
	// Every Subscribe stream, gRPC or REST, ends with a status now instead
	// of holding the graceful stop until the timer.
	s.hub.CloseNow()
	// Handle streams too; their connections' frames get the fallback.
	if s.clusterHandlers != nil {
		s.clusterHandlers.Close()
	}
	s.handlers.Close()
	restClean := true
	if s.httpSrv != nil {
		// Event streams end first (Shutdown does not end running
		// handlers), then the server waits for other calls to finish,
		// which still need the gateway's gRPC connection.
		s.rest.EndStreams()
		ctx, cancel := context.WithDeadline(context.Background(), graceful)
		restDone := make(chan struct{})
		go func() {
			if err := s.httpSrv.Shutdown(ctx); err != nil {
				restClean = false
			}
			close(restDone)
		}()
		s.await("REST requests to finish", restDone, graceful)
		<-restDone // Shutdown returns once ctx ends
		cancel()
		s.rest.Close()
	}
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()

	var hard chan struct{}
	if !s.await("gRPC calls to finish", stopped, graceful) || !restClean {
		s.log.Warn("graceful stop timed out; cancelling open calls and closing connections")
		// Stop cancels every call's context. In a goroutine: it waits for
		// GracefulStop's lock, which a call that ignores cancellation
		// holds for good.
		hard = make(chan struct{})
		go func() {
			s.grpc.Stop()
			close(hard)
		}()
	}
	engine := make(chan struct{})
	go func() {
		// Outbound connections close with SHUTDOWN and are not dialed
		// again, alongside the listeners' connections.
		var wg sync.WaitGroup
		wg.Go(s.outbound.Close)
		s.listeners.Close()
		s.dialer.Close()
		wg.Wait()
		close(engine)
	}()
	clean := s.await("connections to close", engine, deadline)
	clean = s.await("gRPC calls to end", stopped, deadline) && clean
	if hard != nil {
		clean = s.await("the gRPC server to stop", hard, deadline) && clean
	}
	if s.httpSrv != nil {
		// Last, so that REST calls the hard stop cancelled had the time
		// to answer with their error.
		s.httpSrv.Close()
	}
	if s.debugSrv != nil {
		s.debugSrv.Close()
	}
	if s.cluster != nil {
		// After the connections closed: their SHUTDOWN events are
		// stored before the node leaves, as far as the deadline allows.
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		if err := s.cluster.Close(ctx); err != nil {
			s.log.Error("leaving the cluster", "error", err)
			clean = false
		}
		cancel()
	}
	// Only API calls change the state file: nothing above wrote to it.
	// Closing releases its lock for the next start.
	if err := s.state.Close(); err != nil {
		s.log.Error("closing the state file", "error", err)
	}
	if !clean {
		calls, open := s.inflight.describe()
		s.log.Error("shutdown timed out; exiting with calls still running", "took", time.Since(start).Round(time.Millisecond),
			"calls", calls, "open", open, "connections", s.conns.Stats().ConnectionsOpen)
		return fmt.Errorf("shutting down: still running after --shutdown-timeout (%s): calls %d [%s], connections %d",
			timeout, calls, strings.Join(open, ", "), s.conns.Stats().ConnectionsOpen)
	}
	s.log.Info("gateway stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// await waits until done is closed or until passes, and reports whether
// done was closed. While it waits, it logs what the shutdown waits for
// every waitLogInterval.
func (s *Server) await(what string, done <-chan struct{}, until time.Time) bool {
	select {
	case <-done: // even when until has passed
		return true
	default:
	}
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	tick := time.NewTicker(waitLogInterval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return true
		case <-timer.C:
			return false
		case <-tick.C:
			calls, open := s.inflight.describe()
			s.log.Info("shutdown waiting", "for", what, "left", time.Until(until).Round(100*time.Millisecond),
				"calls", calls, "open", open, "connections", s.conns.Stats().ConnectionsOpen, "listeners", s.listeners.Stats().Listeners)
		}
	}
}

// logFailure logs one failed call: its code and message, never payloads.
// A call its client canceled (a Ctrl-C ending a stream) is what the client
// asked for, not a failure: it is logged at debug level.
func (s *Server) logFailure(ctx context.Context, method string, err error, start time.Time) {
	st := status.Convert(err)
	level := slog.LevelInfo
	if st.Code() == codes.Canceled && errors.Is(ctx.Err(), context.Canceled) {
		level = slog.LevelDebug
	}
	s.log.Log(ctx, level, "rpc failed", "method", method, "code", st.Code().String(), "message", st.Message(),
		"duration", time.Since(start).Round(time.Microsecond))
}

// handlerTargets is how the handler manager looks up listeners and
// outbound connections, over the registries.
type handlerTargets struct {
	listeners *listener.Registry
	conns     *registry.Registry
}

func (t *handlerTargets) Running(id string) bool {
	info, err := t.listeners.Get(id)
	return err == nil && info.State == listener.Listening
}

func (t *handlerTargets) ManagedExists(id string) bool {
	info, err := t.conns.GetConn(id)
	return err == nil && info.Origin == registry.Outbound
}

func (t *handlerTargets) Send(ctx context.Context, id string, p []byte, framed bool, aw conn.Await) ([]byte, int, error) {
	return t.conns.Send(ctx, id, p, framed, aw)
}

func (t *handlerTargets) Conn(id string) (*conn.Conn, error) { return t.conns.Conn(id) }
