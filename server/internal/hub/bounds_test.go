package hub_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// queuedOf returns what the hub counts queued for the subscribers of p.
func queuedOf(h *hub.Hub, p hub.Policy) int { return h.Stats().Policies[p].QueuedBytes }

// TestBackpressureBoundNeverExceeded: against a lossless subscriber that
// does not read, neither a read's batch nor lifecycle events go past its
// limit: a publisher numbers what fits and waits for the rest. An event
// larger than the whole limit goes alone into an empty queue.
func TestBackpressureBoundNeverExceeded(t *testing.T) {
	limit := 5 * sizeOf(10)
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: limit})
	ctx := timeoutCtx(t)

	batch := publishWaitAsync(ctx, h, events(8, 10)...) // one read's frames
	waitFor(t, "the batch's first 5 events to be published", func() bool { return h.LastSequence() == 5 })
	started := publishWaitAsync(ctx, h, &event.Event{Kind: event.ListenerStarted, ListenerID: "l1", LocalAddr: "127.0.0.1:1"})
	closed := publishWaitAsync(ctx, h, &event.Event{Kind: event.ConnectionClosed, ListenerID: "l1", ConnectionID: "c1"})
	still(t, "the batch's Publish returning while the queue is full", batch)
	still(t, "a lifecycle Publish returning while the queue is full", started)
	if q := queuedOf(h, hub.Backpressure); q > limit || h.LastSequence() != 5 {
		t.Fatalf("%d bytes queued against %d, %d events published; want at most the limit and 5", q, limit, h.LastSequence())
	}

	// The subscriber reads; everything arrives in order, and the queue
	// stays within its limit all along.
	var got []*event.Event
	for len(got) < 10 {
		got = append(got, next(t, s)...)
		if q := queuedOf(h, hub.Backpressure); q > limit {
			t.Fatalf("%d bytes queued against a limit of %d", q, limit)
		}
	}
	for _, ch := range []<-chan error{batch, started, closed} {
		if err := within(t, "Publish returning once the subscriber read", ch); err != nil {
			t.Fatal(err)
		}
	}
	if !equal(seqs(got), span(1, 10)) {
		t.Fatalf("got %s, want 1..10", describe(got))
	}

	// Larger than the whole limit: alone, once the queue is empty.
	if err := h.Publish(ctx, dataEvent("l1", "c1", 2*limit)); err != nil {
		t.Fatal(err)
	}
	if got := next(t, s); !equal(seqs(got), span(11, 11)) {
		t.Fatalf("got %s, want 11", describe(got))
	}
}

// TestCutShortWaitEndsOnlyStuckSubscribers: when a publisher's context ends
// while it waits, the full lossless subscriber is ended with the sequence
// it can resume from (ResourceExhausted at the API, saying what happened),
// the event goes to everyone else, including a lossless subscriber that
// had room, and a replay from the resume sequence misses nothing.
func TestCutShortWaitEndsOnlyStuckSubscribers(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	stuck := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 3 * sizeOf(10)})
	reader := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 3 * sizeOf(10)})
	lossy := subscribe(t, h, hub.SubscribeOptions{})
	publish(h, events(3, 10)...)
	if got := next(t, reader); !equal(seqs(got), span(1, 3)) {
		t.Fatalf("reader got %s, want 1..3", describe(got))
	}
	// A stop whose deadline passes while LISTENER_STOPPED waits.
	ctx, cancel := context.WithCancelCause(context.Background())
	blocked := publishWaitAsync(ctx, h, &event.Event{Kind: event.ListenerStopped, ListenerID: "l1"})
	still(t, "Publish returning while a lossless queue is full", blocked)
	stopErr := errors.New("drain deadline passed")
	cancel(stopErr)
	if err := within(t, "the cut-short Publish returning", blocked); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish = %v, want context.Canceled", err)
	}

	_, err := drain(t, stuck)
	var slow *hub.SlowConsumerError
	if !errors.As(err, &slow) || slow.Policy != hub.Backpressure || slow.Resume != 1 || !errors.Is(err, stopErr) {
		t.Fatalf("stuck subscriber ended with %v, want a Backpressure *SlowConsumerError resuming at 1, caused by the stop", err)
	}
	for _, want := range []string{"BACKPRESSURE", "listener_stopped", "drain deadline passed", "since_sequence=1", "--subscriber-queue-bytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %q", err, want)
		}
	}
	if got := next(t, reader); !equal(seqs(got), span(4, 4)) || got[0].Kind != event.ListenerStopped {
		t.Fatalf("reader got %s, want the listener_stopped event 4", describe(got))
	}
	if got := collect(t, lossy, 4); !equal(seqs(got), span(1, 4)) {
		t.Fatalf("lossy subscriber got %s, want 1..4", describe(got))
	}
	// The ended subscriber resumes without a gap.
	again := subscribe(t, h, hub.SubscribeOptions{Since: slow.Resume})
	if got := collect(t, again, 4); !equal(seqs(got), span(1, 4)) {
		t.Fatalf("resumed subscriber got %s, want 1..4", describe(got))
	}
	if st := h.Stats(); st.Abandoned != 1 {
		t.Errorf("Stats().Abandoned = %d, want 1", st.Abandoned)
	}
}

// TestGlobalBound: once all queues together hold MaxQueuedBytes, each
// subscriber's policy applies as if its own queue were full, though its
// own queue has room.
func TestGlobalBound(t *testing.T) {
	const perEvent = 10
	size := sizeOf(perEvent)
	global := 4 * size
	tests := []struct {
		policy hub.Policy
		check  func(t *testing.T, h *hub.Hub, s *hub.Subscriber)
	}{
		{hub.DropOldest, func(t *testing.T, h *hub.Hub, s *hub.Subscriber) {
			// The hog holds 3 of 4: this subscriber keeps the newest 1.
			publish(h, events(3, perEvent)...)
			if q := h.Stats().QueuedBytes; q > global {
				t.Fatalf("%d bytes queued in all, bound %d", q, global)
			}
			evs, dropped, _ := split(collect(t, s, 1))
			if len(evs) != 1 || evs[0].Sequence != 6 || dropped != 2 {
				t.Fatalf("got %s, want a marker of 2 then 6", describe(evs))
			}
		}},
		{hub.Disconnect, func(t *testing.T, h *hub.Hub, s *hub.Subscriber) {
			publish(h, events(2, perEvent)...)
			_, err := drain(t, s)
			var slow *hub.SlowConsumerError
			if !errors.As(err, &slow) || !slow.Global || slow.QueueBytes != global || slow.Resume != 4 || !strings.Contains(err.Error(), "--max-queued-bytes") {
				t.Fatalf("ended with %v, want a global *SlowConsumerError resuming at 4 naming --max-queued-bytes", err)
			}
		}},
		{hub.Backpressure, func(t *testing.T, h *hub.Hub, s *hub.Subscriber) {
			ctx := timeoutCtx(t)
			if err := h.Publish(ctx, events(1, perEvent)...); err != nil { // 4 of 4
				t.Fatal(err)
			}
			blocked := publishWaitAsync(ctx, h, events(1, perEvent)...)
			still(t, "Publish returning at the global bound", blocked)
			if q := h.Stats().QueuedBytes; q > global {
				t.Fatalf("%d bytes queued in all, bound %d", q, global)
			}
			// Room within the global bound comes from another queue: the
			// hog reads below.
		}},
	}
	for _, tt := range tests {
		t.Run(tt.policy.String(), func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow, MaxQueuedBytes: global})
			defer h.Close()
			// A DropOldest subscriber of its own listener that never reads
			// holds 3 of the 4 events the global bound allows.
			hog := subscribe(t, h, hub.SubscribeOptions{Filter: hub.Filter{ListenerIDs: []string{"hg"}}})
			publish(h, dataEvent("hg", "h1", perEvent), dataEvent("hg", "h1", perEvent), dataEvent("hg", "h1", perEvent))
			s := subscribe(t, h, hub.SubscribeOptions{Policy: tt.policy, QueueBytes: 100 * size, Filter: hub.Filter{ListenerIDs: []string{"l1"}}})
			tt.check(t, h, s)
			if tt.policy == hub.Backpressure {
				if got := collect(t, hog, 3); len(got) != 3 {
					t.Fatalf("hog got %s", describe(got))
				}
				got := collect(t, s, 2)
				if !equal(seqs(got), span(4, 5)) {
					t.Fatalf("lossless subscriber got %s, want 4..5 once the hog read", describe(got))
				}
			}
		})
	}
}

// TestGlobalBoundCutShort: a publisher waiting at the global bound whose
// context ends ends the lossless subscribers it waits for, saying it was
// the global bound.
func TestGlobalBoundCutShort(t *testing.T) {
	size := sizeOf(10)
	h := hub.New(hub.Config{Now: fixedNow, MaxQueuedBytes: 2 * size})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 100 * size})
	publish(h, events(2, 10)...)
	ctx, cancel := context.WithCancel(context.Background())
	blocked := publishWaitAsync(ctx, h, events(1, 10)...)
	still(t, "Publish returning at the global bound", blocked)
	cancel()
	within(t, "the cut-short Publish returning", blocked)
	_, err := drain(t, s)
	var slow *hub.SlowConsumerError
	if !errors.As(err, &slow) || !slow.Global || slow.Resume != 1 {
		t.Fatalf("ended with %v, want a global Backpressure *SlowConsumerError resuming at 1", err)
	}
	if h.LastSequence() != 3 {
		t.Fatalf("LastSequence = %d, want 3: the event is published all the same", h.LastSequence())
	}
}

// TestFilterCaps: each id list holds at most hub.MaxFilterIDs ids of at most
// hub.MaxFilterIDBytes bytes; more is ErrFilterTooLarge naming the field. A
// filter at the caps matches exactly its ids.
func TestFilterCaps(t *testing.T) {
	ids := func(n, length int) []string {
		out := make([]string, n)
		for i := range out {
			id := fmt.Sprintf("c%d-", i)
			out[i] = id + strings.Repeat("x", length-len(id))
		}
		return out
	}
	tests := []struct {
		name   string
		filter hub.Filter
		field  string // "" when the filter is allowed
	}{
		{"at the caps", hub.Filter{ListenerIDs: ids(hub.MaxFilterIDs, hub.MaxFilterIDBytes), ConnectionIDs: ids(hub.MaxFilterIDs, hub.MaxFilterIDBytes)}, ""},
		{"too many listener ids", hub.Filter{ListenerIDs: ids(hub.MaxFilterIDs+1, 8)}, "listener_ids has 1025 ids"},
		{"too many connection ids", hub.Filter{ConnectionIDs: ids(hub.MaxFilterIDs+1, 8)}, "connection_ids has 1025 ids"},
		{"a listener id too long", hub.Filter{ListenerIDs: append(ids(3, 8), strings.Repeat("l", hub.MaxFilterIDBytes+1))}, "listener_ids[3] is 65 bytes"},
		{"a connection id too long", hub.Filter{ConnectionIDs: []string{strings.Repeat("c", 1000)}}, "connection_ids[0] is 1000 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			s, err := h.Subscribe(hub.SubscribeOptions{Filter: tt.filter})
			if tt.field != "" {
				if !errors.Is(err, hub.ErrFilterTooLarge) || !strings.Contains(err.Error(), tt.field) {
					t.Fatalf("Subscribe = %v, want ErrFilterTooLarge saying %q", err, tt.field)
				}
				if h.Subscribers() != 0 {
					t.Fatal("a refused filter left a subscriber")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			lids, cids := tt.filter.ListenerIDs, tt.filter.ConnectionIDs
			publish(h,
				dataEvent(lids[7], cids[900], 1),  // matches
				dataEvent(lids[7], "c900-", 1),    // not a connection of the filter
				dataEvent("other", cids[900], 1),  // not a listener of the filter
				dataEvent(lids[1023], cids[0], 1), // matches
			)
			if got := collect(t, s, 2); !equal(seqs(got), []uint64{1, 4}) {
				t.Fatalf("got %s, want 1 and 4", describe(got))
			}
		})
	}
}

// TestKindFilter: kinds filter as a set, duplicates included.
func TestKindFilter(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Filter: hub.Filter{Kinds: []event.Kind{event.ConnectionClosed, event.ConnectionClosed, event.ListenerStarted}}})
	publish(h,
		&event.Event{Kind: event.ListenerStarted, ListenerID: "l1"},
		dataEvent("l1", "c1", 1),
		&event.Event{Kind: event.ConnectionClosed, ListenerID: "l1", ConnectionID: "c1"},
	)
	if got := collect(t, s, 2); !equal(seqs(got), []uint64{1, 3}) {
		t.Fatalf("got %s, want 1 and 3", describe(got))
	}
}

// TestBoundsUnderConcurrentLoad: lossless and lossy subscribers, with a
// global bound smaller than their queues together, under publishers of
// batches and lifecycle events at once: no queue and not the sum ever
// goes past its bound (sampled as the subscribers read), and the lossless
// subscriber gets every event in order.
func TestBoundsUnderConcurrentLoad(t *testing.T) {
	const publishers, batches = 4, 200
	size := sizeOf(10)
	global := 40 * size
	h := hub.New(hub.Config{Now: fixedNow, MaxQueuedBytes: global})
	defer h.Close()
	lossless := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 30 * size})
	lossy := subscribe(t, h, hub.SubscribeOptions{QueueBytes: 30 * size})
	ctx := timeoutCtx(t)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			l := fmt.Sprintf("p%d", p)
			for i := 0; i < batches*4; i += 4 {
				if err := h.Publish(ctx, numbered(l, i), numbered(l, i+1), numbered(l, i+2)); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				ev := numbered(l, i+3)
				ev.Kind = event.ConnectionOpened
				if err := h.Publish(ctx, ev); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := lossy.Next(ctx, nil); err != nil {
				return
			}
		}
	}()
	total := publishers * batches * 4
	seen := 0
	nextOf := map[string]int{}
	for seen < total {
		for _, e := range next(t, lossless) {
			if n := number(t, e); n != nextOf[e.ListenerID] {
				t.Fatalf("publisher %s's event %d arrived when %d was due", e.ListenerID, n, nextOf[e.ListenerID])
			}
			nextOf[e.ListenerID]++
			seen++
		}
		st := h.Stats()
		if st.QueuedBytes > global || st.Policies[hub.Backpressure].QueuedBytes > 30*size || st.Policies[hub.DropOldest].QueuedBytes > 30*size {
			t.Fatalf("queued %d in all (bound %d), %d lossless, %d lossy (bound %d each)", st.QueuedBytes, global,
				st.Policies[hub.Backpressure].QueuedBytes, st.Policies[hub.DropOldest].QueuedBytes, 30*size)
		}
	}
	wg.Wait()
	lossy.Close()
	<-done
}

// TestReplayPinsNothingBeyondTheRing: subscribers that ask for a replay and
// never read keep no events alive that the ring has let go: the ring and
// the queues bound the hub's memory. 100 subscribers, each subscribing
// from the oldest event a 1 MiB ring holds, 1 MiB of traffic apart, would
// otherwise hold 100 MiB between them.
func TestReplayPinsNothingBeyondTheRing(t *testing.T) {
	const subs, payload = 100, 64 << 10
	h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: 1 << 20})
	defer h.Close()
	for range subs {
		// A queue of 1 byte keeps one live event: 100 of them are 6.4 MiB.
		since := uint64(1)
		if last := h.LastSequence(); last > 14 {
			since = last - 14
		}
		subscribe(t, h, hub.SubscribeOptions{Since: since, QueueBytes: 1})
		publish(h, events(16, payload)...)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	// The ring's 1 MiB, the queues' 6.4 MiB, the test binary's own heap,
	// and a wide margin.
	if bound := uint64(32 << 20); ms.HeapAlloc > bound {
		t.Fatalf("heap %d MiB after %d replaying subscribers over a 1 MiB ring, want at most %d MiB", ms.HeapAlloc>>20, subs, bound>>20)
	}
}
