package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// Fault injection: peers and subscribers that misbehave in the ways real
// ones do (reset mid-frame, never read, vanish mid-stream, arrive by the
// thousand, race a send against their own close), and a gateway that must
// report it truthfully and keep serving everyone else. Goroutine leaks are
// caught by TestMain's goleak.

// faultLongWait bounds the waits of the heavier tests below, where -race
// on a small machine makes the work itself take seconds. Reaching it is a
// failure, not a measurement.
const faultLongWait = 30 * time.Second

// TestClientResetMidFrame: a client announces a 100-byte frame, sends 10
// bytes of it and resets the connection. The subscriber gets the 14 bytes
// that never made a frame as a partial DATA, then learns that the peer
// reset (not that it closed cleanly); the gateway keeps serving.
func TestClientResetMidFrame(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 4},
	})

	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	id := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
	partial := binary.BigEndian.AppendUint32(nil, 100)
	partial = append(partial, "0123456789"...)
	if _, err := c.Write(partial); err != nil {
		t.Fatal(err)
	}
	// Linger 0 makes Close send RST instead of FIN, as a crashed or killed
	// client's kernel does.
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A length-prefixed frame is never delivered in part but as a partial.
	e := s.Next()
	if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA || !e.GetPartial() || e.GetConnectionId() != id {
		t.Fatalf("event after the reset = %v, want a partial DATA of %s", e, id)
	}
	if !bytes.Equal(payloadOf(e), partial) {
		t.Errorf("partial DATA = %q, want the %d partial bytes %q", payloadOf(e), len(partial), partial)
	}
	e = s.Next()
	if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED || e.GetConnectionId() != id || len(e.GetData())+len(e.GetText()) != 0 {
		t.Fatalf("event after the partial DATA = %v, want CONNECTION_CLOSED of %s without data", e, id)
	}
	reason := e.GetCloseReason()

	// The gateway still frames and reports another connection.
	c2 := servertest.Dial(t, l.GetAddress())
	s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	frame := append(binary.BigEndian.AppendUint32(nil, 5), "after"...)
	if _, err := c2.Write(frame); err != nil {
		t.Fatal(err)
	}
	if e := s.Next(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA || e.GetText() != "after" {
		t.Fatalf("event = %v, want DATA \"after\"", e)
	}
	c2.CloseWrite()
	if e := s.Next(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED ||
		e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED || len(payloadOf(e)) != 0 {
		t.Fatalf("event = %v, want a clean CONNECTION_CLOSED", e)
	}

	// On Linux an RST makes the next read fail with ECONNRESET (after any
	// bytes that arrived before it); reporting a clean close would hide
	// the crash.
	switch reason {
	case tcpgatev1.CloseReason_CLOSE_REASON_PEER_RESET:
	case tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED:
		t.Fatal("an RST from the client is reported as CLOSE_REASON_PEER_CLOSED: conn.waitReadable's " +
			"MSG_PEEK recvfrom consumes the socket's pending ECONNRESET (and discards it), so the next read sees EOF")
	default:
		t.Errorf("close reason = %v, want CLOSE_REASON_PEER_RESET", reason)
	}
}

// TestPeerNeverReads: a client that never reads fills the socket buffers;
// the next Send fails with DeadlineExceeded after the write timeout instead
// of hanging, the connection is closed with WRITE_ERROR, and it is gone for
// later Sends.
func TestPeerNeverReads(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	g := servertest.Start(t, server.Config{WriteTimeout: writeTimeout})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})
	c := servertest.Dial(t, l.GetAddress()) // never read until the end
	id := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()

	// Loopback socket buffers take some MiB; 64 MiB is far beyond them.
	const maxSends = 64
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
	defer cancel()
	var sendErr error
	sent := 0
	for sent < maxSends && ctx.Err() == nil {
		_, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
			Payload: &tcpgatev1.SendRequest_Data{Data: chunk},
		})
		if err != nil {
			sendErr = err
			break
		}
		sent++
	}
	if sendErr == nil {
		t.Fatalf("%d Sends of 1 MiB to a peer that never reads all succeeded (or the test's %s ran out)", sent, faultLongWait)
	}
	t.Logf("Send %d failed after %d MiB were taken: %v", sent+1, sent, sendErr)
	servertest.WantCode(t, sendErr, codes.DeadlineExceeded)

	e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if e.GetConnectionId() != id || e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_WRITE_ERROR {
		t.Fatalf("close event = %v, want %s closed with WRITE_ERROR", e, id)
	}
	for range 3 {
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
			Payload: &tcpgatev1.SendRequest_Text{Text: "still there?"},
		})
		servertest.WantCode(t, err, codes.NotFound)
	}
	servertest.EventuallyWithin(t, "connection gone from ListConnections", wait, func() bool {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
		return err == nil && len(resp.GetConnections()) == 0
	})

	// The client gets every byte the gateway counted as written, then the
	// end of the stream: the gateway closed it, with nothing left hanging.
	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(faultLongWait))
	n, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after %d bytes: %v, want EOF", n, err)
	}
	if out := got.GetListener().GetBytesOut(); uint64(n) != out || n < int64(sent)<<20 {
		t.Fatalf("client read %d bytes; the gateway counted %d written after %d full sends", n, out, sent)
	}
}

// TestSendTimeoutBoundsWrite: a Send to an accepted connection is bounded
// by its own timeout, not only by the gateway's write timeout: its write,
// and its wait behind an earlier send that the peer does not take.
func TestSendTimeoutBoundsWrite(t *testing.T) {
	// A write timeout far beyond every wait below: only the sends' own
	// timeouts can end them in time.
	const writeTimeout = 10 * time.Minute
	g := servertest.Start(t, server.Config{WriteTimeout: writeTimeout})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})
	send := func(ctx context.Context, id string, data []byte, timeout time.Duration) error {
		_, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
			Payload: &tcpgatev1.SendRequest_Data{Data: data},
			Timeout: durationpb.New(timeout),
		})
		return err
	}
	chunk := bytes.Repeat([]byte("x"), 1<<20)

	t.Run("write", func(t *testing.T) {
		c := servertest.Dial(t, l.GetAddress()) // never reads
		defer c.Close()
		id := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
		ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
		defer cancel()
		var err error
		for sent := 0; err == nil && sent < 64; sent++ {
			err = send(ctx, id, chunk, 500*time.Millisecond)
		}
		servertest.WantCode(t, err, codes.DeadlineExceeded)
		msg := status.Convert(err).Message()
		switch {
		case strings.Contains(msg, "took nothing"):
			// Not a byte of it went: the connection stays open.
			resp, lerr := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
			if lerr != nil || len(resp.GetConnections()) != 1 {
				t.Fatalf("after a send that wrote nothing: connections %v, %v; want %s open", resp.GetConnections(), lerr, id)
			}
			c.Close()
			s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
		case strings.Contains(msg, "before the send's timeout"):
			// Part of it went: the stream holds a partial message, so the
			// connection is closed.
			e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
			if e.GetConnectionId() != id || e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_WRITE_ERROR {
				t.Fatalf("close event = %v, want %s closed with WRITE_ERROR", e, id)
			}
		default:
			t.Fatalf("Send error %q does not say the send's timeout ended it", msg)
		}
	})

	t.Run("waiting behind another send", func(t *testing.T) {
		c := servertest.Dial(t, l.GetAddress()) // never reads
		id := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
		// The first sender writes until the peer's buffers are full, then
		// blocks in its write for as long as its timeout allows.
		ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
		defer cancel()
		firstDone := make(chan error, 1)
		go func() {
			var err error
			for err == nil && ctx.Err() == nil {
				err = send(ctx, id, chunk, faultLongWait)
			}
			firstDone <- err
		}()
		// Blocked once the bytes written stop growing.
		last, still := uint64(0), 0
		servertest.EventuallyWithin(t, "the first sender blocked in its write", faultLongWait, func() bool {
			time.Sleep(50 * time.Millisecond)
			got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
			if err != nil {
				t.Fatal(err)
			}
			n := got.GetListener().GetBytesOut()
			if n > 0 && n == last {
				still++
			} else {
				last, still = n, 0
			}
			return still >= 4
		})
		err := send(servertest.Context(t), id, []byte("queued"), 300*time.Millisecond)
		servertest.WantCode(t, err, codes.DeadlineExceeded)
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "waiting for earlier sends") {
			t.Errorf("queued Send error %q does not say it waited for earlier sends", msg)
		}
		c.Close() // ends the first sender's write
		select {
		case err := <-firstDone:
			if err == nil {
				t.Fatal("the first sender succeeded against a closed peer")
			}
		case <-ctx.Done():
			t.Fatal("the first sender did not end when the peer closed")
		}
	})
}

// TestSubscriberCancelsMidBatch: under a fast stream, subscribers of every
// policy vanish at random points. The sender is never held up by them (a
// lossless one must release the read loop when it goes), a late subscriber
// replays the whole stream, and every slot they held is free again.
func TestSubscriberCancelsMidBatch(t *testing.T) {
	if testing.Short() {
		// A load repro: 200,000 lines past subscribers that vanish mid-batch.
		// make test runs it.
		t.Skip("a heavy load repro; make test runs it")
	}
	const (
		lines     = 200_000
		perWrite  = 500
		cancelers = 5
		// Every subscription this test holds at once: the witness and the
		// cancelers, later the witness and the fresh ones.
		maxSubs = 1 + cancelers + 1
	)
	g := servertest.Start(t, server.Config{MaxSubscribers: maxSubs, ReplayBytes: 256 << 20})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})
	witness := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})

	policies := []tcpgatev1.SlowConsumerPolicy{
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST,
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT,
	}
	rng := servertest.Rand(t)
	var wg sync.WaitGroup
	errs := make(chan error, cancelers)
	for i := range cancelers {
		policy := policies[i%len(policies)]
		ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
		defer cancel()
		cl, err := faultSubscribe(ctx, g, &tcpgatev1.SubscribeRequest{
			ListenerIds:  []string{l.GetListenerId()},
			SlowConsumer: policy,
		})
		if err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		after := 1 + rng.IntN(20) // batches received before it vanishes
		wg.Go(func() {
			events := 0
			for b := 0; ; b++ {
				if b == after {
					cancel()
				}
				resp, err := cl.Recv()
				if err != nil {
					code := status.Code(err)
					// A disconnect-policy subscriber may be cut off first.
					if code != codes.Canceled && !(code == codes.ResourceExhausted && policy == tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT) {
						errs <- fmt.Errorf("subscriber %d (%v) ended with %v", i, policy, err)
					}
					t.Logf("subscriber %d (%v): %d events in %d batches, then %v", i, policy, events, b, code)
					return
				}
				events += len(resp.GetEvents())
			}
		})
	}

	// The sender writes as fast as the gateway reads; numbered lines let
	// the replay be checked one by one.
	sender := servertest.Dial(t, l.GetAddress())
	_ = sender.SetDeadline(time.Now().Add(faultLongWait))
	opened := witness.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	var buf []byte
	for i := 0; i < lines; i += perWrite {
		buf = buf[:0]
		for j := i; j < i+perWrite && j < lines; j++ {
			buf = fmt.Appendf(buf, "%07d\n", j)
		}
		if _, err := sender.Write(buf); err != nil {
			t.Fatalf("sender stalled at line %d: %v", i, err)
		}
	}
	sender.CloseWrite()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	closed := witness.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED, faultLongWait)
	if closed.GetConnectionId() != opened.GetConnectionId() || closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("sender closed = %v", closed)
	}

	// The slots of the vanished subscribers come back: all the ones the
	// limit allows besides the witness can subscribe at once (the
	// server notices a cancel asynchronously, hence the retries)...
	ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
	defer cancel()
	fresh := make([]tcpgatev1.GatewayService_SubscribeClient, 0, maxSubs-1)
	var last error
	for try := 0; len(fresh) < maxSubs-1; try++ {
		if try == 500 || ctx.Err() != nil {
			t.Fatalf("only %d of %d subscriptions could start after the cancels: %v", len(fresh), maxSubs-1, last)
		}
		req := &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}}
		if len(fresh) == 0 {
			// ...and the first one replays the sender's whole stream.
			req.SinceSequence = opened.GetSequence()
		}
		cl, err := faultSubscribe(ctx, g, req)
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("Subscribe: %v", err)
			}
			last = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		fresh = append(fresh, cl)
	}
	// ...and the limit still holds, so the check above means something.
	if _, err := faultSubscribe(ctx, g, &tcpgatev1.SubscribeRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("subscription beyond max_subscribers: %v, want ResourceExhausted", err)
	}

	// The replay: opened, every line in order, closed, with no gap.
	replay := fresh[0]
	next, prev := 0, uint64(0)
	for done := false; !done; {
		resp, err := replay.Recv()
		if err != nil {
			t.Fatalf("replay ended after %d lines: %v", next, err)
		}
		for _, e := range resp.GetEvents() {
			if e.GetSequence() <= prev {
				t.Fatalf("replay: sequence %d after %d (%v)", e.GetSequence(), prev, e)
			}
			prev = e.GetSequence()
			switch e.GetKind() {
			case tcpgatev1.EventKind_EVENT_KIND_DATA:
				if want := fmt.Sprintf("%07d", next); e.GetText() != want {
					t.Fatalf("replay: line %q, want %q", e.GetText(), want)
				}
				next++
			case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
				done = true
			case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED:
				if e.GetSequence() != opened.GetSequence() {
					t.Fatalf("replay starts at %d, asked for %d", e.GetSequence(), opened.GetSequence())
				}
			default:
				t.Fatalf("replay: unexpected %v", e)
			}
		}
	}
	if next != lines {
		t.Fatalf("replay had %d lines, want %d", next, lines)
	}
}

// TestStopListenerWith1000Connections: StopListener without drain closes a
// thousand open connections, tells subscribers about each one, and leaves
// nothing behind.
func TestStopListenerWith1000Connections(t *testing.T) {
	const n = 1000
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})
	clients := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	for i := range n {
		c, err := net.DialTimeout("tcp", l.GetAddress(), wait)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		clients = append(clients, c)
	}
	servertest.EventuallyWithin(t, "1000 connections listed", faultLongWait, func() bool {
		// One page of the most a page holds (1000), not the default 100.
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId(), PageSize: n})
		return err == nil && len(resp.GetConnections()) == n
	})

	ctx, cancel := context.WithTimeout(context.Background(), faultLongWait)
	defer cancel()
	resp, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: l.GetListenerId(), DrainTimeout: durationpb.New(0)})
	if err != nil {
		t.Fatalf("StopListener: %v", err)
	}
	if st := resp.GetListener(); st.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_STOPPED ||
		st.GetConnectionsTotal() != n || st.GetConnectionsActive() != 0 {
		t.Fatalf("stopped listener = %v", st)
	}
	// Once StopListener has returned, no connection of it is listed.
	all, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetConnections()) != 0 {
		t.Fatalf("ListConnections after StopListener lists %d connections, first %v", len(all.GetConnections()), all.GetConnections()[0])
	}
	_, err = g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
	servertest.WantCode(t, err, codes.NotFound)

	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(wait))
		if k, err := c.Read(make([]byte, 1)); k != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("client %d read %d bytes, %v; want EOF or reset", i, k, err)
		}
	}
	ids := make(map[string]bool, n)
	for range n {
		e := s.NextWithin(faultLongWait)
		if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED || e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED {
			t.Fatalf("after %d close events: %v, want CONNECTION_CLOSED with LISTENER_STOPPED", len(ids), e)
		}
		if ids[e.GetConnectionId()] {
			t.Fatalf("%s closed twice", e.GetConnectionId())
		}
		ids[e.GetConnectionId()] = true
	}
	ln, err := net.Listen("tcp", l.GetAddress())
	if err != nil {
		t.Fatalf("port not free after StopListener: %v", err)
	}
	ln.Close()
}

// TestManyShortConnections: ten thousand clients each connect, send a line
// and leave. Every one is counted, reported open and closed, and none is
// left behind.
func TestManyShortConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 connections; skipped with -short")
	}
	const (
		n       = 10_000
		workers = 16
		bound   = 60 * time.Second
	)
	g := servertest.Start(t, server.Config{SubscriberQueueBytes: 64 << 20})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})

	deadline := time.Now().Add(bound)
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				c, err := net.DialTimeout("tcp", l.GetAddress(), wait)
				if err != nil {
					errs <- fmt.Errorf("dial %d: %w", i, err)
					return
				}
				_ = c.SetDeadline(time.Now().Add(wait))
				_, err = fmt.Fprintf(c, "client %05d\n", i)
				c.Close()
				if err != nil {
					errs <- fmt.Errorf("write %d: %w", i, err)
					return
				}
			}
		})
	}
	var wantBytes uint64
	sent := 0
feed:
	for ; sent < n; sent++ {
		if time.Now().After(deadline) {
			break
		}
		select {
		case jobs <- sent:
			wantBytes += uint64(len(fmt.Sprintf("client %05d\n", sent)))
		case err := <-errs:
			t.Error(err)
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if sent < n {
		t.Fatalf("only %d of %d connections within %s", sent, n, bound)
	}

	var opened, closed int
	for opened+closed < 2*n {
		e := s.NextWithin(faultLongWait)
		switch e.GetKind() {
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED:
			opened++
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
			closed++
			if e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
				t.Fatalf("close event = %v, want PEER_CLOSED", e)
			}
		default:
			t.Fatalf("after %d opened and %d closed: %v", opened, closed, e)
		}
	}
	if opened != n || closed != n {
		t.Fatalf("events: %d opened, %d closed; want %d of each", opened, closed, n)
	}

	// A connection leaves the registry just after its close event.
	var info *tcpgatev1.Listener
	servertest.EventuallyWithin(t, "connections_active back to 0", wait, func() bool {
		resp, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil || len(resp.GetListeners()) != 1 {
			return false
		}
		info = resp.GetListeners()[0]
		return info.GetConnectionsActive() == 0
	})
	if info.GetConnectionsTotal() != n || info.GetFramesIn() != n || info.GetBytesIn() != wantBytes {
		t.Fatalf("listener = %v; want %d connections, %d frames, %d bytes in", info, n, n, wantBytes)
	}
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 0 {
		t.Fatalf("ListConnections = %d connections, %v; want none", len(conns.GetConnections()), err)
	}
}

// TestSendToJustClosedConnection races Send to a connection against the
// connection going away, in each way it can: the client closes, the client
// resets, CloseConnection. A Send either went out or the connection is not
// found; never an internal error, never a hang.
func TestSendToJustClosedConnection(t *testing.T) {
	const iterations = 200
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{l.GetListenerId()},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED},
	})
	closers := []string{"client close", "client reset", "CloseConnection"}
	codesSeen := map[string]map[codes.Code]int{}
	bound := time.Now().Add(faultLongWait)
	for i := range iterations {
		if time.Now().After(bound) {
			t.Fatalf("only %d of %d iterations within %s", i, iterations, faultLongWait)
		}
		closer := closers[i%len(closers)]
		await := i%2 == 1
		c, err := net.DialTimeout("tcp", l.GetAddress(), wait)
		if err != nil {
			t.Fatal(err)
		}
		e := s.Next()
		if e.GetRemoteAddress() != c.LocalAddr().String() {
			c.Close()
			t.Fatalf("opened event %v is not of client %s", e, c.LocalAddr())
		}
		id := e.GetConnectionId()

		start := make(chan struct{})
		results := make(chan error, 3)
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			for range cap(results) {
				req := &tcpgatev1.SendRequest{
					Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
					Payload: &tcpgatev1.SendRequest_Text{Text: "race " + strconv.Itoa(i) + "\n"},
					Timeout: durationpb.New(wait / 2),
				}
				if await {
					req.AwaitReply = &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ}
				}
				_, err := g.Client.Send(servertest.Context(t), req)
				results <- err
			}
		})
		var closeErr error
		wg.Go(func() {
			<-start
			switch closer {
			case "client reset":
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
			case "client close":
				c.Close()
			default:
				_, closeErr = g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: id})
			}
		})
		close(start)
		wg.Wait()
		c.Close()
		if closeErr != nil {
			t.Fatalf("iteration %d: CloseConnection of an open connection: %v", i, closeErr)
		}
		close(results)
		for err := range results {
			code := status.Code(err)
			key := closer
			if await {
				key += ", awaiting a reply"
			}
			if codesSeen[key] == nil {
				codesSeen[key] = map[codes.Code]int{}
			}
			codesSeen[key][code]++
			switch {
			case code == codes.NotFound:
			case code == codes.OK && !await:
			default:
				// The client never answers, so an awaiting Send can only
				// learn that the connection went away.
				t.Fatalf("iteration %d (%s, await %v): Send = %v, want OK or NotFound", i, closer, await, err)
			}
		}
	}
	t.Logf("Send results by closer: %v", codesSeen)

	servertest.EventuallyWithin(t, "every raced connection gone", wait, func() bool {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
		return err == nil && len(resp.GetConnections()) == 0
	})
	// Still healthy: a new connection gets what is sent to it.
	c := servertest.Dial(t, l.GetAddress())
	id := s.Next().GetConnectionId()
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload: &tcpgatev1.SendRequest_Text{Text: "alive"},
	})
	if err != nil || resp.GetBytesWritten() != 5 {
		t.Fatalf("Send after the races = %v, %v", resp, err)
	}
	if got := servertest.ReadN(t, c, 5); string(got) != "alive" {
		t.Fatalf("client read %q", got)
	}
}

// faultSubscribe starts a Subscribe call and returns once it is live, or
// the status that refused it.
func faultSubscribe(ctx context.Context, g *servertest.Gateway, req *tcpgatev1.SubscribeRequest) (tcpgatev1.GatewayService_SubscribeClient, error) {
	cl, err := g.Client.Subscribe(ctx, req)
	if err != nil {
		return nil, err
	}
	md, err := cl.Header()
	if err != nil {
		return nil, err
	}
	if len(md.Get(rpc.HeaderLastSequence)) == 0 {
		// A call refused before it started has no headers; Recv has why.
		if _, err := cl.Recv(); err != nil {
			return nil, err
		}
		return nil, errors.New("subscription started without headers")
	}
	if first, err := cl.Recv(); err != nil || first.GetEvents()[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		return nil, fmt.Errorf("first response %v, %v, want STREAM_STARTED", first, err)
	}
	return cl, nil
}
