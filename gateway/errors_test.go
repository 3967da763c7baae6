package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestErrors: every failure reaches a REST client as the HTTP status of
// its gRPC code and grpc-gateway's JSON body {"code": N, "message": "..."}.
func TestErrors(t *testing.T) {
	_, api := startREST(t, server.Config{})
	api.startListener("taken")
	release := make(chan struct{})
	silent := servertest.Peer(t, func(net.Conn) { <-release }) // reads nothing, answers nothing
	t.Cleanup(func() { close(release) })                       // before peer's cleanup waits for it
	refused := servertest.RefusedAddr(t)

	tests := []struct {
		name         string
		method, path string
		body         string
		status, code int
		msg          string // the message contains it
	}{
		{"port out of range", http.MethodPost, "/v1/listeners", `{"host": "127.0.0.1", "port": 70000}`,
			http.StatusBadRequest, 3, "port"},
		{"bad listener id", http.MethodPost, "/v1/listeners", `{"listenerId": "a b", "host": "127.0.0.1"}`,
			http.StatusBadRequest, 3, "listener_id"},
		{"bad framing", http.MethodPost, "/v1/listeners", `{"host": "127.0.0.1", "framing": {"mode": "FRAMING_MODE_DELIMITER"}}`,
			http.StatusBadRequest, 3, "delimiter"},
		{"duplicate listener id", http.MethodPost, "/v1/listeners", `{"listenerId": "taken", "host": "127.0.0.1"}`,
			http.StatusConflict, 6, "taken"},
		{"get unknown listener", http.MethodGet, "/v1/listeners/nope", "",
			http.StatusNotFound, 5, "nope"},
		{"delete unknown listener", http.MethodDelete, "/v1/listeners/nope", "",
			http.StatusNotFound, 5, "nope"},
		{"connections of unknown listener", http.MethodGet, "/v1/connections?listenerId=nope", "",
			http.StatusNotFound, 5, "nope"},
		{"close unknown connection", http.MethodDelete, "/v1/connections/c999", "",
			http.StatusNotFound, 5, "c999"},
		{"send to unknown connection", http.MethodPost, "/v1/send", `{"connectionId": "c999", "text": "x"}`,
			http.StatusNotFound, 5, "c999"},
		{"send without payload", http.MethodPost, "/v1/send", fmt.Sprintf(`{"address": %q}`, refused),
			http.StatusBadRequest, 3, "payload"},
		{"send without target", http.MethodPost, "/v1/send", `{"text": "x"}`,
			http.StatusBadRequest, 3, "target"},
		{"send to a refused address", http.MethodPost, "/v1/send", fmt.Sprintf(`{"address": %q, "text": "x"}`, refused),
			http.StatusServiceUnavailable, 14, refused},
		{"reply timeout", http.MethodPost, "/v1/send",
			fmt.Sprintf(`{"address": %q, "text": "anyone?", "awaitReply": {"mode": "AWAIT_MODE_FIRST_READ"}, "timeout": "0.2s"}`, silent),
			http.StatusGatewayTimeout, 4, silent},
		{"malformed JSON", http.MethodPost, "/v1/listeners", "{bad",
			http.StatusBadRequest, 3, ""},
		{"unknown JSON field", http.MethodPost, "/v1/listeners", `{"host": "127.0.0.1", "bogusField": 1}`,
			http.StatusBadRequest, 3, "bogusField"},
		{"misspelt field of send", http.MethodPost, "/v1/send", `{"adress": "127.0.0.1:1", "text": "x"}`,
			http.StatusBadRequest, 3, "adress"},
		{"enum by unknown name", http.MethodPost, "/v1/listeners", `{"host": "127.0.0.1", "framing": {"mode": "FRAMING_MODE_NOPE"}}`,
			http.StatusBadRequest, 3, "FRAMING_MODE_NOPE"},
		{"unknown route", http.MethodGet, "/v1/nope", "",
			http.StatusNotFound, 5, "/v1/nope"},
		{"wrong method", http.MethodPut, "/v1/listeners", `{}`,
			http.StatusMethodNotAllowed, 12, "PUT"},
		{"wrong method on a path with a variable", http.MethodPost, "/v1/listeners/taken", `{}`,
			http.StatusMethodNotAllowed, 12, "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := api.Do(tt.method, tt.path, tt.body, nil)
			servertest.WantError(t, resp, body, tt.status, tt.code, tt.msg)
		})
	}
}

// TestErrorLimit: a limit reached is 429.
func TestErrorLimit(t *testing.T) {
	_, api := startREST(t, server.Config{MaxListeners: 1})
	api.startListener("one")
	resp, body := api.Do(http.MethodPost, "/v1/listeners", listenerBody("two"), nil)
	servertest.WantError(t, resp, body, http.StatusTooManyRequests, 8, "1")
}

// TestAllowHeader: a 405 names the methods the route has in its Allow
// header (RFC 9110), and those methods are the ones the router serves: a
// method listed is not refused with 405, one not listed is.
func TestAllowHeader(t *testing.T) {
	_, api := startREST(t, server.Config{})
	routes := []struct{ path, allow string }{
		{"/v1/listeners", "GET, POST"},
		{"/v1/listeners/x", "GET, DELETE, PATCH"},
		{"/v1/connections", "GET, POST"},
		{"/v1/connections/x", "GET, DELETE"},
		{"/v1/send", "POST"},
		{"/v1/events", "GET"},
		{"/openapi.json", "GET"},
		{"/healthz", "GET"},
		{"/metrics", "GET"},
	}
	for _, rt := range routes {
		for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			allowed := slices.Contains(strings.Split(rt.allow, ", "), method)
			if allowed && method == http.MethodGet && rt.path == "/v1/events" {
				continue // a stream: shown elsewhere
			}
			// Bodies the API refuses before acting: nothing is bound or sent.
			resp, body := api.Do(method, rt.path, `{"port": 70000}`, nil)
			switch {
			case allowed && resp.StatusCode == http.StatusMethodNotAllowed:
				t.Errorf("%s %s = 405, but Allow lists %s", method, rt.path, method)
			case !allowed && resp.StatusCode != http.StatusMethodNotAllowed:
				t.Errorf("%s %s = %d %s, want 405", method, rt.path, resp.StatusCode, body)
			case !allowed && resp.Header.Get("Allow") != rt.allow:
				t.Errorf("%s %s: Allow = %q, want %q", method, rt.path, resp.Header.Get("Allow"), rt.allow)
			}
		}
	}
}
