package servertest

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Wait bounds every wait of the harness; reaching it is a failure, not a
// measurement. It is long enough for a loaded CI machine under -race.
const Wait = 10 * time.Second

// Context returns a context that ends after Wait or when the test ends.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	t.Cleanup(cancel)
	return ctx
}

// Dial connects to addr over TCP, with a deadline of Wait on every read
// and write, and closes the connection when the test ends.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(Wait))
	return c.(*net.TCPConn)
}

// DialFrom is Dial from the local IP src: any address of 127.0.0.0/8 is
// this host's on Linux, so a test can be several peers.
func DialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: Wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dialing %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(Wait))
	return c.(*net.TCPConn)
}

// Clients opens n connections to addr from src, one after another, and
// returns them with their local addresses: the remote addresses the
// gateway lists. One after another, so the gateway accepts them in this
// order (its accept queue is first in, first out).
func Clients(t testing.TB, src, addr string, n int) ([]*net.TCPConn, []string) {
	t.Helper()
	conns := make([]*net.TCPConn, 0, n)
	locals := make([]string, 0, n)
	for range n {
		c := DialFrom(t, src, addr)
		conns = append(conns, c)
		locals = append(locals, c.LocalAddr().String())
	}
	return conns, locals
}

// ReadN reads exactly n bytes from c, failing the test otherwise.
func ReadN(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return buf
}

// Peer runs a plain TCP server on 127.0.0.1:0 that calls handle for every
// connection it accepts (with a deadline of Wait, closing the connection
// when handle returns), and returns its address. The test's end closes the
// server and the connections still open, and waits for every handle to
// return.
func Peer(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	return PeerTLS(t, nil, handle)
}

// PeerTLS is Peer speaking TLS with cfg (plain TCP when cfg is nil).
func PeerTLS(t testing.TB, cfg *tls.Config, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("starting a peer: %v", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards open
		open  = make(map[net.Conn]struct{})
		ended bool // guarded by mu: the test's end closes what comes after
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("peer accept: %v", err)
				}
				return
			}
			mu.Lock()
			if ended {
				mu.Unlock()
				c.Close()
				continue
			}
			open[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(open, c)
					mu.Unlock()
				}()
				_ = c.SetDeadline(time.Now().Add(Wait))
				handle(c)
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		ended = true
		for c := range open {
			c.Close() // a handle blocked reading ends now, not after Wait
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// RefusedAddr returns a 127.0.0.1 address nobody listens on: a port that
// was free a moment ago, so connecting to it is refused.
func RefusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Eventually polls cond every 10 ms until it holds, failing the test after
// Wait.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, what, Wait, cond)
}

// EventuallyWithin is Eventually with a bound of its own, for waits that a
// loaded machine needs longer for.
func EventuallyWithin(t testing.TB, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WantCode fails the test unless err is a gRPC status with code.
func WantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}
