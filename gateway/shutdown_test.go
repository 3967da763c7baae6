package gateway_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/gateway"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// wantEnd reads both streams to their end and checks that each says why:
// NDJSON with a last {"error": ...} line, SSE with an "error" event, both
// with code; and that the HTTP responses end cleanly (no hang, no broken
// chunking).
func wantEnd(t *testing.T, ndjson, sse *servertest.EventStream, code int) {
	t.Helper()
	lines, err := ndjson.Rest()
	if err != nil {
		t.Fatalf("NDJSON body ended with %v after %q", err, lines)
	}
	if len(lines) == 0 {
		t.Fatal("NDJSON stream ended without an error line")
	}
	last := lines[len(lines)-1]
	inner, ok := strings.CutPrefix(compact(last), `{"error":`)
	if !ok {
		t.Fatalf("NDJSON last line %s, want {\"error\": ...}", last)
	}
	if got, msg := streamError(t, strings.TrimSuffix(inner, "}")); got != code || msg == "" {
		t.Fatalf("NDJSON last line %s, want code %d and a message", last, code)
	}
	for _, l := range lines[:len(lines)-1] {
		servertest.DecodeEvent(t, l) // everything before is an event
	}

	lines, err = sse.Rest()
	if err != nil {
		t.Fatalf("SSE body ended with %v after %q", err, lines)
	}
	// The last block: "event: error", "data: {...}", "".
	n := len(lines)
	if n < 3 || lines[n-3] != "event: error" || !strings.HasPrefix(lines[n-2], "data: ") || lines[n-1] != "" {
		t.Fatalf("SSE stream ended with %q, want an error event", lines)
	}
	if got, msg := streamError(t, strings.TrimPrefix(lines[n-2], "data: ")); got != code || msg == "" {
		t.Fatalf("SSE error %s, want code %d and a message", lines[n-2], code)
	}
}

// stopWithin runs stop and fails the test if it does not return in time.
func stopWithin(t *testing.T, stop func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- stop() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("stop did not return within %s", wait)
	}
}

// TestEventsEndAtShutdown: stopping the daemon (SIGTERM) ends every event
// stream with Unavailable, and the HTTP responses end.
func TestEventsEndAtShutdown(t *testing.T) {
	g, api := startREST(t, server.Config{})
	ndjson := api.OpenEvents("", nil)
	sse := api.OpenEvents("", servertest.SSEHeader(""))
	api.startListener("x")
	if e, _ := ndjson.Next(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED {
		t.Fatalf("event = %v", e)
	}
	if e := sse.NextSSE(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED {
		t.Fatalf("event = %v", e)
	}

	stopWithin(t, g.Stop)
	wantEnd(t, ndjson, sse, 14)
}

// TestEventsEndWhenDaemonStops: a REST gateway of its own in front of a
// daemon that stops: the daemon's Unavailable reaches the REST client.
func TestEventsEndWhenDaemonStops(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	gw, err := gateway.New(gateway.Config{GRPCAddr: g.Server.GRPCAddr(), Events: g.Server.Events(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = gw.Close() })
	api := newREST(t, srv.URL)
	ndjson := api.OpenEvents("", nil)
	sse := api.OpenEvents("", servertest.SSEHeader(""))

	stopWithin(t, g.Stop)
	wantEnd(t, ndjson, sse, 14)
}

// TestEventsEndAtGatewayClose: closing the REST gateway alone ends its
// streams the same way.
func TestEventsEndAtGatewayClose(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	gw, err := gateway.New(gateway.Config{GRPCAddr: g.Server.GRPCAddr(), Events: g.Server.Events(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	api := newREST(t, srv.URL)
	ndjson := api.OpenEvents("", nil)
	sse := api.OpenEvents("", servertest.SSEHeader(""))

	stopWithin(t, gw.Close)
	wantEnd(t, ndjson, sse, 14)
	if err := gw.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

// TestDaemonDown: with the daemon gone, the REST gateway answers 503 in
// JSON, for calls and event streams alike.
func TestDaemonDown(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	gw, err := gateway.New(gateway.Config{GRPCAddr: g.Server.GRPCAddr(), Events: g.Server.Events(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = gw.Close() })
	api := newREST(t, srv.URL)
	stopWithin(t, g.Stop)
	for _, path := range []string{"/v1/listeners", "/v1/events", "/healthz"} {
		t.Run(path, func(t *testing.T) {
			resp, body := api.Do(http.MethodGet, path, "", nil)
			servertest.WantError(t, resp, body, http.StatusServiceUnavailable, 14, "")
		})
	}
}

// TestNewGateway: the gRPC address of a daemon listening on every
// interface is dialed on loopback; a malformed one is refused at once.
func TestNewGateway(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	_, port, err := net.SplitHostPort(g.Server.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{GRPCAddr: net.JoinHostPort("0.0.0.0", port), Events: g.Server.Events(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = gw.Close() })
	var list tcpgatev1.ListListenersResponse
	newREST(t, srv.URL).Call(http.MethodGet, "/v1/listeners", "", &list)

	if _, err := gateway.New(gateway.Config{GRPCAddr: "no-port", Events: g.Server.Events()}); err == nil || !strings.Contains(err.Error(), "no-port") {
		t.Fatalf("New with a malformed address = %v", err)
	}
	if _, err := gateway.New(gateway.Config{GRPCAddr: g.Server.GRPCAddr()}); err == nil || !strings.Contains(err.Error(), "Events") {
		t.Fatalf("New without an event source = %v", err)
	}
}

// TestEventsSlowConsumerDisconnect: under SLOW_CONSUMER_POLICY_DISCONNECT a
// REST client that stops reading is cut off, and once it reads again it
// learns why: a last error line with ResourceExhausted and where to resume.
func TestEventsSlowConsumerDisconnect(t *testing.T) {
	_, api := startREST(t, server.Config{SubscriberQueueBytes: 64 << 10})
	l := api.startListener("flood")
	s := api.OpenEvents("slowConsumer=SLOW_CONSUMER_POLICY_DISCONNECT&kinds=EVENT_KIND_DATA", nil)

	// Nobody reads s while a client floods the listener, so the subscriber's
	// 64 KiB queue overflows.
	c := servertest.Dial(t, l.GetAddress())
	chunk := []byte(strings.Repeat("z", 64<<10))
	disconnected := regexp.MustCompile(`(?m)^tcpgate_subscribers_disconnected_total 1$`)
	deadline := time.Now().Add(wait)
	for {
		for range 16 {
			if _, err := c.Write(chunk); err != nil {
				t.Fatalf("flooding: %v", err)
			}
		}
		if _, body := api.Do(http.MethodGet, "/metrics", "", nil); disconnected.Match(body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow subscriber was not disconnected within %s", wait)
		}
	}

	lines, err := s.Rest()
	if err != nil || len(lines) == 0 {
		t.Fatalf("stream ended with %v after %d lines", err, len(lines))
	}
	last := lines[len(lines)-1]
	inner, ok := strings.CutPrefix(compact(last), `{"error":`)
	if !ok {
		t.Fatalf("last line %.200s, want {\"error\": ...}", last)
	}
	code, msg := streamError(t, strings.TrimSuffix(inner, "}"))
	if code != 8 || !strings.Contains(msg, "since_sequence") {
		t.Fatalf("stream error %s, want code 8 saying where to resume", inner)
	}
}

// streamError decodes a stream's final error, NDJSON's {"error": {...}}
// line or SSE's error event data.
func streamError(t *testing.T, b string) (code int, message string) {
	t.Helper()
	var st struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(b), &st); err != nil || st.Code == nil {
		t.Fatalf("stream error %s: not a status (%v)", b, err)
	}
	return *st.Code, st.Message
}
