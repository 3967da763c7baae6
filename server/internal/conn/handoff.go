package conn

import (
	"context"
	"sync"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// DefaultHandlerTimeout is how long a handler has to answer a frame when
// Config.HandlerTimeout is 0.
const DefaultHandlerTimeout = 5 * time.Second

// Handler is the remote reply logic of connections (package handler
// implements it with Handle streams). The read loop offers it every frame
// that no rule answered; it tells it when a connection opens and closes.
// Its methods are called from the connection's own goroutine, in order:
// Opened once, then Frame for each frame, then Closed once.
type Handler interface {
	// Opened tells that c is open: its CONNECTION_OPENED event is
	// published and its banner queued.
	Opened(c *Conn)
	// Handles reports whether a handler may take c's frames now: when it
	// reports false, the read's frames go to the fallback mode without a
	// Frame call each. It is asked once a read, so it must be cheap (an
	// atomic load when no handler is registered at all).
	Handles(c *Conn) bool
	// Frame offers h, a frame of c, to c's handler. It reports false when
	// no handler takes c's frames: the fallback mode answers h. Otherwise
	// the handler answers h later, exactly once, with h.Answer, and sets
	// h.OnDone before it hands h to another goroutine if it wants to hear
	// when h is settled
	// (answered, timed out, or abandoned because c closed). Frame blocks
	// while the stream that handles c has its most frames unanswered, until
	// ctx ends (then it reports true or false as it took h or not): so the
	// read loop waits, and TCP pushes back on the peer.
	Frame(ctx context.Context, c *Conn, h *Handoff) bool
	// Closed tells that c closed for reason: its frames not settled yet are
	// abandoned (their OnDone called) before Closed is called.
	Closed(c *Conn, reason event.CloseReason)
}

// Outcome says how a Handoff was settled.
type Outcome int

const (
	// Unsettled means not settled yet.
	Unsettled Outcome = iota
	// Answered means the handler answered with a HandlerReply.
	Answered
	// TimedOut means the connection's HandlerTimeout passed first: the
	// connection applies its HandlerTimeoutClose.
	TimedOut
	// Unhandled means no handler is left to answer: the fallback mode
	// answers the frame.
	Unhandled
	// Abandoned means the connection closed before an answer.
	Abandoned
)

// HandlerReply is a handler's answer to a frame.
type HandlerReply struct {
	// Payload is written encoded with the connection's framing unless Raw;
	// nil writes nothing.
	Payload []byte
	Raw     bool
	// Close closes the connection after the write, with
	// ReasonClosedByHandler.
	Close bool
}

// Handoff is one frame given to a Handler, settled once: by the handler's
// Answer or Unhandled, by the connection's handler timeout, or by its
// close. The first to settle it wins.
type Handoff struct {
	// Frame is the frame's bytes, immutable (the published DATA event's).
	Frame []byte
	// At is when the frame was offered. The connection's handler timeout
	// runs from when Frame took it (its first delivery), and a redelivery
	// to another stream does not restart it.
	At time.Time
	// OnDone, when set by the handler before any other goroutine sees h, is
	// called once
	// when the handoff is settled, with the outcome, on the goroutine that
	// settled it. It must not block.
	OnDone func(Outcome)

	mu      sync.Mutex
	outcome Outcome
	reply   HandlerReply
	done    chan struct{}
}

// NewHandoff returns a pending handoff of frame, offered now.
func NewHandoff(frame []byte) *Handoff {
	return &Handoff{Frame: frame, At: time.Now(), done: make(chan struct{})}
}

// Answer settles h with the handler's reply. It reports false when h was
// settled already (timed out, or its connection closed): the reply is then
// not written.
func (h *Handoff) Answer(r HandlerReply) bool { return h.settle(Answered, r) }

// Unhandled settles h as no handler's: the connection's fallback mode
// answers it. It reports false when h was settled already.
func (h *Handoff) Unhandled() bool { return h.settle(Unhandled, HandlerReply{}) }

// Done is closed once h is settled.
func (h *Handoff) Done() <-chan struct{} { return h.done }

// Result returns how h was settled, and the handler's reply when it was
// Answered.
func (h *Handoff) Result() (Outcome, HandlerReply) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.outcome, h.reply
}

func (h *Handoff) settle(o Outcome, r HandlerReply) bool {
	h.mu.Lock()
	if h.outcome != Unsettled {
		h.mu.Unlock()
		return false
	}
	h.outcome, h.reply = o, r
	onDone := h.OnDone
	close(h.done)
	h.mu.Unlock()
	if onDone != nil {
		onDone(o)
	}
	return true
}
