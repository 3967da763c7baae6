package gateway_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/gateway"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// sseHeader is what an EventSource sends, resuming after lastEventID when
// it is not empty.
func sseHeader(lastEventID string) http.Header {
	h := http.Header{"Accept": {"text/event-stream"}}
	if lastEventID != "" {
		h.Set("Last-Event-ID", lastEventID)
	}
	return h
}

// TestEventsSSE: with Accept: text/event-stream the events come as
// Server-Sent Events with the sequence as id, and a reconnect with
// Last-Event-ID resumes exactly after it.
func TestEventsSSE(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("seed")
	first := api.openEvents("", sseHeader(""))
	if ct := first.resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q, want text/event-stream", ct)
	}
	if cc := first.resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control = %q, want no-cache", cc)
	}
	f := first.nextFrame()
	if ms, err := strconv.Atoi(f.retry); err != nil || ms <= 0 || f.data != "" {
		t.Fatalf("first SSE block %q, want a retry: line", f.lines)
	}

	seedClient(t, l.GetAddress())
	// The first event's block, as a browser's EventSource parses it.
	f = first.nextFrame()
	if len(f.lines) != 2 || !strings.HasPrefix(f.lines[0], "id: ") || !strings.HasPrefix(f.lines[1], "data: {") {
		t.Fatalf("SSE block %q, want an id: and a data: line", f.lines)
	}
	opened := decodeEvent(t, f.data)
	if opened.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED || f.id != first.incarnation+"-"+strconv.FormatUint(opened.GetSequence(), 10) {
		t.Fatalf("first event id %q = %v", f.id, opened)
	}
	seen := []*tcpgatev1.Event{opened}
	for range 2 {
		seen = append(seen, first.nextSSE())
	}
	if seen[1].GetText() != "Hello, World!" || seen[2].GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
		t.Fatalf("events = %v", seen)
	}
	// A second client while nobody resumes yet.
	seedClient(t, l.GetAddress())
	for range 3 {
		seen = append(seen, first.nextSSE())
	}
	for i := 1; i < len(seen); i++ {
		if seen[i].GetSequence() <= seen[i-1].GetSequence() {
			t.Fatalf("sequences not increasing: %d then %d", seen[i-1].GetSequence(), seen[i].GetSequence())
		}
	}

	// Resume after the first event: exactly what came after it, from the
	// replay ring, then live events.
	resumed := api.openEvents("", sseHeader(f.id))
	for _, want := range seen[1:] {
		if got := resumed.nextSSE(); describe(got) != describe(want) {
			t.Fatalf("resumed with %s: got %s, want %s", f.id, describe(got), describe(want))
		}
	}
	seedClient(t, l.GetAddress())
	for range 3 {
		want := first.nextSSE()
		if got := resumed.nextSSE(); describe(got) != describe(want) {
			t.Fatalf("live after resume: got %s, want %s", describe(got), describe(want))
		}
	}

	// A page that opened ?sinceSequence=N reconnects with the same URL and
	// Last-Event-ID: it resumes after the last event it saw, not from N.
	since := "sinceSequence=" + strconv.FormatUint(seen[0].GetSequence(), 10)
	again := api.openEvents(since, sseHeader(first.incarnation+"-"+strconv.FormatUint(seen[2].GetSequence(), 10)))
	if got := again.nextSSE(); describe(got) != describe(seen[3]) {
		t.Fatalf("%s with Last-Event-ID %d: first event %s, want %s", since, seen[2].GetSequence(), describe(got), describe(seen[3]))
	}

	// Filters apply to a resumed stream too.
	filtered := api.openEvents("kinds=EVENT_KIND_DATA", sseHeader(f.id))
	for _, want := range seen {
		if want.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA {
			continue
		}
		if got := filtered.nextSSE(); describe(got) != describe(want) {
			t.Fatalf("resumed DATA: got %s, want %s", describe(got), describe(want))
		}
	}
}

// TestSSEHeartbeat: an idle SSE stream gets comment lines, so proxies keep
// it open. The interval is gateway.Config.Heartbeat, so this test builds
// its own REST gateway in front of a servertest daemon.
func TestSSEHeartbeat(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	gw, err := gateway.New(gateway.Config{
		GRPCAddr:  g.Server.GRPCAddr(),
		Events:    g.Server.Events(),
		Heartbeat: 50 * time.Millisecond,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)                 // runs after gw.Close has ended the streams
	t.Cleanup(func() { _ = gw.Close() }) // runs after the stream's own cleanup

	api := newREST(t, srv.URL)
	s := api.openEvents("", sseHeader(""))
	for beats := 0; beats < 2; {
		f := s.nextFrame()
		if f.data != "" || f.event != "" {
			t.Fatalf("unexpected SSE block %q on an idle gateway", f.lines)
		}
		if slices.Contains(f.comments, "heartbeat") {
			beats++
		}
	}

	// Events still come between heartbeats.
	api.startListener("beat")
	if e := s.nextSSE(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || e.GetListenerId() != "beat" {
		t.Fatalf("event = %v", e)
	}
}
