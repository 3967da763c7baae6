package dialer_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// testTimeout bounds every wait of these tests, so a bug fails instead of
// hanging.
const testTimeout = 10 * time.Second

// peer runs a plain TCP server on 127.0.0.1:0 that hands every accepted
// connection to handle, and returns its address. The server and its
// handlers are gone when the test ends.
func peer(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(testTimeout))
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// reply answers whatever arrives first with out, then waits for the client
// to close.
func reply(out ...[]byte) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		if _, err := c.Read(buf); err != nil {
			return
		}
		for _, p := range out {
			if _, err := c.Write(p); err != nil {
				return
			}
			// Separate writes arrive in separate reads more often than not,
			// which exercises frames that span reads.
			time.Sleep(5 * time.Millisecond)
		}
		_, _ = io.Copy(io.Discard, c)
	}
}

// replyAndClose answers the first read with out and closes.
func replyAndClose(out ...[]byte) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		if _, err := c.Read(buf); err != nil {
			return
		}
		for _, p := range out {
			if _, err := c.Write(p); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func send(t *testing.T, req dialer.Request) (dialer.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var d dialer.Dialer
	return d.Send(ctx, req)
}

// prefixed is the 4-byte big-endian length prefix of p, without p.
func prefixed(p []byte) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(len(p)))
}

func TestSendReplies(t *testing.T) {
	line := framing.Config{Mode: framing.Line}
	lp := framing.Config{Mode: framing.LengthPrefix}
	fixed4 := framing.Config{Mode: framing.Fixed, FixedSize: 4}
	tests := []struct {
		name     string
		handle   func(c *net.TCPConn)
		await    await.Mode
		framing  framing.Config
		maxReply int
		want     []byte
		wantErr  error
	}{
		{name: "first read", handle: reply([]byte("pong")), await: await.FirstRead, maxReply: 1024, want: []byte("pong")},
		{name: "first read is capped at max reply", handle: reply(bytes.Repeat([]byte("x"), 100)),
			await: await.FirstRead, maxReply: 10, want: bytes.Repeat([]byte("x"), 10)},
		// As kn-sock's recv, a peer that closes without a byte is an empty reply.
		{name: "first read: close without replying", handle: replyAndClose(), await: await.FirstRead, maxReply: 1024, want: []byte{}},
		{name: "frame: one line of several", handle: reply([]byte("hello\nworld\n")),
			await: await.Frame, framing: line, maxReply: 1024, want: []byte("hello")},
		{name: "frame: a line across writes", handle: reply([]byte("hel"), []byte("lo\r"), []byte("\nrest")),
			await: await.Frame, framing: line, maxReply: 1024, want: []byte("hello")},
		{name: "frame: length prefix across writes", handle: reply(prefixed([]byte("abcdef")), []byte("abc"), []byte("def"), []byte("zz")),
			await: await.Frame, framing: lp, maxReply: 1024, want: []byte("abcdef")},
		{name: "frame: fixed", handle: reply([]byte("12"), []byte("345678")),
			await: await.Frame, framing: fixed4, maxReply: 1024, want: []byte("1234")},
		{name: "frame: raw is the first read", handle: reply([]byte("any bytes")),
			await: await.Frame, framing: framing.Config{}, maxReply: 1024, want: []byte("any bytes")},
		{name: "frame: raw is capped at max reply", handle: reply([]byte("0123456789")),
			await: await.Frame, framing: framing.Config{}, maxReply: 4, want: []byte("0123")},
		{name: "frame: last line without newline at close", handle: replyAndClose([]byte("no newline")),
			await: await.Frame, framing: line, maxReply: 1024, want: []byte("no newline")},
		{name: "frame: close before any byte", handle: replyAndClose(),
			await: await.Frame, framing: line, maxReply: 1024, wantErr: dialer.ErrNoReply},
		{name: "frame: close inside a fixed frame", handle: replyAndClose([]byte("ab")),
			await: await.Frame, framing: fixed4, maxReply: 1024, wantErr: dialer.ErrNoReply},
		{name: "frame: close inside a length prefix", handle: replyAndClose([]byte{0, 0}),
			await: await.Frame, framing: lp, maxReply: 1024, wantErr: dialer.ErrNoReply},
		{name: "frame: close inside a length-prefixed payload", handle: replyAndClose(prefixed([]byte("abcdef")), []byte("abc")),
			await: await.Frame, framing: lp, maxReply: 1024, wantErr: dialer.ErrNoReply},
		{name: "frame: line longer than max reply", handle: reply(bytes.Repeat([]byte("y"), 100)),
			await: await.Frame, framing: line, maxReply: 8, wantErr: dialer.ErrReplyTooLarge},
		{name: "frame: line longer than its framing's limit", handle: reply(bytes.Repeat([]byte("y"), 100)),
			await: await.Frame, framing: framing.Config{Mode: framing.Line, MaxFrameBytes: 8}, maxReply: 1024, wantErr: dialer.ErrReplyTooLarge},
		{name: "frame: length prefix announcing more than max reply", handle: reply(prefixed(make([]byte, 1000))),
			await: await.Frame, framing: lp, maxReply: 999, wantErr: dialer.ErrReplyTooLarge},
		{name: "frame: line exactly max reply", handle: reply([]byte("12345678\n")),
			await: await.Frame, framing: line, maxReply: 8, want: []byte("12345678")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := peer(t, tt.handle)
			fc, err := tt.framing.Normalize()
			if err != nil {
				t.Fatal(err)
			}
			res, err := send(t, dialer.Request{
				Address: addr, Payload: []byte("ping"), Await: tt.await, Framing: fc, MaxReply: tt.maxReply,
			})
			if res.BytesWritten != 4 {
				t.Errorf("BytesWritten = %d, want 4", res.BytesWritten)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Send = %q, %v; want error %v", res.Reply, err, tt.wantErr)
				}
				if res.Reply != nil {
					t.Errorf("reply %q returned with the error", res.Reply)
				}
				return
			}
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if !bytes.Equal(res.Reply, tt.want) {
				t.Errorf("reply = %q, want %q", res.Reply, tt.want)
			}
		})
	}
}

// NoAwait returns after the write; the peer gets the payload whole.
func TestSendNoAwait(t *testing.T) {
	got := make(chan []byte, 1)
	addr := peer(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: several writes deep
	res, err := send(t, dialer.Request{Address: addr, Payload: payload})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if res.BytesWritten != len(payload) || res.Reply != nil {
		t.Errorf("Send = {%d, %q}, want {%d, nil}", res.BytesWritten, res.Reply, len(payload))
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, payload) {
			t.Errorf("peer got %d bytes, want the %d sent", len(b), len(payload))
		}
	case <-time.After(testTimeout):
		t.Fatal("peer did not see the connection close")
	}
}

// UntilClose half-closes after the payload: a peer that answers on EOF, as
// HTTP/1.0-style servers and kn-sock's handlers do, replies, and everything
// up to its close is the reply.
func TestSendUntilClose(t *testing.T) {
	tests := []struct {
		name     string
		reply    []byte
		maxReply int
		wantErr  error
	}{
		{"short", []byte("bye"), 1024, nil},
		{"empty", nil, 1024, nil},
		{"many reads", bytes.Repeat([]byte("z"), 300<<10), 300 << 10, nil},
		{"exactly max reply", []byte("12345678"), 8, nil},
		{"one over max reply", []byte("123456789"), 8, dialer.ErrReplyTooLarge},
		{"far over max reply", bytes.Repeat([]byte("z"), 300<<10), 1000, dialer.ErrReplyTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan []byte, 1)
			addr := peer(t, func(c *net.TCPConn) {
				// ReadAll returns only on EOF: the half-close.
				b, err := io.ReadAll(c)
				if err != nil {
					got <- nil
					return
				}
				got <- b
				_, _ = c.Write(tt.reply)
			})
			payload := []byte("request body")
			res, err := send(t, dialer.Request{Address: addr, Payload: payload, Await: await.UntilClose, MaxReply: tt.maxReply})
			select {
			case b := <-got:
				if !bytes.Equal(b, payload) {
					t.Errorf("peer read %q up to EOF, want %q", b, payload)
				}
			case <-time.After(testTimeout):
				t.Fatal("peer never saw EOF after the payload")
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Send = %d bytes, %v; want %v", len(res.Reply), err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if !bytes.Equal(res.Reply, tt.reply) {
				t.Errorf("reply = %d bytes %.20q, want %d bytes %.20q", len(res.Reply), res.Reply, len(tt.reply), tt.reply)
			}
		})
	}
}

func TestSendRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	for _, mode := range []await.Mode{await.None, await.FirstRead} {
		_, err := send(t, dialer.Request{Address: addr, Payload: []byte("x"), Await: mode, MaxReply: 10})
		if !errors.Is(err, dialer.ErrRefused) {
			t.Errorf("Send to a closed port = %v, want ErrRefused", err)
		}
	}
}

func TestSendUnreachable(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:99999", "127.0.0.1", "127.0.0.1:port"} {
		t.Run(addr, func(t *testing.T) {
			_, err := send(t, dialer.Request{Address: addr, Payload: []byte("x")})
			if !errors.Is(err, dialer.ErrUnreachable) {
				t.Errorf("Send = %v, want ErrUnreachable", err)
			}
		})
	}
}

// A peer that accepts and never answers holds the send until its context
// ends, and the error says which way it ended.
func TestSendContext(t *testing.T) {
	// silent reads everything, even past a half-close, and stays open until
	// the test ends.
	silent := func(t *testing.T) string {
		hold := make(chan struct{})
		addr := peer(t, func(c *net.TCPConn) {
			_, _ = io.Copy(io.Discard, c)
			<-hold
		})
		t.Cleanup(func() { close(hold) }) // runs before peer's cleanup
		return addr
	}
	tests := []struct {
		name  string
		await await.Mode
		fc    framing.Config
	}{
		{"first read", await.FirstRead, framing.Config{}},
		{"frame", await.Frame, framing.Config{Mode: framing.Line}},
		{"until close", await.UntilClose, framing.Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" deadline", func(t *testing.T) {
			addr := silent(t)
			fc, _ := tt.fc.Normalize()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			var d dialer.Dialer
			_, err := d.Send(ctx, dialer.Request{Address: addr, Payload: []byte("x"), Await: tt.await, Framing: fc, MaxReply: 100})
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Send = %v, want context.DeadlineExceeded", err)
			}
		})
		t.Run(tt.name+" cancel", func(t *testing.T) {
			addr := silent(t)
			fc, _ := tt.fc.Normalize()
			ctx, cancel := context.WithCancel(context.Background())
			timer := time.AfterFunc(100*time.Millisecond, cancel)
			defer timer.Stop()
			done := make(chan error, 1)
			go func() {
				var d dialer.Dialer
				_, err := d.Send(ctx, dialer.Request{Address: addr, Payload: []byte("x"), Await: tt.await, Framing: fc, MaxReply: 100})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Send = %v, want context.Canceled", err)
				}
			case <-time.After(testTimeout):
				cancel()
				<-done
				t.Fatal("Send did not return after its context was canceled")
			}
		})
	}
}

// A peer that resets the connection instead of replying breaks the send.
func TestSendReset(t *testing.T) {
	addr := peer(t, func(c *net.TCPConn) {
		buf := make([]byte, 16)
		_, _ = io.ReadFull(c, buf[:4])
		_ = c.SetLinger(0)
	})
	_, err := send(t, dialer.Request{Address: addr, Payload: []byte("ping"), Await: await.FirstRead, MaxReply: 10})
	if !errors.Is(err, dialer.ErrBroken) {
		t.Errorf("Send = %v, want ErrBroken", err)
	}
}
