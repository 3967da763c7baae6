package hub_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestSubscribeSequenceOutOfRange: a Since past the newest sequence + 1
// of the hub's own incarnation is refused, naming the newest; up to the
// newest + 1 it is a resume as before.
func TestSubscribeSequenceOutOfRange(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow, Incarnation: "inc1"})
	defer h.Close()
	publish(h, events(5, 10)...)
	for _, opts := range []hub.SubscribeOptions{{Since: 7}, {Since: 1 << 63}, {Since: 7, Incarnation: "inc1"}} {
		s, err := h.Subscribe(opts)
		var se *hub.SequenceError
		if !errors.As(err, &se) || !errors.Is(err, hub.ErrSequenceOutOfRange) || se.Last != 5 || se.Since != opts.Since {
			t.Fatalf("Subscribe(%+v) = %v, %v; want a *SequenceError with Last 5", opts, s, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "newest sequence, 5,") || !strings.Contains(msg, "at most 6") || !strings.Contains(msg, "since_incarnation") {
			t.Errorf("message %q does not say the newest sequence and how to resume", msg)
		}
	}
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("%d subscribers after refusals", n)
	}
	s := subscribe(t, h, hub.SubscribeOptions{Since: 6})
	if st := s.Start(); st.Changed || st.LastSequence != 5 || st.From != 6 {
		t.Fatalf("Start of Since=6 = %+v, want LastSequence 5, From 6, not Changed", st)
	}
}

// TestSubscribeOtherIncarnation: a Since of another incarnation, a
// lenient future Since, and a resync replay the ring from its start, with
// the usual marker for what the ring lost, and say so in Start.
func TestSubscribeOtherIncarnation(t *testing.T) {
	tests := []struct {
		name    string
		opts    hub.SubscribeOptions
		changed bool
	}{
		{"other incarnation", hub.SubscribeOptions{Since: 3, Incarnation: "before"}, true},
		{"other incarnation, live only asked", hub.SubscribeOptions{Incarnation: "before"}, true},
		{"other incarnation, far ahead", hub.SubscribeOptions{Since: 1 << 40, Incarnation: "before"}, true},
		{"lenient future", hub.SubscribeOptions{Since: 1 << 40, Lenient: true}, true},
		{"resync", hub.SubscribeOptions{Since: 4, Incarnation: "now", Resync: true}, true},
		{"own incarnation", hub.SubscribeOptions{Since: 4, Incarnation: "now"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A ring of 3 events.
			h := hub.New(hub.Config{Now: fixedNow, Incarnation: "now", ReplayBytes: 3 * sizeOf(100)})
			publish(h, events(5, 100)...)
			s := subscribe(t, h, tt.opts)
			st := s.Start()
			if st.Changed != tt.changed || st.LastSequence != 5 {
				t.Fatalf("Start = %+v, want Changed %v, LastSequence 5", st, tt.changed)
			}
			publish(h, events(1, 100)...)
			h.Close()
			got := drainClosed(t, s)
			// From 1: the replay reads the ring at Next, after 6, when it
			// holds 4..6.
			want := "[drop(3) 4..6]"
			if !tt.changed {
				want = "[4..6]"
			}
			if describe(got) != want {
				t.Fatalf("got %s, want %s", describe(got), want)
			}
			if wantFrom := uint64(1); tt.changed && st.From != wantFrom || !tt.changed && st.From != 4 {
				t.Errorf("From = %d", st.From)
			}
		})
	}
}

// TestSubscribeStartAtomic: Start().LastSequence is exactly where the
// subscription went live, while publishers run: the first live event is
// LastSequence + 1, and an out-of-range refusal names a sequence that was
// the newest under the same lock.
func TestSubscribeStartAtomic(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			publish(h, &event.Event{Kind: event.Data, Data: []byte("x")})
		}
	})
	defer wg.Wait()
	defer close(stop)
	for range 50 {
		s := subscribe(t, h, hub.SubscribeOptions{})
		last := s.Start().LastSequence
		// One event at least, should the publisher have finished.
		publish(h, &event.Event{Kind: event.Data, Data: []byte("y")})
		evs := next(t, s)
		s.Close()
		if evs[0].Sequence != last+1 {
			t.Fatalf("first live event %d after Start().LastSequence %d", evs[0].Sequence, last)
		}
	}
}
