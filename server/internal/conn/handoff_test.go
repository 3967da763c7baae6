package conn_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// testHandler is a Handler that takes the frames starting with "h:" and
// answers each as answer says, from a goroutine of its own, as a remote
// handler's stream does. It records what it was told.
type testHandler struct {
	// answer returns the reply to frame, and whether to answer at all; it
	// runs on the answering goroutine after delay.
	answer func(frame []byte) (conn.HandlerReply, bool)
	delay  time.Duration

	mu       sync.Mutex
	opened   int
	closed   []event.CloseReason
	outcomes []conn.Outcome
	pending  []*conn.Handoff
	wg       sync.WaitGroup
}

func (h *testHandler) Opened(*conn.Conn) {
	h.mu.Lock()
	h.opened++
	h.mu.Unlock()
}

func (h *testHandler) Handles(*conn.Conn) bool { return true }

func (h *testHandler) Frame(_ context.Context, _ *conn.Conn, ho *conn.Handoff) bool {
	if !bytes.HasPrefix(ho.Frame, []byte("h:")) {
		return false
	}
	ho.OnDone = func(o conn.Outcome) {
		h.mu.Lock()
		h.outcomes = append(h.outcomes, o)
		h.mu.Unlock()
	}
	h.mu.Lock()
	h.pending = append(h.pending, ho)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		time.Sleep(h.delay)
		if r, ok := h.answer(ho.Frame); ok {
			ho.Answer(r)
		}
	}()
	return true
}

func (h *testHandler) Closed(_ *conn.Conn, reason event.CloseReason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Every handoff is settled by now.
	for _, ho := range h.pending {
		select {
		case <-ho.Done():
		default:
			panic("Closed before a handoff was settled")
		}
	}
	h.closed = append(h.closed, reason)
}

func (h *testHandler) snapshot() (opened int, closed []event.CloseReason, outcomes []conn.Outcome) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.opened, append([]event.CloseReason(nil), h.closed...), append([]conn.Outcome(nil), h.outcomes...)
}

func upper(frame []byte) (conn.HandlerReply, bool) {
	return conn.HandlerReply{Payload: bytes.ToUpper(frame[2:])}, true
}

// A handler's late answer is written in its frame's place: the echo
// replies of the frames after it wait behind it.
func TestHandlerRepliesKeepFrameOrder(t *testing.T) {
	h := &testHandler{answer: upper, delay: 50 * time.Millisecond}
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: rec, Handler: h})
	if _, err := cc.Write([]byte("a\nh:bee\nc\nh:dee\ne\n")); err != nil {
		t.Fatal(err)
	}
	want := "a\nBEE\nc\nDEE\ne\n"
	if got := readN(t, cc, len(want)); got != want {
		t.Fatalf("client read %q, want %q", got, want)
	}
	c.Close(event.ReasonClosedByAPI)
	evs := rec.waitClosed(t)
	if got := strings.Join(sentOf(evs), ""); got != want {
		t.Errorf("sent events %q, want %q", got, want)
	}
	h.wg.Wait()
	opened, closed, outcomes := h.snapshot()
	if opened != 1 || len(closed) != 1 || closed[0] != event.ReasonClosedByAPI {
		t.Errorf("opened %d, closed %v; want once each, closed_by_api", opened, closed)
	}
	if len(outcomes) != 2 || outcomes[0] != conn.Answered || outcomes[1] != conn.Answered {
		t.Errorf("outcomes %v, want two answered", outcomes)
	}
}

// The fallback replies that wait behind a delayed rule's count every frame
// they answer: the echo of the two frames after it is one write of two.
func TestQueuedFallbackCountsFrames(t *testing.T) {
	set, err := rules.Compile([]rules.Spec{{Kind: rules.Exact, Pattern: []byte("slow"), Reply: []byte("S"), Delay: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	c, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: newRecorder(), Rules: set})
	if _, err := cc.Write([]byte("slow\nb\nc\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, cc, 6); got != "S\nb\nc\n" {
		t.Fatalf("client read %q, want the rule's delayed reply, then the two echoes", got)
	}
	if !eventually(func() bool { return c.Counters().FramesOut.Load() == 3 }) {
		t.Errorf("FramesOut = %d, want 3: the rule's reply and two echoed frames", c.Counters().FramesOut.Load())
	}
}

// A frame its handler does not answer in time gets the fallback reply, and
// the connection stays open; with HandlerTimeoutClose it closes instead.
func TestHandlerTimeout(t *testing.T) {
	never := func([]byte) (conn.HandlerReply, bool) { return conn.HandlerReply{}, false }
	t.Run("fallback", func(t *testing.T) {
		h := &testHandler{answer: never}
		_, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: []byte("late\n")}, Publisher: newRecorder(), Handler: h, HandlerTimeout: 30 * time.Millisecond})
		if _, err := cc.Write([]byte("h:one\ntwo\n")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, cc, 10); got != "late\nlate\n" {
			t.Fatalf("client read %q, want the fallback for both frames", got)
		}
		if _, err := cc.Write([]byte("three\n")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, cc, 5); got != "late\n" {
			t.Fatalf("client read %q after the timeout: the connection must stay open", got)
		}
		if _, _, outcomes := h.snapshot(); len(outcomes) != 1 || outcomes[0] != conn.TimedOut {
			t.Errorf("outcomes %v, want one timed out", outcomes)
		}
	})
	t.Run("close", func(t *testing.T) {
		h := &testHandler{answer: never}
		rec := newRecorder()
		c, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: rec, Handler: h, HandlerTimeout: 30 * time.Millisecond, HandlerTimeoutClose: true})
		if _, err := cc.Write([]byte("first\nh:one\n")); err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(cc)
		if string(got) != "first\n" {
			t.Errorf("client read %q before the close, want the echo of the frame before", got)
		}
		rec.waitClosed(t)
		if r := c.Reason(); r != event.ReasonHandlerTimeout {
			t.Errorf("closed with %v, want handler_timeout", r)
		}
	})
}

// A handler's reply may close the connection after it is written; an
// Unhandled frame gets the fallback reply.
func TestHandlerCloseAndUnhandled(t *testing.T) {
	h := &testHandler{answer: func(f []byte) (conn.HandlerReply, bool) {
		if string(f) == "h:bye" {
			return conn.HandlerReply{Payload: []byte("ciao"), Close: true}, true
		}
		return conn.HandlerReply{}, false
	}}
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: rec, Handler: h})
	if _, err := cc.Write([]byte("h:skip\n")); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.pending) == 1 }) {
		t.Fatal("the handler never got the frame")
	}
	h.mu.Lock()
	ho := h.pending[0]
	h.mu.Unlock()
	if !ho.Unhandled() {
		t.Fatal("Unhandled of a pending handoff reported false")
	}
	if got := readN(t, cc, 7); got != "h:skip\n" {
		t.Fatalf("client read %q, want the echo fallback", got)
	}
	if ho.Answer(conn.HandlerReply{Payload: []byte("late")}) {
		t.Error("Answer after Unhandled reported true")
	}
	if _, err := cc.Write([]byte("h:bye\nafter\n")); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(cc)
	if string(got) != "ciao\n" {
		t.Errorf("client read %q, want the handler's framed reply and then the close", got)
	}
	rec.waitClosed(t)
	if r := c.Reason(); r != event.ReasonClosedByHandler {
		t.Errorf("closed with %v, want closed_by_handler", r)
	}
}

// Closing a connection abandons the frames its handler has not answered,
// before the handler hears that it closed.
func TestHandlerAbandonedAtClose(t *testing.T) {
	h := &testHandler{answer: func([]byte) (conn.HandlerReply, bool) { return conn.HandlerReply{}, false }}
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec, Handler: h, HandlerTimeout: time.Hour})
	if _, err := cc.Write([]byte("h:1\nh:2\nh:3\n")); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.pending) == 3 }) {
		t.Fatal("the handler never got the frames")
	}
	c.Close(event.ReasonClosedByAPI)
	waitDone(t, c)
	_, closed, outcomes := h.snapshot()
	if len(closed) != 1 || closed[0] != event.ReasonClosedByAPI {
		t.Errorf("closed %v, want closed_by_api once", closed)
	}
	if len(outcomes) != 3 {
		t.Fatalf("outcomes %v, want three", outcomes)
	}
	for _, o := range outcomes {
		if o != conn.Abandoned {
			t.Errorf("outcome %v, want abandoned", o)
		}
	}
}

// The banner is written first, before any reply.
func TestBanner(t *testing.T) {
	banner := func(c *conn.Conn) []byte { return []byte("hello " + c.ID() + "\n") }
	_, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: newRecorder(), Banner: banner})
	if got := readN(t, cc, 9); got != "hello c1\n" {
		t.Fatalf("client read %q first, want the banner", got)
	}
	if _, err := cc.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, cc, 2); got != "x\n" {
		t.Fatalf("client read %q, want the echo", got)
	}
}
