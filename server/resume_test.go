package server_test

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

var (
	listenerIDShape   = regexp.MustCompile(`^l-[a-z2-7]{10}$`)
	connectionIDShape = regexp.MustCompile(`^c-[a-z2-7]{10}$`)
)

// rsSubscribe opens a Subscribe stream and returns its first response's
// events, which servertest.Subscribe would want to be STREAM_STARTED
// alone; the rest is read with rsRecv.
func rsSubscribe(t *testing.T, g *servertest.Gateway, req *tcpgatev1.SubscribeRequest) (tcpgatev1.GatewayService_SubscribeClient, []*tcpgatev1.Event) {
	t.Helper()
	cl, err := g.Client.Subscribe(servertest.Context(t), req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Recv()
	if err != nil {
		t.Fatalf("Subscribe(%v): %v", req, err)
	}
	return cl, resp.GetEvents()
}

// rsRecv reads events until n have come.
func rsRecv(t *testing.T, cl tcpgatev1.GatewayService_SubscribeClient, n int) []*tcpgatev1.Event {
	t.Helper()
	var got []*tcpgatev1.Event
	for len(got) < n {
		resp, err := cl.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		got = append(got, resp.GetEvents()...)
	}
	return got
}

// rsTraffic starts a listener and makes one connection send one line and
// close, and returns the listener: 4 events (started, opened, data, closed).
func rsTraffic(t *testing.T, g *servertest.Gateway) *tcpgatev1.StartListenerResponse {
	t.Helper()
	resp, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c := servertest.Dial(t, resp.GetListener().GetAddress())
	_, _ = c.Write([]byte("hello\n"))
	c.Close()
	return resp
}

// rsTrafficSeen waits until the 4 events of rsTraffic are published, by
// reading them on a stream from sequence 1, and returns that stream.
func rsTrafficSeen(t *testing.T, g *servertest.Gateway) *servertest.Stream {
	t.Helper()
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	for range 4 {
		s.Next()
	}
	return s
}

// TestRandomIDs: the ids a client sees for a generated listener and an
// accepted connection are random, of the documented shape, in responses
// and events alike; the responses carry the gateway's header.
func TestRandomIDs(t *testing.T) {
	g := servertest.Start(t, server.Config{NodeID: "node-a"})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	md := sub.Header
	inc := md.Get(rpc.HeaderIncarnation)[0]
	started := rsTraffic(t, g)
	l := started.GetListener()
	if !listenerIDShape.MatchString(l.GetListenerId()) {
		t.Fatalf("generated listener id %q, want %s", l.GetListenerId(), listenerIDShape)
	}
	evs := []*tcpgatev1.Event{sub.Next(), sub.Next(), sub.Next(), sub.Next()}
	if evs[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || evs[0].GetListenerId() != l.GetListenerId() {
		t.Fatalf("first event %v, want the listener's start", evs[0])
	}
	h := started.GetHeader()
	if h.GetIncarnation() != inc || h.GetNodeId() != "node-a" || h.GetLastSequence() < evs[0].GetSequence() {
		t.Fatalf("StartListener header %v, want incarnation %s, node-a, last_sequence at or past %d", h, inc, evs[0].GetSequence())
	}
	if sub.Started.GetHeader().GetIncarnation() != inc {
		t.Fatalf("STREAM_STARTED %v, headers %v", sub.Started, md)
	}
	for _, e := range evs[1:] {
		if !connectionIDShape.MatchString(e.GetConnectionId()) {
			t.Fatalf("%v event: connection id %q, want %s", e.GetKind(), e.GetConnectionId(), connectionIDShape)
		}
	}

	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil || got.GetHeader().GetIncarnation() != inc || got.GetHeader().GetLastSequence() < evs[3].GetSequence() {
		t.Fatalf("GetListener = %v, %v; want the header with the newest sequence", got, err)
	}

	// A connection to close, then the listener's stop.
	servertest.Dial(t, l.GetAddress())
	opened := sub.Next()
	closed, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: opened.GetConnectionId()})
	if err != nil {
		t.Fatal(err)
	}
	closedEv := sub.Next()
	if closed.GetHeader().GetNodeId() != "node-a" || closed.GetHeader().GetLastSequence() < closedEv.GetSequence() {
		t.Fatalf("CloseConnection header %v, want node-a and last_sequence at or past its event %d", closed.GetHeader(), closedEv.GetSequence())
	}
	stopped, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	stopEv := sub.Next()
	if stopEv.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED || stopped.GetHeader().GetLastSequence() < stopEv.GetSequence() || stopped.GetHeader().GetIncarnation() != inc {
		t.Fatalf("StopListener header %v after %v", stopped.GetHeader(), stopEv)
	}

	// Another gateway, another incarnation.
	other := servertest.Start(t, server.Config{})
	if other.Subscribe(t, &tcpgatev1.SubscribeRequest{}).Header.Get(rpc.HeaderIncarnation)[0] == inc {
		t.Fatalf("two gateways share incarnation %s", inc)
	}
}

// TestSubscribeStreamStarted: a gRPC stream's headers name the
// incarnation, the node and the newest sequence, and its first event is
// STREAM_STARTED with the same header, alone and at once.
func TestSubscribeStreamStarted(t *testing.T) {
	g := servertest.Start(t, server.Config{NodeID: "node-b"})
	rsTraffic(t, g)
	// The four events are published by the time their listener's own
	// close is seen; wait for the data through a first stream.
	rsTrafficSeen(t, g)

	// servertest.Subscribe fails unless the first response is
	// STREAM_STARTED alone.
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	md := s.Header
	inc, node, last := md.Get(rpc.HeaderIncarnation), md.Get(rpc.HeaderNodeID), md.Get(rpc.HeaderLastSequence)
	if len(inc) != 1 || !regexp.MustCompile(`^[a-z2-7]{16}$`).MatchString(inc[0]) || len(node) != 1 || node[0] != "node-b" || len(last) != 1 || last[0] != "4" {
		t.Fatalf("headers %v, want an incarnation, node node-b, last sequence 4", md)
	}
	e := s.Started
	want := &tcpgatev1.ResponseHeader{Incarnation: inc[0], NodeId: "node-b", LastSequence: 4}
	if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || e.GetSequence() != 0 || e.GetHeader().String() != want.String() {
		t.Fatalf("first event %v, want STREAM_STARTED with header %v", e, want)
	}
}

// TestSubscribeSinceIncarnation: a since_incarnation that is not the
// gateway's (it restarted) gives INCARNATION_CHANGED after STREAM_STARTED
// and the replay from the start of the ring, whatever since_sequence; the
// gateway's own resumes from since_sequence.
func TestSubscribeSinceIncarnation(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	rsTraffic(t, g)
	inc := rsTrafficSeen(t, g).Header.Get(rpc.HeaderIncarnation)[0]

	for _, since := range []uint64{0, 3, 4, 1000} {
		cl, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceIncarnation: "aaaaaaaaaaaaaaaa", SinceSequence: since})
		if len(first) != 2 || first[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED ||
			first[1].GetKind() != tcpgatev1.EventKind_EVENT_KIND_INCARNATION_CHANGED || first[1].GetSequence() != 0 ||
			first[1].GetHeader().GetIncarnation() != inc || first[1].GetHeader().GetLastSequence() != 4 {
			t.Fatalf("since %d of another incarnation: first response %v, want STREAM_STARTED, INCARNATION_CHANGED with the gateway's header", since, first)
		}
		evs := rsRecv(t, cl, 4)
		for i, e := range evs[:4] {
			if e.GetSequence() != uint64(i+1) {
				t.Fatalf("since %d of another incarnation: replay %v, want 1..4", since, evs)
			}
		}
	}
	// Own incarnation: STREAM_STARTED alone (servertest.Subscribe wants
	// it so), then 3 and 4.
	own := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceIncarnation: inc, SinceSequence: 3})
	if evs := []*tcpgatev1.Event{own.Next(), own.Next()}; evs[0].GetSequence() != 3 || evs[1].GetSequence() != 4 {
		t.Fatalf("own incarnation from 3: %v", evs)
	}
}

// TestSubscribeFutureSequence: since_sequence past the newest + 1 in the
// gateway's incarnation is OutOfRange, with its reason and the newest
// sequence, over gRPC and NDJSON; the newest + 1 itself is a live start.
func TestSubscribeFutureSequence(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	rsTraffic(t, g)
	inc := rsTrafficSeen(t, g).Header.Get(rpc.HeaderIncarnation)[0]
	for _, req := range []*tcpgatev1.SubscribeRequest{{SinceSequence: 6}, {SinceSequence: 6, SinceIncarnation: inc}} {
		cl, err := g.Client.Subscribe(servertest.Context(t), req)
		if err == nil {
			_, err = cl.Recv()
		}
		reason, meta := rpc.ReasonOf(err)
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.OutOfRange || reason != tcpgatev1.ErrorReason_ERROR_REASON_SEQUENCE_OUT_OF_RANGE || meta["last_sequence"] != "4" ||
			!strings.Contains(msg, "newest sequence, 4,") || !strings.Contains(msg, "since_sequence at most 5") {
			t.Fatalf("Subscribe(%v) = %v (metadata %v), want OutOfRange SEQUENCE_OUT_OF_RANGE last_sequence 4", req, err, meta)
		}
	}
	// since_sequence 5 (the newest + 1): servertest.Subscribe fails
	// unless the stream opens with STREAM_STARTED.
	g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: 5})

	resp, body := g.REST.Do(http.MethodGet, "/v1/events?sinceSequence=6", "", nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"SEQUENCE_OUT_OF_RANGE"`) || !strings.Contains(string(body), `"last_sequence":"4"`) {
		t.Fatalf("NDJSON with a future sinceSequence: %d %s, want 400 SEQUENCE_OUT_OF_RANGE with last_sequence", resp.StatusCode, body)
	}
}

// rsBlock is an SSE block with an event, and the event.
type rsBlock struct {
	servertest.SSEBlock
	event *tcpgatev1.Event
}

// rsSSE opens an SSE stream, reads n blocks with an event from it (an
// event: block fails the test), and closes it.
func rsSSE(t *testing.T, g *servertest.Gateway, query, lastEventID string, n int) (*servertest.EventStream, []rsBlock) {
	t.Helper()
	s := g.REST.OpenEvents(query, servertest.SSEHeader(lastEventID))
	defer s.Close()
	var blocks []rsBlock
	for len(blocks) < n {
		b := s.ReadBlock()
		if b.Data == "" {
			continue
		}
		if b.Event != "" {
			t.Fatalf("SSE ?%s with Last-Event-ID %q: block %q", query, lastEventID, b.Lines)
		}
		blocks = append(blocks, rsBlock{b, servertest.DecodeEvent(t, b.Data)})
	}
	return s, blocks
}

// TestEventStreamResumeREST: NDJSON and SSE streams carry the headers and
// open with STREAM_STARTED; SSE ids are INCARNATION-SEQUENCE, the
// STREAM_STARTED one where the stream starts; a Last-Event-ID of another
// incarnation, of the future, or not of this gateway's making, and a
// future sinceSequence over SSE, are answered 200 with INCARNATION_CHANGED
// and the replay from the ring's start.
func TestEventStreamResumeREST(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NodeID: "node-c"})
	rsTraffic(t, g)
	inc := rsTrafficSeen(t, g).Header.Get(rpc.HeaderIncarnation)[0]

	// NDJSON: the headers, then STREAM_STARTED first; a stale
	// sinceIncarnation adds INCARNATION_CHANGED and replays from 1.
	nd := g.REST.OpenEvents("sinceIncarnation=aaaaaaaaaaaaaaaa&sinceSequence=3", nil)
	if resp := nd.Resp; resp.Header.Get("Tcpgate-Incarnation") != inc || resp.Header.Get("Tcpgate-Node-Id") != "node-c" || resp.Header.Get("Tcpgate-Last-Sequence") != "4" {
		t.Fatalf("NDJSON headers %v, want incarnation %s, node node-c, last sequence 4", resp.Header, inc)
	}
	var kinds []string
	for range 3 {
		e := servertest.DecodeEvent(t, nd.NextLine())
		kinds = append(kinds, e.GetKind().String()+"/"+strconv.FormatUint(e.GetSequence(), 10))
		if e.GetSequence() == 0 && (e.GetHeader().GetIncarnation() != inc || e.GetHeader().GetNodeId() != "node-c" || e.GetHeader().GetLastSequence() != 4) {
			t.Fatalf("marker %v, want the gateway's header", e)
		}
	}
	nd.Close()
	if want := "EVENT_KIND_STREAM_STARTED/0 EVENT_KIND_INCARNATION_CHANGED/0 EVENT_KIND_LISTENER_STARTED/1"; strings.Join(kinds, " ") != want {
		t.Fatalf("NDJSON with a stale sinceIncarnation: %s, want %s", kinds, want)
	}

	// SSE: ids, and a STREAM_STARTED id that resumes where it started.
	sse, blocks := rsSSE(t, g, "sinceSequence=2", "", 4)
	if resp := sse.Resp; resp.Header.Get("Tcpgate-Incarnation") != inc || resp.Header.Get("Tcpgate-Node-Id") != "node-c" {
		t.Fatalf("SSE headers %v", sse.Resp.Header)
	}
	if b := blocks[0]; b.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || b.ID != inc+"-1" {
		t.Fatalf("SSE from 2: first block id %q %v, want STREAM_STARTED with id %s-1", b.ID, b.event, inc)
	}
	for _, b := range blocks[1:] {
		if b.ID != inc+"-"+strconv.FormatUint(b.event.GetSequence(), 10) {
			t.Fatalf("SSE block id %q for sequence %d, want %s-%d", b.ID, b.event.GetSequence(), inc, b.event.GetSequence())
		}
	}
	if blocks[1].event.GetSequence() != 2 {
		t.Fatalf("SSE from 2 starts at %d", blocks[1].event.GetSequence())
	}
	_, live := rsSSE(t, g, "", "", 1)
	if live[0].ID != inc+"-4" {
		t.Fatalf("live SSE: STREAM_STARTED id %q, want %s-4 (the newest, so a reconnect resumes from 5)", live[0].ID, inc)
	}
	_, again := rsSSE(t, g, "sinceSequence=1", inc+"-1", 2)
	if again[0].event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || again[1].event.GetSequence() != 2 {
		t.Fatalf("Last-Event-ID %s-1 over ?sinceSequence=1: %v, %v, want STREAM_STARTED then 2", inc, again[0].event, again[1].event)
	}

	for _, tt := range []struct{ name, query, lastID string }{
		{"stale Last-Event-ID", "", "aaaaaaaaaaaaaaaa-3"},
		{"future Last-Event-ID", "", inc + "-99"},
		{"malformed Last-Event-ID", "", "not an id"},
		{"bare sequence of an older gateway", "", "3"},
		{"future sinceSequence", "sinceSequence=99", ""},
	} {
		_, blocks := rsSSE(t, g, tt.query, tt.lastID, 3)
		b0, b1, b2 := blocks[0], blocks[1], blocks[2]
		if b0.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || b0.ID != inc+"-0" ||
			b1.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_INCARNATION_CHANGED || b1.HasID || b1.event.GetHeader().GetIncarnation() != inc ||
			b2.event.GetSequence() != 1 || b2.ID != inc+"-1" {
			t.Fatalf("%s: blocks %q %v, %q %v, %q %v; want STREAM_STARTED (id %s-0), INCARNATION_CHANGED without an id, then sequence 1",
				tt.name, b0.ID, b0.event, b1.ID, b1.event, b2.ID, b2.event, inc)
		}
	}
}
