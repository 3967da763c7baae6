package hub_test

import (
	"errors"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestQueuedWithinOnePublish holds the bytes queued to their bounds and to
// what the queues hold when a single Publish of many events meets them:
// the hub adds a publish's bytes to its total once, so the events of that
// publish must count against the global bound before they are added, and
// events dropped or discarded within it must leave the total right.
func TestQueuedWithinOnePublish(t *testing.T) {
	size := sizeOf(10)
	check := func(t *testing.T, h *hub.Hub, want int) {
		t.Helper()
		st := h.Stats()
		held := 0
		for _, ps := range st.Policies {
			held += ps.QueuedBytes
		}
		if st.QueuedBytes != want || held != want {
			t.Fatalf("queued %d bytes, the queues hold %d; want %d", st.QueuedBytes, held, want)
		}
	}

	t.Run("drop oldest, own bound", func(t *testing.T) {
		h := hub.New(hub.Config{Now: fixedNow})
		s := subscribe(t, h, hub.SubscribeOptions{Policy: hub.DropOldest, QueueBytes: 4 * size})
		if err := h.Publish(timeoutCtx(t), events(10, 10)...); err != nil {
			t.Fatal(err)
		}
		check(t, h, 4*size)
		real, dropped, _ := split(next(t, s))
		if len(real) != 4 || dropped != 6 {
			t.Fatalf("got %d events and %d dropped, want 4 and 6", len(real), dropped)
		}
		check(t, h, 0)
	})

	t.Run("drop oldest, global bound shared", func(t *testing.T) {
		h := hub.New(hub.Config{Now: fixedNow, MaxQueuedBytes: 5 * size})
		a := subscribe(t, h, hub.SubscribeOptions{Policy: hub.DropOldest, QueueBytes: 100 * size})
		b := subscribe(t, h, hub.SubscribeOptions{Policy: hub.DropOldest, QueueBytes: 100 * size})
		if err := h.Publish(timeoutCtx(t), events(10, 10)...); err != nil {
			t.Fatal(err)
		}
		if st := h.Stats(); st.QueuedBytes > 5*size {
			t.Fatalf("queued %d bytes after one publish, over the global bound of %d", st.QueuedBytes, 5*size)
		}
		got := 0
		for _, s := range []*hub.Subscriber{a, b} {
			real, dropped, _ := split(next(t, s))
			if len(real)+int(dropped) != 10 {
				t.Fatalf("a subscriber got %d events and %d dropped, want 10 in all", len(real), dropped)
			}
			got += len(real)
		}
		if got != 5 {
			t.Fatalf("the subscribers got %d events together, want the 5 the global bound holds", got)
		}
		check(t, h, 0)
	})

	t.Run("disconnect within the publish", func(t *testing.T) {
		h := hub.New(hub.Config{Now: fixedNow})
		gone := subscribe(t, h, hub.SubscribeOptions{Policy: hub.Disconnect, QueueBytes: 4 * size})
		kept := subscribe(t, h, hub.SubscribeOptions{Policy: hub.DropOldest, QueueBytes: 100 * size})
		if err := h.Publish(timeoutCtx(t), events(10, 10)...); err != nil {
			t.Fatal(err)
		}
		check(t, h, 10*size)
		if _, err := drain(t, gone); !errors.As(err, new(*hub.SlowConsumerError)) {
			t.Fatalf("the disconnect subscriber ended with %v, want a SlowConsumerError", err)
		}
		if n := len(collect(t, kept, 10)); n != 10 {
			t.Fatalf("the other subscriber got %d events, want 10", n)
		}
		check(t, h, 0)
	})
}
