package server_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

const rsWait = 10 * time.Second

var (
	listenerIDShape   = regexp.MustCompile(`^l-[a-z2-7]{10}$`)
	connectionIDShape = regexp.MustCompile(`^c-[a-z2-7]{10}$`)
)

func rsCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), rsWait)
	t.Cleanup(cancel)
	return ctx
}

// rsSubscribe opens a Subscribe stream, returns its headers and its first
// response's events; the rest is read with Recv.
func rsSubscribe(t *testing.T, g *servertest.Gateway, req *tcpgatev1.SubscribeRequest) (tcpgatev1.GatewayService_SubscribeClient, metadata.MD, []*tcpgatev1.Event) {
	t.Helper()
	cl, err := g.Client.Subscribe(rsCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	md, err := cl.Header()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Recv()
	if err != nil {
		t.Fatalf("Subscribe(%v): %v", req, err)
	}
	return cl, md, resp.GetEvents()
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
	resp, err := g.Client.StartListener(rsCtx(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", resp.GetListener().GetAddress(), rsWait)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("hello\n"))
	c.Close()
	return resp
}

// TestRandomIDs: the ids a client sees for a generated listener and an
// accepted connection are random, of the documented shape, in responses
// and events alike; the responses carry the gateway's header.
func TestRandomIDs(t *testing.T) {
	g := servertest.Start(t, server.Config{NodeID: "node-a"})
	sub, md, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{})
	inc := md.Get(rpc.HeaderIncarnation)[0]
	started := rsTraffic(t, g)
	l := started.GetListener()
	if !listenerIDShape.MatchString(l.GetListenerId()) {
		t.Fatalf("generated listener id %q, want %s", l.GetListenerId(), listenerIDShape)
	}
	evs := rsRecv(t, sub, 4)
	if evs[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || evs[0].GetListenerId() != l.GetListenerId() {
		t.Fatalf("first event %v, want the listener's start", evs[0])
	}
	h := started.GetHeader()
	if h.GetIncarnation() != inc || h.GetNodeId() != "node-a" || h.GetLastSequence() < evs[0].GetSequence() {
		t.Fatalf("StartListener header %v, want incarnation %s, node-a, last_sequence at or past %d", h, inc, evs[0].GetSequence())
	}
	if first[0].GetHeader().GetIncarnation() != inc {
		t.Fatalf("STREAM_STARTED %v, headers %v", first[0], md)
	}
	for _, e := range evs[1:] {
		if !connectionIDShape.MatchString(e.GetConnectionId()) {
			t.Fatalf("%v event: connection id %q, want %s", e.GetKind(), e.GetConnectionId(), connectionIDShape)
		}
	}

	got, err := g.Client.GetListener(rsCtx(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil || got.GetHeader().GetIncarnation() != inc || got.GetHeader().GetLastSequence() < evs[3].GetSequence() {
		t.Fatalf("GetListener = %v, %v; want the header with the newest sequence", got, err)
	}

	// A connection to close, then the listener's stop.
	c, err := net.DialTimeout("tcp", l.GetAddress(), rsWait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opened := rsRecv(t, sub, 1)[0]
	closed, err := g.Client.CloseConnection(rsCtx(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: opened.GetConnectionId()})
	if err != nil {
		t.Fatal(err)
	}
	closedEv := rsRecv(t, sub, 1)[0]
	if closed.GetHeader().GetNodeId() != "node-a" || closed.GetHeader().GetLastSequence() < closedEv.GetSequence() {
		t.Fatalf("CloseConnection header %v, want node-a and last_sequence at or past its event %d", closed.GetHeader(), closedEv.GetSequence())
	}
	stopped, err := g.Client.StopListener(rsCtx(t), &tcpgatev1.StopListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	stopEv := rsRecv(t, sub, 1)[0]
	if stopEv.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED || stopped.GetHeader().GetLastSequence() < stopEv.GetSequence() || stopped.GetHeader().GetIncarnation() != inc {
		t.Fatalf("StopListener header %v after %v", stopped.GetHeader(), stopEv)
	}

	// Another gateway, another incarnation.
	other := servertest.Start(t, server.Config{})
	if _, md2, _ := rsSubscribe(t, other, &tcpgatev1.SubscribeRequest{}); md2.Get(rpc.HeaderIncarnation)[0] == inc {
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
	pre, _, _ := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	rsRecv(t, pre, 4)

	_, md, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	inc, node, last := md.Get(rpc.HeaderIncarnation), md.Get(rpc.HeaderNodeID), md.Get(rpc.HeaderLastSequence)
	if len(inc) != 1 || !regexp.MustCompile(`^[a-z2-7]{16}$`).MatchString(inc[0]) || len(node) != 1 || node[0] != "node-b" || len(last) != 1 || last[0] != "4" {
		t.Fatalf("headers %v, want an incarnation, node node-b, last sequence 4", md)
	}
	if len(first) != 1 {
		t.Fatalf("first response %v, want STREAM_STARTED alone", first)
	}
	e := first[0]
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
	_, md, _ := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{})
	inc := md.Get(rpc.HeaderIncarnation)[0]
	pre, _, _ := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	rsRecv(t, pre, 4)

	for _, since := range []uint64{0, 3, 4, 1000} {
		cl, _, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceIncarnation: "aaaaaaaaaaaaaaaa", SinceSequence: since})
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
	cl, _, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceIncarnation: inc, SinceSequence: 3})
	if len(first) != 1 {
		t.Fatalf("own incarnation: first response %v, want STREAM_STARTED alone", first)
	}
	if evs := rsRecv(t, cl, 2); evs[0].GetSequence() != 3 || evs[1].GetSequence() != 4 {
		t.Fatalf("own incarnation from 3: %v", evs)
	}
}

// TestSubscribeFutureSequence: since_sequence past the newest + 1 in the
// gateway's incarnation is OutOfRange, with its reason and the newest
// sequence, over gRPC and NDJSON; the newest + 1 itself is a live start.
func TestSubscribeFutureSequence(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	rsTraffic(t, g)
	pre, md, _ := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	rsRecv(t, pre, 4)
	inc := md.Get(rpc.HeaderIncarnation)[0]
	for _, req := range []*tcpgatev1.SubscribeRequest{{SinceSequence: 6}, {SinceSequence: 6, SinceIncarnation: inc}} {
		cl, err := g.Client.Subscribe(rsCtx(t), req)
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
	if _, _, first := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceSequence: 5}); first[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		t.Fatalf("since_sequence 5 (the newest + 1): %v", first)
	}

	resp := rsGet(t, g.BaseURL+"/v1/events?sinceSequence=6", nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"SEQUENCE_OUT_OF_RANGE"`) || !strings.Contains(string(body), `"last_sequence":"4"`) {
		t.Fatalf("NDJSON with a future sinceSequence: %d %s, want 400 SEQUENCE_OUT_OF_RANGE with last_sequence", resp.StatusCode, body)
	}
}

func rsGet(t *testing.T, url string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(rsCtx(t), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// sseBlock is one Server-Sent Events block.
type sseBlock struct {
	id    string
	hasID bool
	event *tcpgatev1.Event
}

// rsSSE opens an SSE stream and reads n event blocks from it.
func rsSSE(t *testing.T, g *servertest.Gateway, query, lastEventID string, n int) (*http.Response, []sseBlock) {
	t.Helper()
	h := http.Header{"Accept": {"text/event-stream"}}
	if lastEventID != "" {
		h.Set("Last-Event-ID", lastEventID)
	}
	resp := rsGet(t, g.BaseURL+"/v1/events?"+query, h)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("SSE ?%s with Last-Event-ID %q: %d %s, want 200", query, lastEventID, resp.StatusCode, b)
	}
	var blocks []sseBlock
	br := bufio.NewReader(resp.Body)
	var cur sseBlock
	for len(blocks) < n {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE after %d blocks: %v", len(blocks), err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if cur.event != nil {
				blocks = append(blocks, cur)
			}
			cur = sseBlock{}
		case strings.HasPrefix(line, "id: "):
			cur.id, cur.hasID = strings.TrimPrefix(line, "id: "), true
		case strings.HasPrefix(line, "data: "):
			cur.event = &tcpgatev1.Event{}
			if err := protojson.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), cur.event); err != nil {
				t.Fatalf("SSE data %q: %v", line, err)
			}
		case strings.HasPrefix(line, "event: "):
			t.Fatalf("SSE %s", line)
		}
	}
	return resp, blocks
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
	pre, md, _ := rsSubscribe(t, g, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	rsRecv(t, pre, 4)
	inc := md.Get(rpc.HeaderIncarnation)[0]

	// NDJSON: the headers, then STREAM_STARTED first; a stale
	// sinceIncarnation adds INCARNATION_CHANGED and replays from 1.
	resp := rsGet(t, g.BaseURL+"/v1/events?sinceIncarnation=aaaaaaaaaaaaaaaa&sinceSequence=3", nil)
	if resp.Header.Get("Tcpgate-Incarnation") != inc || resp.Header.Get("Tcpgate-Node-Id") != "node-c" || resp.Header.Get("Tcpgate-Last-Sequence") != "4" {
		t.Fatalf("NDJSON headers %v, want incarnation %s, node node-c, last sequence 4", resp.Header, inc)
	}
	br := bufio.NewReader(resp.Body)
	var kinds []string
	for range 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		e := &tcpgatev1.Event{}
		if err := protojson.Unmarshal([]byte(line), e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		kinds = append(kinds, e.GetKind().String()+"/"+strconv.FormatUint(e.GetSequence(), 10))
		if e.GetSequence() == 0 && (e.GetHeader().GetIncarnation() != inc || e.GetHeader().GetNodeId() != "node-c" || e.GetHeader().GetLastSequence() != 4) {
			t.Fatalf("marker %v, want the gateway's header", e)
		}
	}
	resp.Body.Close()
	if want := "EVENT_KIND_STREAM_STARTED/0 EVENT_KIND_INCARNATION_CHANGED/0 EVENT_KIND_LISTENER_STARTED/1"; strings.Join(kinds, " ") != want {
		t.Fatalf("NDJSON with a stale sinceIncarnation: %s, want %s", kinds, want)
	}

	// SSE: ids, and a STREAM_STARTED id that resumes where it started.
	resp, blocks := rsSSE(t, g, "sinceSequence=2", "", 4)
	if resp.Header.Get("Tcpgate-Incarnation") != inc || resp.Header.Get("Tcpgate-Node-Id") != "node-c" {
		t.Fatalf("SSE headers %v", resp.Header)
	}
	if b := blocks[0]; b.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || b.id != inc+"-1" {
		t.Fatalf("SSE from 2: first block id %q %v, want STREAM_STARTED with id %s-1", b.id, b.event, inc)
	}
	for _, b := range blocks[1:] {
		if b.id != inc+"-"+strconv.FormatUint(b.event.GetSequence(), 10) {
			t.Fatalf("SSE block id %q for sequence %d, want %s-%d", b.id, b.event.GetSequence(), inc, b.event.GetSequence())
		}
	}
	if blocks[1].event.GetSequence() != 2 {
		t.Fatalf("SSE from 2 starts at %d", blocks[1].event.GetSequence())
	}
	_, live := rsSSE(t, g, "", "", 1)
	if live[0].id != inc+"-4" {
		t.Fatalf("live SSE: STREAM_STARTED id %q, want %s-4 (the newest, so a reconnect resumes from 5)", live[0].id, inc)
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
		if b0.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || b0.id != inc+"-0" ||
			b1.event.GetKind() != tcpgatev1.EventKind_EVENT_KIND_INCARNATION_CHANGED || b1.hasID || b1.event.GetHeader().GetIncarnation() != inc ||
			b2.event.GetSequence() != 1 || b2.id != inc+"-1" {
			t.Fatalf("%s: blocks %q %v, %q %v, %q %v; want STREAM_STARTED (id %s-0), INCARNATION_CHANGED without an id, then sequence 1",
				tt.name, b0.id, b0.event, b1.id, b1.event, b2.id, b2.event, inc)
		}
	}
}
