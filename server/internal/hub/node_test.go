package hub_test

import (
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// The hub stamps its node on every event it publishes that names none,
// before it counts the event's size, keeps a node an event already names
// (one published by another node of a cluster), and stamps none on the
// EVENTS_DROPPED markers it makes for one subscriber.
func TestNodeStamped(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow, Node: "a"})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{QueueBytes: 3 * sizeOf(100)})

	own, other := dataEvent("l1", "c1", 100), dataEvent("l1", "c2", 100)
	other.Node = "b"
	unsealed := dataEvent("l1", "c1", 100).Size()
	publish(h, own, other)
	if own.Node != "a" || other.Node != "b" {
		t.Fatalf("published nodes %q and %q, want a (stamped) and b (kept)", own.Node, other.Node)
	}
	if own.Size() <= unsealed {
		t.Errorf("size %d after stamping, want more than %d: the node's bytes count", own.Size(), unsealed)
	}
	got := next(t, s)
	if len(got) != 2 || got[0].Node != "a" || got[1].Node != "b" {
		t.Fatalf("delivered %v, want the two events with their nodes", got)
	}

	// Over the queue's bound: the oldest go, and a marker says so.
	for range 5 {
		publish(h, dataEvent("l1", "c1", 100))
	}
	var marker *event.Event
	for _, e := range next(t, s) {
		if e.Kind == event.EventsDropped {
			marker = e
		} else if e.Node != "a" {
			t.Errorf("event %d: node %q, want a", e.Sequence, e.Node)
		}
	}
	if marker == nil {
		t.Fatal("no EVENTS_DROPPED marker after overflowing the queue")
	}
	if marker.Node != "" {
		t.Errorf("marker node %q, want none: a marker concerns one subscriber, not a node", marker.Node)
	}
}
