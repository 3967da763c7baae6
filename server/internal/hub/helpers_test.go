package hub_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// waitTimeout bounds every wait in these tests: reaching it fails the test
// instead of hanging it.
const waitTimeout = 5 * time.Second

// quiet is how long a test watches for something that must not happen (a
// blocked publisher returning). It asserts no speed: a correct hub never
// produces the event, however long one watches.
const quiet = 100 * time.Millisecond

// maxBatch is the payload bound of one Next batch the hub documents.
const maxBatch = 1 << 20

var epoch = time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)

func fixedNow() time.Time { return epoch }

// dataEvent returns a Data event on listener l and connection c with n bytes.
func dataEvent(l, c string, n int) *event.Event {
	return &event.Event{Kind: event.Data, ListenerID: l, ConnectionID: c, Data: make([]byte, n)}
}

// numbered returns a Data event whose payload is the decimal i, so a test can
// tell a publisher's events apart and check their order.
func numbered(l string, i int) *event.Event {
	return &event.Event{Kind: event.Data, ListenerID: l, ConnectionID: l + "-c", Data: []byte(strconv.Itoa(i))}
}

func number(t testing.TB, e *event.Event) int {
	t.Helper()
	n, err := strconv.Atoi(string(e.Data))
	if err != nil {
		t.Fatalf("event %d: payload %q is not a number", e.Sequence, e.Data)
	}
	return n
}

// events returns n Data events of size bytes payload each.
func events(n, size int) []*event.Event {
	evs := make([]*event.Event, n)
	for i := range evs {
		evs[i] = dataEvent("l1", "c1", size)
	}
	return evs
}

// sizeOf is what one dataEvent("l1", "c1", n) counts against queues and the ring.
func sizeOf(n int) int { return dataEvent("l1", "c1", n).Size() }

func timeoutCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func subscribe(t testing.TB, h *hub.Hub, opts hub.SubscribeOptions) *hub.Subscriber {
	t.Helper()
	s, err := h.Subscribe(opts)
	if err != nil {
		t.Fatalf("Subscribe(%+v): %v", opts, err)
	}
	t.Cleanup(s.Close)
	return s
}

// next calls Next once and fails the test on an error, including the timeout.
func next(t testing.TB, s *hub.Subscriber) []*event.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	evs, err := s.Next(ctx, nil)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if len(evs) == 0 {
		t.Fatal("Next returned no event and no error")
	}
	return evs
}

// collect calls Next until it has received n events that are not
// EventsDropped markers; it returns everything received, markers included.
func collect(t testing.TB, s *hub.Subscriber, n int) []*event.Event {
	t.Helper()
	var all []*event.Event
	real := 0
	for real < n {
		evs := next(t, s)
		for _, e := range evs {
			if e.Kind != event.EventsDropped {
				real++
			}
		}
		all = append(all, evs...)
	}
	if real > n {
		t.Fatalf("wanted %d events, got %d: %s", n, real, describe(all))
	}
	return all
}

// drain calls Next until it returns an error, which it returns with every
// event received before it. It fails the test if that takes waitTimeout.
func drain(t testing.TB, s *hub.Subscriber) ([]*event.Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var all []*event.Event
	for {
		evs, err := s.Next(ctx, nil)
		all = append(all, evs...)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Next did not end the subscription within %v; got %s", waitTimeout, describe(all))
			}
			return all, err
		}
	}
}

// drainClosed drains s and fails unless it ended with ErrClosed.
func drainClosed(t testing.TB, s *hub.Subscriber) []*event.Event {
	t.Helper()
	evs, err := drain(t, s)
	if !errors.Is(err, hub.ErrClosed) {
		t.Fatalf("subscription ended with %v, want ErrClosed", err)
	}
	return evs
}

// seqs returns the sequences of evs, 0 standing for an EventsDropped marker.
func seqs(evs []*event.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Sequence
	}
	return out
}

// span returns the sequences from..to inclusive.
func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// describe renders evs compactly for failure messages: sequences, markers as
// "drop(n)", runs of consecutive sequences as "a..b".
func describe(evs []*event.Event) string {
	var out []string
	for i := 0; i < len(evs); i++ {
		e := evs[i]
		if e.Kind == event.EventsDropped {
			out = append(out, fmt.Sprintf("drop(%d)", e.Dropped))
			continue
		}
		j := i
		for j+1 < len(evs) && evs[j+1].Kind != event.EventsDropped && evs[j+1].Sequence == evs[j].Sequence+1 {
			j++
		}
		if j > i {
			out = append(out, fmt.Sprintf("%d..%d", e.Sequence, evs[j].Sequence))
		} else {
			out = append(out, strconv.FormatUint(e.Sequence, 10))
		}
		i = j
	}
	return fmt.Sprint(out)
}

// split separates markers from events and sums the markers' counts.
func split(evs []*event.Event) (real []*event.Event, dropped uint64, markers int) {
	for _, e := range evs {
		if e.Kind == event.EventsDropped {
			dropped += e.Dropped
			markers++
			if e.Sequence != 0 {
				panic("marker with a sequence")
			}
			continue
		}
		real = append(real, e)
	}
	return real, dropped, markers
}

// checkAccounted checks what an unfiltered subscriber that asked for every
// event from first on received: sequences strictly increase, and every gap,
// including one before the first event, is announced by a marker placed
// right where the gap is, counting exactly the missing sequences.
func checkAccounted(t testing.TB, evs []*event.Event, first uint64) {
	t.Helper()
	want := first
	var pending uint64
	for i, e := range evs {
		if e.Kind == event.EventsDropped {
			if e.Dropped == 0 {
				t.Fatalf("marker at %d counts 0 events: %s", i, describe(evs))
			}
			pending += e.Dropped
			continue
		}
		if e.Sequence < want {
			t.Fatalf("event %d: sequence %d, want at least %d (duplicate or reordered): %s", i, e.Sequence, want, describe(evs))
		}
		if gap := e.Sequence - want; gap != pending {
			t.Fatalf("event %d: sequence %d follows %d missing sequences, but the markers before it count %d: %s",
				i, e.Sequence, gap, pending, describe(evs))
		}
		pending = 0
		want = e.Sequence + 1
	}
	if pending != 0 {
		t.Fatalf("trailing markers count %d events that no gap explains: %s", pending, describe(evs))
	}
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// within waits for done, failing the test after waitTimeout.
func within[T any](t testing.TB, what string, done <-chan T) T {
	t.Helper()
	select {
	case v := <-done:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not happen within %v", what, waitTimeout)
		panic("unreachable")
	}
}

// still checks that ch yields nothing for a while: the thing it reports
// must not have happened yet.
func still[T any](t testing.TB, what string, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s happened (%v), but must not have yet", what, v)
	case <-time.After(quiet):
	}
}

// publish publishes evs with a context that never ends: a test that uses
// it either has no Backpressure subscriber that could be full, or checks
// that Publish waits.
func publish(h *hub.Hub, evs ...*event.Event) {
	_ = h.Publish(context.Background(), evs...)
}
