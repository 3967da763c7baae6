package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

var (
	kindData = []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}
	lineMode = &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
)

// TestBackpressureLossless sends 1 GiB through a raw listener to a lossless
// subscriber that reads slowly: every byte arrives in order, nothing is
// dropped, and the gateway's heap stays bounded because TCP flow control
// slows the sender instead.
func TestBackpressureLossless(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 1 GiB; runs without -short")
	}
	const total = 1 << 30
	const heapBound = 384 << 20
	g := servertest.Start(t, server.Config{ReplayBytes: 8 << 20, SubscriberQueueBytes: 8 << 20})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{
		ListenerIds:  []string{l.GetListenerId()},
		Kinds:        kindData,
		SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Header(); err != nil {
		t.Fatal(err)
	}
	servertest.RecvStarted(t, cl)

	var maxHeap atomic.Uint64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > maxHeap.Load() {
					maxHeap.Store(ms.HeapInuse)
				}
			}
		}
	})
	defer func() { close(stopSampling); sampler.Wait() }()

	seed := servertest.Rand(t).Uint64() // the bytes sent: any will do, and a failure replays
	sentSum := make(chan [32]byte, 1)
	sendErr := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", l.GetAddress())
		if err != nil {
			sendErr <- err
			return
		}
		defer c.Close()
		h := sha256.New()
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		rng := rand.NewChaCha8(key)
		chunk := make([]byte, 256<<10)
		for sent := 0; sent < total; sent += len(chunk) {
			rng.Read(chunk)
			h.Write(chunk)
			if _, err := c.Write(chunk); err != nil {
				sendErr <- err
				return
			}
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		sentSum <- sum
		sendErr <- nil
	}()

	h := sha256.New()
	received, batches := 0, 0
	for received < total {
		resp, err := cl.Recv()
		if err != nil {
			t.Fatalf("after %d bytes: %v", received, err)
		}
		for _, e := range resp.GetEvents() {
			if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA {
				t.Fatalf("lossless subscriber got %v", e)
			}
			h.Write(payloadOf(e))
			received += len(payloadOf(e))
		}
		if batches++; batches%8 == 0 {
			time.Sleep(2 * time.Millisecond) // a slow reader
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	want := <-sentSum
	if received != total || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("received %d bytes with sha256 %x, sent %d with %x", received, h.Sum(nil), total, want)
	}
	t.Logf("1 GiB byte-exact in %d batches; peak heap in use %d MiB", batches, maxHeap.Load()>>20)
	if maxHeap.Load() > heapBound {
		t.Fatalf("heap in use peaked at %d MiB, over %d MiB: the sender was not held back", maxHeap.Load()>>20, heapBound>>20)
	}
}

// lineSender writes numbered lines "conn-i:n\n" on one connection, in bursts
// that wait for a fast subscriber to see each burst, so that only the
// subscriber under test can fall behind.
func numberedLine(conn, n int) string {
	return fmt.Sprintf("%d:%06d:%s\n", conn, n, strings.Repeat("x", 80))
}

// TestDropOldestAccounting has a stuck subscriber under DROP_OLDEST while a
// fast one reads everything: ingest goes on, the fast one misses nothing,
// and once the stuck one reads, what it received plus what its
// EVENTS_DROPPED markers count is exactly what was sent.
func TestDropOldestAccounting(t *testing.T) {
	const n, burst = 20000, 1000
	// The queues take a burst's 1,000 events (about 410 KiB, as events
	// count what they keep alive), far from the 20,000 of the whole run.
	g := servertest.Start(t, server.Config{SubscriberQueueBytes: 1 << 20})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: lineMode})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stuck, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{Kinds: kindData})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Header(); err != nil {
		t.Fatal(err)
	}
	servertest.RecvStarted(t, stuck)
	fast := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: kindData})

	c := servertest.Dial(t, l.GetAddress())
	var last uint64
	for i := 0; i < n; i += burst {
		var b strings.Builder
		for j := i; j < i+burst; j++ {
			b.WriteString(numberedLine(0, j))
		}
		if _, err := c.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		for j := i; j < i+burst; j++ {
			e := fast.Next()
			if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA || e.GetText() != strings.TrimSuffix(numberedLine(0, j), "\n") {
				t.Fatalf("fast subscriber: event %v, want line %d", e, j)
			}
			last = e.GetSequence()
		}
	}

	// Now the stuck one reads: delivered + dropped must be exactly n.
	var delivered, dropped uint64
	prev := -1
	for {
		resp, err := stuck.Recv()
		if err != nil {
			t.Fatal(err)
		}
		done := false
		for _, e := range resp.GetEvents() {
			switch e.GetKind() {
			case tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED:
				dropped += e.GetDropped()
			case tcpgatev1.EventKind_EVENT_KIND_DATA:
				delivered++
				num, _ := strconv.Atoi(strings.Split(e.GetText(), ":")[1])
				if num <= prev {
					t.Fatalf("line %d after %d", num, prev)
				}
				prev = num
				done = e.GetSequence() == last
			}
		}
		if done {
			break
		}
	}
	if dropped == 0 || delivered+dropped != n {
		t.Fatalf("stuck subscriber: %d delivered + %d dropped != %d sent", delivered, dropped, n)
	}
	t.Logf("stuck subscriber: %d delivered, %d dropped", delivered, dropped)
}

// TestDisconnectAndResume: a DISCONNECT subscriber that falls behind gets
// ResourceExhausted naming the sequence to resume from, and resuming there
// yields exactly the rest, with no gap and no duplicate.
func TestDisconnectAndResume(t *testing.T) {
	const n, burst = 10000, 500
	// The queues take a burst's 500 events (about 205 KiB), far from the
	// 10,000 of the whole run.
	g := servertest.Start(t, server.Config{SubscriberQueueBytes: 512 << 10})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: lineMode})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	slow, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{
		Kinds: kindData, SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Header(); err != nil {
		t.Fatal(err)
	}
	servertest.RecvStarted(t, slow)
	fast := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: kindData})
	c := servertest.Dial(t, l.GetAddress())
	for i := 0; i < n; i += burst {
		var b strings.Builder
		for j := i; j < i+burst; j++ {
			b.WriteString(numberedLine(0, j))
		}
		c.Write([]byte(b.String()))
		for range burst {
			fast.Next()
		}
	}

	var got []string
	var streamErr error
	for {
		resp, err := slow.Recv()
		if err != nil {
			streamErr = err
			break
		}
		for _, e := range resp.GetEvents() {
			got = append(got, e.GetText())
		}
	}
	if status.Code(streamErr) != codes.ResourceExhausted {
		t.Fatalf("slow stream ended with %v, want ResourceExhausted", streamErr)
	}
	m := regexp.MustCompile(`since_sequence=(\d+)`).FindStringSubmatch(status.Convert(streamErr).Message())
	if m == nil {
		t.Fatalf("message %q does not say where to resume", status.Convert(streamErr).Message())
	}
	since, _ := strconv.ParseUint(m[1], 10, 64)
	resumed := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: kindData, SinceSequence: since})
	for len(got) < n {
		e := resumed.Next()
		if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA {
			t.Fatalf("resumed stream: %v", e)
		}
		got = append(got, e.GetText())
	}
	for i, line := range got {
		if line != strings.TrimSuffix(numberedLine(0, i), "\n") {
			t.Fatalf("line %d is %q: a gap or a duplicate around the resume at %d", i, line, since)
		}
	}
}

// TestPerConnectionOrderUnderConcurrency: many connections send numbered
// lines at once; every lossless subscriber sees each connection's lines
// complete and in order.
func TestPerConnectionOrderUnderConcurrency(t *testing.T) {
	const conns, lines, subs = 20, 500, 5
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: lineMode})
	var streams []*servertest.Stream
	for range subs {
		streams = append(streams, g.Subscribe(t, &tcpgatev1.SubscribeRequest{
			Kinds: kindData, SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
		}))
	}
	var wg sync.WaitGroup
	for i := range conns {
		c := servertest.Dial(t, l.GetAddress())
		wg.Go(func() {
			for j := 0; j < lines; j += 50 {
				var b strings.Builder
				for k := j; k < j+50; k++ {
					b.WriteString(numberedLine(i, k))
				}
				if _, err := c.Write([]byte(b.String())); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for si, s := range streams {
		next := make([]int, conns)
		for range conns * lines {
			e := s.Next()
			parts := strings.Split(e.GetText(), ":")
			ci, _ := strconv.Atoi(parts[0])
			n, _ := strconv.Atoi(parts[1])
			if n != next[ci] {
				t.Fatalf("subscriber %d: connection %d line %d, want %d", si, ci, n, next[ci])
			}
			next[ci]++
		}
	}
}

// TestShutdownUnderLoad stops the gateway while senders, subscribers and
// Send calls run at full speed: it stops within the shutdown timeout,
// cleanly, with every port free (and goleak in TestMain finds nothing left).
func TestShutdownUnderLoad(t *testing.T) {
	g := servertest.Start(t, server.Config{ShutdownTimeout: 2 * time.Second})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: lineMode,
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		c := servertest.Dial(t, l.GetAddress())
		_ = c.SetDeadline(time.Time{})
		wg.Go(func() { // sender; also drains the echo
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
			line := []byte(numberedLine(i, 0))
			for ctx.Err() == nil {
				if _, err := c.Write(bytes.Repeat(line, 100)); err != nil {
					return
				}
			}
		})
	}
	for _, policy := range []tcpgatev1.SlowConsumerPolicy{
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST,
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
	} {
		cl, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{SlowConsumer: policy})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := cl.Recv(); err != nil {
					return
				}
			}
		})
	}
	wg.Go(func() { // one-shot sends to the listener
		for ctx.Err() == nil {
			_, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: l.GetAddress()},
				Payload: &tcpgatev1.SendRequest_Text{Text: "ping\n"},
			})
			if err != nil {
				return
			}
		}
	})
	time.Sleep(300 * time.Millisecond) // let the load build up

	start := time.Now()
	if err := g.Stop(); err != nil {
		t.Fatalf("shutdown under load: %v", err)
	}
	took := time.Since(start)
	cancel()
	wg.Wait()
	if took > 2*time.Second+2*time.Second { // the timeout, and 2 s for closing listeners under -race
		t.Fatalf("shutdown took %s with a 2s shutdown timeout", took)
	}
	for _, addr := range []string{l.GetAddress(), g.Server.GRPCAddr()} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s still bound after shutdown: %v", addr, err)
		}
		ln.Close()
	}
	t.Logf("stopped under load in %s", took.Round(time.Millisecond))
}
