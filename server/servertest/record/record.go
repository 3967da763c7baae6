// Package record keeps the events an engine component publishes, for the
// engine's own tests (conn, listener): a conn.Publisher that records, and
// waits on what it recorded. It imports the engine's event package only,
// so those tests need nothing of the daemon.
package record

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// Wait bounds every wait of WaitFor; reaching it is a failure, not a
// measurement.
const Wait = 10 * time.Second

// Recorder is a publisher that keeps every event in the order published.
type Recorder struct {
	// Block, when set, is called first by a Publish with DATA events, as
	// the hub waits for a lossless subscriber; like the hub, the Recorder
	// records the events even when Block gives up, and returns its error.
	// Set it before the Recorder is in use.
	Block func(ctx context.Context) error

	mu      sync.Mutex // guards evs
	evs     []*event.Event
	changed chan struct{} // receives a token after every change
}

// New returns an empty Recorder.
func New() *Recorder { return &Recorder{changed: make(chan struct{}, 1)} }

// Publish records evs.
func (r *Recorder) Publish(ctx context.Context, evs ...*event.Event) error {
	var err error
	if r.Block != nil && slices.ContainsFunc(evs, func(e *event.Event) bool { return e.Kind == event.Data }) {
		err = r.Block(ctx)
	}
	r.mu.Lock()
	r.evs = append(r.evs, evs...)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return err
}

// Events returns a copy of the events recorded so far.
func (r *Recorder) Events() []*event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*event.Event(nil), r.evs...)
}

// WaitFor waits until ok holds for the events recorded so far and returns
// them, failing the test with what was recorded after Wait.
func (r *Recorder) WaitFor(t testing.TB, what string, ok func([]*event.Event) bool) []*event.Event {
	t.Helper()
	deadline := time.After(Wait)
	for {
		evs := r.Events()
		if ok(evs) {
			return evs
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; events so far:\n%s", what, Describe(evs))
		}
	}
}

// Describe lists evs one a line, for failure messages.
func Describe(evs []*event.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %v %s %s %q reason=%v\n", e.Kind, e.ListenerID, e.ConnectionID, e.Data, e.CloseReason)
	}
	return b.String()
}
