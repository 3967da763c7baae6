package hub_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// checkPayloads fails unless every event of evs carries the payload mk
// gave its sequence: the hub delivered the stream's events, not others.
func checkPayloads(t testing.TB, evs []*event.Event) {
	t.Helper()
	for _, e := range evs {
		if e.Kind == event.EventsDropped {
			continue
		}
		want := strconv.FormatUint(e.Sequence, 10)
		if !strings.HasPrefix(string(e.Data), want) || len(e.Data) > len(want) && e.Data[len(want)] != 0 {
			t.Fatalf("event %d carries payload %q, want the stream's event %s", e.Sequence, e.Data, want)
		}
	}
}

// TestIngestOrderAndFanOut: events ingested keep the stream's sequences,
// reach every subscriber they match in order, and set LastSequence; an
// External hub refuses Publish and TryPublish, a numbering one Ingest.
func TestIngestOrderAndFanOut(t *testing.T) {
	c := newCluster(1000, 10)
	defer c.h.Close()
	all := subscribe(t, c.h, hub.SubscribeOptions{})
	onlyB := subscribe(t, c.h, hub.SubscribeOptions{Filter: hub.Filter{ListenerIDs: []string{"b"}}})
	ctx := timeoutCtx(t)
	var want, wantB []uint64
	for seq := uint64(1); seq <= 300; seq += 3 {
		l := "a"
		if seq%2 == 0 {
			l = "b"
		}
		if err := c.ingest(ctx, l, seq, seq+2, 10, 3); err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		want = append(want, span(seq, seq+2)...)
		if l == "b" {
			wantB = append(wantB, span(seq, seq+2)...)
		}
	}
	if got := c.h.LastSequence(); got != 300 {
		t.Fatalf("LastSequence = %d, want 300", got)
	}
	got := collect(t, all, len(want))
	if !equal(seqs(got), want) {
		t.Fatalf("unfiltered subscriber got %s, want 1..300", describe(got))
	}
	checkPayloads(t, got)
	if got := collect(t, onlyB, len(wantB)); !equal(seqs(got), wantB) {
		t.Fatalf("subscriber of b got %s, want %v", describe(got), wantB)
	}

	if err := c.h.Publish(ctx, dataEvent("a", "c", 1)); !errors.Is(err, hub.ErrExternal) {
		t.Fatalf("Publish on an External hub = %v, want ErrExternal", err)
	}
	if c.h.TryPublish(dataEvent("a", "c", 1)) {
		t.Fatal("TryPublish on an External hub returned true")
	}
	if err := c.h.Ingest(ctx, mk("a", 302, 1), &event.Event{Kind: event.Data}); !errors.Is(err, hub.ErrUnnumbered) {
		t.Fatalf("Ingest of an unnumbered event = %v, want ErrUnnumbered", err)
	}
	if got := c.h.LastSequence(); got != 300 {
		t.Fatalf("LastSequence = %d after refused calls, want 300: something was delivered", got)
	}
	own := hub.New(hub.Config{})
	defer own.Close()
	if err := own.Ingest(ctx, mk("a", 1, 1)); !errors.Is(err, hub.ErrNotExternal) {
		t.Fatalf("Ingest on a numbering hub = %v, want ErrNotExternal", err)
	}
}

// TestIngestDuplicates: an event at or below the last delivered, from a
// later batch or within one, is skipped silently and counted.
func TestIngestDuplicates(t *testing.T) {
	c := newCluster(1000, 10)
	defer c.h.Close()
	s := subscribe(t, c.h, hub.SubscribeOptions{})
	ctx := timeoutCtx(t)
	batches := [][]uint64{
		{1, 2, 3, 4, 5},
		{3, 4, 5, 6, 7, 8}, // a consumer re-created from 3: 3..5 again
		{9, 9, 8, 10},      // within a batch: 9 again, then 8
		{10},               // all of it delivered already
		{2, 11},
	}
	for _, b := range batches {
		evs := make([]*event.Event, len(b))
		for i, seq := range b {
			evs[i] = mk("l1", seq, 10)
		}
		if err := c.h.Ingest(ctx, evs...); err != nil {
			t.Fatalf("Ingest(%v): %v", b, err)
		}
	}
	c.h.Close()
	got := drainClosed(t, s)
	if !equal(seqs(got), span(1, 11)) {
		t.Fatalf("got %s, want 1..11 once each", describe(got))
	}
	checkPayloads(t, got)
	if st := c.h.Stats(); st.Duplicates != 7 || st.LastSequence != 11 {
		t.Fatalf("Stats: Duplicates %d, LastSequence %d; want 7 and 11", st.Duplicates, st.LastSequence)
	}
}

// TestIngestConcurrentDuplicates: two consumers hand the same stream to
// the hub at once (an old one not yet stopped, its replacement already
// running): every event reaches the subscriber once, in order.
func TestIngestConcurrentDuplicates(t *testing.T) {
	const total = 2000
	c := newCluster(-1, 10)
	defer c.h.Close()
	s := subscribe(t, c.h, hub.SubscribeOptions{})
	ctx := timeoutCtx(t)
	var consumers sync.WaitGroup
	for range 2 {
		consumers.Go(func() {
			for seq := uint64(1); seq <= total; seq += 4 {
				evs := []*event.Event{mk("l1", seq, 10), mk("l1", seq+1, 10), mk("l1", seq+2, 10), mk("l1", seq+3, 10)}
				if err := c.h.Ingest(ctx, evs...); err != nil {
					t.Errorf("Ingest: %v", err)
					return
				}
			}
		})
	}
	consumers.Wait()
	if got := collect(t, s, total); !equal(seqs(got), span(1, total)) {
		t.Fatalf("got %s, want 1..%d once each", describe(got), total)
	}
	if st := c.h.Stats(); st.Duplicates != total {
		t.Fatalf("Duplicates = %d, want %d (the second consumer's copy of each)", st.Duplicates, total)
	}
}

// TestStartSequenceAndIncarnation: a hub joining a stream starts at its
// last sequence, in its incarnation; older sequences come from the
// archive, or are reported missed without one.
func TestStartSequenceAndIncarnation(t *testing.T) {
	ctx := timeoutCtx(t)
	a := &memArchive{}
	for seq := uint64(1); seq <= 41; seq++ {
		a.store(mk("l1", seq, 10))
	}
	for _, withArchive := range []bool{true, false} {
		t.Run(fmt.Sprintf("archive=%v", withArchive), func(t *testing.T) {
			cfg := hub.Config{External: true, Incarnation: "stream-abc", StartSequence: 41, Now: fixedNow}
			if withArchive {
				cfg.Archive = a
			}
			h := hub.New(cfg)
			defer h.Close()
			if h.Incarnation() != "stream-abc" || h.LastSequence() != 41 {
				t.Fatalf("Incarnation %q, LastSequence %d; want stream-abc and 41", h.Incarnation(), h.LastSequence())
			}
			var seqErr *hub.SequenceError
			if _, err := h.Subscribe(hub.SubscribeOptions{Since: 43}); !errors.As(err, &seqErr) || seqErr.Last != 41 || seqErr.Incarnation != "stream-abc" {
				t.Fatalf("Subscribe(Since 43) = %v, want a *SequenceError with Last 41 of stream-abc", err)
			}
			live := subscribe(t, h, hub.SubscribeOptions{Since: 42})
			old := subscribe(t, h, hub.SubscribeOptions{Since: 10})
			if st := old.Start(); st.LastSequence != 41 || st.From != 10 || st.Changed {
				t.Fatalf("Start of Since 10 = %+v, want LastSequence 41, From 10", st)
			}
			// 40 and 41 are before the hub's start: already in the stream.
			if err := h.Ingest(ctx, mk("l1", 40, 10), mk("l1", 41, 10), mk("l1", 42, 10)); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			h.Close()
			if got := drainClosed(t, live); !equal(seqs(got), []uint64{42}) {
				t.Fatalf("Since 42 got %s, want 42", describe(got))
			}
			got := drainClosed(t, old)
			checkAccounted(t, got, 10)
			checkPayloads(t, got)
			real, dropped, _ := split(got)
			if withArchive && (dropped != 0 || !equal(seqs(real), span(10, 42))) {
				t.Fatalf("Since 10 with the archive got %s, want 10..42 with no marker", describe(got))
			}
			if !withArchive && (dropped != 32 || !equal(seqs(real), []uint64{42})) {
				t.Fatalf("Since 10 without an archive got %s, want a marker of 32, then 42", describe(got))
			}
		})
	}

	// A hub that numbers its own events starts after StartSequence too.
	own := hub.New(hub.Config{StartSequence: 7})
	defer own.Close()
	publish(own, events(2, 1)...)
	if got := own.LastSequence(); got != 9 {
		t.Fatalf("LastSequence after 2 events from StartSequence 7 = %d, want 9", got)
	}
}

// TestIngestGap: sequences the stream skips are no loss: live subscribers
// see the sequence jump, and a replay from the ring, across gaps and from
// inside one, gives exactly the events ingested from its Since on.
func TestIngestGap(t *testing.T) {
	ctx := timeoutCtx(t)
	c := newCluster(100000, 10)
	defer c.h.Close()
	live := subscribe(t, c.h, hub.SubscribeOptions{})
	// Gaps of every length from 0 to 9 between runs of every length.
	var ingested []uint64
	seq := uint64(0)
	for i := range 400 {
		seq += uint64(1 + i%10)
		run := uint64(1 + i%3)
		if err := c.ingest(ctx, "l1", seq, seq+run-1, 10, 2); err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		ingested = append(ingested, span(seq, seq+run-1)...)
		seq += run - 1
	}
	if got := collect(t, live, len(ingested)); !equal(seqs(got), ingested) {
		t.Fatalf("live subscriber got %s, want what was ingested, with no marker", describe(got))
	}
	last := c.h.LastSequence()
	for since := uint64(1); since <= last+1; since += 37 {
		s := subscribe(t, c.h, hub.SubscribeOptions{Since: since})
		var want []uint64
		for _, q := range ingested {
			if q >= since {
				want = append(want, q)
			}
		}
		if len(want) == 0 {
			continue
		}
		if got := collect(t, s, len(want)); !equal(seqs(got), want) {
			t.Fatalf("Since %d got %s, want %v", since, describe(got), want)
		}
		s.Close()
	}
}

// TestIngestBackpressure: Ingest waits for a full Backpressure subscriber
// as Publish does, delivering nothing past the room it has; when its ctx
// ends, it ends that subscriber with its resume sequence and delivers to
// the others.
func TestIngestBackpressure(t *testing.T) {
	const limitEvents = 4
	c := newCluster(1000, 100)
	defer c.h.Close()
	s := subscribe(t, c.h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: limitEvents * mk("l1", 1, 100).Size()})
	other := subscribe(t, c.h, hub.SubscribeOptions{})
	ingestAsync := func(ctx context.Context, from, to uint64) <-chan error {
		res := make(chan error, 1)
		go func() { res <- c.ingest(ctx, "l1", from, to, 100, 10) }()
		return res
	}
	if err := within(t, "Ingest with room in the queue", ingestAsync(context.Background(), 1, limitEvents)); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	blocked := ingestAsync(context.Background(), limitEvents+1, limitEvents+2)
	still(t, "Ingest returning while the queue is full", blocked)
	if got := c.h.LastSequence(); got != limitEvents {
		t.Fatalf("LastSequence = %d while the queue is full, want %d", got, limitEvents)
	}
	if got := next(t, s); !equal(seqs(got), span(1, limitEvents)) {
		t.Fatalf("Next got %s, want 1..%d", describe(got), limitEvents)
	}
	if err := within(t, "Ingest returning once the subscriber read", blocked); err != nil {
		t.Fatalf("Ingest: %v", err)
	}

	// Now the queue holds 5 and 6; fill it, then cut the wait.
	if err := within(t, "Ingest with room in the queue", ingestAsync(context.Background(), 7, 8)); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	blocked = ingestAsync(ctx, 9, 10)
	still(t, "Ingest returning while the queue is full", blocked)
	cancel()
	if err := within(t, "Ingest returning after its ctx ended", blocked); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ingest = %v, want context.Canceled", err)
	}
	got, err := drain(t, s)
	var slow *hub.SlowConsumerError
	if !errors.As(err, &slow) || slow.Policy != hub.Backpressure || slow.Resume != 5 {
		t.Fatalf("the full subscriber ended with %v after %s, want a backpressure *SlowConsumerError with Resume 5", err, describe(got))
	}
	if got := collect(t, other, 10); !equal(seqs(got), span(1, 10)) {
		t.Fatalf("the lossy subscriber got %s, want 1..10", describe(got))
	}
}

// TestReplayArchiveRingLive: a replay reads what the ring lost from the
// archive, then the ring, then goes live, with no gap and no duplicate at
// either seam, wherever Since falls; what the archive aged out too is one
// marker.
func TestReplayArchiveRingLive(t *testing.T) {
	const ringEvents, stored = 50, 300
	c := newCluster(ringEvents, 10)
	defer c.h.Close()
	ctx := timeoutCtx(t)
	if err := c.ingest(ctx, "l1", 1, stored, 10, 7); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	ringFirst := uint64(stored + 1 - c.h.Stats().RingEvents)
	if ringFirst < 100 {
		t.Fatalf("the ring holds from %d on: too much for this test", ringFirst)
	}
	tests := []struct {
		name  string
		since uint64
	}{
		{"from the first", 1},
		{"archive only, then ring", 60},
		{"last before the ring", ringFirst - 1},
		{"ring's first", ringFirst},
		{"right after the ring's first", ringFirst + 1},
		{"newest in the ring", stored},
		{"live only", stored + 1},
	}
	var subs []*hub.Subscriber
	for _, tt := range tests {
		subs = append(subs, subscribe(t, c.h, hub.SubscribeOptions{Since: tt.since}))
	}
	if err := c.ingest(ctx, "l1", stored+1, stored+20, 10, 3); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	for i, tt := range tests {
		got := collect(t, subs[i], int(stored+20-tt.since+1))
		if !equal(seqs(got), span(tt.since, stored+20)) {
			t.Fatalf("%s (Since %d, ring from %d): got %s, want %d..%d with no marker", tt.name, tt.since, ringFirst, describe(got), tt.since, stored+20)
		}
		checkPayloads(t, got)
	}
	if c.a.readCount() == 0 {
		t.Fatal("the archive was not read: the test proves nothing")
	}
	c.a.ageOut(21)
	aged := subscribe(t, c.h, hub.SubscribeOptions{Since: 5})
	c.h.Close()
	got := drainClosed(t, aged)
	checkAccounted(t, got, 5)
	if real, dropped, markers := split(got); dropped != 16 || markers != 1 || !equal(seqs(real), span(21, stored+20)) {
		t.Fatalf("Since 5 with the archive holding from 21: got %s, want a marker of 16, then 21..%d", describe(got), stored+20)
	}
}

// TestReplayArchiveFilterMatchesNothing: a long archive part that the
// filter matches nothing of is read through, a batch at a time, up to the
// events it does match.
func TestReplayArchiveFilterMatchesNothing(t *testing.T) {
	const long = 10000
	c := newCluster(20, 1)
	defer c.h.Close()
	ctx := timeoutCtx(t)
	if err := c.ingest(ctx, "l1", 1, long, 1, 100); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if err := c.ingest(ctx, "l2", long+1, long+5, 1, 100); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if err := c.ingest(ctx, "l1", long+6, long+40, 1, 100); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	s := subscribe(t, c.h, hub.SubscribeOptions{Since: 1, Filter: hub.Filter{ListenerIDs: []string{"l2"}}})
	if got := collect(t, s, 5); !equal(seqs(got), span(long+1, long+5)) {
		t.Fatalf("got %s, want %d..%d", describe(got), long+1, long+5)
	}
	if n := c.a.readCount(); n < 3 {
		t.Fatalf("the archive was read %d times for %d events: not a batch at a time", n, long)
	}
}

// TestReplayArchiveWhileIngesting subscribes with Since in the archive,
// at the ring's edge and in the ring while a consumer ingests: each
// subscription gets every event from its Since to the end once, in order.
func TestReplayArchiveWhileIngesting(t *testing.T) {
	const total = 20000
	c := newCluster(200, 10)
	defer c.h.Close()
	ctx := timeoutCtx(t)
	if err := c.ingest(ctx, "l1", 1, 1000, 10, 5); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.ingest(ctx, "l1", 1001, total, 10, 5); err != nil {
			t.Errorf("Ingest: %v", err)
		}
	})
	type sub struct {
		since uint64
		s     *hub.Subscriber
	}
	var subs []sub
	for i := range 40 {
		last := c.h.LastSequence()
		back := []uint64{1, 150, 199, 200, 201, 250, 600}[i%7]
		since := uint64(1)
		if last > back {
			since = last - back
		}
		subs = append(subs, sub{since, subscribe(t, c.h, hub.SubscribeOptions{Since: since})})
	}
	wg.Wait()
	for _, sb := range subs {
		want := total - int(sb.since) + 1
		if got := collect(t, sb.s, want); !equal(seqs(got), span(sb.since, total)) {
			t.Fatalf("Since %d got %s, want %d..%d", sb.since, describe(got), sb.since, total)
		}
	}
}

// TestArchiveErrorEndsSubscription: an archive that fails ends the
// subscription, after what it had delivered, with an *ArchiveError that is
// ErrClusterUnavailable (not the archive's own timeout) and names where to
// resume; an archive that answers out of contract does too.
func TestArchiveErrorEndsSubscription(t *testing.T) {
	ctx := timeoutCtx(t)
	tests := []struct {
		name      string
		failAfter int
		err       error
		corrupt   func([]*event.Event, uint64) ([]*event.Event, uint64)
		resume    uint64
	}{
		{"first read", 0, fmt.Errorf("nats: timeout: %w", context.DeadlineExceeded), nil, 1},
		{"second read", 1, errors.New("nats: connection closed"), nil, 6},
		{"no progress", 0, nil, func(_ []*event.Event, _ uint64) ([]*event.Event, uint64) { return nil, 1 }, 1},
		{"out of order", 0, nil, func(evs []*event.Event, next uint64) ([]*event.Event, uint64) {
			return []*event.Event{evs[1], evs[0]}, next
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Events of 200 KB: five fill a read's batch.
			c := newCluster(3, 200<<10)
			defer c.h.Close()
			if err := c.ingest(ctx, "l1", 1, 30, 200<<10, 10); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			c.a.corrupt = tt.corrupt
			if tt.err != nil {
				c.a.setErr(tt.err, tt.failAfter)
			}
			s := subscribe(t, c.h, hub.SubscribeOptions{Since: 1})
			if err := c.ingest(ctx, "l1", 31, 32, 10, 10); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			got, err := drain(t, s)
			if !equal(seqs(got), span(1, tt.resume-1)) {
				t.Fatalf("got %s before the error, want 1..%d", describe(got), tt.resume-1)
			}
			var ae *hub.ArchiveError
			if !errors.As(err, &ae) || ae.Resume != tt.resume || !errors.Is(err, placement.ErrClusterUnavailable) {
				t.Fatalf("Next ended with %v, want an *ArchiveError with Resume %d that is ErrClusterUnavailable", err, tt.resume)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%v is context.DeadlineExceeded: the API would call it the caller's timeout", err)
			}
			if want := fmt.Sprintf("resume with since_sequence=%d", tt.resume); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
			if n := c.h.Subscribers(); n != 0 {
				t.Fatalf("%d subscribers left open", n)
			}
		})
	}
}

// TestArchiveReadCanceled: Next's ctx bounds a read of the archive; the
// subscription stays as it was and the next Next reads again.
func TestArchiveReadCanceled(t *testing.T) {
	c := newCluster(5, 10)
	defer c.h.Close()
	if err := c.ingest(timeoutCtx(t), "l1", 1, 50, 10, 10); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	c.a.started = make(chan struct{}, 1)
	c.a.setBlock(true)
	s := subscribe(t, c.h, hub.SubscribeOptions{Since: 1})
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := s.Next(ctx, nil)
		res <- err
	}()
	within(t, "the archive read", c.a.started)
	still(t, "Next returning while the archive reads", res)
	cancel()
	if err := within(t, "Next returning after its ctx ended", res); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
	c.a.setBlock(false)
	c.h.Close()
	if got := drainClosed(t, s); !equal(seqs(got), span(1, 50)) {
		t.Fatalf("after the canceled read got %s, want 1..50", describe(got))
	}
}

// TestReplayArchiveAcrossGap: a gap in what the hub ingested, older than
// the ring, is read from the archive: it fills what it holds, skips its
// own holes, and neither is a marker.
func TestReplayArchiveAcrossGap(t *testing.T) {
	for _, streamHasGap := range []bool{true, false} {
		t.Run(fmt.Sprintf("stream holds the gap=%v", !streamHasGap), func(t *testing.T) {
			ctx := timeoutCtx(t)
			c := newCluster(10, 10)
			defer c.h.Close()
			if err := c.ingest(ctx, "l1", 1, 5, 10, 5); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			if !streamHasGap {
				// The stream stored 6..8; the hub's consumer skipped them.
				for seq := uint64(6); seq <= 8; seq++ {
					c.a.store(mk("l1", seq, 10))
				}
			}
			if err := c.ingest(ctx, "l1", 9, 60, 10, 5); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			for _, since := range []uint64{3, 6, 7} {
				s := subscribe(t, c.h, hub.SubscribeOptions{Since: since})
				var want []uint64
				for seq := since; seq <= 60; seq++ {
					if seq < 6 || seq > 8 || !streamHasGap {
						want = append(want, seq)
					}
				}
				got := collect(t, s, len(want))
				if !equal(seqs(got), want) {
					t.Fatalf("Since %d got %s, want %v with no marker", since, describe(got), want)
				}
				checkPayloads(t, got)
				s.Close()
			}
		})
	}
}
