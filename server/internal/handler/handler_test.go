package handler_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/internal/page"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// targets is a fixed set of running listeners and managed connections:
// the lookups the registries answer in the daemon.
type targets struct {
	listeners map[string]bool
	managed   map[string]bool
}

func (t targets) Running(id string) bool       { return t.listeners[id] }
func (t targets) ManagedExists(id string) bool { return t.managed[id] }
func (t targets) Send(context.Context, string, []byte, bool, conn.Await) ([]byte, int, error) {
	return nil, 0, errors.New("no connections here")
}
func (t targets) Conn(id string) (*conn.Conn, error) { return nil, errors.New("no connection " + id) }

func newManager(max int) *handler.Manager {
	t := targets{listeners: map[string]bool{"l-a": true, "l-b": true}, managed: map[string]bool{"c-out": true}}
	return handler.New(handler.Config{Listeners: t, Conns: t, MaxStreams: max})
}

// newConn is a connection of listener lid over a real loopback socket,
// not served: the manager reads only its ids.
func newConn(t *testing.T, id, lid string, origin event.Origin) *conn.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := conn.New(ctx, server, conn.Config{ID: id, ListenerID: lid, Origin: origin})
	t.Cleanup(func() {
		c.Close(event.ReasonShutdown)
		cancel()
		client.Close()
	})
	return c
}

func register(t *testing.T, m *handler.Manager, r handler.Registration) *handler.Stream {
	t.Helper()
	s, err := m.Register(context.Background(), r)
	if err != nil {
		t.Fatalf("Register(%+v): %v", r, err)
	}
	t.Cleanup(s.Close)
	return s
}

// next returns the events s has ready, waiting for at least one.
func next(t *testing.T, s *handler.Stream) []handler.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := s.Next(ctx, nil)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return evs
}

func TestRegistrationErrors(t *testing.T) {
	m := newManager(2)
	defer m.Close()
	register(t, m, handler.Registration{ListenerIDs: []string{"l-b"}, Group: "g"})
	for _, tc := range []struct {
		name  string
		r     handler.Registration
		err   error
		field string
	}{
		{"nothing", handler.Registration{}, handler.ErrInvalid, "registration.listener_ids"},
		{"group", handler.Registration{ListenerIDs: []string{"l-a"}, Group: "a/b"}, handler.ErrInvalid, "registration.group"},
		{"in flight", handler.Registration{ListenerIDs: []string{"l-a"}, MaxInFlight: handler.MaxInFlightLimit + 1}, handler.ErrInvalid, "registration.max_in_flight"},
		{"twice", handler.Registration{ConnectionIDs: []string{"c-out", "c-out"}}, handler.ErrInvalid, "registration.connection_ids[1]"},
		{"listener", handler.Registration{ListenerIDs: []string{"l-a", "l-x"}}, handler.ErrListenerNotFound, "registration.listener_ids[1]"},
		{"connection", handler.Registration{ConnectionIDs: []string{"c-x"}}, handler.ErrConnectionNotFound, "registration.connection_ids[0]"},
		{"conflict", handler.Registration{ListenerIDs: []string{"l-a", "l-b"}, Group: "h"}, handler.ErrGroupConflict, "registration.listener_ids[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Register(context.Background(), tc.r)
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
			var fe *page.FieldError
			var ce *handler.ConflictError
			switch {
			case errors.As(err, &fe):
				if fe.Field != tc.field {
					t.Fatalf("field %q, want %q", fe.Field, tc.field)
				}
			case errors.As(err, &ce):
				if ce.Field != tc.field || ce.Group != "g" {
					t.Fatalf("conflict on %q with %q, want %q with g", ce.Field, ce.Group, tc.field)
				}
			default:
				t.Fatalf("%v names no field", err)
			}
		})
	}
	// The same group may join, and then the limit is reached.
	s := register(t, m, handler.Registration{ListenerIDs: []string{"l-b"}, Group: "g"})
	if s.MaxInFlight() != handler.DefaultMaxInFlight || s.Group() != "g" {
		t.Fatalf("stream of %q with max_in_flight %d", s.Group(), s.MaxInFlight())
	}
	if _, err := m.Register(context.Background(), handler.Registration{ListenerIDs: []string{"l-a"}}); !errors.Is(err, handler.ErrLimit) {
		t.Fatalf("third stream: %v, want ErrLimit", err)
	}
}

// An empty group is the stream's own: a second stream for the same
// listener is a conflict until the first ends.
func TestOwnGroup(t *testing.T) {
	m := newManager(0)
	defer m.Close()
	a := register(t, m, handler.Registration{ListenerIDs: []string{"l-a"}})
	if _, err := m.Register(context.Background(), handler.Registration{ListenerIDs: []string{"l-a"}}); !errors.Is(err, handler.ErrGroupConflict) {
		t.Fatalf("second own group: %v, want a conflict", err)
	}
	a.Close()
	b := register(t, m, handler.Registration{ListenerIDs: []string{"l-a"}})
	if b.Group() == a.Group() {
		t.Fatalf("two own groups named %q", a.Group())
	}
}

// Connections go to the least loaded stream and stay there; when it
// ends, they move with their unanswered frames, redelivered with their
// ids; when no stream is left, the frames are settled Unhandled.
func TestGroupFailover(t *testing.T) {
	m := newManager(0)
	defer m.Close()
	if m.Handles(nil) {
		t.Fatal("handles with no stream")
	}
	r := handler.Registration{ListenerIDs: []string{"l-a"}, Group: "g"}
	a, b := register(t, m, r), register(t, m, r)
	c1, c2 := newConn(t, "c-1", "l-a", event.Accepted), newConn(t, "c-2", "l-a", event.Accepted)
	other := newConn(t, "c-3", "l-b", event.Accepted)
	ctx := context.Background()

	h1 := conn.NewHandoff([]byte("one"))
	if !m.Frame(ctx, c1, h1) {
		t.Fatal("c-1's frame not taken")
	}
	m.Opened(c2)
	if m.Frame(ctx, other, conn.NewHandoff([]byte("x"))) {
		t.Fatal("a frame of an unhandled listener was taken")
	}
	h2 := conn.NewHandoff([]byte("two"))
	if !m.Frame(ctx, c2, h2) {
		t.Fatal("c-2's frame not taken")
	}
	ea, eb := next(t, a), next(t, b)
	if len(ea) != 2 || ea[0].Kind != handler.Opened || ea[0].Conn != c1 || ea[1].Kind != handler.Frame || string(ea[1].Data) != "one" {
		t.Fatalf("stream a got %+v, want c-1 opened and its frame", ea)
	}
	if len(eb) != 2 || eb[0].Conn != c2 || string(eb[1].Data) != "two" {
		t.Fatalf("stream b got %+v, want c-2 opened and its frame", eb)
	}
	id1 := ea[1].FrameID

	a.Close()
	moved := next(t, b)
	if len(moved) != 2 || moved[0].Kind != handler.Opened || moved[0].Conn != c1 || !moved[1].Redelivered || moved[1].FrameID != id1 {
		t.Fatalf("after a ended, b got %+v, want c-1 opened and frame %d redelivered", moved, id1)
	}
	if err := b.Reply(ctx, handler.Reply{FrameID: id1, Payload: []byte("ok")}); err != nil {
		t.Fatalf("answering the redelivered frame: %v", err)
	}
	if o, r := h1.Result(); o != conn.Answered || string(r.Payload) != "ok" {
		t.Fatalf("c-1's frame settled %v %q", o, r.Payload)
	}
	if err := b.Reply(ctx, handler.Reply{FrameID: id1}); !errors.Is(err, handler.ErrNotHandled) {
		t.Fatalf("answering twice: %v, want ErrNotHandled", err)
	}

	b.Close()
	if o, _ := h2.Result(); o != conn.Unhandled {
		t.Fatalf("c-2's frame with no stream left: %v, want Unhandled", o)
	}
	if m.Handles(c2) || m.Frame(ctx, c2, conn.NewHandoff([]byte("later"))) {
		t.Fatal("a frame was taken with no stream left")
	}
	st := m.Stats()
	if st.Frames != 2 || st.Redelivered != 1 || st.Unhandled != 1 || st.Replies != 1 || st.Rejections != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Frame waits while the stream has max_in_flight frames unsettled, until
// one settles or the context ends; another stream is not held up.
func TestMaxInFlight(t *testing.T) {
	m := newManager(0)
	defer m.Close()
	slow := register(t, m, handler.Registration{ListenerIDs: []string{"l-a"}, MaxInFlight: 1})
	fast := register(t, m, handler.Registration{ListenerIDs: []string{"l-b"}, MaxInFlight: 1})
	ca, cb := newConn(t, "c-1", "l-a", event.Accepted), newConn(t, "c-2", "l-b", event.Accepted)
	ctx := context.Background()
	first := conn.NewHandoff([]byte("1"))
	if !m.Frame(ctx, ca, first) {
		t.Fatal("first frame not taken")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if m.Frame(short, ca, conn.NewHandoff([]byte("2"))) {
		t.Fatal("a frame beyond max_in_flight was taken before its context ended")
	}
	if !m.Frame(ctx, cb, conn.NewHandoff([]byte("b"))) {
		t.Fatal("the other stream's frame was not taken")
	}
	_ = next(t, fast)

	took := make(chan bool)
	go func() { took <- m.Frame(ctx, ca, conn.NewHandoff([]byte("3"))) }()
	evs := next(t, slow)
	if !first.Answer(conn.HandlerReply{}) {
		t.Fatal("answering the first frame")
	}
	if !<-took {
		t.Fatal("the waiting frame was not taken once the first was answered")
	}
	if len(evs) != 2 || evs[1].FrameID == 0 {
		t.Fatalf("slow stream got %+v", evs)
	}
}

// Closed tells the stream of a connection it had heard of, and nothing
// of one whose OPENED it never read.
func TestClosed(t *testing.T) {
	m := newManager(0)
	defer m.Close()
	s := register(t, m, handler.Registration{ListenerIDs: []string{"l-a"}, ConnectionIDs: []string{"c-out"}})
	c1 := newConn(t, "c-1", "l-a", event.Accepted)
	out := newConn(t, "c-out", "", event.Outbound)
	m.Opened(c1)
	if evs := next(t, s); len(evs) != 1 || evs[0].Kind != handler.Opened {
		t.Fatalf("got %+v", evs)
	}
	m.Opened(out)
	m.Closed(out, event.ReasonPeerClosed)
	m.Closed(c1, event.ReasonPeerReset)
	evs := next(t, s)
	if len(evs) != 1 || evs[0].Kind != handler.Closed || evs[0].Conn != c1 || evs[0].Reason != event.ReasonPeerReset {
		t.Fatalf("got %+v, want c-1's close only", evs)
	}
}

// Close ends every stream: Next reports ErrClosed, registrations fail.
func TestManagerClose(t *testing.T) {
	m := newManager(0)
	s := register(t, m, handler.Registration{ListenerIDs: []string{"l-a"}})
	done := make(chan error)
	go func() {
		_, err := s.Next(context.Background(), nil)
		done <- err
	}()
	m.Close()
	if err := <-done; !errors.Is(err, handler.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if _, err := m.Register(context.Background(), handler.Registration{ListenerIDs: []string{"l-a"}}); !errors.Is(err, handler.ErrClosed) {
		t.Fatalf("Register after Close: %v", err)
	}
}
