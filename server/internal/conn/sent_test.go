package conn_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// What the gateway writes is published as DATA of direction Sent, one
// event per write, in write order, before the Send returns and before the
// close: Sends, echo replies and fixed replies repeated for many frames.
func TestSentEvents(t *testing.T) {
	t.Run("sends", func(t *testing.T) {
		rec := newRecorder()
		c, cc := serve(t, conn.Config{Publisher: rec})
		for _, p := range []string{"one", "two two", "three"} {
			if _, err := c.Send(context.Background(), []byte(p), conn.Await{}); err != nil {
				t.Fatalf("Send %q: %v", p, err)
			}
		}
		// Published before each Send returned: no wait needed.
		if got := sentOf(rec.Events()); !slices.Equal(got, []string{"one", "two two", "three"}) {
			t.Errorf("sent events after the Sends returned = %q, want one, two two, three", got)
		}
		if got := readN(t, cc, len("onetwo twothree")); got != "onetwo twothree" {
			t.Errorf("peer read %q", got)
		}
		_ = cc.Close()
		evs := rec.waitClosed(t)
		for _, e := range evs {
			if e.Direction == event.Sent && (e.Kind != event.Data || e.ConnectionID != "c1" || e.ListenerID != "l1") {
				t.Errorf("sent event is a %v of %q/%q, want data of l1/c1", e.Kind, e.ListenerID, e.ConnectionID)
			}
		}
		if len(dataOf(evs)) != 0 {
			t.Errorf("received data %q: the peer wrote nothing", dataOf(evs))
		}
	})
	t.Run("echo", func(t *testing.T) {
		rec := newRecorder()
		_, cc := serve(t, conn.Config{Publisher: rec, Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
		_, _ = cc.Write([]byte("a\nbb\n"))
		_ = readN(t, cc, 5)
		_, _ = cc.Write([]byte("ccc\n"))
		_ = readN(t, cc, 4)
		_ = cc.Close()
		evs := rec.waitClosed(t)
		if got := strings.Join(sentOf(evs), ""); got != "a\nbb\nccc\n" {
			t.Errorf("sent bytes %q, want the echo a\\nbb\\nccc\\n", got)
		}
		// Each echo follows the frames it answers.
		if got := dataOf(evs); !slices.Equal(got, []string{"a", "bb", "ccc"}) {
			t.Errorf("received frames %q", got)
		}
	})
	t.Run("fixed reply repeated", func(t *testing.T) {
		rec := newRecorder()
		_, cc := serve(t, conn.Config{Publisher: rec, Framing: lineFraming(), AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: []byte("ok;")}})
		const frames = 50
		_, _ = cc.Write([]byte(strings.Repeat("x\n", frames)))
		_ = readN(t, cc, 3*frames)
		_ = cc.Close()
		evs := rec.waitClosed(t)
		sent := sentOf(evs)
		if got := strings.Join(sent, ""); got != strings.Repeat("ok;", frames) {
			t.Errorf("sent bytes %q, want ok; %d times", got, frames)
		}
		if len(sent) > len(dataOf(evs)) {
			t.Errorf("%d sent events for %d frames: a repeated reply is one event per write", len(sent), len(dataOf(evs)))
		}
		for _, e := range evs {
			if e.Direction == event.Sent && e.Size() < len(e.Data) {
				t.Errorf("sent event of %d bytes has size %d: the ring would not count its bytes", len(e.Data), e.Size())
			}
		}
		if last := evs[len(evs)-1]; last.Kind != event.ConnectionClosed {
			t.Errorf("last event is %v, want the close after every sent event", last.Kind)
		}
	})
}

// A lossless subscriber of sent data that has no room holds a Send no
// longer than its deadline: the Send returns once written and the
// deadline passes, and the subscriber is ended (with where to resume)
// rather than the Send held until the connection closes.
func TestSentEventBoundedBySendDeadline(t *testing.T) {
	h := hub.New(hub.Config{})
	defer h.Close()
	full := &event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Direction: event.Sent, Data: make([]byte, 1024)}
	sub, err := h.Subscribe(hub.SubscribeOptions{
		Policy: hub.Backpressure, QueueBytes: full.Size(),
		Filter: hub.Filter{IncludeSent: true, Kinds: []event.Kind{event.Data}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := h.Publish(context.Background(), full); err != nil { // its queue is full now
		t.Fatal(err)
	}
	c, cc := serve(t, conn.Config{Publisher: h})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, []byte("x"), conn.Await{})
		done <- err
	}()
	if got := readN(t, cc, 1); got != "x" {
		t.Fatalf("peer read %q", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Send = %v, want nil: its bytes were written", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the Send was held past its deadline by a full lossless subscriber")
	}
	select {
	case <-sub.Done():
	case <-time.After(testTimeout):
		t.Fatal("the full lossless subscriber was not ended")
	}
}
