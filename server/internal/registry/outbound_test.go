package registry_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	ob "github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// managed starts an outbound.Manager over f's registry, closed when the
// test ends.
func (f *fixture) managed() *ob.Manager {
	m := ob.New(ob.Config{Conns: f.r, Dialer: &dialer.Dialer{}, Publisher: f.rec})
	f.t.Cleanup(m.Close)
	return m
}

func (f *fixture) spec(id, addr string) ob.Spec {
	fc, err := framing.Config{}.Normalize()
	if err != nil {
		f.t.Fatal(err)
	}
	return ob.Spec{ID: id, Address: addr, Framing: fc, Reconnect: ob.Reconnect{Initial: time.Hour, Max: time.Hour}}
}

func refusedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A managed outbound connection is one entry: its id is in the one id
// space (an accepted connection's id is ErrExists, as is its own), it is
// listed while it has no socket (Waiting, filtered by the address it
// dials), it counts toward MaxOutbound from the start, and toward
// MaxConnections only while it holds a socket.
func TestOutboundEntries(t *testing.T) {
	f := newFixture(t, registry.Config{MaxConnections: 2, MaxOutbound: 2})
	m := f.managed()
	ctx := context.Background()
	g := f.r.AddGroup("l", 0)
	acc := f.mustAdd(accepted(g, "l"))
	if _, err := m.Connect(ctx, f.spec(acc.ID(), refusedAddr(t))); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Connect with an accepted connection's id: %v, want ErrExists", err)
	}
	down := refusedAddr(t)
	w, err := m.Connect(ctx, f.spec("w", down))
	if err != nil || w.State != registry.Waiting || w.Origin != registry.Outbound || w.Address != down || w.NextAttemptAt.IsZero() || w.Attempts != 1 {
		t.Fatalf("Connect to a refused address = %+v, %v; want Waiting after 1 attempt, with its next", w, err)
	}
	if _, err := m.Connect(ctx, f.spec("w", down)); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Connect with an outbound connection's id: %v, want ErrExists", err)
	}
	p, err := f.r.ListConns(registry.Filter{RemotePrefix: down, State: registry.Waiting}, 0, 0)
	if err != nil || len(p.Conns) != 1 || p.Conns[0].ID != "w" {
		t.Fatalf("ListConns by the address dialed = %+v, %v; want w", p.Conns, err)
	}
	// Two sockets of MaxConnections: the accepted one, and one outbound.
	srv, err := net.Listen("tcp", "127.0.0.1:0") // its backlog takes the dial
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	up, err := m.Connect(ctx, f.spec("up", srv.Addr().String()))
	if err != nil || up.State != registry.Open || up.Generation != 1 {
		t.Fatalf("Connect = %+v, %v; want Open, generation 1", up, err)
	}
	var lim *limits.Error
	if _, err := f.add(accepted(g, "l")); !errors.As(err, &lim) || lim.Flag != "--max-connections" {
		t.Fatalf("a third socket: %v, want --max-connections reached", err)
	}
	if _, err := m.Connect(ctx, f.spec("third", down)); !errors.As(err, &lim) || lim.Flag != "--max-outbound-connections" {
		t.Fatalf("a third outbound connection: %v, want --max-outbound-connections reached", err)
	}
	if st := f.r.Stats(); st.ConnectionsOpen != 2 || st.Outbound[registry.Waiting] != 1 || st.Outbound[registry.Open] != 1 {
		t.Fatalf("Stats = %+v, want 2 sockets, one outbound Open and one Waiting", st)
	}
	final, err := f.r.CloseConn(ctx, "w")
	if err != nil || final.State != registry.Closed {
		t.Fatalf("CloseConn of a waiting connection = %+v, %v; want Closed", final, err)
	}
	if _, err := f.r.GetConn("w"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetConn after CloseConn: %v, want ErrNotFound", err)
	}
	if _, err := m.Connect(ctx, f.spec("w2", down)); err != nil {
		t.Fatalf("Connect once w left: %v", err)
	}
}
