// Package servertest is the harness that tests of the daemon share: a
// whole gateway on 127.0.0.1:0 with a real gRPC client and a REST client
// (Start), a subscription that collects events (Gateway.Subscribe), a
// REST event stream read as NDJSON lines or SSE blocks (REST.OpenEvents),
// a listener (Gateway.StartListener), an outbound connection
// (Gateway.Connect), TCP peers and clients (Peer, Dial, DialFrom, Clients,
// ReadN, RefusedAddr), a line server that restarts on its port, to keep
// outbound connections to (LineServer), what a gRPC error says (ErrorOf),
// polling (Eventually), log sinks (LogSink), a seeded random source (Rand)
// and the table of bad inputs that the gRPC and REST tests both run
// (BadInputs). It is imported by tests only, and imports
// no test-only package of the repository.
package servertest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
)

// Gateway is a running gateway and a client connected to it.
type Gateway struct {
	Server *server.Server
	// Conn is a gRPC client connection to the gateway.
	Conn *grpc.ClientConn
	// Client is the GatewayService client on Conn.
	Client tcpgatev1.GatewayServiceClient
	// BaseURL is the REST gateway's root ("http://127.0.0.1:PORT"), set when
	// Config.HTTPAddr was.
	BaseURL string
	// REST is a client of the REST gateway, set when Config.HTTPAddr was.
	REST *REST

	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	stopErr  error
}

// Start runs a gateway with cfg on 127.0.0.1:0 (unless cfg.GRPCAddr says
// otherwise; set cfg.HTTPAddr to "127.0.0.1:0" for the REST gateway
// too) and stops it when the test ends, failing the test if the shutdown
// was not clean. Logs are discarded unless cfg.Logger is set.
func Start(t testing.TB, cfg server.Config) *Gateway {
	t.Helper()
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("starting gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{Server: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- srv.Run(ctx) }()

	cc, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		<-g.done
		t.Fatalf("dialing gateway: %v", err)
	}
	g.Conn = cc
	if addr := srv.HTTPAddr(); addr != "" {
		g.BaseURL = "http://" + addr
		g.REST = NewREST(t, g.BaseURL)
	}
	g.Client = tcpgatev1.NewGatewayServiceClient(cc)
	t.Cleanup(func() {
		if err := g.Stop(); err != nil {
			t.Errorf("stopping gateway: %v", err)
		}
	})
	return g
}

// Stop shuts the gateway down as SIGTERM would and closes the client. It
// returns Run's error, and may be called more than once.
func (g *Gateway) Stop() error {
	g.stopOnce.Do(func() {
		g.cancel()
		select {
		case g.stopErr = <-g.done:
		case <-time.After(30 * time.Second):
			g.stopErr = errors.New("gateway did not stop within 30s")
		}
		if err := g.Conn.Close(); err != nil && g.stopErr == nil {
			g.stopErr = err
		}
	})
	return g.stopErr
}

// ClientConn is a gRPC client connection, without TLS, to a gateway at
// addr that the test did not start with Start (a daemon run as a
// process); the test's end closes it.
func ClientConn(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialing gateway %s: %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Client is a GatewayService client on ClientConn(t, addr).
func Client(t testing.TB, addr string) tcpgatev1.GatewayServiceClient {
	t.Helper()
	return tcpgatev1.NewGatewayServiceClient(ClientConn(t, addr))
}
