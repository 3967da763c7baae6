package registry_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

// testTimeout bounds every wait of these tests, so a bug fails instead of
// hanging.
const testTimeout = 10 * time.Second

// fixture is a registry and the sockets it serves: each connection it adds
// is one end of a real loopback TCP connection, served until the test
// ends.
type fixture struct {
	t   *testing.T
	r   *registry.Registry
	rec *record.Recorder
	ln  net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	all []*conn.Conn
	// clients are the peers' ends, by the id of the gateway's end.
	clients map[string]net.Conn
}

func newFixture(t *testing.T, cfg registry.Config) *fixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, r: registry.New(cfg), rec: record.New(), ln: ln, clients: make(map[string]net.Conn)}
	t.Cleanup(func() {
		f.mu.Lock()
		all := f.all
		f.mu.Unlock()
		for _, c := range all {
			c.Close(event.ReasonShutdown)
		}
		f.wg.Wait()
		_ = ln.Close()
		for _, c := range f.clients {
			_ = c.Close()
		}
	})
	return f
}

// add connects a client and adds the gateway's end with s, serving it;
// it returns the connection and the registry's error.
func (f *fixture) add(s registry.Spec) (*conn.Conn, error) {
	f.t.Helper()
	client, err := net.DialTimeout("tcp", f.ln.Addr().String(), testTimeout)
	if err != nil {
		f.t.Fatal(err)
	}
	nc, err := f.ln.Accept()
	if err != nil {
		f.t.Fatal(err)
	}
	fc, err := framing.Config{}.Normalize()
	if err != nil {
		f.t.Fatal(err)
	}
	s.Conn.Framing = fc
	s.Conn.Publisher = f.rec
	c, err := f.r.Add(context.Background(), nc, s)
	if err != nil {
		c.Close(event.ReasonLimitReached)
	}
	f.mu.Lock()
	f.all = append(f.all, c)
	f.clients[c.ID()] = client
	f.mu.Unlock()
	f.wg.Go(c.Serve)
	return c, err
}

// mustAdd is add for a connection the registry must admit.
func (f *fixture) mustAdd(s registry.Spec) *conn.Conn {
	f.t.Helper()
	c, err := f.add(s)
	if err != nil {
		f.t.Fatalf("Add(%+v): %v", s, err)
	}
	return c
}

// closeConn closes c by its API and waits until the registry forgot it.
func (f *fixture) closeConn(c *conn.Conn) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := f.r.CloseConn(ctx, c.ID()); err != nil {
		f.t.Fatalf("CloseConn(%s): %v", c.ID(), err)
	}
	if _, err := f.r.Conn(c.ID()); !errors.Is(err, registry.ErrNotFound) {
		f.t.Fatalf("Conn(%s) after CloseConn = %v, want ErrNotFound", c.ID(), err)
	}
}

func accepted(g *registry.Group, listenerID string) registry.Spec {
	return registry.Spec{Origin: registry.Accepted, Group: g, Conn: conn.Config{ListenerID: listenerID}}
}

var outbound = registry.Spec{Origin: registry.Outbound}

// TestIDs: the registry names every connection it adds, accepted or
// outbound, with an id of the connection namespace that no other live
// connection has, and finds each by it.
func TestIDs(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	const n = 100
	seen := make(map[string]bool, n)
	for i := range n {
		s := accepted(g, "l1")
		if i%2 == 1 {
			s = outbound
		}
		c := f.mustAdd(s)
		id := c.ID()
		if !strings.HasPrefix(id, "c-") {
			t.Fatalf("id %q is not a connection id (c-...)", id)
		}
		if seen[id] {
			t.Fatalf("id %q given twice", id)
		}
		seen[id] = true
		if got, err := f.r.Conn(id); err != nil || got != c {
			t.Fatalf("Conn(%q) = %p, %v; want the connection added", id, got, err)
		}
	}
	if st := f.r.Stats(); st.ConnectionsOpen != n {
		t.Errorf("ConnectionsOpen = %d, want %d", st.ConnectionsOpen, n)
	}
	for _, lookup := range []func() error{
		func() error { _, err := f.r.Conn("c-nope"); return err },
		func() error { _, err := f.r.GetConn("c-nope"); return err },
		func() error { _, err := f.r.CloseConn(context.Background(), "c-nope"); return err },
	} {
		if err := lookup(); !errors.Is(err, registry.ErrNotFound) || !strings.Contains(err.Error(), "c-nope") {
			t.Errorf("a lookup of an unknown id = %v, want ErrNotFound naming it", err)
		}
	}
}

// TestOrigin: an entry records who opened its connection; the listener's
// connections are the only ones of its group.
func TestOrigin(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	in := f.mustAdd(accepted(g, "l1"))
	out := f.mustAdd(outbound)

	for c, want := range map[*conn.Conn]registry.Info{
		in:  {ListenerID: "l1", Origin: registry.Accepted, State: registry.Open},
		out: {ListenerID: "", Origin: registry.Outbound, State: registry.Open},
	} {
		got, err := f.r.GetConn(c.ID())
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != c.ID() || got.ListenerID != want.ListenerID || got.Origin != want.Origin || got.State != want.State ||
			got.RemoteAddr != c.RemoteAddr() || got.OpenedAt.IsZero() {
			t.Errorf("GetConn(%s) = %+v, want %+v", c.ID(), got, want)
		}
	}
	all, err := f.r.Conns("")
	if err != nil || len(all) != 2 || all[0].ID != in.ID() || all[1].ID != out.ID() {
		t.Fatalf("Conns() = %+v, %v; want the accepted then the outbound connection", all, err)
	}
	of, err := f.r.Conns("l1")
	if err != nil || len(of) != 1 || of[0].ID != in.ID() {
		t.Errorf("Conns(l1) = %+v, %v; want only the accepted connection", of, err)
	}
	if g.Open() != 1 {
		t.Errorf("the group counts %d connections, want 1", g.Open())
	}

	// A draining listener's connections are Draining; others are not.
	f.r.DrainGroup(g)
	for c, want := range map[*conn.Conn]registry.State{in: registry.Draining, out: registry.Open} {
		if got, _ := f.r.GetConn(c.ID()); got.State != want {
			t.Errorf("after DrainGroup, %s is %v, want %v", c.ID(), got.State, want)
		}
	}
	f.closeConn(in)
	if g.Open() != 0 {
		t.Errorf("the group counts %d connections after its only one closed, want 0", g.Open())
	}
	f.r.RemoveGroup(g)
	for name, call := range map[string]func() error{
		"Conns":     func() error { _, err := f.r.Conns("l1"); return err },
		"Broadcast": func() error { _, _, err := f.r.Broadcast(context.Background(), "l1", []byte("x")); return err },
	} {
		if err := call(); !errors.Is(err, registry.ErrListenerNotFound) || !strings.Contains(err.Error(), `"l1"`) {
			t.Errorf("%s of a removed listener = %v, want ErrListenerNotFound naming it", name, err)
		}
	}
}

// TestPaging: pages walk the connections in creation order, whatever
// closes between them, never repeating one; filters and bad sizes are
// refused as before the registry was its own package.
func TestPaging(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	var conns []*conn.Conn
	for i := range 25 {
		s := accepted(g, "l1")
		if i%5 == 4 {
			s = outbound
		}
		conns = append(conns, f.mustAdd(s))
	}
	var ids []string
	var after uint64
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("more than 10 pages of 25 connections, 4 a page")
		}
		p, err := f.r.ListConns(registry.Filter{}, 4, after)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range p.Conns {
			ids = append(ids, c.ID)
		}
		if pages == 1 {
			// Close one already listed and one not yet reached.
			f.closeConn(conns[0])
			f.closeConn(conns[20])
		}
		if !p.More {
			break
		}
		after = p.Last
	}
	var want []string
	for i, c := range conns {
		if i != 20 {
			want = append(want, c.ID())
		}
	}
	if !slices.Equal(ids, want) {
		t.Errorf("paged ids:\n%v\nwant, in creation order, without the one closed ahead of the pages:\n%v", ids, want)
	}

	// The listener's filter skips the outbound connections.
	p, err := f.r.ListConns(registry.Filter{ListenerID: "l1"}, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Conns) != 18 || p.More {
		t.Errorf("ListConns(l1) = %d connections, more %v; want the 18 accepted still open", len(p.Conns), p.More)
	}
	for _, c := range p.Conns {
		if c.Origin != registry.Accepted {
			t.Errorf("ListConns(l1) lists %s of origin %v", c.ID, c.Origin)
		}
	}
	if _, err := f.r.ListConns(registry.Filter{}, -1, 0); !errors.Is(err, page.ErrInvalidSize) {
		t.Errorf("size -1: %v, want page.ErrInvalidSize", err)
	}
	long := registry.Filter{RemotePrefix: strings.Repeat("1", registry.MaxRemotePrefixBytes+1)}
	if _, err := f.r.ListConns(long, 0, 0); !errors.Is(err, registry.ErrInvalidFilter) {
		t.Errorf("a prefix of %d bytes: %v, want ErrInvalidFilter", registry.MaxRemotePrefixBytes+1, err)
	}
	if _, err := f.r.ListConns(registry.Filter{ListenerID: "nope"}, 0, 0); !errors.Is(err, registry.ErrListenerNotFound) {
		t.Errorf("an unknown listener: %v, want ErrListenerNotFound", err)
	}
}

// TestLimits: --max-connections counts every connection, whatever its
// origin; a listener's max_connections counts its own; the per-IP bound
// counts accepted connections only. A refused connection takes no slot
// and is not listed.
func TestLimits(t *testing.T) {
	f := newFixture(t, registry.Config{MaxConnections: 3, MaxConnectionsPerIP: 1, PerIPLoopback: true})
	g := f.r.AddGroup("l1", 0)
	small := f.r.AddGroup("l2", 1)

	in := f.mustAdd(accepted(g, "l1"))
	// The peer IP's one slot is taken: the next accepted one is refused,
	// an outbound one to the same IP is not.
	refused, err := f.add(accepted(small, "l2"))
	var lim *limits.Error
	if !errors.As(err, &lim) || !errors.Is(err, registry.ErrLimit) || lim.Flag != "--max-connections-per-ip" || lim.Limit != 1 {
		t.Fatalf("a second connection of one peer IP: %v, want --max-connections-per-ip (1)", err)
	}
	if _, err := f.r.Conn(refused.ID()); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("a refused connection is listed: %v", err)
	}
	if small.Open() != 0 {
		t.Errorf("a refused connection counts toward its listener: %d", small.Open())
	}
	f.mustAdd(outbound)
	f.mustAdd(outbound)
	// Three live connections: the fourth is refused whatever its origin.
	if _, err := f.add(outbound); !errors.As(err, &lim) || lim.Flag != "--max-connections" || lim.Limit != 3 {
		t.Fatalf("a fourth connection: %v, want --max-connections (3)", err)
	}
	f.closeConn(in)
	// A listener's own bound names no flag.
	f2 := newFixture(t, registry.Config{})
	one := f2.r.AddGroup("l3", 1)
	f2.mustAdd(accepted(one, "l3"))
	if _, err := f2.add(accepted(one, "l3")); !errors.As(err, &lim) || lim.Flag != "" || lim.Name != "max_connections" || lim.Limit != 1 {
		t.Fatalf("a second connection of a listener of max_connections 1: %v", err)
	}
	f2.mustAdd(outbound) // the listener's bound is its own
}

// TestBroadcast reaches the live connections of one listener only.
func TestBroadcast(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	a, b := f.mustAdd(accepted(g, "l1")), f.mustAdd(accepted(g, "l1"))
	other := f.mustAdd(outbound)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	n, reached, err := f.r.Broadcast(ctx, "l1", []byte("hi"))
	if err != nil || n != 4 || reached != 2 {
		t.Fatalf("Broadcast = %d, %d, %v; want 4, 2", n, reached, err)
	}
	for _, c := range []*conn.Conn{a, b} {
		client := f.clients[c.ID()]
		_ = client.SetReadDeadline(time.Now().Add(testTimeout))
		buf := make([]byte, 2)
		if _, err := client.Read(buf); err != nil || string(buf) != "hi" {
			t.Errorf("the peer of %s read %q, %v", c.ID(), buf, err)
		}
	}
	client := f.clients[other.ID()]
	_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := client.Read(make([]byte, 8)); n != 0 {
		t.Errorf("a connection of no listener got %d bytes of the broadcast", n)
	}
	if st := f.r.Stats(); st.BytesOut != 4 {
		t.Errorf("Stats.BytesOut = %d, want 4", st.BytesOut)
	}
}

// TestOriginsFilter: a list filtered on origins holds the connections of
// those origins only, whatever the list's order and repeats, and the same
// set is the same filter for page tokens; an origin that is neither is
// refused naming its place in the list.
func TestOriginsFilter(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	in := f.mustAdd(accepted(g, "l1"))
	out := f.mustAdd(outbound)
	// Every event of a connection carries the origin its entry records.
	if _, err := f.clients[in.ID()].Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.clients[out.ID()].Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	evs := f.rec.WaitFor(t, "DATA of both connections", func(evs []*event.Event) bool {
		n := 0
		for _, e := range evs {
			if e.Kind == event.Data {
				n++
			}
		}
		return n == 2
	})
	want := map[string]event.Origin{in.ID(): event.Accepted, out.ID(): event.Outbound}
	for _, e := range evs {
		if e.Kind == event.ConnectionOpened || e.Kind == event.Data {
			if e.Origin != want[e.ConnectionID] {
				t.Errorf("%s of %s has origin %v, want %v", e.Kind, e.ConnectionID, e.Origin, want[e.ConnectionID])
			}
		}
	}

	ids := func(origins ...registry.Origin) []string {
		t.Helper()
		p, err := f.r.ListConns(registry.Filter{Origins: origins}, 0, 0)
		if err != nil {
			t.Fatalf("ListConns(origins %v): %v", origins, err)
		}
		var out []string
		for _, c := range p.Conns {
			out = append(out, c.ID)
		}
		return out
	}
	for _, tc := range []struct {
		origins []registry.Origin
		want    []string
	}{
		{nil, []string{in.ID(), out.ID()}},
		{[]registry.Origin{registry.Accepted}, []string{in.ID()}},
		{[]registry.Origin{registry.Outbound}, []string{out.ID()}},
		{[]registry.Origin{registry.Outbound, registry.Accepted, registry.Outbound}, []string{in.ID(), out.ID()}},
	} {
		if got := ids(tc.origins...); !slices.Equal(got, tc.want) {
			t.Errorf("origins %v: %v, want %v", tc.origins, got, tc.want)
		}
	}
	a := registry.Filter{Origins: []registry.Origin{registry.Accepted, registry.Outbound}}
	b := registry.Filter{Origins: []registry.Origin{registry.Outbound, registry.Accepted, registry.Accepted}}
	if a.Digest() != b.Digest() {
		t.Error("the same set of origins has two digests")
	}
	if a.Digest() == (registry.Filter{Origins: []registry.Origin{registry.Accepted}}).Digest() {
		t.Error("filters of other origins share a digest: a page token would cross them")
	}
	_, err := f.r.ListConns(registry.Filter{Origins: []registry.Origin{registry.Accepted, 0}}, 0, 0)
	var fe *page.FieldError
	if !errors.Is(err, registry.ErrInvalidFilter) || !errors.As(err, &fe) || fe.Field != "origins[1]" {
		t.Errorf("origins [accepted, 0]: %v, want ErrInvalidFilter naming origins[1]", err)
	}
}

func TestCloseSockets(t *testing.T) {
	f := newFixture(t, registry.Config{})
	g := f.r.AddGroup("l1", 0)
	cs := []*conn.Conn{f.mustAdd(accepted(g, "l1")), f.mustAdd(accepted(g, "l1")), f.mustAdd(outbound)}
	if n := f.r.CloseSockets(event.ReasonNodeLost); n != 3 {
		t.Fatalf("CloseSockets closed %d, want 3", n)
	}
	for _, c := range cs {
		client := f.clients[c.ID()]
		_ = client.SetReadDeadline(time.Now().Add(testTimeout))
		if n, err := client.Read(make([]byte, 8)); err == nil {
			t.Fatalf("the peer of %s read %d bytes; want its connection closed", c.ID(), n)
		}
		select {
		case <-c.Done():
		case <-time.After(testTimeout):
			t.Fatalf("%s did not end", c.ID())
		}
	}
	if got := f.r.Stats().Closed[event.ReasonNodeLost]; got != 3 {
		t.Fatalf("closed with NODE_LOST: %d, want 3", got)
	}
}
