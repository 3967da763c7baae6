package server

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tcpgate/tcpgate/server/rpc"
)

// Defaults of the control plane's own limits: they bound what callers
// without the token can hold (connections, health watchers, streams), and
// together they fit in FDReserve, so the data plane's --max-connections
// default leaves them their descriptors.
const (
	// DefaultMaxHTTPConnections bounds the REST gateway's connections: a
	// REST event stream holds one each (HTTP/1.1), so it is well above the
	// streams one dashboard opens.
	DefaultMaxHTTPConnections = 96
	// DefaultMaxGRPCConnections bounds the gRPC listener's connections:
	// one connection carries every call of a client.
	DefaultMaxGRPCConnections = 96
	// DefaultMaxGRPCStreams bounds the concurrent calls of one gRPC
	// connection (HTTP/2 MAX_CONCURRENT_STREAMS), the number RFC 9113
	// recommends as the least: more wait in the client for a slot.
	DefaultMaxGRPCStreams = 100
	// DefaultMaxHealthWatchers bounds the health Watch streams, which need
	// no token: a load balancer or orchestrator needs a few.
	DefaultMaxHealthWatchers = 64
	// DefaultHTTPIdleTimeout closes a kept-alive REST connection with no
	// request this long.
	DefaultHTTPIdleTimeout = time.Minute
	// DefaultHTTPReadTimeout bounds the reading of one REST request, its
	// headers and body, enough for a --max-send-bytes payload on a slow
	// link.
	DefaultHTTPReadTimeout = 30 * time.Second
	// DefaultGRPCIdleTimeout closes a gRPC connection with no call this
	// long (a client reconnects on its next call).
	DefaultGRPCIdleTimeout = 5 * time.Minute
	// FDReserve is the part of the open-file limit that the default
	// --max-connections leaves to the control plane: its REST and gRPC
	// connections at their defaults, and FDSlack for the rest.
	FDReserve = DefaultMaxHTTPConnections + DefaultMaxGRPCConnections + FDSlack
	// FDSlack is for what the control plane opens besides its clients'
	// connections: its listening sockets, the listeners' sockets, Send's
	// dials, PEM files, the profiling endpoint and the logs.
	FDSlack = 64
)

// httpHeaderTimeout bounds the reading of a REST request's headers, as
// before --http-read-timeout existed (which bounds headers and body).
const httpHeaderTimeout = 10 * time.Second

// grpc keepalive: the server pings a connection silent this long, and
// closes it when the ping is not answered in grpcPingTimeout, so a vanished
// client's streams (a health watch) do not hold their slots for good.
const (
	grpcPingInterval = 2 * time.Minute
	grpcPingTimeout  = 20 * time.Second
)

// grpcStreamWorkers is how many goroutines serve gRPC calls, kept with
// their grown stacks between calls: enough for the 32 concurrent callers
// of `make bench`, a few KiB each when idle.
const grpcStreamWorkers = 64

// limitListener accepts at most max connections at once. One past it is
// closed as soon as accepted, so it costs the gateway no descriptor beyond
// the moment, and the refusal is logged naming flag (once a second at
// most: a flood must not flood the log).
type limitListener struct {
	net.Listener
	slots   chan struct{} // one token per open connection
	max     int
	flag    string
	log     *slog.Logger
	lastLog atomic.Int64 // unix nanoseconds of the last refusal logged
}

func newLimitListener(ln net.Listener, max int, flag string, log *slog.Logger) net.Listener {
	if max <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, slots: make(chan struct{}, max), max: max, flag: flag, log: log}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
		}
		_ = c.Close()
		now := time.Now().UnixNano()
		if last := l.lastLog.Load(); now-last >= int64(time.Second) && l.lastLog.CompareAndSwap(last, now) {
			l.log.Warn("connection refused: "+l.flag+" reached", "limit", l.max, "remote_address", c.RemoteAddr().String())
		}
	}
}

// limitConn gives its slot back once, on its first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// healthService is the standard health service with its Watch streams
// bounded: they need no token, and each holds memory for as long as its
// client likes.
type healthService struct {
	*health.Server
	watchers chan struct{} // one token per Watch stream; nil means no bound
}

func (h *healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if h.watchers != nil {
		select {
		case h.watchers <- struct{}{}:
			defer func() { <-h.watchers }()
		default:
			return rpc.LimitReached("--max-health-watchers", int64(cap(h.watchers)), "watching health: --max-health-watchers (%d) reached; use Check, or close a Watch stream", cap(h.watchers))
		}
	}
	return h.Server.Watch(req, stream)
}

// checkFDReserve warns when the configured limits do not keep the
// control plane's descriptors: data connections up to --max-connections
// plus the REST and gRPC connections at their caps, plus FDSlack, must fit
// in the open-file limit, or else accepted data connections can take the
// descriptors that the control plane needs to accept its own.
func checkFDReserve(cfg Config, log *slog.Logger) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	limit := rl.Cur
	if cfg.MaxConnections <= 0 || cfg.MaxHTTPConnections <= 0 || cfg.MaxGRPCConnections <= 0 {
		log.Warn("file descriptors are not reserved for the control plane: set --max-connections, --max-http-connections and --max-grpc-connections to bound them",
			"open_file_limit", limit, "max_connections", cfg.MaxConnections,
			"max_http_connections", cfg.MaxHTTPConnections, "max_grpc_connections", cfg.MaxGRPCConnections)
		return
	}
	need := uint64(cfg.MaxConnections) + uint64(cfg.MaxHTTPConnections) + uint64(cfg.MaxGRPCConnections) + FDSlack
	if need > limit {
		log.Warn("--max-connections, --max-http-connections and --max-grpc-connections together exceed the open-file limit: data connections may take the control plane's descriptors; lower --max-connections or raise the limit (ulimit -n, LimitNOFILE)",
			"open_file_limit", limit, "needed", need, "max_connections", cfg.MaxConnections,
			"max_http_connections", cfg.MaxHTTPConnections, "max_grpc_connections", cfg.MaxGRPCConnections)
	}
}

// controlDefaults fills in the defaults of the control plane's limits
// and refuses values that mean nothing.
func controlDefaults(cfg *Config) error {
	for _, l := range []struct {
		flag string
		v    int
	}{
		{"--max-http-connections", cfg.MaxHTTPConnections},
		{"--max-grpc-connections", cfg.MaxGRPCConnections},
		{"--max-grpc-streams", cfg.MaxGRPCStreams},
		{"--max-health-watchers", cfg.MaxHealthWatchers},
		{"--max-connections-per-ip", cfg.MaxConnectionsPerIP},
	} {
		if l.v < 0 {
			return fmt.Errorf("%s %d: must not be negative", l.flag, l.v)
		}
	}
	if cfg.MaxGRPCStreams == 0 {
		cfg.MaxGRPCStreams = DefaultMaxGRPCStreams
	}
	if cfg.MaxGRPCStreams > math.MaxUint32 {
		return fmt.Errorf("--max-grpc-streams %d: must be at most %d", cfg.MaxGRPCStreams, uint64(math.MaxUint32))
	}
	if cfg.HTTPIdleTimeout == 0 {
		cfg.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if cfg.HTTPReadTimeout == 0 {
		cfg.HTTPReadTimeout = DefaultHTTPReadTimeout
	}
	if cfg.GRPCIdleTimeout == 0 {
		cfg.GRPCIdleTimeout = DefaultGRPCIdleTimeout
	}
	return nil
}
