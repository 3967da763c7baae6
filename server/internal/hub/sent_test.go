package hub_test

import (
	"context"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// sentEvent is a Data event of what the gateway wrote on c1.
func sentEvent(n int) *event.Event {
	e := dataEvent("l1", "c1", n)
	e.Direction = event.Sent
	return e
}

// Sent data reaches only the subscribers that ask for it, live and in the
// replay alike; the others see the received data in the same order as if
// no sent data had been published.
func TestIncludeSent(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	// 1 received, 2 sent, 3 received, 4 opened (no direction), 5 sent
	opened := &event.Event{Kind: event.ConnectionOpened, ListenerID: "l1", ConnectionID: "c1"}
	publish(h, dataEvent("l1", "c1", 1), sentEvent(2))
	both := subscribe(t, h, hub.SubscribeOptions{Filter: hub.Filter{IncludeSent: true}})
	plain := subscribe(t, h, hub.SubscribeOptions{})
	replayBoth := subscribe(t, h, hub.SubscribeOptions{Since: 1, Filter: hub.Filter{IncludeSent: true}})
	replayPlain := subscribe(t, h, hub.SubscribeOptions{Since: 1})
	dataOnly := subscribe(t, h, hub.SubscribeOptions{Since: 1, Filter: hub.Filter{IncludeSent: true, Kinds: []event.Kind{event.Data}}})
	publish(h, dataEvent("l1", "c1", 3), opened, sentEvent(5))
	h.Close()
	for _, tt := range []struct {
		name string
		s    *hub.Subscriber
		want []uint64
	}{
		{"live with include_sent", both, []uint64{3, 4, 5}},
		{"live without", plain, []uint64{3, 4}},
		{"replay with include_sent", replayBoth, []uint64{1, 2, 3, 4, 5}},
		{"replay without", replayPlain, []uint64{1, 3, 4}},
		{"replay of data kinds with include_sent", dataOnly, []uint64{1, 2, 3, 5}},
	} {
		if got := seqs(drainClosed(t, tt.s)); !equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A Backpressure subscriber that does not ask for sent data never holds up
// the publisher of sent data (a write path, a relay), however full it is;
// one that asks does.
func TestIncludeSentBackpressure(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	full := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: sizeOf(10)})
	publish(h, dataEvent("l1", "c1", 10)) // its queue is full now
	done := make(chan error, 1)
	go func() { done <- h.Publish(context.Background(), sentEvent(10)) }()
	if err := within(t, "a sent event past a full subscriber without include_sent", done); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	full.Close()

	asks := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: sizeOf(10), Filter: hub.Filter{IncludeSent: true}})
	publish(h, sentEvent(10)) // fills it
	go func() { done <- h.Publish(context.Background(), sentEvent(10)) }()
	still(t, "a sent event past a full subscriber that asks for sent data", done)
	if got := next(t, asks); len(got) != 1 || got[0].Direction != event.Sent {
		t.Fatalf("the lossless subscriber got %s, want the first sent event", describe(got))
	}
	if err := within(t, "the sent event once there is room", done); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// TryPublish publishes what Publish would without waiting, numbered and
// kept in the ring the same (a subscriber resuming with include_sent
// later replays it); where a Backpressure subscriber the event matches
// lacks room it publishes nothing, and Publish then waits as ever.
func TestTryPublish(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	// Full, but without include_sent: sent data never waits for it.
	plain := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: sizeOf(10)})
	publish(h, dataEvent("l1", "c1", 10)) // 1
	if !h.TryPublish(sentEvent(10)) {     // 2
		t.Fatal("TryPublish of a sent event past a full subscriber without include_sent: false, want true")
	}
	// plain matches received data and is full: nothing is published.
	if h.TryPublish(dataEvent("l1", "c1", 10)) {
		t.Fatal("TryPublish of received data past a full Backpressure subscriber: true, want false")
	}
	if got := h.LastSequence(); got != 2 {
		t.Fatalf("after a TryPublish that found no room, last sequence %d, want 2", got)
	}
	replay := subscribe(t, h, hub.SubscribeOptions{Since: 1, Filter: hub.Filter{IncludeSent: true}})
	withSent := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Backpressure, QueueBytes: sizeOf(10), Filter: hub.Filter{IncludeSent: true}})
	if !h.TryPublish(sentEvent(10)) { // 3: withSent has room for one
		t.Fatal("TryPublish with room in every lossless queue: false, want true")
	}
	if h.TryPublish(sentEvent(10)) {
		t.Fatal("TryPublish of a sent event past a full include_sent subscriber: true, want false")
	}
	if got := seqs(next(t, replay)); !equal(got, []uint64{1, 2, 3}) {
		t.Errorf("resumed with include_sent from 1: got %v, want [1 2 3]", got)
	}
	if got := seqs(next(t, withSent)); !equal(got, []uint64{3}) {
		t.Errorf("include_sent Backpressure subscriber: got %v, want [3]", got)
	}
	if got := seqs(next(t, plain)); !equal(got, []uint64{1}) {
		t.Errorf("Backpressure subscriber without include_sent: got %v, want [1]", got)
	}
	h.Close()
	if !h.TryPublish(sentEvent(10)) {
		t.Error("TryPublish after Close: false, want true (dropped, as Publish drops it)")
	}
}
