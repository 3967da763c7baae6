package conn_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// Serve publishes CONNECTION_OPENED, every frame as DATA in the order the
// bytes came, then CONNECTION_CLOSED, with what was left of an incomplete
// frame.
func TestServeEvents(t *testing.T) {
	lp := framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2}
	tests := []struct {
		name        string
		framing     framing.Config
		writes      []string
		wantData    []string
		wantPartial string
	}{
		{"lines in order", lineFraming(), []string{"a\nb", "\nc\r\n", "\n"}, []string{"a", "b", "c", ""}, ""},
		{"last line without newline is a frame", lineFraming(), []string{"one\ntwo"}, []string{"one", "two"}, ""},
		{"delimiter", framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, []string{"x||y|", "|z"},
			[]string{"x", "y", "z"}, ""},
		{"length prefix with a partial frame at close", lp, []string{"\x00\x02hi\x00\x05abc"},
			[]string{"hi"}, "\x00\x05abc"},
		{"fixed with a partial frame at close", framing.Config{Mode: framing.Fixed, FixedSize: 3}, []string{"abcde", "fgh"},
			[]string{"abc", "def"}, "gh"},
		{"raw cut at max_frame_bytes", framing.Config{MaxFrameBytes: 4}, []string{"0123456789"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			agg := new(conn.Counters)
			c, cc := serve(t, conn.Config{Framing: tt.framing, Publisher: rec, Aggregates: []*conn.Counters{agg}})
			total := 0
			for _, w := range tt.writes {
				if _, err := cc.Write([]byte(w)); err != nil {
					t.Fatal(err)
				}
				total += len(w)
				time.Sleep(5 * time.Millisecond) // let writes arrive as separate reads
			}
			_ = cc.CloseWrite()
			evs := rec.waitClosed(t)
			waitDone(t, c)

			first, last := evs[0], evs[len(evs)-1]
			if first.Kind != event.ConnectionOpened {
				t.Fatalf("first event is %v, want connection_opened", first.Kind)
			}
			if first.RemoteAddr != cc.LocalAddr().String() || first.LocalAddr != cc.RemoteAddr().String() {
				t.Errorf("opened: remote %s local %s, want %s %s", first.RemoteAddr, first.LocalAddr, cc.LocalAddr(), cc.RemoteAddr())
			}
			if last.CloseReason != event.ReasonPeerClosed {
				t.Errorf("close reason = %v, want peer_closed", last.CloseReason)
			}
			if last.Data != nil {
				t.Errorf("close event carries data %q; the partial frame goes in a DATA event of its own", last.Data)
			}
			// The partial frame is a DATA event marked partial, right
			// before the close.
			var partials []string
			for i, e := range evs {
				if e.Partial {
					if e.Kind != event.Data || i != len(evs)-2 {
						t.Errorf("partial event %d of %d is a %v, want the DATA right before the close", i, len(evs), e.Kind)
					}
					partials = append(partials, string(e.Data))
				}
			}
			if tt.wantPartial == "" && len(partials) > 0 || tt.wantPartial != "" && !slices.Equal(partials, []string{tt.wantPartial}) {
				t.Errorf("partial DATA events %q, want [%q]", partials, tt.wantPartial)
			}
			for _, e := range evs {
				if e.ListenerID != "l1" || e.ConnectionID != "c1" {
					t.Errorf("%v event has ids %q %q, want l1 c1", e.Kind, e.ListenerID, e.ConnectionID)
				}
			}
			data := dataOf(evs)
			if tt.wantData == nil { // raw: frames of at most max_frame_bytes that add up to the stream
				for _, d := range data {
					if len(d) > tt.framing.MaxFrameBytes {
						t.Errorf("raw frame %q is longer than max_frame_bytes %d", d, tt.framing.MaxFrameBytes)
					}
				}
				if got := strings.Join(data, ""); got != strings.Join(tt.writes, "") {
					t.Errorf("raw frames add up to %q, want %q", got, strings.Join(tt.writes, ""))
				}
			} else if !slices.Equal(data, tt.wantData) {
				t.Errorf("frames = %q, want %q", data, tt.wantData)
			}
			n := c.Counters()
			if n.BytesIn.Load() != uint64(total) || n.FramesIn.Load() != uint64(len(data)) {
				t.Errorf("counters: %d bytes %d frames in, want %d %d", n.BytesIn.Load(), n.FramesIn.Load(), total, len(data))
			}
			if agg.BytesIn.Load() != uint64(total) || agg.FramesIn.Load() != uint64(len(data)) {
				t.Errorf("aggregate: %d bytes %d frames in, want %d %d", agg.BytesIn.Load(), agg.FramesIn.Load(), total, len(data))
			}
		})
	}
}

// Many frames in one stream stay in order, even when reads cut them anywhere.
func TestServeOrderUnderLoad(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	const n = 5000
	var want []string
	var stream bytes.Buffer
	for i := range n {
		s := fmt.Sprintf("frame-%d", i)
		want = append(want, s)
		stream.WriteString(s + "\n")
	}
	go func() {
		b := stream.Bytes()
		for len(b) > 0 {
			k := min(len(b), 777)
			if _, err := cc.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
		_ = cc.CloseWrite()
	}()
	evs := rec.waitClosed(t)
	waitDone(t, c)
	if got := dataOf(evs); !slices.Equal(got, want) {
		t.Fatalf("got %d frames, want %d in order", len(got), len(want))
	}
}

func TestCloseReasons(t *testing.T) {
	tests := []struct {
		name   string
		cfg    conn.Config
		act    func(t *testing.T, c *conn.Conn, cc *net.TCPConn)
		reason event.CloseReason
	}{
		{
			name:   "peer closes",
			act:    func(t *testing.T, c *conn.Conn, cc *net.TCPConn) { _ = cc.Close() },
			reason: event.ReasonPeerClosed,
		},
		{
			name:   "idle timeout",
			cfg:    conn.Config{IdleTimeout: 150 * time.Millisecond},
			act:    func(t *testing.T, c *conn.Conn, cc *net.TCPConn) {},
			reason: event.ReasonIdleTimeout,
		},
		{
			name: "idle timeout after traffic",
			cfg:  conn.Config{IdleTimeout: 150 * time.Millisecond},
			act: func(t *testing.T, c *conn.Conn, cc *net.TCPConn) {
				_, _ = cc.Write([]byte("x"))
			},
			reason: event.ReasonIdleTimeout,
		},
		{
			name: "closed by the API",
			act: func(t *testing.T, c *conn.Conn, cc *net.TCPConn) {
				c.Close(event.ReasonClosedByAPI)
			},
			reason: event.ReasonClosedByAPI,
		},
		{
			name: "the first reason wins",
			act: func(t *testing.T, c *conn.Conn, cc *net.TCPConn) {
				c.Close(event.ReasonListenerStopped)
				c.Close(event.ReasonShutdown)
				_ = cc.Close()
			},
			reason: event.ReasonListenerStopped,
		},
		{
			name: "closed with unread data",
			act: func(t *testing.T, c *conn.Conn, cc *net.TCPConn) {
				_, _ = cc.Write([]byte("data that is never read"))
				c.Close(event.ReasonLimitReached)
			},
			reason: event.ReasonLimitReached,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			tt.cfg.Publisher = rec
			c, cc := serve(t, tt.cfg)
			rec.WaitFor(t, "connection_opened", func(evs []*event.Event) bool { return len(evs) > 0 })
			tt.act(t, c, cc)
			evs := rec.waitClosed(t)
			waitDone(t, c)
			if got := evs[len(evs)-1].CloseReason; got != tt.reason {
				t.Errorf("close reason = %v, want %v", got, tt.reason)
			}
			// The socket is closed: the client reads EOF or a reset.
			_ = cc.SetReadDeadline(time.Now().Add(testTimeout))
			if _, err := io.ReadAll(cc); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
				t.Errorf("client read after close: %v", err)
			}
		})
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// A peer that resets the connection (SO_LINGER 0) is told apart from one
// that closes it.
func TestPeerReset(t *testing.T) {
	for _, tt := range []struct {
		name  string
		write string
	}{{"idle", ""}, {"after data", "hello"}} {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c, cc := serve(t, conn.Config{Publisher: rec})
			if tt.write != "" {
				_, _ = cc.Write([]byte(tt.write))
				rec.WaitFor(t, "data", func(evs []*event.Event) bool { return len(dataOf(evs)) > 0 })
			} else {
				rec.WaitFor(t, "connection_opened", func(evs []*event.Event) bool { return len(evs) > 0 })
			}
			_ = cc.SetLinger(0)
			_ = cc.Close()
			evs := rec.waitClosed(t)
			waitDone(t, c)
			got := evs[len(evs)-1].CloseReason
			if got == event.ReasonPeerClosed {
				t.Fatal("a reset peer is reported as peer_closed: waitReadable (wait_linux.go) peeks with " +
					"MSG_PEEK, which returns ECONNRESET and clears the socket's pending error, and then " +
					"discards that error, so the Read that follows returns EOF")
			}
			if got != event.ReasonPeerReset {
				t.Errorf("close reason = %v, want peer_reset", got)
			}
		})
	}
}

// A frame over max_frame_bytes closes the connection; the frames before it
// arrive, and nothing of the oversized one is delivered as a frame.
func TestFrameTooLarge(t *testing.T) {
	tests := []struct {
		name    string
		framing framing.Config
		stream  string
		want    []string
	}{
		{"line", framing.Config{Mode: framing.Line, MaxFrameBytes: 8}, "ok\n0123456789abcdef", []string{"ok"}},
		{"line, then more lines", framing.Config{Mode: framing.Line, MaxFrameBytes: 8}, "ok\n0123456789abcdef\nnext\n", []string{"ok"}},
		{"delimiter", framing.Config{Mode: framing.Delimiter, Delimiter: []byte(";"), MaxFrameBytes: 4}, "a;bbbbbbbbbb", []string{"a"}},
		{"length prefix", framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1, MaxFrameBytes: 4}, "\x01a\x09abcdefghi", []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c, cc := serve(t, conn.Config{Framing: tt.framing, Publisher: rec})
			if _, err := cc.Write([]byte(tt.stream)); err != nil {
				t.Fatal(err)
			}
			evs := rec.waitClosed(t)
			waitDone(t, c)
			if got := evs[len(evs)-1].CloseReason; got != event.ReasonFrameTooLarge {
				t.Errorf("close reason = %v, want frame_too_large", got)
			}
			if got := dataOf(evs); !slices.Equal(got, tt.want) {
				t.Errorf("frames = %q, want %q", got, tt.want)
			}
			// The client sees the connection end.
			_ = cc.SetReadDeadline(time.Now().Add(testTimeout))
			if _, err := io.ReadAll(cc); err != nil && !isReset(err) {
				t.Errorf("client read after frame_too_large: %v", err)
			}
		})
	}
}

func TestAutoReply(t *testing.T) {
	lp := framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2}
	tests := []struct {
		name    string
		framing framing.Config
		reply   conn.AutoReply
		send    string
		want    string
		frames  int
	}{
		{"fixed per frame", lineFraming(), conn.AutoReply{Mode: conn.Fixed, Payload: []byte("OK\n")}, "a\nb\n", "OK\nOK\n", 2},
		{"fixed binary", lineFraming(), conn.AutoReply{Mode: conn.Fixed, Payload: []byte{0, 1, 2}}, "x\n", "\x00\x01\x02", 1},
		{"echo line re-encoded", lineFraming(), conn.AutoReply{Mode: conn.Echo}, "a\r\nbb\n", "a\nbb\n", 2},
		{"echo length prefix", lp, conn.AutoReply{Mode: conn.Echo}, "\x00\x03abc\x00\x00", "\x00\x03abc\x00\x00", 2},
		{"echo delimiter", framing.Config{Mode: framing.Delimiter, Delimiter: []byte("\x00")}, conn.AutoReply{Mode: conn.Echo},
			"p\x00q\x00", "p\x00q\x00", 2},
		{"echo raw", framing.Config{}, conn.AutoReply{Mode: conn.Echo}, "raw bytes", "raw bytes", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c, cc := serve(t, conn.Config{Framing: tt.framing, AutoReply: tt.reply, Publisher: rec})
			if _, err := cc.Write([]byte(tt.send)); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, cc, len(tt.want)); got != tt.want {
				t.Errorf("client read %q, want %q", got, tt.want)
			}
			// The peer may read the reply before the write returns and counts it.
			if !eventually(func() bool { return c.Counters().BytesOut.Load() == uint64(len(tt.want)) }) {
				t.Errorf("BytesOut = %d, want %d", c.Counters().BytesOut.Load(), len(tt.want))
			}
			if got := c.Counters().FramesIn.Load(); got != uint64(tt.frames) {
				t.Errorf("FramesIn = %d, want %d", got, tt.frames)
			}
		})
	}
}

// Frames without auto reply get no answer: the client reads nothing.
func TestNoAutoReply(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	_, _ = cc.Write([]byte("hello\n"))
	rec.WaitFor(t, "data", func(evs []*event.Event) bool { return len(dataOf(evs)) == 1 })
	_ = cc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := cc.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read %d bytes, %v; want nothing", n, err)
	}
	if got := c.Counters().BytesOut.Load(); got != 0 {
		t.Errorf("BytesOut = %d, want 0", got)
	}
}

// Concurrent Sends awaiting the next frame each get the answer to their own
// question: writes are serialized and replies matched in write order.
func TestSendNextFrameConcurrent(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})

	// The peer answers every question "q<i>" with "a<i>", in order.
	peerDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 0, 1024)
		tmp := make([]byte, 1024)
		for {
			n, err := cc.Read(tmp)
			buf = append(buf, tmp[:n]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				q := string(buf[:i])
				buf = buf[i+1:]
				if _, werr := cc.Write([]byte("a" + strings.TrimPrefix(q, "q") + "\n")); werr != nil {
					peerDone <- werr
					return
				}
			}
			if err != nil {
				peerDone <- nil
				return
			}
		}
	}()

	const senders = 16
	const each = 10
	var wg sync.WaitGroup
	errs := make(chan error, senders*each)
	for s := range senders {
		wg.Go(func() {
			for k := range each {
				id := fmt.Sprintf("%d-%d", s, k)
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				reply, err := c.Send(ctx, []byte("q"+id+"\n"), conn.Await{Mode: await.Frame, MaxBytes: 1024})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("send %s: %w", id, err)
					return
				}
				if string(reply) != "a"+id {
					errs <- fmt.Errorf("send q%s got reply %q, want a%s", id, reply, id)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Replies are published as DATA too, not swallowed by the awaiters.
	rec.WaitFor(t, "every reply as data", func(evs []*event.Event) bool { return len(dataOf(evs)) == senders*each })
	_ = cc.Close()
	select {
	case <-peerDone:
	case <-time.After(testTimeout):
		t.Fatal("peer goroutine did not end")
	}
}

func TestSendUntilClose(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Publisher: rec})
	go func() {
		if _, err := readFull(cc, 2); err != nil {
			return
		}
		for _, p := range []string{"first ", "second ", "third"} {
			_, _ = cc.Write([]byte(p))
			time.Sleep(5 * time.Millisecond)
		}
		_ = cc.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	reply, err := c.Send(ctx, []byte("hi"), conn.Await{Mode: await.UntilClose, MaxBytes: 1024})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if string(reply) != "first second third" {
		t.Errorf("reply = %q, want everything up to the close", reply)
	}
}

// A reply over the limit fails that Send only; the connection goes on and
// the next Send gets its own reply.
func TestSendReplyTooLarge(t *testing.T) {
	tests := []struct {
		name    string
		mode    await.Mode
		answers []string
	}{
		{"next frame", await.Frame, []string{"0123456789\n"}},
		{"until close, over the limit before the close", await.UntilClose, []string{"0123\n", "4567\n", "89\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
			go func() {
				if _, err := readFull(cc, len("big\n")); err != nil {
					return
				}
				for _, a := range tt.answers {
					_, _ = cc.Write([]byte(a))
				}
				if _, err := readFull(cc, len("small\n")); err != nil {
					return
				}
				_, _ = cc.Write([]byte("ok\n"))
			}()
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			_, err := c.Send(ctx, []byte("big\n"), conn.Await{Mode: tt.mode, MaxBytes: 8})
			if !errors.Is(err, conn.ErrReplyTooLarge) {
				t.Fatalf("Send = %v, want ErrReplyTooLarge", err)
			}
			// Lines that were not part of the failed reply may still be
			// queued ahead of "ok"; what matters is that the connection is
			// open and answers.
			rec.WaitFor(t, "the oversized reply's frames", func(evs []*event.Event) bool {
				return len(dataOf(evs)) >= len(tt.answers)
			})
			reply, err := c.Send(ctx, []byte("small\n"), conn.Await{Mode: await.Frame, MaxBytes: 8})
			if err != nil {
				t.Fatalf("Send after a too-large reply: %v", err)
			}
			if string(reply) != "ok" {
				t.Errorf("reply = %q, want ok", reply)
			}
		})
	}
}

func TestSendAfterClose(t *testing.T) {
	modes := map[string]await.Mode{"no reply": await.None, "next frame": await.Frame, "until close": await.UntilClose}
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			rec := newRecorder()
			c, _ := serve(t, conn.Config{Publisher: rec})
			c.Close(event.ReasonClosedByAPI)
			waitDone(t, c)
			_, err := c.Send(context.Background(), []byte("late"), conn.Await{Mode: mode, MaxBytes: 100})
			if !errors.Is(err, conn.ErrClosed) {
				t.Errorf("Send after close = %v, want ErrClosed", err)
			}
		})
	}
}

// A Send waiting for a reply learns of the close.
func TestSendPendingAtClose(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(context.Background(), []byte("q\n"), conn.Await{Mode: await.Frame, MaxBytes: 100})
		done <- err
	}()
	_ = readN(t, cc, 2)
	c.Close(event.ReasonClosedByAPI)
	select {
	case err := <-done:
		if !errors.Is(err, conn.ErrClosed) {
			t.Errorf("pending Send = %v, want ErrClosed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("pending Send did not return after Close")
	}
}

// A Send whose context ends leaves the line at once; a reply that comes
// for it before the next Send's write began answers nobody, and the next
// Send gets its own.
func TestSendAbandonedLeavesLine(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := c.Send(ctx, []byte("q1\n"), conn.Await{Mode: await.Frame, MaxBytes: 100})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send with a short deadline = %v, want DeadlineExceeded", err)
	}
	_ = readN(t, cc, 3)
	_, _ = cc.Write([]byte("a1\n")) // late answer to q1
	rec.WaitFor(t, "the late a1", func(evs []*event.Event) bool { return len(dataOf(evs)) == 1 })

	go func() {
		if _, err := readFull(cc, 3); err == nil {
			_, _ = cc.Write([]byte("a2\n"))
		}
	}()
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	reply, err := c.Send(ctx, []byte("q2\n"), conn.Await{Mode: await.Frame, MaxBytes: 100})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if string(reply) != "a2" {
		t.Errorf("reply to q2 = %q, want a2 (a1 came before q2 was written)", reply)
	}
}

// A peer that never reads makes a large Send fail with ErrWriteTimeout
// after the write timeout, and the connection closes with WRITE_ERROR.
func TestWriteTimeout(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Publisher: rec, WriteTimeout: 200 * time.Millisecond})
	_ = cc.SetReadBuffer(4 << 10)
	rec.WaitFor(t, "connection_opened", func(evs []*event.Event) bool { return len(evs) > 0 })

	big := make([]byte, 64<<20)
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(context.Background(), big, conn.Await{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, conn.ErrWriteTimeout) {
			t.Errorf("Send to a peer that does not read = %v, want ErrWriteTimeout", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Send did not time out")
	}
	evs := rec.waitClosed(t)
	waitDone(t, c)
	if got := evs[len(evs)-1].CloseReason; got != event.ReasonWriteError {
		t.Errorf("close reason = %v, want write_error", got)
	}
	if got := c.Counters().BytesOut.Load(); got == 0 || got >= uint64(len(big)) {
		t.Errorf("BytesOut = %d, want what the socket took before the timeout", got)
	}
	if _, err := c.Send(context.Background(), []byte("x"), conn.Await{}); !errors.Is(err, conn.ErrClosed) {
		t.Errorf("Send after the write error = %v, want ErrClosed", err)
	}
}

// A waiting writer does not hold up others forever: a second Send queued
// behind one stuck on a dead peer fails too, within the write timeout.
func TestWriteTimeoutUnblocksQueue(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Publisher: rec, WriteTimeout: 200 * time.Millisecond})
	_ = cc.SetReadBuffer(4 << 10)
	big := make([]byte, 64<<20)
	done := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.Send(context.Background(), big, conn.Await{})
			done <- err
		}()
	}
	for range 3 {
		select {
		case err := <-done:
			if !errors.Is(err, conn.ErrWriteTimeout) && !errors.Is(err, conn.ErrClosed) {
				t.Errorf("Send = %v, want ErrWriteTimeout or ErrClosed", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("a Send stayed blocked")
		}
	}
}

// Sends awaiting a reply, with no deadline of their own, are told of their
// write's failure at once: the one whose write timed out, and those queued
// behind it, never written. None waits for a reply that cannot come.
func TestAwaitingSendFailsWithItsWrite(t *testing.T) {
	rec := newRecorder()
	// Room for every Send in the queue: the later ones wait queued.
	c, cc := serve(t, conn.Config{Publisher: rec, Framing: lineFraming(), WriteTimeout: 200 * time.Millisecond, MaxQueuedWriteBytes: 1 << 30})
	_ = cc.SetReadBuffer(4 << 10)
	rec.WaitFor(t, "connection_opened", func(evs []*event.Event) bool { return len(evs) > 0 })
	big := make([]byte, 64<<20) // one slice for all: queued, never copied
	const sends = 3
	done := make(chan error, sends)
	for range sends {
		go func() {
			_, err := c.Send(context.Background(), big, conn.Await{Mode: await.Frame, MaxBytes: 1 << 10})
			done <- err
		}()
	}
	timedOut := 0
	for range sends {
		select {
		case err := <-done:
			switch {
			case errors.Is(err, conn.ErrWriteTimeout):
				timedOut++
			case errors.Is(err, conn.ErrClosed):
			default:
				t.Errorf("awaiting Send = %v, want ErrWriteTimeout or ErrClosed", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("an awaiting Send stayed blocked after its write failed")
		}
	}
	if timedOut != 1 {
		t.Errorf("%d Sends failed with ErrWriteTimeout, want 1 (the one written; the others were queued behind it)", timedOut)
	}
}

// With a publisher that holds the read loop (a lossless subscriber that is
// behind), the connection stops being read, TCP flow control pushes back on
// the sender, and Close still ends Serve at once.
func TestBackpressure(t *testing.T) {
	rec := newRecorder()
	waiting := make(chan struct{})
	var once sync.Once
	gaveUp := make(chan error, 1)
	rec.Block = func(ctx context.Context) error {
		once.Do(func() { close(waiting) })
		<-ctx.Done()
		select {
		case gaveUp <- ctx.Err():
		default:
		}
		return ctx.Err()
	}
	c, cc := serve(t, conn.Config{Publisher: rec})
	if _, err := cc.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waiting:
	case <-time.After(testTimeout):
		t.Fatal("the read loop never published")
	}

	// The read loop is stuck: the sender's writes stop being taken.
	chunk := make([]byte, 1<<20)
	_ = cc.SetWriteDeadline(time.Now().Add(time.Second))
	var sent int
	var werr error
	for sent < 256<<20 {
		var n int
		n, werr = cc.Write(chunk)
		sent += n
		if werr != nil {
			break
		}
	}
	if !errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Fatalf("wrote %d bytes without blocking (err %v); want the writes to block", sent, werr)
	}
	if got := c.Counters().BytesIn.Load(); got > uint64(64<<10) {
		t.Errorf("BytesIn = %d while the publisher was blocked; want at most one read", got)
	}

	c.Close(event.ReasonClosedByAPI)
	waitDone(t, c)
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("PublishWait's context ended with %v, want Canceled", err)
		}
	default:
		t.Error("PublishWait's context was not canceled by Close")
	}
	evs := rec.Events()
	last := evs[len(evs)-1]
	if last.Kind != event.ConnectionClosed || last.CloseReason != event.ReasonClosedByAPI {
		t.Errorf("last event %v %v, want connection_closed closed_by_api", last.Kind, last.CloseReason)
	}
	// The frame whose wait was cut short is published all the same (the
	// hub ends the subscriber that had no room), and nothing after it.
	if d := dataOf(evs); !slices.Equal(d, []string{"first"}) {
		t.Errorf("frames %q published, want the one whose wait was cut short: [first]", d)
	}
}

// New's context bounds the connection's life: when it ends, the connection
// closes with SHUTDOWN.
func TestContextEndsConnection(t *testing.T) {
	t.Run("while publishing", func(t *testing.T) {
		rec := newRecorder()
		rec.Block = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
		ctx, cancel := context.WithCancel(context.Background())
		c, cc := serveCtx(t, ctx, conn.Config{Publisher: rec})
		_, _ = cc.Write([]byte("x"))
		time.Sleep(20 * time.Millisecond)
		cancel()
		evs := rec.waitClosed(t)
		waitDone(t, c)
		if got := evs[len(evs)-1].CloseReason; got != event.ReasonShutdown {
			t.Errorf("close reason = %v, want shutdown", got)
		}
	})
	t.Run("while idle", func(t *testing.T) {
		rec := newRecorder()
		ctx, cancel := context.WithCancel(context.Background())
		c, _ := serveCtx(t, ctx, conn.Config{Publisher: rec})
		rec.WaitFor(t, "connection_opened", func(evs []*event.Event) bool { return len(evs) > 0 })
		cancel()
		select {
		case <-c.Done():
		case <-time.After(time.Second):
			t.Fatal("conn.New documents \"ctx bounds its life\", but canceling ctx does not end an idle connection: " +
				"the read loop only watches ctx inside PublishWait, so Serve stays blocked in the read until the peer or Close acts")
		}
		evs := rec.waitClosed(t)
		if got := evs[len(evs)-1].CloseReason; got != event.ReasonShutdown {
			t.Errorf("close reason = %v, want shutdown", got)
		}
	})
}

// Frames that span reads and frames within one read are published
// unchanged, even after the pooled read buffer is reused.
func TestPublishedFramesDoNotChange(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: framing.Config{Mode: framing.LengthPrefix}, Publisher: rec})
	var want []string
	var stream []byte
	for i := range 200 {
		p := strings.Repeat(string(rune('a'+i%26)), 1+i*37%5000)
		want = append(want, p)
		stream = binary.BigEndian.AppendUint32(stream, uint32(len(p)))
		stream = append(stream, p...)
	}
	go func() {
		_, _ = cc.Write(stream)
		_ = cc.CloseWrite()
	}()
	evs := rec.waitClosed(t)
	waitDone(t, c)
	if got := dataOf(evs); !slices.Equal(got, want) {
		t.Fatalf("got %d frames, want %d unchanged", len(got), len(want))
	}
}
