package gateway_test

import (
	"io"
	"log/slog"
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

// TestEventsSSE: with Accept: text/event-stream the events come as
// Server-Sent Events with the sequence as id, and a reconnect with
// Last-Event-ID resumes exactly after it.
func TestEventsSSE(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("seed")
	first := api.OpenEvents("", servertest.SSEHeader(""))
	if ct := first.Resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q, want text/event-stream", ct)
	}
	if cc := first.Resp.Header.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control = %q, want no-cache", cc)
	}
	f := first.NextBlock()
	if ms, err := strconv.Atoi(f.Retry); err != nil || ms <= 0 || f.Data != "" {
		t.Fatalf("first SSE block %q, want a retry: line", f.Lines)
	}

	seedClient(t, l.GetAddress())
	// The first event's block, as a browser's EventSource parses it.
	f = first.NextBlock()
	if len(f.Lines) != 2 || !strings.HasPrefix(f.Lines[0], "id: ") || !strings.HasPrefix(f.Lines[1], "data: {") {
		t.Fatalf("SSE block %q, want an id: and a data: line", f.Lines)
	}
	opened := servertest.DecodeEvent(t, f.Data)
	if opened.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED || f.ID != first.Incarnation+"-"+strconv.FormatUint(opened.GetSequence(), 10) {
		t.Fatalf("first event id %q = %v", f.ID, opened)
	}
	seen := []*tcpgatev1.Event{opened}
	for range 2 {
		seen = append(seen, first.NextSSE())
	}
	if seen[1].GetText() != "Hello, World!" || seen[2].GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
		t.Fatalf("events = %v", seen)
	}
	// A second client while nobody resumes yet.
	seedClient(t, l.GetAddress())
	for range 3 {
		seen = append(seen, first.NextSSE())
	}
	for i := 1; i < len(seen); i++ {
		if seen[i].GetSequence() <= seen[i-1].GetSequence() {
			t.Fatalf("sequences not increasing: %d then %d", seen[i-1].GetSequence(), seen[i].GetSequence())
		}
	}

	// Resume after the first event: exactly what came after it, from the
	// replay ring, then live events.
	resumed := api.OpenEvents("", servertest.SSEHeader(f.ID))
	for _, want := range seen[1:] {
		if got := resumed.NextSSE(); describe(got) != describe(want) {
			t.Fatalf("resumed with %s: got %s, want %s", f.ID, describe(got), describe(want))
		}
	}
	seedClient(t, l.GetAddress())
	for range 3 {
		want := first.NextSSE()
		if got := resumed.NextSSE(); describe(got) != describe(want) {
			t.Fatalf("live after resume: got %s, want %s", describe(got), describe(want))
		}
	}

	// A page that opened ?sinceSequence=N reconnects with the same URL and
	// Last-Event-ID: it resumes after the last event it saw, not from N.
	since := "sinceSequence=" + strconv.FormatUint(seen[0].GetSequence(), 10)
	again := api.OpenEvents(since, servertest.SSEHeader(first.Incarnation+"-"+strconv.FormatUint(seen[2].GetSequence(), 10)))
	if got := again.NextSSE(); describe(got) != describe(seen[3]) {
		t.Fatalf("%s with Last-Event-ID %d: first event %s, want %s", since, seen[2].GetSequence(), describe(got), describe(seen[3]))
	}

	// Filters apply to a resumed stream too.
	filtered := api.OpenEvents("kinds=EVENT_KIND_DATA", servertest.SSEHeader(f.ID))
	for _, want := range seen {
		if want.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA {
			continue
		}
		if got := filtered.NextSSE(); describe(got) != describe(want) {
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
	s := api.OpenEvents("", servertest.SSEHeader(""))
	for beats := 0; beats < 2; {
		f := s.NextBlock()
		if f.Data != "" || f.Event != "" {
			t.Fatalf("unexpected SSE block %q on an idle gateway", f.Lines)
		}
		if slices.Contains(f.Comments, "heartbeat") {
			beats++
		}
	}

	// Events still come between heartbeats.
	api.startListener("beat")
	if e := s.NextSSE(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || e.GetListenerId() != "beat" {
		t.Fatalf("event = %v", e)
	}
}
