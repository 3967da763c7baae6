package main_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestIdleConnectionMemoryE2E holds idleConns connections open to a raw
// listener of the plain daemon, idle once connected (for TLS, once the
// handshake is done), and asserts what each costs the daemon: its VmRSS
// with them open, less before, divided by their count.
//
// Before, each idle TLS connection waited in Read with a pooled 64 KiB
// buffer, and its goroutine kept the stack the handshake had grown: about
// 45 KiB each. Now a TLS connection waits with 512 bytes and its
// handshake runs on a goroutine that exits: about 23 KiB each, most of it
// crypto/tls's own state (its record and handshake buffers, sized by the
// ClientHello, and two AES-GCM states; about 7 KiB live) and the garbage
// collector's room of about as much again as the live heap. A plain
// connection, read with no buffer held while it waits, costs about 8 KiB.
//
// Bounds, per connection: TLS 32 KiB, between the two; plain 12 KiB, a
// margin over its 8 KiB (as before: it waited without a buffer already,
// at the cost of a peek before each wait), which a read buffer held while
// waiting would soon pass.
func TestIdleConnectionMemoryE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("thousands of connections; skipped with -short")
	}
	const idleConns = 3000
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	for _, tc := range []struct {
		name  string
		tls   bool
		bound uint64 // bytes per connection
	}{
		{name: "tls", tls: true, bound: 32 << 10},
		{name: "plain", bound: 12 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, api := plainAPI(t)
			ctx, cancel := context.WithTimeout(context.Background(), hubLoadTimeout+callTimeout)
			defer cancel()
			req := &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
				Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW}}
			if tc.tls {
				req.Tls = &tcpgatev1.ListenerTLS{CertPem: string(cert), KeyPem: string(key)}
			}
			l, err := api.StartListener(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			lid, addr := l.GetListener().GetListenerId(), l.GetListener().GetAddress()
			before := settledRSS(t, d)

			conns := holdIdle(t, addr, idleConns, tc.tls, ca)
			for {
				resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: lid})
				if err != nil {
					t.Fatal(err)
				}
				if n := resp.GetListener().GetConnectionsActive(); n >= idleConns {
					break
				} else if ctx.Err() != nil {
					t.Fatalf("%d of %d connections active", n, idleConns)
				}
				time.Sleep(50 * time.Millisecond)
			}
			after := settledRSS(t, d)
			per := float64(after-min(before, after)) / idleConns
			t.Logf("%s: VmRSS %s before, %s with %d idle connections: %.1f KiB each (bound %d KiB)",
				tc.name, mib(before), mib(after), idleConns, per/1024, tc.bound>>10)
			if per > float64(tc.bound) {
				t.Errorf("each idle %s connection costs the daemon %.1f KiB of RSS, want at most %d KiB", tc.name, per/1024, tc.bound>>10)
			}
			// Every connection is still served: one says something, and
			// the listener counts it.
			if _, err := conns[0].Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			for {
				resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: lid})
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetListener().GetBytesIn() >= 1 {
					break
				} else if ctx.Err() != nil {
					t.Fatal("the byte written to an idle connection was never read")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// holdIdle opens n connections to addr, 32 at a time, with a TLS
// handshake (trusting ca) when useTLS; they are closed when the test ends.
func holdIdle(t *testing.T, addr string, n int, useTLS bool, ca *servertest.CA) []net.Conn {
	t.Helper()
	deadline := time.Now().Add(hubLoadTimeout)
	conns := make([]net.Conn, n)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
				if err != nil {
					t.Errorf("dialing %s: %v", addr, err)
					continue
				}
				if useTLS {
					tc := tls.Client(c, &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()})
					_ = tc.SetDeadline(deadline)
					if err := tc.Handshake(); err != nil {
						t.Errorf("TLS handshake with %s: %v", addr, err)
						c.Close()
						continue
					}
					_ = tc.SetDeadline(time.Time{})
					c = tc
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return conns
}

// settledRSS returns the daemon's VmRSS once it changed by less than 1%
// over a second, sampled every 250 ms for at most 10 s: what is freed
// after a burst of connections takes the runtime a moment to return.
func settledRSS(t *testing.T, d *daemon) uint64 {
	t.Helper()
	var samples []uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		r := d.rss(t)
		samples = append(samples, r)
		if n := len(samples); n >= 5 {
			old := samples[n-5]
			if diff := max(r, old) - min(r, old); diff*100 < r {
				return r
			}
		}
		if time.Now().After(deadline) {
			return r
		}
	}
}
