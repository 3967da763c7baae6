package conn_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// A fixed reply answered to thousands of frames of one read, to a peer that
// never reads, is queued within the connection's bound: the read loop waits
// for room, and the write timeout closes the connection with WRITE_ERROR.
// Before the bound, the read's whole reply (here 256 MiB) was made at once.
func TestFixedReplyQueueBounded(t *testing.T) {
	const (
		reply  = 64 << 10
		frames = 4096
		bound  = 256 << 10
	)
	budget := conn.NewWriteBudget(1 << 30) // far above: only to watch what is queued
	rec := newRecorder()
	c, cc := serve(t, conn.Config{
		Framing:             lineFraming(),
		AutoReply:           conn.AutoReply{Mode: conn.Fixed, Payload: bytes.Repeat([]byte("r"), reply)},
		WriteTimeout:        300 * time.Millisecond,
		MaxQueuedWriteBytes: bound,
		WriteBudget:         budget,
		Publisher:           rec,
	})
	_ = cc.SetReadBuffer(4 << 10)
	if _, err := cc.Write(bytes.Repeat([]byte("\n"), frames)); err != nil {
		t.Fatal(err)
	}
	peak := 0
	for {
		peak = max(peak, budget.Used())
		select {
		case <-c.Done():
		case <-time.After(time.Millisecond):
			continue
		}
		break
	}
	if got := c.Reason(); got != event.ReasonWriteError {
		t.Errorf("close reason = %v, want write_error", got)
	}
	if peak == 0 || peak > bound {
		t.Errorf("peak queued = %d bytes, want 1 to %d (MaxQueuedWriteBytes)", peak, bound)
	}
	if out := c.Counters().BytesOut.Load(); out >= frames*reply {
		t.Errorf("BytesOut = %d: a peer that never reads took every reply", out)
	}
	if n := budget.Used(); n != 0 {
		t.Errorf("budget holds %d bytes after the close, want 0", n)
	}
}

// Repeated fixed replies reach a reading peer whole and in order, across
// items and writev batches.
func TestFixedReplyManyFrames(t *testing.T) {
	const frames = 3000 // more than one writev's 1024 slices
	c, cc := serve(t, conn.Config{
		Framing:             lineFraming(),
		AutoReply:           conn.AutoReply{Mode: conn.Fixed, Payload: []byte("ok\n")},
		MaxQueuedWriteBytes: 1000, // several items per read
		Publisher:           newRecorder(),
	})
	if _, err := cc.Write(bytes.Repeat([]byte("x\n"), frames)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, cc, 3*frames); got != strings.Repeat("ok\n", frames) {
		t.Errorf("got %d bytes, not %d replies", len(got), frames)
	}
	if !eventually(func() bool { return c.Counters().FramesOut.Load() == frames }) {
		t.Errorf("FramesOut = %d, want %d", c.Counters().FramesOut.Load(), frames)
	}
}

// The write goroutine runs only while bytes are queued: an idle connection
// has none.
func TestWriterOnlyWhileQueued(t *testing.T) {
	_, cc := serve(t, conn.Config{Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, Publisher: newRecorder()})
	for range 3 {
		if _, err := cc.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, cc, 5); got != "ping\n" {
			t.Fatalf("echo = %q", got)
		}
	}
	writers := func() int {
		buf := make([]byte, 1<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "conn.(*Conn).flush")
	}
	if !eventually(func() bool { return writers() == 0 }) {
		t.Errorf("%d write goroutines left on an idle connection", writers())
	}
}

// At the shared budget, a connection whose peer reads waits as if its own
// queue were full, until the stuck one is closed by the write timeout.
func TestWriteBudgetShared(t *testing.T) {
	budget := conn.NewWriteBudget(128 << 10)
	stuck, sc := serve(t, conn.Config{
		ID:           "stuck",
		Framing:      lineFraming(),
		AutoReply:    conn.AutoReply{Mode: conn.Fixed, Payload: bytes.Repeat([]byte("r"), 64<<10)},
		WriteTimeout: 1500 * time.Millisecond,
		WriteBudget:  budget,
		Publisher:    newRecorder(),
	})
	_ = sc.SetReadBuffer(4 << 10)
	if _, err := sc.Write(bytes.Repeat([]byte("\n"), 200)); err != nil {
		t.Fatal(err)
	}
	// Stuck: the socket takes no more and the budget is held.
	var last uint64
	if !eventually(func() bool {
		time.Sleep(50 * time.Millisecond)
		n := stuck.Counters().BytesOut.Load()
		same := n == last && budget.Used() > 0
		last = n
		return same
	}) {
		t.Fatal("the stuck connection never filled its socket")
	}
	ok, oc := serve(t, conn.Config{ID: "ok", Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}, WriteBudget: budget, Publisher: newRecorder()})
	if _, err := oc.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	_ = oc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _ := oc.Read(make([]byte, 3)); n > 0 {
		t.Fatal("an echo was queued past the shared budget")
	}
	if got := readN(t, oc, 3); got != "hi\n" {
		t.Errorf("echo after the stuck connection closed = %q", got)
	}
	waitDone(t, stuck)
	if got := stuck.Reason(); got != event.ReasonWriteError {
		t.Errorf("stuck connection's reason = %v, want write_error", got)
	}
	ok.Close(event.ReasonClosedByAPI)
	waitDone(t, ok)
	if n := budget.Used(); n != 0 {
		t.Errorf("budget holds %d bytes after both closed, want 0", n)
	}
}

// reqAck answers every line "req-N" with "ack-N", except those skip says.
func reqAck(cc interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}, skip func(n string) bool,
) {
	sc := bufio.NewScanner(cc)
	for sc.Scan() {
		n, ok := strings.CutPrefix(sc.Text(), "req-")
		if !ok || skip(n) {
			continue
		}
		if _, err := cc.Write([]byte("ack-" + n + "\n")); err != nil {
			return
		}
	}
}

// One request that gets no reply fails alone: every later one gets its own.
func TestAwaitLostReplyFailsAlone(t *testing.T) {
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: newRecorder()})
	go reqAck(cc, func(n string) bool { return n == "5" })
	for i := 1; i <= 8; i++ {
		timeout := 2 * time.Second
		if i == 5 {
			timeout = 200 * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		reply, err := c.Send(ctx, fmt.Appendf(nil, "req-%d\n", i), conn.Await{Mode: await.Frame, MaxBytes: 100})
		cancel()
		switch {
		case i == 5:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("req-5 = %q, %v; want DeadlineExceeded", reply, err)
			}
		case err != nil:
			t.Errorf("req-%d: %v", i, err)
		case string(reply) != fmt.Sprintf("ack-%d", i):
			t.Errorf("req-%d got %q", i, reply)
		}
	}
	if got := c.Reason(); got != event.ReasonUnspecified {
		t.Errorf("connection closed (%v); a lost reply keeps it open by default", got)
	}
}

// Without Match, a reply that comes after the next request was written
// answers that request (documented); with Match the late one is skipped.
func TestAwaitLateReply(t *testing.T) {
	tests := []struct {
		name  string
		match func([]byte) bool
		want  string
	}{
		{"no match: the late reply answers", nil, "a1"},
		{"match skips the late reply", func(f []byte) bool { return bytes.HasPrefix(f, []byte("a2")) }, "a2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_, err := c.Send(ctx, []byte("q1\n"), conn.Await{Mode: await.Frame, MaxBytes: 100})
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("q1 = %v, want DeadlineExceeded", err)
			}
			go func() {
				if _, err := readFull(cc, 6); err == nil { // q1 and q2
					_, _ = cc.Write([]byte("a1\na2\n"))
				}
			}()
			ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			reply, err := c.Send(ctx, []byte("q2\n"), conn.Await{Mode: await.Frame, MaxBytes: 100, Match: tt.match})
			if err != nil || string(reply) != tt.want {
				t.Errorf("q2 = %q, %v; want %s", reply, err, tt.want)
			}
			// Every frame reaches subscribers, answer or not.
			rec.WaitFor(t, "both replies as data", func(evs []*event.Event) bool { return len(dataOf(evs)) == 2 })
		})
	}
}

// With a correlation id in Match, replies that come out of order, and an
// unsolicited frame between them, each go where they belong.
func TestAwaitMatchOutOfOrder(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	go func() {
		if _, err := readFull(cc, 12); err == nil { // "id1 q\n" "id2 q\n"
			_, _ = cc.Write([]byte("id2 a\nnotice\nid1 a\n"))
		}
	}()
	send := func(id string) <-chan string {
		out := make(chan string, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			prefix := []byte(id + " ")
			reply, err := c.Send(ctx, []byte(id+" q\n"), conn.Await{Mode: await.Frame, MaxBytes: 100,
				Match: func(f []byte) bool { return bytes.HasPrefix(f, prefix) }})
			out <- fmt.Sprintf("%s %v", reply, err)
		}()
		return out
	}
	r1 := send("id1")
	if !eventually(func() bool { return c.Counters().BytesOut.Load() == 6 }) {
		t.Fatal("id1 q was not written")
	}
	r2 := send("id2")
	if got := <-r1; got != "id1 a <nil>" {
		t.Errorf("id1 = %s", got)
	}
	if got := <-r2; got != "id2 a <nil>" {
		t.Errorf("id2 = %s", got)
	}
	rec.WaitFor(t, "every frame as data", func(evs []*event.Event) bool { return len(dataOf(evs)) == 3 })
}

// A frame that completed before a request's write began does not answer it.
func TestAwaitFrameBeforeWrite(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	if _, err := cc.Write([]byte("early\n")); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "early", func(evs []*event.Event) bool { return len(dataOf(evs)) == 1 })
	go func() {
		if _, err := readFull(cc, 2); err == nil {
			_, _ = cc.Write([]byte("answer\n"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	reply, err := c.Send(ctx, []byte("q\n"), conn.Await{Mode: await.Frame, MaxBytes: 100})
	if err != nil || string(reply) != "answer" {
		t.Errorf("Send = %q, %v; want answer", reply, err)
	}
}

// CloseOnTimeout closes the connection with REPLY_TIMEOUT when the reply
// does not come in time.
func TestAwaitCloseOnTimeout(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: framing.Config{Mode: framing.Line}, Publisher: rec})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Send(ctx, []byte("q\n"), conn.Await{Mode: await.Frame, MaxBytes: 100, CloseOnTimeout: true})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Send = %v, want DeadlineExceeded", err)
	}
	_ = readN(t, cc, 2)
	evs := rec.waitClosed(t)
	if got := evs[len(evs)-1].CloseReason; got != event.ReasonReplyTimeout {
		t.Errorf("close reason = %v, want reply_timeout", got)
	}
}

// A Send whose timeout ends while it waits behind another write is taken
// back: none of it is written, it frees its share of the budget, and the
// connection stays open.
func TestSendGivesUpInQueue(t *testing.T) {
	budget := conn.NewWriteBudget(1 << 30)
	// Room for both in the connection's queue: the second is queued
	// behind the first, which the peer does not take yet.
	// (More than loopback's socket buffers take, so the first blocks.)
	c, cc := serve(t, conn.Config{Publisher: newRecorder(), WriteBudget: budget, MaxQueuedWriteBytes: 128 << 20})
	big := bytes.Repeat([]byte("b"), 64<<20)
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err := c.Send(ctx, big, conn.Await{})
		first <- err
	}()
	if !eventually(func() bool { return budget.Used() == len(big) }) {
		t.Fatal("the first send was never queued")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := c.Send(ctx, []byte("second"), conn.Await{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "earlier sends") {
		t.Fatalf("second Send = %v, want DeadlineExceeded waiting for earlier sends", err)
	}
	if n := budget.Used(); n != len(big) {
		t.Errorf("budget holds %d bytes, want the first send's %d", n, len(big))
	}
	got, err := readFull(cc, len(big))
	if err != nil || got != string(big) {
		t.Fatalf("reading the first send: %d bytes, %v", len(got), err != nil)
	}
	if err := <-first; err != nil {
		t.Fatalf("first Send: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := c.Send(ctx, []byte("third"), conn.Await{}); err != nil {
		t.Fatalf("third Send: %v", err)
	}
	if got := readN(t, cc, 5); got != "third" {
		t.Errorf("after the first send came %q, want third (second was never written)", got)
	}
}
