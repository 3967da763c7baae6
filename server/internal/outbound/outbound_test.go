package outbound_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/placement"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// recorder is a Publisher that keeps every event.
type recorder struct {
	mu  sync.Mutex
	evs []*event.Event
}

func (r *recorder) Publish(_ context.Context, evs ...*event.Event) error {
	r.mu.Lock()
	r.evs = append(r.evs, evs...)
	r.mu.Unlock()
	return nil
}

func (r *recorder) closed() []*event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*event.Event
	for _, e := range r.evs {
		if e.Kind == event.ConnectionClosed {
			out = append(out, e)
		}
	}
	return out
}

func newManager(t *testing.T) (*outbound.Manager, *registry.Registry, *recorder) {
	t.Helper()
	reg := registry.New(registry.Config{})
	rec := &recorder{}
	m := outbound.New(outbound.Config{Conns: reg, Dialer: &dialer.Dialer{}, Publisher: rec})
	t.Cleanup(m.Close)
	return m, reg, rec
}

// server accepts and holds connections until the test ends.
func server(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func refused(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func raw(t *testing.T) framing.Config {
	c, err := framing.Config{MaxFrameBytes: 1 << 20}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The delay of attempt n is within [d/2, d] for d = min(initial·2^(n-1),
// max), and reaches both ends of it.
func TestDelay(t *testing.T) {
	r := outbound.Reconnect{Initial: 100 * time.Millisecond, Max: 30 * time.Second}
	for n := uint32(1); n <= 40; n++ {
		d := min(r.Initial<<min(n-1, 20), r.Max)
		lo := r.Delay(n, func(int64) int64 { return 0 })
		hi := r.Delay(n, func(k int64) int64 { return k - 1 })
		if lo != d/2 || hi != d {
			t.Errorf("attempt %d: delays [%s, %s], want [%s, %s]", n, lo, hi, d/2, d)
		}
	}
}

// The engine's defaults and bounds, each refusal naming its field.
func TestSpecChecks(t *testing.T) {
	m, _, _ := newManager(t)
	addr := refused(t)
	tests := []struct {
		name  string
		spec  outbound.Spec
		field string
	}{
		{"backoff below the floor", outbound.Spec{Reconnect: outbound.Reconnect{Initial: 5 * time.Millisecond}}, "reconnect.initial_backoff"},
		{"max below initial", outbound.Spec{Reconnect: outbound.Reconnect{Initial: time.Second, Max: 500 * time.Millisecond}}, "reconnect.max_backoff"},
		{"heartbeat without interval", outbound.Spec{Heartbeat: &outbound.Heartbeat{Exchange: outbound.Exchange{Payload: []byte("p")}}}, "heartbeat.interval"},
		{"empty on_connect", outbound.Spec{OnConnect: &outbound.Exchange{PayloadField: "text"}}, "on_connect.text"},
		{"on_connect timeout without expect", outbound.Spec{OnConnect: &outbound.Exchange{Payload: []byte("p"), Timeout: time.Second}}, "on_connect.timeout"},
		{"on_connect over the send bound", outbound.Spec{OnConnect: &outbound.Exchange{Payload: make([]byte, 5<<20), PayloadField: "data"}}, "on_connect.data"},
		{"user timeout over an hour", outbound.Spec{UserTimeout: 2 * time.Hour}, "tcp_user_timeout"},
		{"queue over the bound", outbound.Spec{QueueBytes: outbound.DefaultMaxQueueWhileDownBytes + 1}, "queue_while_down_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.spec.Address, tt.spec.Framing = addr, raw(t)
			_, err := m.Connect(context.Background(), tt.spec)
			var fe *page.FieldError
			var le *limits.FieldError
			var field string
			switch {
			case errors.As(err, &fe):
				field = fe.Field
			case errors.As(err, &le):
				field = le.Field
			}
			if !errors.Is(err, outbound.ErrInvalidSpec) || field != tt.field {
				t.Fatalf("Connect: %v, want ErrInvalidSpec naming %s", err, tt.field)
			}
		})
	}
}

// Close (shutdown) closes every managed connection with SHUTDOWN: a
// connected one's socket, and a waiting one with a CONNECTION_CLOSED of
// its own; none is left in the registry, and Connect is refused after.
func TestCloseShutsDown(t *testing.T) {
	m, reg, rec := newManager(t)
	up, err := m.Connect(context.Background(), outbound.Spec{ID: "up", Address: server(t), Framing: raw(t)})
	if err != nil || up.State != registry.Open {
		t.Fatalf("Connect = %+v, %v; want Open", up, err)
	}
	down, err := m.Connect(context.Background(), outbound.Spec{ID: "down", Address: refused(t), Framing: raw(t), Reconnect: outbound.Reconnect{Initial: time.Hour, Max: time.Hour}})
	if err != nil || down.State != registry.Waiting {
		t.Fatalf("Connect = %+v, %v; want Waiting", down, err)
	}
	m.Close()
	got := map[string]event.CloseReason{}
	for _, e := range rec.closed() {
		got[e.ConnectionID] = e.CloseReason
		if e.Origin != event.Outbound {
			t.Errorf("closed event %+v, want origin outbound", e)
		}
	}
	if got["up"] != event.ReasonShutdown || got["down"] != event.ReasonShutdown || len(got) != 2 {
		t.Fatalf("closed events %v, want up and down closed with SHUTDOWN", got)
	}
	if st := reg.Stats(); st.ConnectionsOpen != 0 || len(st.Outbound) != 0 {
		t.Fatalf("registry after Close: %+v, want nothing", st)
	}
	if _, err := m.Connect(context.Background(), outbound.Spec{Address: refused(t), Framing: raw(t)}); !errors.Is(err, outbound.ErrClosed) {
		t.Fatalf("Connect after Close: %v, want ErrClosed", err)
	}
}

// With reconnect disabled, a refused first attempt is Connect's error and
// leaves nothing: not listed, no event.
func TestNoReconnectLeavesNothing(t *testing.T) {
	m, reg, rec := newManager(t)
	_, err := m.Connect(context.Background(), outbound.Spec{ID: "x", Address: refused(t), Framing: raw(t), Reconnect: outbound.Reconnect{Disabled: true}})
	if !errors.Is(err, dialer.ErrRefused) {
		t.Fatalf("Connect: %v, want ErrRefused", err)
	}
	if _, err := reg.GetConn("x"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("GetConn after a failed Connect: %v, want ErrNotFound", err)
	}
	rec.mu.Lock()
	n := len(rec.evs)
	rec.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d events published, want none", n)
	}
}

// A single gateway runs outbound connections on its own node only:
// Connect of another node is refused before anything is listed, naming
// the node and the field; its own node, or none, is the connection's
// node, reported on it.
func TestConnectNode(t *testing.T) {
	reg := registry.New(registry.Config{Node: "a"})
	m := outbound.New(outbound.Config{Conns: reg, Dialer: &dialer.Dialer{}, Publisher: &recorder{}})
	t.Cleanup(m.Close)
	addr := server(t)

	_, err := m.Connect(context.Background(), outbound.Spec{Address: addr, Framing: raw(t), Node: "elsewhere"})
	var ne *placement.NodeError
	if !errors.Is(err, placement.ErrUnknownNode) || !errors.As(err, &ne) || ne.Node != "elsewhere" || ne.Field != "node_id" {
		t.Fatalf("Connect of node elsewhere: %v, want ErrUnknownNode naming node elsewhere and field node_id", err)
	}
	if p, err := reg.ListConns(registry.Filter{}, 0, 0); err != nil || len(p.Conns) != 0 {
		t.Fatalf("ListConns after the refused Connect = %+v, %v; want none", p, err)
	}
	for _, node := range []string{"", "a"} {
		info, err := m.Connect(context.Background(), outbound.Spec{Address: addr, Framing: raw(t), Node: node, TakeOver: true})
		if err != nil {
			t.Fatalf("Connect of node %q: %v", node, err)
		}
		if info.Node != "a" {
			t.Errorf("Connect of node %q: Node %q, want a", node, info.Node)
		}
	}
}
