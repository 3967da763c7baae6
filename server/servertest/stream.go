package servertest

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// Stream is a live Subscribe call whose events are read on demand. A
// goroutine it owns receives every batch into a buffer of 64 Ki events; the
// test's end cancels the call and waits for that goroutine.
type Stream struct {
	// Started is the stream's first event, its STREAM_STARTED marker,
	// which Next does not return.
	Started *tcpgatev1.Event
	// Header is the call's response headers: the incarnation, the node
	// and the newest sequence (rpc.HeaderIncarnation and the others).
	Header metadata.MD

	t      testing.TB
	events chan *tcpgatev1.Event
	errc   chan error
	cancel context.CancelFunc
}

// Subscribe opens a Subscribe stream and returns once it is live (its
// headers and its STREAM_STARTED marker arrived, the marker kept in
// Stream.Started), so nothing published afterwards is missed.
func (g *Gateway) Subscribe(t testing.TB, req *tcpgatev1.SubscribeRequest) *Stream {
	t.Helper()
	return Subscribe(t, g.Client, req)
}

// Subscribe is Gateway.Subscribe for a gateway that c reaches, such as a
// daemon a test started as a process.
func Subscribe(t testing.TB, c tcpgatev1.GatewayServiceClient, req *tcpgatev1.SubscribeRequest) *Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cl, err := c.Subscribe(ctx, req)
	if err != nil {
		cancel()
		t.Fatalf("Subscribe: %v", err)
	}
	md, err := cl.Header()
	if err != nil {
		cancel()
		t.Fatalf("Subscribe headers: %v", err)
	}
	started := RecvStarted(t, cl)
	s := &Stream{Started: started, Header: md, t: t, events: make(chan *tcpgatev1.Event, 1<<16), errc: make(chan error, 1), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.events)
		for {
			resp, err := cl.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			for _, e := range resp.GetEvents() {
				select {
				case s.events <- e:
				case <-ctx.Done():
					s.errc <- ctx.Err()
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range s.events {
		}
		<-done
	})
	return s
}

// RecvStarted reads the first response of a Subscribe stream, which is its
// STREAM_STARTED marker alone, and returns the marker.
func RecvStarted(t testing.TB, cl tcpgatev1.GatewayService_SubscribeClient) *tcpgatev1.Event {
	t.Helper()
	resp, err := cl.Recv()
	if err != nil {
		t.Fatalf("Subscribe: first response: %v", err)
	}
	evs := resp.GetEvents()
	if len(evs) != 1 || evs[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		t.Fatalf("Subscribe: first response %v, want STREAM_STARTED alone", evs)
	}
	return evs[0]
}

// In returns the stream read by t, a subtest of the one that opened it, so
// that its failures end the subtest.
func (s *Stream) In(t testing.TB) *Stream {
	return &Stream{Started: s.Started, Header: s.Header, t: t, events: s.events, errc: s.errc, cancel: s.cancel}
}

// Next returns the next event, failing the test after Wait.
func (s *Stream) Next() *tcpgatev1.Event {
	s.t.Helper()
	return s.NextWithin(Wait)
}

// NextWithin is Next with a bound of its own.
func (s *Stream) NextWithin(bound time.Duration) *tcpgatev1.Event {
	s.t.Helper()
	select {
	case e, ok := <-s.events:
		if !ok {
			s.t.Fatalf("stream ended: %v", <-s.errc)
		}
		return e
	case <-time.After(bound):
		s.t.Fatalf("no event within %s", bound)
	}
	return nil
}

// NextOf skips events until one of kind arrives, failing the test after
// Wait for any one event.
func (s *Stream) NextOf(kind tcpgatev1.EventKind) *tcpgatev1.Event {
	s.t.Helper()
	for {
		if e := s.Next(); e.GetKind() == kind {
			return e
		}
	}
}

// NextOfWithin skips events until one of kind arrives, failing the test
// after bound in all.
func (s *Stream) NextOfWithin(kind tcpgatev1.EventKind, bound time.Duration) *tcpgatev1.Event {
	s.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		if e := s.NextWithin(time.Until(deadline)); e.GetKind() == kind {
			return e
		}
	}
}

// Quiet fails the test if an event arrives within bound. Call it once
// another stream has seen the events this one must not get: they were
// published by then, and would arrive here within far less than bound.
func (s *Stream) Quiet(bound time.Duration) {
	s.t.Helper()
	select {
	case e, ok := <-s.events:
		if !ok {
			s.t.Fatalf("stream ended: %v", <-s.errc)
		}
		s.t.Fatalf("got %v, want no event within %s", e, bound)
	case <-time.After(bound):
	}
}

// End waits for the stream to end, discarding events, and returns the
// call's error; it fails the test after Wait.
func (s *Stream) End() error {
	s.t.Helper()
	deadline := time.After(Wait)
	for {
		select {
		case _, ok := <-s.events:
			if !ok {
				return <-s.errc
			}
		case <-deadline:
			s.t.Fatalf("stream did not end within %s", Wait)
		}
	}
}

// StartListener starts a listener, on 127.0.0.1 unless req names a host,
// failing the test if it does not start.
func (g *Gateway) StartListener(t testing.TB, req *tcpgatev1.StartListenerRequest) *tcpgatev1.Listener {
	t.Helper()
	if req.Host == "" {
		req.Host = "127.0.0.1"
	}
	resp, err := g.Client.StartListener(Context(t), req)
	if err != nil {
		t.Fatalf("StartListener: %v", err)
	}
	return resp.GetListener()
}

// Connect makes a managed outbound connection, failing the test if
// Connect fails, and returns it as Connect did.
func (g *Gateway) Connect(t testing.TB, req *tcpgatev1.ConnectRequest) *tcpgatev1.Connection {
	t.Helper()
	resp, err := g.Client.Connect(Context(t), req)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return resp.GetConnection()
}
