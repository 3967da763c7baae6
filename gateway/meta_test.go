package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestOpenAPI: the OpenAPI document is served and describes the routes.
func TestOpenAPI(t *testing.T) {
	_, api := startREST(t, server.Config{})
	resp, body := api.Do(http.MethodGet, "/openapi.json", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /openapi.json = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc struct {
		Swagger string                    `json:"swagger"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if doc.Swagger == "" {
		t.Fatal(`openapi.json has no "swagger" version`)
	}
	want := map[string][]string{
		"/v1/listeners":                  {"get", "post"},
		"/v1/listeners/{listenerId}":     {"get", "delete"},
		"/v1/connections":                {"get"},
		"/v1/connections/{connectionId}": {"delete"},
		"/v1/send":                       {"post"},
		"/v1/events":                     {"get"},
	}
	for path, methods := range want {
		ops, ok := doc.Paths[path]
		if !ok {
			t.Errorf("openapi.json has no path %s; it has %v", path, keys(doc.Paths))
			continue
		}
		for _, m := range methods {
			if _, ok := ops[m]; !ok {
				t.Errorf("openapi.json: %s has no %s", path, m)
			}
		}
	}

	// GET /v1/events is served by the gateway, not grpc-gateway's stream
	// wrapper: the document says what really comes.
	var events struct {
		Paths map[string]map[string]struct {
			Description string   `json:"description"`
			Produces    []string `json:"produces"`
			Responses   map[string]struct {
				Schema map[string]any `json:"schema"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(body, &events); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	op := events.Paths["/v1/events"]["get"]
	for _, want := range []string{"NDJSON", "text/event-stream", "Last-Event-ID", "heartbeat"} {
		if !strings.Contains(op.Description, want) {
			t.Errorf("openapi.json: GET /v1/events description does not mention %s:\n%s", want, op.Description)
		}
	}
	for _, want := range []string{"application/x-ndjson", "text/event-stream"} {
		if !slices.Contains(op.Produces, want) {
			t.Errorf("openapi.json: GET /v1/events produces %q, want it to include %s", op.Produces, want)
		}
	}
	if ref := op.Responses["200"].Schema["$ref"]; ref != "#/definitions/v1Event" {
		t.Errorf("openapi.json: GET /v1/events 200 schema = %v, want one Event per line ($ref #/definitions/v1Event)", op.Responses["200"].Schema)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestHealthz: the health check answers from the daemon's health service.
func TestHealthz(t *testing.T) {
	_, api := startREST(t, server.Config{})
	resp, body := api.Do(http.MethodGet, "/healthz", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz = %d %s", resp.StatusCode, body)
	}
	var h struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &h); err != nil || h.Status != "SERVING" {
		t.Fatalf("GET /healthz = %s (%v), want status SERVING", body, err)
	}
}

// TestMetrics: /metrics is Prometheus text that counts what REST clients
// and TCP clients did.
func TestMetrics(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("seed")
	seedClient(t, l.GetAddress())
	servertest.Eventually(t, "the connection closed", func() bool {
		_, b := api.Do(http.MethodGet, "/metrics", "", nil)
		return regexp.MustCompile(`(?m)^tcpgate_connections_open 0$`).Match(b) &&
			regexp.MustCompile(`(?m)^tcpgate_connections_accepted_total 1$`).Match(b) &&
			regexp.MustCompile(`(?m)^tcpgate_sent_bytes_total 16$`).Match(b)
	})

	resp, body := api.Do(http.MethodGet, "/metrics", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	text := string(body)
	for _, want := range []string{
		`tcpgate_connections_open 0`,
		`tcpgate_received_bytes_total 13`,
		`tcpgate_sent_bytes_total 16`,
		`tcpgate_grpc_calls_total{code="OK",method="/tcpgate.v1.GatewayService/StartListener"} 1`,
		`tcpgate_events_dropped_total{policy="drop_oldest"} 0`,
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).MatchString(text) {
			t.Errorf("/metrics lacks the line %s", want)
		}
	}
	for _, name := range []string{"tcpgate_connections_open", "tcpgate_received_bytes_total", "tcpgate_grpc_calls_total", "tcpgate_events_dropped_total"} {
		if !strings.Contains(text, fmt.Sprintf("# TYPE %s ", name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, re := range []string{
		`(?m)^tcpgate_connections_closed_total\{reason="[a-z_]+"\} 1$`,
		`(?m)^tcpgate_received_frames_total 1$`,
		`(?m)^tcpgate_subscribers\{policy="drop_oldest"\} 0$`,
		`(?m)^tcpgate_subscriber_queued_bytes\{policy="backpressure"\} 0$`,
		`(?m)^tcpgate_grpc_call_duration_seconds_count\{method="/tcpgate.v1.GatewayService/StartListener"\} 1$`,
		`(?m)^tcpgate_address_sends_total 0$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("/metrics has no line matching %s", re)
		}
	}

	// A one-shot send to an address is counted with its bytes.
	resp, body = api.Do(http.MethodPost, "/v1/send", `{"address": "`+l.GetAddress()+`", "text": "abc",
		"awaitReply": {"mode": "AWAIT_MODE_FIRST_READ"}}`, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/send = %d %s", resp.StatusCode, body)
	}
	_, body = api.Do(http.MethodGet, "/metrics", "", nil)
	for _, want := range []string{
		`tcpgate_address_sends_total 1`,
		`tcpgate_address_sends_failed_total 0`,
		`tcpgate_address_sent_bytes_total 3`,
		`tcpgate_address_reply_bytes_total 16`,
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(body) {
			t.Errorf("/metrics after a send to an address lacks the line %s", want)
		}
	}
}

// TestCORS: browsers on the configured origins only may call the API.
func TestCORS(t *testing.T) {
	const dash = "http://dash.example"
	preflight := http.Header{"Origin": {dash}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type"}}

	t.Run("off by default", func(t *testing.T) {
		_, api := startREST(t, server.Config{})
		// On loopback, a page from another origin is refused outright: the
		// request must not run, whatever the browser then does with it.
		resp, _ := api.Do(http.MethodGet, "/v1/listeners", "", http.Header{"Origin": {dash}})
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("GET = %d with Access-Control-Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		resp, _ = api.Do(http.MethodOptions, "/v1/listeners", "", preflight)
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" || resp.StatusCode == http.StatusNoContent {
			t.Fatalf("preflight = %d with Access-Control-Allow-Origin %q", resp.StatusCode, got)
		}
	})

	t.Run("configured origin", func(t *testing.T) {
		_, api := startREST(t, server.Config{CORSOrigins: []string{dash}})
		resp, _ := api.Do(http.MethodGet, "/v1/listeners", "", http.Header{"Origin": {dash}})
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != dash {
			t.Fatalf("GET = %d with Access-Control-Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		if v := resp.Header.Values("Vary"); !containsFold(v, "Origin") {
			t.Errorf("Vary = %q, want Origin", v)
		}

		resp, _ = api.Do(http.MethodOptions, "/v1/listeners", "", preflight)
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != dash {
			t.Fatalf("preflight = %d with Access-Control-Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		if m := resp.Header.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "POST") || !strings.Contains(m, "DELETE") {
			t.Errorf("Access-Control-Allow-Methods = %q", m)
		}
		if h := resp.Header.Get("Access-Control-Allow-Headers"); !strings.Contains(strings.ToLower(h), "content-type") {
			t.Errorf("Access-Control-Allow-Headers = %q", h)
		}

		// Errors and the event stream carry it too, and a page may read the
		// stream's sequence header.
		resp, _ = api.Do(http.MethodGet, "/v1/listeners/nope", "", http.Header{"Origin": {dash}})
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Access-Control-Allow-Origin") != dash {
			t.Errorf("404 with Access-Control-Allow-Origin %q", resp.Header.Get("Access-Control-Allow-Origin"))
		}
		s := api.OpenEvents("", http.Header{"Origin": {dash}, "Accept": {"text/event-stream"}})
		if s.Resp.Header.Get("Access-Control-Allow-Origin") != dash || !strings.Contains(s.Resp.Header.Get("Access-Control-Expose-Headers"), "Tcpgate-Last-Sequence") {
			t.Errorf("event stream CORS headers = %v", s.Resp.Header)
		}
		s.Close()

		const other = "http://evil.example"
		resp, _ = api.Do(http.MethodGet, "/v1/listeners", "", http.Header{"Origin": {other}})
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
			t.Fatalf("GET from %s: Access-Control-Allow-Origin %q", other, got)
		}
		resp, _ = api.Do(http.MethodOptions, "/v1/listeners", "", http.Header{"Origin": {other}, "Access-Control-Request-Method": {"POST"}})
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" || resp.Header.Get("Access-Control-Allow-Methods") != "" {
			t.Fatalf("preflight from %s = %d with Access-Control-Allow-Origin %q", other, resp.StatusCode, got)
		}
	})

	t.Run("any origin", func(t *testing.T) {
		_, api := startREST(t, server.Config{CORSOrigins: []string{"*"}})
		resp, _ := api.Do(http.MethodGet, "/v1/listeners", "", http.Header{"Origin": {"http://anywhere.example"}})
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://anywhere.example" && got != "*" {
			t.Fatalf("Access-Control-Allow-Origin = %q", got)
		}
	})
}

func containsFold(vs []string, want string) bool {
	for _, v := range vs {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), want) {
				return true
			}
		}
	}
	return false
}

// TestMetricsCountRESTStreams: a REST event stream, a hub subscriber of
// its own, shows in the subscriber gauges while open and in the call
// counters (as a Subscribe) once closed.
func TestMetricsCountRESTStreams(t *testing.T) {
	_, api := startREST(t, server.Config{})
	s := api.OpenEvents("slowConsumer=SLOW_CONSUMER_POLICY_BACKPRESSURE", nil)
	_, body := api.Do(http.MethodGet, "/metrics", "", nil)
	if !regexp.MustCompile(`(?m)^tcpgate_subscribers\{policy="backpressure"\} 1$`).Match(body) {
		t.Fatalf("/metrics does not count the open REST stream:\n%s", grepLines(body, "tcpgate_subscribers"))
	}
	s.Close()
	servertest.Eventually(t, "the REST stream counted as a Subscribe call", func() bool {
		_, b := api.Do(http.MethodGet, "/metrics", "", nil)
		return regexp.MustCompile(`(?m)^tcpgate_subscribers\{policy="backpressure"\} 0$`).Match(b) &&
			regexp.MustCompile(`(?m)^tcpgate_grpc_calls_total\{code="Canceled",method="/tcpgate.v1.GatewayService/Subscribe"\} 1$`).Match(b)
	})
	resp, b := api.Do(http.MethodGet, "/v1/events?kinds=EVENT_KIND_UNSPECIFIED", "", nil)
	servertest.WantError(t, resp, b, http.StatusBadRequest, 3, "kinds[0]")
	_, b = api.Do(http.MethodGet, "/metrics", "", nil)
	if !regexp.MustCompile(`(?m)^tcpgate_grpc_calls_total\{code="InvalidArgument",method="/tcpgate.v1.GatewayService/Subscribe"\} 1$`).Match(b) {
		t.Errorf("a refused REST stream is not counted:\n%s", grepLines(b, "Subscribe"))
	}
}

func grepLines(b []byte, sub string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
