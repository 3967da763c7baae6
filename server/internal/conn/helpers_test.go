package conn_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

// testTimeout bounds every wait of these tests, so a bug fails instead of
// hanging.
const testTimeout = 10 * time.Second

// recorder is the Publisher of these tests, with their waits.
type recorder struct{ *record.Recorder }

func newRecorder() *recorder { return &recorder{record.New()} }

// waitClosed waits for the CONNECTION_CLOSED event and returns all events.
func (r *recorder) waitClosed(t *testing.T) []*event.Event {
	t.Helper()
	return r.WaitFor(t, "connection_closed", func(evs []*event.Event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Kind == event.ConnectionClosed
	})
}

// dataOf returns the payloads of the DATA events of received data.
func dataOf(evs []*event.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Kind == event.Data && !e.Partial && e.Direction == event.Received {
			out = append(out, string(e.Data))
		}
	}
	return out
}

// sentOf returns the payloads of the DATA events of what was written.
func sentOf(evs []*event.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Kind == event.Data && e.Direction == event.Sent {
			out = append(out, string(e.Data))
		}
	}
	return out
}

// pair returns the two ends of a fresh TCP connection on 127.0.0.1: the
// accepted one, for the Conn, and the client's.
func pair(t *testing.T) (server net.Conn, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = cc.Close() })
	_ = cc.SetDeadline(time.Now().Add(testTimeout))
	return sc, cc.(*net.TCPConn)
}

// serve runs a Conn over a fresh TCP pair with cfg (framing normalized, the
// id "c1" and pub when unset) and returns it with the client end. The Conn
// is closed, and Serve waited for, when the test ends.
func serve(t *testing.T, cfg conn.Config) (*conn.Conn, *net.TCPConn) {
	t.Helper()
	return serveCtx(t, context.Background(), cfg)
}

func serveCtx(t *testing.T, ctx context.Context, cfg conn.Config) (*conn.Conn, *net.TCPConn) {
	t.Helper()
	fc, err := cfg.Framing.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Framing = fc
	if cfg.ID == "" {
		cfg.ID = "c1"
	}
	if cfg.ListenerID == "" {
		cfg.ListenerID = "l1"
	}
	sc, cc := pair(t)
	c := conn.New(ctx, sc, cfg)
	go c.Serve()
	t.Cleanup(func() {
		c.Close(event.ReasonShutdown)
		waitDone(t, c)
	})
	return c, cc
}

// waitDone waits for Serve to return.
func waitDone(t *testing.T, c *conn.Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatalf("Serve of %s did not return", c.ID())
	}
}

// readN reads exactly n bytes from the client end.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	s, err := readFull(c, n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// readFull is readN for goroutines other than the test's.
func readFull(c net.Conn, n int) (string, error) {
	buf := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	got, err := io.ReadFull(c, buf)
	if err != nil {
		return "", fmt.Errorf("reading %d bytes: got %q, then %w", n, buf[:got], err)
	}
	return string(buf), nil
}

func lineFraming() framing.Config { return framing.Config{Mode: framing.Line} }

// eventually reports whether ok holds within testTimeout.
func eventually(ok func() bool) bool {
	deadline := time.Now().Add(testTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
