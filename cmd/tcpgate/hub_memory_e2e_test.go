package main_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// hubLoadTimeout bounds the load loops of the hub's memory tests, so a
// daemon that stops reading fails the test instead of hanging it.
const hubLoadTimeout = 2 * time.Minute

// plainAPI starts the plain daemon with args after the defaults of these
// tests and returns a client of it.
func plainAPI(t *testing.T, args ...string) (*daemon, tcpgatev1.GatewayServiceClient) {
	t.Helper()
	d := startPlainDaemon(t, hermeticEnv(), append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, args...)...)
	return d, servertest.Client(t, d.waitServing(t))
}

// hammer runs conns connections to addr, 16 at a time, each calling fn. It
// fails the test when they take longer than hubLoadTimeout.
func hammer(t *testing.T, addr string, conns int, fn func(c *net.TCPConn)) {
	t.Helper()
	deadline := time.Now().Add(hubLoadTimeout)
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range work {
				c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
				if err != nil {
					t.Errorf("dialing %s: %v", addr, err)
					continue
				}
				_ = c.SetDeadline(deadline)
				fn(c.(*net.TCPConn))
				c.Close()
			}
		})
	}
	for range conns {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	if time.Now().After(deadline) {
		t.Fatalf("%d connections took more than %v", conns, hubLoadTimeout)
	}
}

// TestBackpressureQueueBoundedE2E is the repro of a lossless queue that
// grew without bound: one BACKPRESSURE subscriber that never reads, and
// 1,500 connections that each send 1 MiB less one byte of a length-prefixed
// frame and close. Each partial frame is a DATA event that waits for room;
// a closed connection cannot wait, so once the subscriber's 16 MiB queue is
// full it is ended with RESOURCE_EXHAUSTED and the sequence to resume from,
// and the partial frames go on into the replay ring. Before, the close
// events carried the partial frames past the limit: 1.57 GB queued against
// 16 MiB, and 2.6 GB of RSS.
//
// Bound: the ring (64 MiB) and the queue (16 MiB) at their defaults, the
// frames in flight on 16 connections (a 1 MiB frame each, in a buffer
// grown by doubling: 2 MiB) and the daemon's baseline of about 20 MiB make
// about 130 MiB live; the garbage collector lets the heap reach twice what
// is live: 200 MiB measured alone, 240 MiB beside other tests. 400 MiB
// leaves 160 MiB for the runtime and the gRPC buffers, and is a sixth of
// what the repro reached.
func TestBackpressureQueueBoundedE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("1.5 GB over loopback; skipped with -short")
	}
	const conns = 1500
	const bound = 400 << 20
	d, api := plainAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), hubLoadTimeout+callTimeout)
	defer cancel()
	l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 4}})
	if err != nil {
		t.Fatal(err)
	}
	lid := l.GetListener().GetListenerId()
	sub, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{ListenerIds: []string{lid},
		SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Header(); err != nil { // subscribed; from here on it never reads
		t.Fatal(err)
	}

	// A frame of 1 MiB announced, all of it sent but its last byte.
	partial := binary.BigEndian.AppendUint32(nil, 1<<20-4)
	partial = append(partial, make([]byte, 1<<20-5)...)
	hammer(t, l.GetListener().GetAddress(), conns, func(c *net.TCPConn) {
		if _, err := c.Write(partial); err != nil {
			t.Errorf("writing the partial frame: %v", err)
		}
		// Close the sending side and wait for the gateway's close, so that
		// it frames at most 16 connections at once: what it buffers for
		// connections in flight is theirs, not the queue's.
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	// Every connection has closed once its CONNECTION_CLOSED is published.
	waitConnsClosed(t, ctx, api, lid, conns)
	peak := d.peakRSS(t)
	t.Logf("peak RSS %s after %d partial frames of 1 MiB with a stuck BACKPRESSURE subscriber (bound %s)", mib(peak), conns, mib(bound))
	if peak > bound {
		t.Errorf("peak RSS %s, want at most %s: the lossless queue went past its 16 MiB", mib(peak), mib(bound))
	}

	// The subscriber reads at last: what was queued, then its end.
	var last uint64
	for {
		resp, err := sub.Recv()
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("the stuck subscriber ended with %v, want RESOURCE_EXHAUSTED", err)
			}
			m := regexp.MustCompile(`since_sequence=(\d+)`).FindStringSubmatch(status.Convert(err).Message())
			if m == nil {
				t.Fatalf("the end of the stuck subscriber %q names no since_sequence to resume from", status.Convert(err).Message())
			}
			if resume, _ := strconv.ParseUint(m[1], 10, 64); resume != last+1 {
				t.Errorf("resume sequence %d, want %d, right after the last event received", resume, last+1)
			}
			break
		}
		for _, e := range resp.GetEvents() {
			last = e.GetSequence()
		}
	}
}

// waitConnsClosed waits until the listener counts n connections and none
// is open.
func waitConnsClosed(t *testing.T, ctx context.Context, api tcpgatev1.GatewayServiceClient, lid string, n int) {
	t.Helper()
	for {
		resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: lid})
		if err != nil {
			t.Fatal(err)
		}
		l := resp.GetListener()
		if l.GetConnectionsTotal() >= uint64(n) && l.GetConnectionsActive() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("listener %s: %d of %d connections accepted, %d still open", lid, l.GetConnectionsTotal(), n, l.GetConnectionsActive())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestSmallFramesDoNotPinReadsE2E is the repro of frames that pinned the
// reads they were cut from: a line listener with max_frame_bytes 1024 and
// an 8 MiB replay ring, and 15,000 connections that each send "x\n" and
// 65,534 bytes without a newline, which close them as FRAME_TOO_LARGE.
// Each one-byte frame stays in the ring; before, each kept its whole read
// of up to 64 KiB alive, so the 8 MiB ring held 930 MB of heap.
//
// Bound: the ring's 8 MiB, the reads in flight on 16 connections (64 KiB
// each) and the daemon's baseline of about 20 MiB, with the garbage
// collector's doubling: about 60 MiB. 128 MiB leaves a wide margin and is
// still an eighth of what the repro reached.
func TestSmallFramesDoNotPinReadsE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("15,000 connections; skipped with -short")
	}
	const conns = 15000
	const bound = 128 << 20
	d, api := plainAPI(t, "--replay-bytes", strconv.Itoa(8<<20))
	ctx, cancel := context.WithTimeout(context.Background(), hubLoadTimeout+callTimeout)
	defer cancel()
	l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	lid := l.GetListener().GetListenerId()
	payload := append([]byte("x\n"), make([]byte, 65534)...)
	for i := 2; i < len(payload); i++ {
		payload[i] = 'y'
	}
	hammer(t, l.GetListener().GetAddress(), conns, func(c *net.TCPConn) {
		_, _ = c.Write(payload) // the gateway may close first: it needs 1 KiB of it
		_, _ = io.Copy(io.Discard, c)
	})
	waitConnsClosed(t, ctx, api, lid, conns)
	// The ring holds what it did at the end of the load.
	peak := d.peakRSS(t)
	t.Logf("peak RSS %s after %d one-byte frames cut from 64 KiB reads, with an 8 MiB ring (bound %s)", mib(peak), conns, mib(bound))
	if peak > bound {
		t.Errorf("peak RSS %s, want at most %s: the ring's one-byte frames keep their reads alive", mib(peak), mib(bound))
	}
	resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: lid})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetListener().GetFramesIn(); got < conns {
		t.Errorf("%d frames in, want at least %d: the load did not happen as intended", got, conns)
	}
}

// TestMaxQueuedBytesE2E: --max-queued-bytes bounds all subscriber queues
// together. Two DISCONNECT subscribers that do not read, each with a queue
// of 1 MiB, share a bound of 1 MiB: the first to reach it is ended with
// RESOURCE_EXHAUSTED naming the flag, though its own queue had room.
func TestMaxQueuedBytesE2E(t *testing.T) {
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--subscriber-queue-bytes", strconv.Itoa(1<<20), "--max-queued-bytes", strconv.Itoa(1<<20))
	api := servertest.Client(t, d.waitServing(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
	defer cancel()
	l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	if err != nil {
		t.Fatal(err)
	}
	var subs []tcpgatev1.GatewayService_SubscribeClient
	for range 2 {
		sub, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA},
			SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.Header(); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	// 8 MiB of 1 KiB lines, far more than both queues and the stream's
	// flow-control windows take.
	c, err := net.Dial("tcp", l.GetListener().GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := append(bytes.Repeat([]byte("q"), 1023), '\n')
	if _, err := c.Write(bytes.Repeat(line, 8<<10)); err != nil {
		t.Fatal(err)
	}
	// Every line is framed, and so published, before anyone reads.
	for {
		resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: l.GetListener().GetListenerId()})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetListener().GetFramesIn() >= 8<<10 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	global := 0
	for i, sub := range subs {
		var err error
		for err == nil {
			_, err = sub.Recv()
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("subscriber %d ended with %v, want RESOURCE_EXHAUSTED", i, err)
		}
		if strings.Contains(status.Convert(err).Message(), "--max-queued-bytes") {
			global++
		}
	}
	if global == 0 {
		t.Fatal("no subscriber was ended by --max-queued-bytes")
	}
}
