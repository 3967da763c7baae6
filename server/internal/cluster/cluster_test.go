package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// sink keeps what a node's feed hands it, as a hub would.
type sink struct {
	mu   sync.Mutex
	evs  []*event.Event
	more chan struct{}
}

func newSink() *sink { return &sink{more: make(chan struct{}, 1)} }

// feed hands c's feed of the stream to a new sink.
func feed(t *testing.T, c *Cluster) *sink {
	t.Helper()
	s := newSink()
	if err := c.Feed(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sink) Ingest(_ context.Context, evs ...*event.Event) error {
	s.mu.Lock()
	s.evs = append(s.evs, evs...)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
	return nil
}

// wait returns the events once ok says they are all there, or fails the
// test after a minute.
func (s *sink) wait(t *testing.T, what string, ok func([]*event.Event) bool) []*event.Event {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		s.mu.Lock()
		evs := append([]*event.Event(nil), s.evs...)
		s.mu.Unlock()
		if ok(evs) {
			return evs
		}
		select {
		case <-s.more:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: not there after a minute; %d events", what, len(evs))
		}
	}
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func join(t *testing.T, url, node string, detection time.Duration) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Join(ctx, Config{URL: url, Node: node, Detection: detection, Log: testLog(t)})
	if err != nil {
		t.Fatalf("join %s: %v", node, err)
	}
	t.Cleanup(func() { leave(c) })
	return c
}

func leave(c *Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

func data(conn string, i int) *event.Event {
	return &event.Event{Kind: event.Data, Time: time.Now(), ConnectionID: conn, Data: fmt.Appendf(nil, "%s %d", conn, i)}
}

// checkOrder checks that evs hold, for each connection, its frames 0..n-1
// in order, and that their sequences increase.
func checkOrder(t *testing.T, evs []*event.Event, conns []string, n int) {
	t.Helper()
	next := map[string]int{}
	var last uint64
	for _, e := range evs {
		if e.Sequence <= last {
			t.Fatalf("sequence %d after %d", e.Sequence, last)
		}
		last = e.Sequence
		if e.Kind != event.Data {
			continue
		}
		want := fmt.Sprintf("%s %d", e.ConnectionID, next[e.ConnectionID])
		if string(e.Data) != want {
			t.Fatalf("connection %s: got %q, want %q", e.ConnectionID, e.Data, want)
		}
		next[e.ConnectionID]++
	}
	for _, c := range conns {
		if next[c] != n {
			t.Fatalf("connection %s: %d frames, want %d", c, next[c], n)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not so after a minute", what)
		}
	}
}

func countData(evs []*event.Event) int {
	n := 0
	for _, e := range evs {
		if e.Kind == event.Data {
			n++
		}
	}
	return n
}

func TestCodecRoundTrip(t *testing.T) {
	in := &event.Event{Time: time.Unix(1700000000, 123456789), Kind: event.ConnectionClosed, ListenerID: "l-1", ConnectionID: "c-1",
		RemoteAddr: "127.0.0.1:5", LocalAddr: "127.0.0.1:6", Data: []byte("tail"), CloseReason: event.ReasonNodeLost, Dropped: 7,
		PeerSubject: "CN=x", Partial: true, Origin: event.Outbound, Direction: event.Sent, Generation: 3, Attempt: 4,
		Delay: time.Second, Error: "gone", TargetReason: event.ReasonPeerReset, Node: "a"}
	out, err := decodeEvent(appendEvent(nil, in))
	if err != nil {
		t.Fatal(err)
	}
	if !sameEvent(out, in) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	for _, bad := range [][]byte{nil, {2}, {codecVersion}, {codecVersion, 0x0a, 0x05}} {
		if _, err := decodeEvent(bad); err == nil {
			t.Errorf("decodeEvent(%x): no error", bad)
		}
	}
}

// sameEvent compares every field the cluster carries.
func sameEvent(a, b *event.Event) bool {
	return a.Time.Equal(b.Time) && a.Kind == b.Kind && a.ListenerID == b.ListenerID && a.ConnectionID == b.ConnectionID &&
		a.RemoteAddr == b.RemoteAddr && a.LocalAddr == b.LocalAddr && bytes.Equal(a.Data, b.Data) &&
		a.CloseReason == b.CloseReason && a.Dropped == b.Dropped && a.PeerSubject == b.PeerSubject &&
		a.Partial == b.Partial && a.Origin == b.Origin && a.Direction == b.Direction && a.Generation == b.Generation &&
		a.Attempt == b.Attempt && a.Delay == b.Delay && a.Error == b.Error && a.TargetReason == b.TargetReason && a.Node == b.Node
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(appendEvent(nil, data("c-1", 1)))
	f.Add(appendEvent(nil, &event.Event{Kind: event.ConnectionOpened, Time: time.Now(), ConnectionID: "c", Node: "n", Origin: event.Accepted}))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEvent(b)
		if err != nil {
			return
		}
		// What decodes encodes to what decodes the same.
		again, err := decodeEvent(appendEvent(nil, e))
		if err != nil {
			t.Fatalf("re-encoding of a decoded event does not decode: %v", err)
		}
		if !sameEvent(again, e) {
			t.Fatalf("re-encoding changed the event: %+v vs %+v", again, e)
		}
	})
}

func TestConfigRefusesPlaintextAway(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "nats://10.1.2.3:4222", Node: "a"}, "--cluster-insecure"},
		{Config{URL: "nats://127.0.0.1:4222,nats://nats.example:4222", Node: "a"}, "--cluster-insecure"},
		{Config{URL: "nats://127.0.0.1:4222", Node: "a.b"}, "--node-id"},
		{Config{URL: "nats://127.0.0.1:4222", Node: "a", Name: "x y"}, "--cluster-name"},
		{Config{URL: "", Node: "a"}, "--cluster"},
	} {
		err := tt.cfg.check()
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
			t.Errorf("%+v: %v, want an error naming %s", tt.cfg, err, tt.want)
		}
	}
	for _, ok := range []Config{
		{URL: "nats://127.0.0.1:4222", Node: "a"},
		{URL: "nats://[::1]:4222", Node: "a"},
		{URL: "nats://localhost:4222", Node: "a"},
		{URL: "tls://10.1.2.3:4222", Node: "a"},
		{URL: "nats://10.1.2.3:4222", Node: "a", Insecure: true},
	} {
		if err := ok.check(); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}

// Two nodes publish under load; a third node's feed sees every event of
// both, each connection's in order, with increasing sequences.
func TestFeedOrderUnderLoad(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	c := join(t, ns.URL(), "c", 0)
	got := feed(t, c)
	const n = 5000
	conns := []string{"c-a1", "c-a2", "c-b1", "c-b2"}
	var wg sync.WaitGroup
	for i, conn := range conns {
		node := a
		if i >= 2 {
			node = b
		}
		wg.Go(func() {
			for j := range n {
				if err := node.Publisher().Publish(context.Background(), data(conn, j)); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	evs := got.wait(t, "every frame", func(evs []*event.Event) bool { return countData(evs) >= n*len(conns) })
	checkOrder(t, evs, conns, n)
	for _, e := range evs {
		want := "a"
		if e.ConnectionID[2] == 'b' {
			want = "b"
		}
		if e.Node != want {
			t.Fatalf("event of %s from node %q, want %q", e.ConnectionID, e.Node, want)
		}
	}
}

// NATS restarts while a node publishes: what it published meanwhile is
// stored once NATS is back, in order, nothing twice.
func TestNATSRestartLosesNothing(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	got := feed(t, b)
	const n = 600 // below the window: no publisher waits
	for i := range n / 2 {
		if err := a.Publisher().Publish(context.Background(), data("c-1", i)); err != nil {
			t.Fatal(err)
		}
	}
	got.wait(t, "before the restart", func(evs []*event.Event) bool { return countData(evs) >= n/2 })
	ns.Stop()
	for i := n / 2; i < n; i++ {
		if err := a.Publisher().Publish(context.Background(), data("c-1", i)); err != nil {
			t.Fatal(err)
		}
	}
	ns.Restart()
	evs := got.wait(t, "after the restart", func(evs []*event.Event) bool { return countData(evs) >= n })
	checkOrder(t, evs, []string{"c-1"}, n)
	if lost := a.Publisher().Stats().Lost.Load(); lost != 0 {
		t.Fatalf("%d events lost", lost)
	}
}

// While NATS is down a connection fills its window: the next Publish
// waits; once its context ends it queues its event anyway (the queue is
// far below the hard bound) and returns the context's error, and nothing
// is lost.
func TestNATSOutageWindowFull(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	got := feed(t, b)
	ns.Stop()
	for i := range PublishWindow {
		if err := a.Publisher().Publish(context.Background(), data("c-1", i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Publisher().Publish(ctx, data("c-1", PublishWindow)) }()
	select {
	case err := <-done:
		t.Fatalf("Publish past a full window returned at once (%v); want it to wait", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cut Publish returned nil; want its context's error")
	}
	ns.Restart()
	evs := got.wait(t, "after the outage", func(evs []*event.Event) bool { return countData(evs) >= PublishWindow+1 })
	checkOrder(t, evs, []string{"c-1"}, PublishWindow+1)
}

// A node that stops renewing its presence is declared lost by one of the
// others, which reports its open connections closed with NODE_LOST.
func TestNodeLost(t *testing.T) {
	ns := natstest.Start(t)
	detect := 1500 * time.Millisecond
	a := join(t, ns.URL(), "a", detect)
	b := join(t, ns.URL(), "b", detect)
	c := join(t, ns.URL(), "c", detect)
	got := feed(t, c)
	pub := a.Publisher()
	now := time.Now()
	for _, id := range []string{"c-1", "c-2", "c-3"} {
		_ = pub.Publish(context.Background(), &event.Event{Kind: event.ConnectionOpened, Time: now, ConnectionID: id, ListenerID: "l-1", Origin: event.Accepted})
	}
	_ = pub.Publish(context.Background(), &event.Event{Kind: event.ConnectionClosed, Time: now, ConnectionID: "c-3", ListenerID: "l-1", Origin: event.Accepted, CloseReason: event.ReasonPeerClosed})
	got.wait(t, "the opens", func(evs []*event.Event) bool { return len(evs) >= 4 })
	// Let a write its open connections, then kill it: no leave.
	a.open.flush(context.Background())
	a.kill()
	evs := got.wait(t, "NODE_LOST closes", func(evs []*event.Event) bool {
		n := 0
		for _, e := range evs {
			if e.Kind == event.ConnectionClosed && e.CloseReason == event.ReasonNodeLost {
				n++
			}
		}
		return n >= 2
	})
	closed := map[string]int{}
	for _, e := range evs {
		if e.Kind == event.ConnectionClosed && e.CloseReason == event.ReasonNodeLost {
			if e.Node != "a" || e.ListenerID != "l-1" || e.Origin != event.Accepted {
				t.Errorf("NODE_LOST close %+v: want node a, listener l-1, accepted", e)
			}
			closed[e.ConnectionID]++
		}
	}
	if closed["c-1"] != 1 || closed["c-2"] != 1 || closed["c-3"] != 0 {
		t.Fatalf("NODE_LOST closes per connection %v, want c-1 and c-2 once each", closed)
	}
	for _, n := range []*Cluster{b, c} {
		waitFor(t, "node "+n.Node()+" to see b and c only", func() bool {
			nodes := n.presence.nodes()
			return len(nodes) == 2 && nodes[0].Node == "b" && nodes[1].Node == "c"
		})
	}
}

// A node id that is live cannot join twice.
func TestNodeIDInUse(t *testing.T) {
	ns := natstest.Start(t)
	join(t, ns.URL(), "a", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Join(ctx, Config{URL: ns.URL(), Node: "a"})
	if err == nil {
		leave(c)
		t.Fatal("a second node a joined")
	}
	if !bytes.Contains([]byte(err.Error()), []byte("live")) {
		t.Fatalf("error %q does not say the id is live", err)
	}
}

// The archive reads back what the stream holds, in bounded parts.
func TestArchiveRead(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	got := feed(t, b)
	for i := range 100 {
		_ = a.Publisher().Publish(context.Background(), data("c-1", i))
	}
	evs := got.wait(t, "every event", func(evs []*event.Event) bool { return len(evs) >= 100 })
	first := evs[0].Sequence
	ar := b.Archive()
	ctx := context.Background()
	part, next, err := ar.Read(ctx, first+10, first+100, 30, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(part) != 30 || next != first+40 || part[0].Sequence != first+10 || string(part[0].Data) != "c-1 10" {
		t.Fatalf("Read: %d events, next %d, first %v; want 30 from %d, next %d", len(part), next, part[0], first+10, first+40)
	}
	part, next, err = ar.Read(ctx, first+90, first+95, 100, 1<<20)
	if err != nil || len(part) != 5 || next != first+95 {
		t.Fatalf("Read to end: %d events, next %d, %v; want 5, next %d", len(part), next, err, first+95)
	}
	one := part[0].Size()
	part, _, err = ar.Read(ctx, first, first+100, 100, 3*one+one/2)
	if err != nil || len(part) != 3 {
		t.Fatalf("Read bounded to 3.5 events' bytes: %d events, %v; want 3", len(part), err)
	}
	if a.Incarnation() == "" || a.Incarnation() != join(t, ns.URL(), "d", 0).Incarnation() {
		t.Fatal("nodes of one cluster do not share its incarnation")
	}
}

// During an outage a publisher whose wait is cut past the hard bound
// loses events: they are counted, and once NATS is back an EVENTS_LOST
// event of the connection says how many, in order after what was stored.
func TestOutageOverflowReported(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	got := feed(t, b)
	pub := a.Publisher()
	pub.mu.Lock()
	pub.hard = 1 // nothing past a full window fits
	pub.mu.Unlock()
	ns.Stop()
	for i := range PublishWindow {
		if err := pub.Publish(context.Background(), data("c-1", i)); err != nil {
			t.Fatal(err)
		}
	}
	cut, cancel := context.WithCancel(context.Background())
	cancel()
	const over = 7
	for i := range over {
		if err := pub.Publish(cut, data("c-1", PublishWindow+i)); err == nil {
			t.Fatal("a Publish cut past the hard bound returned nil")
		}
	}
	if n := pub.Stats().Lost.Load(); n != over {
		t.Fatalf("lost %d, want %d", n, over)
	}
	ns.Restart()
	evs := got.wait(t, "EVENTS_LOST", func(evs []*event.Event) bool {
		return slices.ContainsFunc(evs, func(e *event.Event) bool { return e.Kind == event.EventsLost })
	})
	checkOrder(t, evs, []string{"c-1"}, PublishWindow)
	for _, e := range evs {
		if e.Kind == event.EventsLost && (e.ConnectionID != "c-1" || e.Dropped != over || e.Node != "a") {
			t.Fatalf("EVENTS_LOST %+v, want connection c-1, dropped %d, node a", e, over)
		}
	}
}

// A node that finds the cluster declared it lost while it runs (it
// stalled, or was cut off) is told, to close its connections; its next
// renewal makes it a live node again.
func TestSelfLost(t *testing.T) {
	ns := natstest.Start(t)
	lost := make(chan struct{}, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := Join(ctx, Config{URL: ns.URL(), Node: "a", Detection: time.Second, Log: testLog(t), OnSelfLost: func() { lost <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leave(a) })
	b := join(t, ns.URL(), "b", time.Second)
	var info NodeInfo
	var rev uint64
	waitFor(t, "b to see a", func() bool {
		b.presence.mu.Lock()
		defer b.presence.mu.Unlock()
		if pe := b.presence.peers["a"]; pe != nil {
			info, rev = pe.info, pe.rev
			return true
		}
		return false
	})
	if !b.presence.declare(ctx, info, rev) {
		t.Fatal("b could not declare a lost")
	}
	select {
	case <-lost:
	case <-time.After(time.Minute):
		t.Fatal("a was not told it was declared lost")
	}
	waitFor(t, "a to be live again for b", func() bool { return slices.Contains(b.Nodes(), "a") })
}

// One Publish of more events than a connection's window (a read loop's
// batch of frames) waits for room as its first events are stored, and
// completes.
func TestPublishBatchPastWindow(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 0)
	b := join(t, ns.URL(), "b", 0)
	got := feed(t, b)
	const n = 3*PublishWindow + 5
	evs := make([]*event.Event, n)
	for i := range evs {
		evs[i] = data("c-1", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Publisher().Publish(ctx, evs...); err != nil {
		t.Fatalf("Publish of %d events: %v", n, err)
	}
	checkOrder(t, got.wait(t, "every event", func(evs []*event.Event) bool { return countData(evs) >= n }), []string{"c-1"}, n)
}
