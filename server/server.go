package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// Defaults of Config.
const (
	DefaultGRPCAddr = "127.0.0.1:50051"
	// DefaultShutdownTimeout bounds a graceful shutdown: in-flight calls get
	// this long before the gRPC server is stopped hard.
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultReplayBytes bounds the replay ring (see hub.DefaultReplayBytes).
	DefaultReplayBytes = hub.DefaultReplayBytes
	// DefaultSubscriberQueueBytes bounds each subscriber's queue (see hub.DefaultQueueBytes).
	DefaultSubscriberQueueBytes = hub.DefaultQueueBytes
	// DefaultWriteTimeout bounds each write to a connection (see conn.DefaultWriteTimeout).
	DefaultWriteTimeout = conn.DefaultWriteTimeout
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
	// ReplayBytes bounds the replay ring; 0 means hub.DefaultReplayBytes.
	ReplayBytes int
	// SubscriberQueueBytes bounds each subscriber's queue; 0 means hub.DefaultQueueBytes.
	SubscriberQueueBytes int
	// MaxListeners bounds running listeners; 0 means no bound.
	MaxListeners int
	// MaxConnections bounds open connections over all listeners; 0 means no bound.
	MaxConnections int
	// MaxSubscribers bounds open Subscribe streams; 0 means no bound.
	MaxSubscribers int
	// WriteTimeout bounds each write to an accepted connection; 0 means 10 s.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds the graceful part of shutdown; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger receives the gateway's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server is a whole gateway: the engine, the gRPC service and its listener.
type Server struct {
	cfg       Config
	log       *slog.Logger
	hub       *hub.Hub
	listeners *listener.Registry
	grpc      *grpc.Server
	health    *health.Server
	grpcLn    net.Listener

	closeOnce sync.Once
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
	s := &Server{cfg: cfg, log: log}
	s.hub = hub.New(hub.Config{ReplayBytes: cfg.ReplayBytes})
	s.listeners = listener.New(listener.Config{
		Publisher:      s.hub,
		MaxListeners:   cfg.MaxListeners,
		MaxConnections: cfg.MaxConnections,
		WriteTimeout:   cfg.WriteTimeout,
		Logger:         log,
	})
	svc := rpc.New(rpc.Config{
		Listeners:            s.listeners,
		Hub:                  s.hub,
		Dialer:               &dialer.Dialer{},
		SubscriberQueueBytes: cfg.SubscriberQueueBytes,
		MaxSubscribers:       cfg.MaxSubscribers,
		Logger:               log,
	})

	s.grpc = grpc.NewServer(
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.logUnary),
		grpc.ChainStreamInterceptor(s.logStream),
	)
	tcpgatev1.RegisterGatewayServiceServer(s.grpc, svc)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	// Registers both v1 and v1alpha, so old and new grpcurl alike can list
	// and describe the API.
	reflection.Register(s.grpc)

	ln, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		s.listeners.Close()
		s.hub.Close()
		return nil, fmt.Errorf("binding gRPC address %s: %w", cfg.GRPCAddr, err)
	}
	s.grpcLn = ln
	return s, nil
}

// GRPCAddr returns the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// Run serves until ctx is done, then shuts down in order (see doc.go) and
// returns. It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	s.log.Info("gateway serving", "grpc_addr", s.GRPCAddr())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		errc = nil
	}
	s.shutdown()
	if errc != nil {
		if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			serveErr = err
		}
	}
	if serveErr != nil {
		return fmt.Errorf("serving gRPC: %w", serveErr)
	}
	return nil
}

// shutdown runs the shutdown order of doc.go once.
func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		start := time.Now()
		s.log.Info("gateway shutting down", "timeout", s.cfg.ShutdownTimeout)
		s.health.Shutdown()
		// Subscribe streams end with a status now instead of holding
		// GracefulStop until the timer.
		s.hub.Close()
		stopped := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(stopped)
		}()
		timer := time.NewTimer(s.cfg.ShutdownTimeout)
		select {
		case <-stopped:
			timer.Stop()
		case <-timer.C:
			s.log.Warn("graceful stop timed out; closing open calls")
			s.grpc.Stop()
			<-stopped
		}
		s.listeners.Close()
		s.log.Info("gateway stopped", "took", time.Since(start).Round(time.Millisecond))
	})
}

func (s *Server) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if err != nil {
		s.logFailure(info.FullMethod, err, start)
	}
	return resp, err
}

func (s *Server) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	if err != nil {
		s.logFailure(info.FullMethod, err, start)
	}
	return err
}

// logFailure logs one failed call: its code and message, never payloads.
func (s *Server) logFailure(method string, err error, start time.Time) {
	st := status.Convert(err)
	s.log.Info("rpc failed", "method", method, "code", st.Code().String(), "message", st.Message(),
		"duration", time.Since(start).Round(time.Microsecond))
}
