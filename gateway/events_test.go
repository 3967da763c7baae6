package gateway_test

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// The kn-sock example over REST: a subscriber on GET /v1/events sees a
// client connect, send "Hello, World!" and leave, one JSON event a line.
func TestEventsNDJSONSeedFlow(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("seed")
	s := api.OpenEvents("listenerIds=seed", nil)
	if ct := s.Resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("Content-Type = %q, want application/x-ndjson", ct)
	}
	if s.LastSequence == 0 {
		t.Fatal("Tcpgate-Last-Sequence is 0 after a listener started")
	}

	seedClient(t, l.GetAddress())

	opened, _ := s.Next()
	data, dataLine := s.Next()
	closed, _ := s.Next()
	if opened.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED ||
		data.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA ||
		closed.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
		t.Fatalf("kinds = %v, %v, %v", opened.GetKind(), data.GetKind(), closed.GetKind())
	}
	if !(s.LastSequence < opened.GetSequence() && opened.GetSequence() < data.GetSequence() && data.GetSequence() < closed.GetSequence()) {
		t.Fatalf("sequences not increasing after %d: %d %d %d", s.LastSequence, opened.GetSequence(), data.GetSequence(), closed.GetSequence())
	}
	if data.GetText() != "Hello, World!" || data.GetListenerId() != "seed" || data.GetConnectionId() != opened.GetConnectionId() {
		t.Fatalf("data event = %v", data)
	}
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("close reason = %v", closed.GetCloseReason())
	}
	// The wire form is protojson: enums by name, uint64 as a string; the
	// payload, valid UTF-8, as text only (PAYLOAD_FORMAT_TEXT_OR_DATA).
	if strings.Contains(dataLine, `"data"`) {
		t.Errorf("event line %s has data as well as text", dataLine)
	}
	for _, want := range []string{
		`"kind":"EVENT_KIND_DATA"`,
		`"sequence":"` + strconv.FormatUint(data.GetSequence(), 10) + `"`,
		`"text":"Hello, World!"`,
		`"listenerId":"seed"`,
	} {
		if !strings.Contains(compact(dataLine), want) {
			t.Errorf("event line %s lacks %s", dataLine, want)
		}
	}
}

// TestEventsFilters: the SubscribeRequest filters as query parameters,
// live and replayed.
func TestEventsFilters(t *testing.T) {
	_, api := startREST(t, server.Config{})
	witness := api.OpenEvents("", nil) // sees everything from the start
	if witness.LastSequence != 0 {
		t.Fatalf("Tcpgate-Last-Sequence of a new gateway = %d", witness.LastSequence)
	}
	addr := map[string]string{}
	for _, id := range []string{"a", "b", "c"} {
		addr[id] = api.startListener(id).GetAddress()
	}
	live := api.OpenEvents("listenerIds=a&listenerIds=b&kinds=EVENT_KIND_DATA", nil)

	// One message to each listener, c between a and b; the witness says when
	// each arrived, so the sequences are c < a < b.
	var seen []*tcpgatev1.Event
	dataSeq := map[string]uint64{}
	connOf := map[string]string{}
	for _, id := range []string{"c", "a", "b"} {
		api.send(fmt.Sprintf(`{"address": %q, "text": "to %s"}`, addr[id], id))
		for {
			e, _ := witness.Next()
			seen = append(seen, e)
			if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA && e.GetListenerId() == id {
				dataSeq[id], connOf[id] = e.GetSequence(), e.GetConnectionId()
				break
			}
		}
	}
	// Then every connection's close, so seen holds all there is.
	closes := func() (n int) {
		for _, e := range seen {
			if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
				n++
			}
		}
		return n
	}
	for closes() < 3 {
		e, _ := witness.Next()
		seen = append(seen, e)
	}

	// Live: only a's and b's data; c's (earlier) and the lifecycle events
	// (earlier than each data event) are filtered out.
	first, _ := live.Next()
	second, _ := live.Next()
	if first.GetSequence() != dataSeq["a"] || first.GetText() != "to a" || second.GetSequence() != dataSeq["b"] || second.GetText() != "to b" {
		t.Fatalf("filtered live events = %v, %v; want data of a (%d) then b (%d)", first, second, dataSeq["a"], dataSeq["b"])
	}

	// Replayed: every event the ring holds that the filter matches, in order.
	is := func(kinds ...tcpgatev1.EventKind) func(*tcpgatev1.Event) bool {
		return func(e *tcpgatev1.Event) bool { return slices.Contains(kinds, e.GetKind()) }
	}
	tests := []struct {
		name  string
		query string
		match func(*tcpgatev1.Event) bool
	}{
		{"since a's data", fmt.Sprintf("sinceSequence=%d", dataSeq["a"]),
			func(e *tcpgatev1.Event) bool { return e.GetSequence() >= dataSeq["a"] }},
		{"everything", "sinceSequence=1", func(*tcpgatev1.Event) bool { return true }},
		{"listeners and kind", "sinceSequence=1&listenerIds=a&listenerIds=b&kinds=EVENT_KIND_DATA",
			func(e *tcpgatev1.Event) bool {
				return (e.GetListenerId() == "a" || e.GetListenerId() == "b") && e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA
			}},
		{"two kinds", "sinceSequence=1&kinds=EVENT_KIND_LISTENER_STARTED&kinds=EVENT_KIND_CONNECTION_CLOSED",
			is(tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)},
		{"one connection", "sinceSequence=1&connectionIds=" + connOf["b"],
			func(e *tcpgatev1.Event) bool { return e.GetConnectionId() == connOf["b"] }},
		{"snake_case names", "since_sequence=1&listener_ids=c&kinds=EVENT_KIND_DATA",
			func(e *tcpgatev1.Event) bool {
				return e.GetListenerId() == "c" && e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []string
			for _, e := range seen {
				if tt.match(e) {
					want = append(want, describe(e))
				}
			}
			if len(want) == 0 {
				t.Fatal("the test matches no event")
			}
			s := newREST(t, api.Base).OpenEvents(tt.query, nil)
			if s.LastSequence < dataSeq["b"] {
				t.Fatalf("Tcpgate-Last-Sequence = %d, want at least %d", s.LastSequence, dataSeq["b"])
			}
			var got []string
			for range want {
				e, _ := s.Next()
				got = append(got, describe(e))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("replayed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}

	// After the replay the stream goes on live.
	s := api.OpenEvents(fmt.Sprintf("sinceSequence=%d&listenerIds=a&kinds=EVENT_KIND_DATA", dataSeq["a"]), nil)
	if e, _ := s.Next(); e.GetSequence() != dataSeq["a"] {
		t.Fatalf("first replayed = %v, want sequence %d", e, dataSeq["a"])
	}
	api.send(fmt.Sprintf(`{"address": %q, "text": "live"}`, addr["a"]))
	if e, _ := s.Next(); e.GetText() != "live" || e.GetSequence() <= dataSeq["b"] {
		t.Fatalf("live after replay = %v", e)
	}
}

// describe is what the replay tests compare: sequence, kind and where.
func describe(e *tcpgatev1.Event) string {
	return fmt.Sprintf("%d %v %s %s %q", e.GetSequence(), e.GetKind(), e.GetListenerId(), e.GetConnectionId(), e.GetText())
}

// TestEventsInvalidQuery: a bad query is a 400 with the JSON error body,
// before any streaming, in both stream formats.
func TestEventsInvalidQuery(t *testing.T) {
	_, api := startREST(t, server.Config{})
	tests := []struct {
		name   string
		query  string
		header http.Header
		msg    string
	}{
		{"unspecified kind", "kinds=EVENT_KIND_UNSPECIFIED", nil, "kinds[0]"},
		{"unknown kind", "kinds=EVENT_KIND_NOPE", nil, "EVENT_KIND_NOPE"},
		{"unknown policy number", "slowConsumer=99", nil, "slow_consumer"},
		{"unknown policy name", "slowConsumer=SLOW_CONSUMER_POLICY_NOPE", nil, "SLOW_CONSUMER_POLICY_NOPE"},
		{"sequence not a number", "sinceSequence=abc", nil, "since_sequence"},
		{"SSE unspecified kind", "kinds=EVENT_KIND_UNSPECIFIED", http.Header{"Accept": {"text/event-stream"}}, "kinds[0]"},
		{"SSE sequence not a number", "sinceSequence=abc", http.Header{"Accept": {"text/event-stream"}}, "since_sequence"},
		// A Last-Event-ID is never refused: resume_test.go.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := api.Do(http.MethodGet, "/v1/events?"+tt.query, "", tt.header)
			servertest.WantError(t, resp, body, http.StatusBadRequest, 3, tt.msg)
		})
	}
}

// TestEventsMaxSubscribers: a stream over the limit is a 429 before
// streaming.
func TestEventsMaxSubscribers(t *testing.T) {
	_, api := startREST(t, server.Config{MaxSubscribers: 1})
	api.OpenEvents("", nil)
	resp, body := api.Do(http.MethodGet, "/v1/events", "", nil)
	servertest.WantError(t, resp, body, http.StatusTooManyRequests, 8, "max_subscribers")
}

// TestEventsReplayGap: asking for more than the replay ring still holds
// gives an EVENTS_DROPPED marker saying how many are gone, then the rest.
func TestEventsReplayGap(t *testing.T) {
	_, api := startREST(t, server.Config{ReplayBytes: 4 << 10})
	witness := api.OpenEvents("", nil)
	l := api.startListener("seed")
	payload := strings.Repeat("x", 512)
	for range 20 {
		api.send(fmt.Sprintf(`{"address": %q, "text": %q}`, l.GetAddress(), payload))
	}
	var seen []*tcpgatev1.Event
	for closes := 0; closes < 20; {
		e, _ := witness.Next()
		seen = append(seen, e)
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
			closes++
		}
	}

	check := func(t *testing.T, since uint64, marker *tcpgatev1.Event, next func() *tcpgatev1.Event) {
		t.Helper()
		if marker.GetKind() != tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED || marker.GetSequence() != 0 {
			t.Fatalf("first event = %v, want an EVENTS_DROPPED marker", marker)
		}
		first := next()
		// The marker counts the sequences the ring no longer held; the
		// oldest it still held may be ones this stream's filter leaves out
		// (the fixed replies' DIRECTION_SENT data, for a stream without
		// include_sent), so the first event may come a few sequences
		// later, none of which the witness, with the same filter, saw.
		end := since + marker.GetDropped()
		if marker.GetDropped() == 0 || end > first.GetSequence() {
			t.Fatalf("dropped = %d, then sequence %d, asked from %d", marker.GetDropped(), first.GetSequence(), since)
		}
		for _, e := range seen {
			if e.GetSequence() >= end && e.GetSequence() < first.GetSequence() {
				t.Fatalf("dropped = %d from %d, then sequence %d: the stream skipped %s, which it matches", marker.GetDropped(), since, first.GetSequence(), describe(e))
			}
		}
		// The rest is exactly what the witness saw from there on.
		i := slices.IndexFunc(seen, func(e *tcpgatev1.Event) bool { return e.GetSequence() == first.GetSequence() })
		if i <= 0 {
			t.Fatalf("replay starts at %d, which is not after the start (ring too large for this test?)", first.GetSequence())
		}
		for _, want := range seen[i+1:] {
			if got := next(); describe(got) != describe(want) {
				t.Fatalf("replayed %s, want %s", describe(got), describe(want))
			}
		}
	}

	t.Run("NDJSON", func(t *testing.T) {
		s := newREST(t, api.Base).OpenEvents("sinceSequence=1", nil)
		marker, _ := s.Next()
		check(t, 1, marker, func() *tcpgatev1.Event { e, _ := s.Next(); return e })
	})
	t.Run("SSE", func(t *testing.T) {
		s := newREST(t, api.Base).OpenEvents("", servertest.SSEHeader(witness.Incarnation+"-1"))
		var f servertest.SSEBlock
		for f.Data == "" {
			f = s.NextBlock()
		}
		if f.HasID {
			t.Fatalf("marker block %q has an id: a reconnect would resume from it", f.Lines)
		}
		check(t, 2, servertest.DecodeEvent(t, f.Data), s.NextSSE)
	})
}

// TestEventsClientGone: a client that goes away ends its subscription, so
// it no longer counts against MaxSubscribers.
func TestEventsClientGone(t *testing.T) {
	_, api := startREST(t, server.Config{MaxSubscribers: 1})
	s := api.OpenEvents("", servertest.SSEHeader(""))
	resp, body := api.Do(http.MethodGet, "/v1/events", "", nil)
	servertest.WantError(t, resp, body, http.StatusTooManyRequests, 8, "max_subscribers")

	s.Close()
	servertest.Eventually(t, "a new subscription after the first client left", func() bool {
		resp, body := api.Do(http.MethodGet, "/metrics", "", nil)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), `tcpgate_subscribers{policy="drop_oldest"} 0`)
	})
	api.OpenEvents("", nil)
}

// TestEventsUnknownQueryParameter: a misspelt filter would silently
// subscribe to everything.
func TestEventsUnknownQueryParameter(t *testing.T) {
	_, api := startREST(t, server.Config{})
	for _, path := range []string{"/v1/events?listenerId=a", "/v1/connections?listenerID=a"} {
		resp, body := api.Do(http.MethodGet, path, "", nil)
		servertest.WantError(t, resp, body, http.StatusBadRequest, 3, "listener")
	}
}

// TestEventsPayloadFormat: ?payloadFormat= chooses how payloads come, as
// SubscribeRequest.payload_format does over gRPC: base64 data, text, or
// both; an unknown value is a 400.
func TestEventsPayloadFormat(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("fmt")
	streams := map[string]*servertest.EventStream{}
	for _, f := range []string{"", "PAYLOAD_FORMAT_TEXT_OR_DATA", "PAYLOAD_FORMAT_DATA", "PAYLOAD_FORMAT_BOTH"} {
		q := "listenerIds=fmt&kinds=EVENT_KIND_DATA"
		if f != "" {
			q += "&payloadFormat=" + f
		}
		streams[f] = api.OpenEvents(q, nil)
	}
	seedClient(t, l.GetAddress())
	for f, s := range streams {
		_, line := s.Next()
		hasData := strings.Contains(line, `"data":"SGVsbG8sIFdvcmxkIQ=="`)
		hasText := strings.Contains(line, `"text":"Hello, World!"`)
		wantData := f == "PAYLOAD_FORMAT_DATA" || f == "PAYLOAD_FORMAT_BOTH"
		wantText := f != "PAYLOAD_FORMAT_DATA"
		if hasData != wantData || hasText != wantText {
			t.Errorf("payloadFormat %q: line %s, want data %v text %v", f, line, wantData, wantText)
		}
	}
	resp, body := api.Do(http.MethodGet, "/v1/events?payloadFormat=9", "", nil)
	servertest.WantError(t, resp, body, http.StatusBadRequest, 3, "payload_format")
}
