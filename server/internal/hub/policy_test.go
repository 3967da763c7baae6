package hub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestDropOldestStuckSubscriber: a subscriber that does not read loses the
// oldest events, is told exactly how many, keeps the newest, never slows the
// publishers, and does not affect a subscriber that keeps up.
func TestDropOldestStuckSubscriber(t *testing.T) {
	size := sizeOf(100)
	tests := []struct {
		name       string
		queueBytes int
		keeps      int // events a full queue holds
	}{
		{"eight events", 8 * size, 8},
		{"eight and a half events", 8*size + size/2, 8},
		{"smaller than one event keeps the newest", 1, 1},
	}
	const rounds, perRound = 4, 250
	const total = rounds * perRound
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			stuck := subscribe(t, h, hub.SubscribeOptions{Policy: hub.DropOldest, QueueBytes: tt.queueBytes})
			fast := subscribe(t, h, hub.SubscribeOptions{})
			fastGot := make(chan []*event.Event, 1)
			go func() {
				var got []*event.Event
				ctx := context.Background()
				for len(got) < total {
					evs, err := fast.Next(ctx, nil)
					got = append(got, evs...)
					if err != nil {
						break
					}
				}
				fastGot <- got
			}()

			var got []*event.Event
			for r := range rounds {
				done := make(chan struct{})
				go func() {
					defer close(done)
					for i := 0; i < perRound; i += 10 {
						if i%20 == 0 {
							publish(h, events(10, 100)...)
						} else if err := h.Publish(context.Background(), events(10, 100)...); err != nil {
							t.Errorf("PublishWait: %v", err)
						}
					}
				}()
				within(t, fmt.Sprintf("round %d: publishing %d events while a subscriber is stuck", r, perRound), done)

				batch := next(t, stuck)
				end := uint64((r + 1) * perRound)
				want := fmt.Sprintf("[drop(%d) %d..%d]", perRound-tt.keeps, end-uint64(tt.keeps)+1, end)
				if tt.keeps == 1 {
					want = fmt.Sprintf("[drop(%d) %d]", perRound-1, end)
				}
				if describe(batch) != want {
					t.Fatalf("round %d: Next got %s, want %s (the newest kept)", r, describe(batch), want)
				}
				got = append(got, batch...)
			}
			real, dropped, _ := split(got)
			if dropped+uint64(len(real)) != total {
				t.Fatalf("markers count %d, %d events received: %d accounted for, want %d", dropped, len(real), dropped+uint64(len(real)), total)
			}
			checkAccounted(t, got, 1)
			if last := real[len(real)-1].Sequence; last != total {
				t.Fatalf("newest event received is %d, want %d", last, total)
			}

			f := within(t, "the fast subscriber receiving everything", fastGot)
			if !equal(seqs(f), span(1, total)) {
				t.Fatalf("fast subscriber got %s, want 1..%d", describe(f), total)
			}
		})
	}
}

// TestDropOldestWithConcurrentReader: whatever the interleaving of a reader
// and publishers, every event is either delivered or counted, in order.
func TestDropOldestWithConcurrentReader(t *testing.T) {
	const total = 20000
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{QueueBytes: 16 * sizeOf(100)})
	ctx := timeoutCtx(t)
	res := make(chan []*event.Event, 1)
	go func() {
		var got []*event.Event
		var seen uint64
		for seen < total {
			evs, err := s.Next(ctx, nil)
			if err != nil {
				break
			}
			for _, e := range evs {
				if e.Kind == event.EventsDropped {
					seen += e.Dropped
				} else {
					seen++
				}
			}
			got = append(got, evs...)
		}
		res <- got
	}()
	var pubs sync.WaitGroup
	for range 4 {
		pubs.Go(func() {
			for range total / 4 / 5 {
				publish(h, events(5, 100)...)
			}
		})
	}
	pubs.Wait()
	got := within(t, "the reader accounting for every event", res)
	real, dropped, _ := split(got)
	if dropped+uint64(len(real)) != total {
		t.Fatalf("markers count %d, %d events received, want %d in all", dropped, len(real), total)
	}
	checkAccounted(t, got, 1)
}

// TestDisconnect: an overflowing Disconnect subscriber ends with a
// *SlowConsumerError whose Resume lets it continue without a gap or a
// duplicate; other subscribers are unaffected.
func TestDisconnect(t *testing.T) {
	size := sizeOf(100)
	const limitEvents = 10
	tests := []struct {
		name       string
		filter     hub.Filter
		readBefore int // events the subscriber reads before it gets stuck
		interleave bool
		wantResume uint64
	}{
		{"never read", hub.Filter{}, 0, false, 1},
		{"read some", hub.Filter{}, 5, false, 6},
		// B1 A2 B3 A4 B5 A6 read, B7 skipped: resume at A8.
		{"filtered", hub.Filter{ListenerIDs: []string{"A"}}, 3, true, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			opts := hub.SubscribeOptions{Filter: tt.filter, Policy: hub.Disconnect, QueueBytes: limitEvents * size}
			s := subscribe(t, h, opts)
			other := subscribe(t, h, hub.SubscribeOptions{})

			published := 0
			publish := func(n int) {
				for range n {
					if tt.interleave {
						publish(h, dataEvent("B", "c1", 100))
						published++
					}
					publish(h, dataEvent("A", "c1", 100))
					published++
				}
			}
			publish(tt.readBefore)
			var before []*event.Event
			if tt.readBefore > 0 {
				before = collect(t, s, tt.readBefore)
			}
			publish(limitEvents + 5) // overflows
			if got := h.Subscribers(); got != 1 {
				t.Fatalf("Subscribers() after the overflow = %d, want 1", got)
			}
			select {
			case <-s.Done():
			default:
				t.Fatal("Done() not closed after the overflow")
			}

			more, err := drain(t, s)
			var slow *hub.SlowConsumerError
			if !errors.As(err, &slow) {
				t.Fatalf("Next ended with %v, want a *SlowConsumerError", err)
			}
			if slow.QueueBytes != limitEvents*size {
				t.Fatalf("QueueBytes = %d, want %d", slow.QueueBytes, limitEvents*size)
			}
			before = append(before, more...)
			if _, err := s.Next(timeoutCtx(t), nil); !errors.As(err, &slow) {
				t.Fatalf("Next after the end returned %v, want the *SlowConsumerError again", err)
			}
			if slow.Resume != tt.wantResume {
				t.Fatalf("Resume = %d after receiving %s, want %d", slow.Resume, describe(before), tt.wantResume)
			}

			opts.Since = slow.Resume
			opts.QueueBytes = 0
			again := subscribe(t, h, opts)
			publish(3)
			h.Close()
			after := drainClosed(t, again)

			all := append(before, after...)
			var want []uint64
			for _, e := range drainClosed(t, other) {
				if tt.filter.Match(e) {
					want = append(want, e.Sequence)
				}
			}
			if len(want) == 0 || !equal(seqs(all), want) {
				t.Fatalf("before the disconnect %s, after resuming at %d %s; want together %v",
					describe(before), slow.Resume, describe(after), want)
			}
			if uint64(published) != h.LastSequence() {
				t.Fatalf("published %d, LastSequence %d", published, h.LastSequence())
			}
		})
	}
}

// TestDisconnectOthersUnaffected: the other subscriber sees every event, the
// disconnected one's error names the limit and where to resume.
func TestDisconnectOthersUnaffected(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Disconnect, QueueBytes: 3 * sizeOf(10)})
	other := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Disconnect})
	publish(h, events(100, 10)...)
	_, err := s.Next(timeoutCtx(t), nil)
	var slow *hub.SlowConsumerError
	if !errors.As(err, &slow) || slow.Resume != 1 || slow.QueueBytes != 3*sizeOf(10) {
		t.Fatalf("Next = %v, want *SlowConsumerError{QueueBytes: %d, Resume: 1}", err, 3*sizeOf(10))
	}
	if got := collect(t, other, 100); !equal(seqs(got), span(1, 100)) {
		t.Fatalf("other subscriber got %s, want 1..100", describe(got))
	}
}

// publishWaitAsync runs PublishWait in a goroutine; the channel reports its result.
func publishWaitAsync(ctx context.Context, h *hub.Hub, evs ...*event.Event) <-chan error {
	res := make(chan error, 1)
	go func() { res <- h.Publish(ctx, evs...) }()
	return res
}

// TestBackpressureBlocksAndResumes: a publisher stops before an event a
// full lossless queue has no room for, without numbering it, and goes on
// when the subscriber reads.
func TestBackpressureBlocksAndResumes(t *testing.T) {
	const limitEvents = 4
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: limitEvents * sizeOf(100)})

	for i := range limitEvents {
		if err := within(t, "Publish with room in the queue", publishWaitAsync(context.Background(), h, events(1, 100)...)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	blocked := publishWaitAsync(context.Background(), h, events(1, 100)...)
	still(t, "Publish returning while the queue is full", blocked)
	if got := h.LastSequence(); got != limitEvents {
		t.Fatalf("LastSequence = %d while the queue is full, want %d: the event went past the limit", got, limitEvents)
	}

	if got := next(t, s); !equal(seqs(got), span(1, limitEvents)) {
		t.Fatalf("Next got %s, want 1..%d", describe(got), limitEvents)
	}
	if err := within(t, "Publish returning once the subscriber read", blocked); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := next(t, s); !equal(seqs(got), span(limitEvents+1, limitEvents+1)) {
		t.Fatalf("Next got %s, want %d", describe(got), limitEvents+1)
	}
}

// TestBackpressureLossless: publishers at full speed against a small
// lossless queue: the subscriber gets everything, in order, with no marker.
func TestBackpressureLossless(t *testing.T) {
	const publishers, perPub = 4, 1000
	const total = publishers * perPub
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 4 * sizeOf(10)})

	ctx := timeoutCtx(t)
	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Go(func() {
			l := fmt.Sprintf("p%d", p)
			for i := 0; i < perPub; i += 2 {
				if err := h.Publish(ctx, numbered(l, i), numbered(l, i+1)); err != nil {
					t.Errorf("PublishWait: %v", err)
					return
				}
			}
		})
	}
	got := collect(t, s, total)
	pubs.Wait()
	if !equal(seqs(got), span(1, total)) {
		t.Fatalf("got %s, want 1..%d without markers", describe(got), total)
	}
	nextOf := map[string]int{}
	for _, e := range got {
		if n := number(t, e); n != nextOf[e.ListenerID] {
			t.Fatalf("publisher %s's event %d arrived when %d was due", e.ListenerID, n, nextOf[e.ListenerID])
		}
		nextOf[e.ListenerID]++
	}
}

// TestBackpressureReleases: a blocked Publish publishes and returns when
// the subscriber or the hub goes away; when its ctx ends, it ends the full
// subscriber with its resume sequence, publishes to everyone else and
// returns ctx's error.
func TestBackpressureReleases(t *testing.T) {
	tests := []struct {
		name      string
		release   func(cancel context.CancelFunc, h *hub.Hub, s *hub.Subscriber)
		want      error
		published uint64
	}{
		{"ctx canceled", func(cancel context.CancelFunc, _ *hub.Hub, _ *hub.Subscriber) { cancel() }, context.Canceled, 3},
		{"subscriber closed", func(_ context.CancelFunc, _ *hub.Hub, s *hub.Subscriber) { s.Close() }, nil, 3},
		{"hub closed", func(_ context.CancelFunc, h *hub.Hub, _ *hub.Subscriber) { h.Close() }, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: 2 * sizeOf(10)})
			other := subscribe(t, h, hub.SubscribeOptions{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			blocked := publishWaitAsync(ctx, h, events(3, 10)...)
			waitFor(t, "the events with room to be published", func() bool { return h.LastSequence() == 2 })
			still(t, "Publish returning while the queue is full", blocked)
			tt.release(cancel, h, s)
			if err := within(t, "Publish returning", blocked); !errors.Is(err, tt.want) {
				t.Fatalf("Publish returned %v, want %v", err, tt.want)
			}
			if got := h.LastSequence(); got != tt.published {
				t.Fatalf("LastSequence = %d, want %d", got, tt.published)
			}
			if tt.want == nil {
				return
			}
			_, err := drain(t, s)
			var slow *hub.SlowConsumerError
			if !errors.As(err, &slow) || slow.Policy != hub.Backpressure || slow.Resume != 1 || !errors.Is(err, context.Canceled) {
				t.Fatalf("the full subscriber ended with %v, want a backpressure *SlowConsumerError with Resume 1 caused by the cancel", err)
			}
			if got := collect(t, other, 3); !equal(seqs(got), span(1, 3)) {
				t.Fatalf("other subscriber got %s, want 1..3", describe(got))
			}
		})
	}
}

// TestBackpressureOnlyWatchedEvents: a full lossless subscriber watching
// listener A holds back publishers of A, not of B.
func TestBackpressureOnlyWatchedEvents(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{
		Filter:     hub.Filter{ListenerIDs: []string{"A"}},
		Policy:     hub.Backpressure,
		QueueBytes: 2 * sizeOf(100),
	})
	publish(h, dataEvent("A", "c1", 100), dataEvent("A", "c1", 100)) // the queue is full

	ctx := timeoutCtx(t)
	for range 100 {
		if err := within(t, "Publish of an unwatched listener", publishWaitAsync(ctx, h, dataEvent("B", "c2", 100))); err != nil {
			t.Fatalf("Publish(B): %v", err)
		}
	}
	blockedA := publishWaitAsync(ctx, h, dataEvent("A", "c1", 100))
	still(t, "Publish(A) returning while A's subscriber is full", blockedA)

	var got []*event.Event
	for len(got) < 3 {
		got = append(got, next(t, s)...)
	}
	if err := within(t, "Publish(A) returning once the subscriber read", blockedA); err != nil {
		t.Fatalf("Publish(A): %v", err)
	}
	if want := []uint64{1, 2, 103}; !equal(seqs(got), want) {
		t.Fatalf("subscriber got %s, want 1, 2 and 103", describe(got))
	}
}
