package hub

import (
	"context"
	"testing"

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
