package listener_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

type stopResult struct {
	info listener.Info
	err  error
}

// stopAsync runs Stop in the background; its result arrives on the channel.
func stopAsync(t *testing.T, r *gateway, id string, drain time.Duration) <-chan stopResult {
	t.Helper()
	res := make(chan stopResult, 1)
	c := ctx(t)
	go func() {
		info, err := r.Stop(c, id, drain)
		res <- stopResult{info, err}
	}()
	return res
}

// result waits for a Stop started by stopAsync.
func result(t *testing.T, what string, res <-chan stopResult) stopResult {
	t.Helper()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r
	case <-time.After(testTimeout):
		t.Fatalf("%s did not return within %v", what, testTimeout)
	}
	return stopResult{}
}

// A second Stop with a shorter drain shortens the drain in progress: both
// calls return once the listener has stopped, the idle connection is
// closed with reason LISTENER_STOPPED, and the id is free again, instead of
// all of that waiting out the first drain.
func TestStopShortensDrain(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "d1"})
	idle := dial(t, info.Address)
	id := connID(t, r, idle)

	first := stopAsync(t, r, "d1", longDrain)
	waitState(t, r, "d1", listener.Draining)
	second := stopAsync(t, r, "d1", 50*time.Millisecond)

	b := result(t, "the second, shorter Stop", second)
	a := result(t, "the first Stop, whose drain the second shortened", first)
	if !reflect.DeepEqual(a.info, b.info) || a.info.State != listener.Stopped {
		t.Errorf("the two Stops returned\n%+v\nand\n%+v\nwant the same final snapshot, Stopped", a.info, b.info)
	}
	if got := rec.waitClosed(t, id); got != event.ReasonListenerStopped {
		t.Errorf("idle connection closed with reason %v, want listener_stopped", got)
	}
	readAll(t, idle)
	portFree(t, info.Address)
	start(t, r, listener.Spec{ID: "d1"}) // the id is free
}

// A second Stop with a longer drain does not extend the drain in
// progress: both return when the first's drain ends.
func TestStopLongerDrainDoesNotExtend(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "d1"})
	idle := dial(t, info.Address)
	id := connID(t, r, idle)

	first := stopAsync(t, r, "d1", 300*time.Millisecond)
	waitState(t, r, "d1", listener.Draining)
	second := stopAsync(t, r, "d1", longDrain)

	a := result(t, "the first Stop", first)
	b := result(t, "the second Stop, whose longer drain must not extend the first", second)
	if !reflect.DeepEqual(a.info, b.info) || a.info.State != listener.Stopped {
		t.Errorf("the two Stops returned\n%+v\nand\n%+v\nwant the same final snapshot, Stopped", a.info, b.info)
	}
	if got := rec.waitClosed(t, id); got != event.ReasonListenerStopped {
		t.Errorf("idle connection closed with reason %v, want listener_stopped", got)
	}
	start(t, r, listener.Spec{ID: "d1"}) // the id is free
}
