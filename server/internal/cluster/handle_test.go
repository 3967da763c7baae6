package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// running is a node's listeners, for its handler manager.
type running []string

func (r running) Running(id string) bool { return slices.Contains(r, id) }

// handlersOn starts c's Handle streams over a manager whose node runs
// listeners.
func handlersOn(t *testing.T, c *Cluster, listeners ...string) (*Handlers, *handler.Manager) {
	t.Helper()
	m := handler.New(handler.Config{Listeners: running(listeners)})
	t.Cleanup(m.Close)
	h, err := c.Handlers(m, 0)
	if err != nil {
		t.Fatal(err)
	}
	return h, m
}

// A stream held by a for a listener of b is a relay on b alone; it ends
// on b when the stream ends on a, and when a is lost without a word.
func TestHandleRelayFollowsHolder(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", time.Second)
	b := join(t, ns.URL(), "b", time.Second)
	waitFor(t, "a to see b", func() bool { return len(a.Nodes()) == 2 })
	ha, ma := handlersOn(t, a)
	_, mb := handlersOn(t, b, "l-1")

	ctx := context.Background()
	s, err := ha.Register(ctx, handler.Registration{ListenerIDs: []string{"l-1"}, MaxInFlight: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got := mb.Stats().Streams; got != 1 {
		t.Fatalf("relays on b: %d, want 1", got)
	}
	if got := ma.Stats().Streams; got != 0 {
		t.Fatalf("relays on a, which runs no listener l-1: %d, want 0", got)
	}
	if s.MaxInFlight() != 3 || s.Group() != "own-"+s.ID() {
		t.Fatalf("stream: max_in_flight %d, group %q", s.MaxInFlight(), s.Group())
	}
	s.Close()
	waitFor(t, "b's relay to end with the stream", func() bool { return mb.Stats().Streams == 0 })

	if _, err := ha.Register(ctx, handler.Registration{ListenerIDs: []string{"l-1"}, Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if got := mb.Stats().Streams; got != 1 {
		t.Fatalf("relays on b: %d, want 1", got)
	}
	a.kill()
	waitFor(t, "b's relay to end once a is gone", func() bool { return mb.Stats().Streams == 0 })
}

// A registration that one node refuses leaves no relay on the others.
func TestHandleRegistrationRefusedSomewhere(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", 6*time.Second)
	b := join(t, ns.URL(), "b", 6*time.Second)
	waitFor(t, "a to see b", func() bool { return len(a.Nodes()) == 2 })
	ha, ma := handlersOn(t, a, "l-a")
	_, mb := handlersOn(t, b, "l-b")
	ctx := context.Background()
	taken, err := mb.Register(ctx, handler.Registration{ListenerIDs: []string{"l-b"}, Group: "taken"})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = ha.Register(ctx, handler.Registration{ListenerIDs: []string{"l-a", "l-b"}, Group: "other"})
	var ce *handler.ConflictError
	if !asConflict(err, &ce) || ce.Field != "registration.listener_ids[1]" || ce.Group != "taken" {
		t.Fatalf("registration for a listener another group handles on b: %v, want a conflict on listener_ids[1] with group taken", err)
	}
	waitFor(t, "a's relay of the refused registration to end", func() bool { return ma.Stats().Streams == 0 })
}

func asConflict(err error, ce **handler.ConflictError) bool {
	c, ok := err.(*handler.ConflictError)
	*ce = c
	return ok
}

func TestHandleCodecRoundTrip(t *testing.T) {
	rb := &relayBatch{V: handleVersion, Stream: "h-1", Node: "b", Seq: 7, Events: []relayEvent{
		{Kind: handler.Opened, Conn: handler.ConnInfo{ID: "c-1", ListenerID: "l-1", Origin: event.Accepted, RemoteAddr: "127.0.0.1:1", LocalAddr: "127.0.0.12:2"}},
		{Kind: handler.Frame, Conn: handler.ConnInfo{ID: "c-1"}, Frame: 3, Data: []byte{0, 1, 0xff}, Redelivered: true},
		{Kind: handler.Closed, Conn: handler.ConnInfo{ID: "c-1"}, Reason: event.ReasonPeerClosed},
	}}
	b := encodeRelayBatch(rb)
	got, err := decodeRelayBatch(b)
	if err != nil || !reflect.DeepEqual(got, rb) {
		t.Fatalf("relay batch round trip: %+v, %v; want %+v", got, err, rb)
	}
	op := &handleOp{V: handleVersion, Op: "reply", Stream: "h-1", Reply: &wireReply{Frame: 3, Payload: []byte{}, HasPayload: true, Close: true}}
	gop, err := decodeHandleOp(encodeHandleOp(op))
	if err != nil || gop.Reply.Frame != 3 || !gop.Reply.HasPayload || !gop.Reply.Close || gop.Reply.Payload == nil || len(gop.Reply.Payload) != 0 {
		t.Fatalf("op round trip: %+v, %v", gop, err)
	}
	for _, bad := range []string{``, `{}`, `{"v":1,"op":"register","stream":"h-1"}`, `{"v":2,"op":"close","stream":"h-1"}`,
		`{"v":1,"op":"register","stream":"h-1","holder":"a.b","reg":{}}`, `{"v":1,"op":"dance","stream":"h-1"}`} {
		if _, err := decodeHandleOp(pack(json.RawMessage(bad))); err == nil && bad != "" {
			t.Errorf("op %s decoded", bad)
		}
	}
	for _, bad := range []string{``, `{"v":1,"stream":"h","node":"b","events":[{"kind":9,"conn":{"id":"c"}}]}`,
		`{"v":1,"stream":"h","node":"b","events":[{"kind":1,"conn":{}}]}`, `{"v":1,"node":"b"}`} {
		if _, err := decodeRelayBatch(pack(json.RawMessage(bad))); err == nil && bad != "" {
			t.Errorf("batch %s decoded", bad)
		}
	}
}

func FuzzDecodeHandleOp(f *testing.F) {
	for _, op := range []*handleOp{
		{V: handleVersion, Op: "register", Stream: "h-1", Holder: "a", Reg: &wireReg{Listeners: []string{"l-1"}, Group: "g", Max: 4}},
		{V: handleVersion, Op: "reply", Stream: "h-1", Reply: &wireReply{Frame: 1, Payload: []byte("x"), HasPayload: true}},
		{V: handleVersion, Op: "close", Stream: "h-1"},
	} {
		f.Add(encodeHandleOp(op))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := decodeHandleOp(b)
		if err != nil {
			return
		}
		// What decodes encodes to what decodes the same.
		op2, err := decodeHandleOp(encodeHandleOp(op))
		if err != nil || !reflect.DeepEqual(op, op2) {
			t.Fatalf("re-encoding of %+v: %+v, %v", op, op2, err)
		}
	})
}

func FuzzDecodeRelayBatch(f *testing.F) {
	f.Add(encodeRelayBatch(&relayBatch{V: handleVersion, Stream: "h-1", Node: "b", Seq: 1, Events: []relayEvent{
		{Kind: handler.Opened, Conn: handler.ConnInfo{ID: "c-1", Origin: event.Outbound, Generation: 2}},
		{Kind: handler.Frame, Conn: handler.ConnInfo{ID: "c-1"}, Frame: 9, Data: []byte("line")}}}))
	f.Add(encodeRelayBatch(&relayBatch{V: handleVersion, Stream: "h-1", Node: "b", Seq: 2, Ended: true}))
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		rb, err := decodeRelayBatch(b)
		if err != nil {
			return
		}
		rb2, err := decodeRelayBatch(encodeRelayBatch(rb))
		if err != nil || !reflect.DeepEqual(rb, rb2) {
			t.Fatalf("re-encoding of %+v: %+v, %v", rb, rb2, err)
		}
	})
}

// The holder of a stream reports closed, with NODE_LOST, the connections
// its stream handled on a node that is lost, and refuses answers to their
// frames.
func TestHandleHolderReportsLostNode(t *testing.T) {
	ns := natstest.Start(t)
	a := join(t, ns.URL(), "a", time.Second)
	b := join(t, ns.URL(), "b", time.Second)
	waitFor(t, "a to see b", func() bool { return len(a.Nodes()) == 2 })
	ha, _ := handlersOn(t, a)
	handlersOn(t, b, "l-1")
	ctx := context.Background()
	s, err := ha.Register(ctx, handler.Registration{ListenerIDs: []string{"l-1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// What b's relay would send for a connection with a frame.
	info := handler.ConnInfo{ID: "c-1", ListenerID: "l-1", Origin: event.Accepted}
	if !s.ingest(&relayBatch{V: handleVersion, Stream: s.ID(), Node: "b", Seq: 1000, Events: []relayEvent{
		{Kind: handler.Opened, Conn: info}, {Kind: handler.Frame, Conn: info, Frame: 1, Data: []byte("x")}}}) {
		t.Fatal("the stream refused the batch")
	}
	evs, err := s.Next(ctx, nil)
	if err != nil || len(evs) != 2 || evs[1].Kind != handler.Frame {
		t.Fatalf("events %v, %v; want OPENED and a FRAME", evs, err)
	}
	frame := evs[1].FrameID
	b.kill()
	nctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	evs, err = s.Next(nctx, nil)
	if err != nil || len(evs) != 1 || evs[0].Kind != handler.Closed || evs[0].Reason != event.ReasonNodeLost || evs[0].Info() != info {
		t.Fatalf("after b was lost: %+v, %v; want c-1 CLOSED with NODE_LOST", evs, err)
	}
	err = s.Reply(ctx, handler.Reply{FrameID: frame, Payload: []byte("late")})
	if !errors.Is(err, handler.ErrNotHandled) {
		t.Fatalf("answer to a frame of the lost node: %v, want ErrNotHandled", err)
	}
}
