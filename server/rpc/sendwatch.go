package rpc

import (
	"sync"
	"time"
)

// StreamWriteTimeout bounds each send of an event stream, gRPC and REST: a
// client that accepts nothing of its stream for this long is stuck, not
// slow, and its stream ends rather than hold a goroutine and a batch (and,
// at shutdown, the shutdown) for good.
const StreamWriteTimeout = 30 * time.Second

// FinalWriteTimeout bounds the sends of a stream once the gateway shuts
// down: a client that reads gets its final status at once; one that does
// not no longer holds the shutdown.
const FinalWriteTimeout = time.Second

// sendWatch calls stuck when one send takes longer than its bound:
// StreamWriteTimeout, or FinalWriteTimeout once shorten was called.
type sendWatch struct {
	stuck func()

	mu      sync.Mutex // guards the fields below
	timer   *time.Timer
	sending bool
	ending  bool
	fired   bool
}

func newSendWatch(stuck func()) *sendWatch {
	w := &sendWatch{stuck: stuck}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// begin is called before a send, end after it.
func (w *sendWatch) begin() {
	w.mu.Lock()
	w.sending = true
	w.timer.Reset(w.boundLocked())
	w.mu.Unlock()
}

func (w *sendWatch) end() {
	w.mu.Lock()
	w.sending = false
	w.timer.Stop()
	w.mu.Unlock()
}

// shorten shortens the bound of the send in progress and of those after it.
func (w *sendWatch) shorten() {
	w.mu.Lock()
	if !w.ending {
		w.ending = true
		if w.sending {
			w.timer.Reset(FinalWriteTimeout)
		}
	}
	w.mu.Unlock()
}

func (w *sendWatch) boundLocked() time.Duration {
	if w.ending {
		return FinalWriteTimeout
	}
	return StreamWriteTimeout
}

func (w *sendWatch) fire() {
	w.mu.Lock()
	fire := w.sending && !w.fired
	w.fired = w.fired || fire
	w.mu.Unlock()
	if fire {
		w.stuck()
	}
}

// stop ends the watch; stuck is not called after it returns, unless it
// was running already.
func (w *sendWatch) stop() {
	w.mu.Lock()
	w.sending = false
	w.timer.Stop()
	w.mu.Unlock()
}

// AfterClose calls f once done is closed, unless the returned stop is
// called first: context.AfterFunc for a channel, as the event streams of
// both front ends need it for the hub's Closed. The goroutine it starts is
// gone once stop returns.
func AfterClose(done <-chan struct{}, f func()) (stop func()) {
	quit := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-done:
			f()
		case <-quit:
		}
	}()
	return func() {
		close(quit)
		<-exited
	}
}
