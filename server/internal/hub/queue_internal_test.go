package hub

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// TestStuckDropOldestQueueStaysBounded: a DropOldest subscriber that never
// calls Next (a gRPC stream stuck in Send) must cost a bounded amount of
// memory, as DefaultQueueBytes promises. Its queue must not keep a slot for
// every event ever dropped.
func TestStuckDropOldestQueueStaysBounded(t *testing.T) {
	const published = 100_000
	e := &event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: make([]byte, 100)}
	limit := 10 * e.Size()
	h := New(Config{ReplayBytes: -1})
	defer h.Close()
	s, err := h.Subscribe(SubscribeOptions{Policy: DropOldest, QueueBytes: limit})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range published {
		h.Publish(context.Background(), &event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: e.Data})
	}
	h.mu.Lock()
	live, slots := len(s.queue)-s.head, cap(s.queue)
	h.mu.Unlock()
	if live != 10 {
		t.Fatalf("%d events queued, want 10", live)
	}
	// Any amortized compaction keeps the backing array within a small
	// multiple of what it holds (or of append's initial growth).
	if slots > 1024 {
		t.Fatalf("after %d events to a stuck subscriber holding %d, its queue has %d slots", published, live, slots)
	}
}

// TestReplayDoesNotHoldPublishers: a subscriber that replays a full ring
// through a filter at its caps matches the replayed events without the
// lock publishers take: a publisher goes on while the replay is being
// matched, and the replay and the live events meet with no gap and no
// duplicate.
func TestReplayDoesNotHoldPublishers(t *testing.T) {
	const inRing = 10_000
	h := New(Config{})
	defer h.Close()
	for i := range inRing {
		_ = h.Publish(context.Background(), &event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c" + strconv.Itoa(i%2000)})
	}
	ids := make([]string, MaxFilterIDs)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
	}

	published := make(chan error, 1)
	var once sync.Once
	replayMatching = func() {
		// The first match waits for a publish, which needs the hub's lock.
		once.Do(func() {
			go func() {
				published <- h.Publish(context.Background(), &event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c1"})
			}()
			select {
			case err := <-published:
				published <- err
			case <-time.After(5 * time.Second):
				t.Error("a Publish did not finish while a replay was being matched: the replay holds the publishers' lock")
			}
		})
	}
	defer func() { replayMatching = nil }()
	s, err := h.Subscribe(SubscribeOptions{Since: 1, Filter: Filter{ConnectionIDs: ids}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// c0..c1023 of c0..c1999 published in turn, then the live c1.
	want := []uint64{}
	for i := range inRing {
		if i%2000 < MaxFilterIDs {
			want = append(want, uint64(i+1))
		}
	}
	want = append(want, inRing+1)
	var got []uint64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for len(got) < len(want) {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("Next after %d events: %v", len(got), err)
		}
		for _, e := range evs {
			got = append(got, e.Sequence)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %d events, want %d: the replay and the live event do not meet exactly", len(got), len(want))
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
}
