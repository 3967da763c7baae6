// Package natstest runs a real NATS server with JetStream inside a test
// process, on a loopback port of its own, for the cluster's tests.
package natstest

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is a NATS server with JetStream, stored in a temporary
// directory of the test.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// Options changes a server's options before it starts (limits, auth).
type Options func(*server.Options)

// Start starts a server on 127.0.0.1 and a free port; the test's cleanup
// stops it.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	s := &Server{t: t, opts: server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
		// The test's server name, so that a restart is the same server.
		ServerName: "natstest",
	}}
	for _, o := range opts {
		o(&s.opts)
	}
	s.start()
	// A restart keeps the port, so that clients reconnect to it.
	_, port, _ := net.SplitHostPort(s.srv.Addr().String())
	s.opts.Port, _ = strconv.Atoi(port)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		s.t.Fatal("natstest: the NATS server did not become ready in 30s")
	}
	s.srv = srv
}

// URL is the server's client URL: nats://127.0.0.1:PORT.
func (s *Server) URL() string {
	return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port)
}

// Stop shuts the server down and waits until it has; it is idempotent.
func (s *Server) Stop() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart stops the server and starts it again on the same port with the
// same store: what JetStream stored is still there.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}
