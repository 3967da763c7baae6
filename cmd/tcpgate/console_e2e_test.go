package main_test

import (
	"strings"
	"testing"
)

// TestConsoleFlag runs the binary: by default its REST port serves the web
// console at /, and --ui=false (or TCPGATE_UI=false) leaves / to the API,
// whose unknown routes are 404 ROUTE_NOT_FOUND.
func TestConsoleFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		args    []string
		console bool
	}{
		{"default", nil, true},
		{"--ui=false", []string{"--ui=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, h := startRESTGateway(t, tc.args...)
			status, body := h.do(t, "GET", "/", "")
			if tc.console {
				if status != 200 || !strings.Contains(body, `<script type="module" src="/console/app.js">`) {
					t.Fatalf("GET / = %d %.200s, want the console's page", status, body)
				}
				return
			}
			if status != 404 || !strings.Contains(body, "ROUTE_NOT_FOUND") {
				t.Fatalf("GET / with %s = %d %s, want 404 ROUTE_NOT_FOUND", tc.name, status, body)
			}
			if status, body := h.do(t, "GET", "/v1/listeners", ""); status != 200 {
				t.Fatalf("GET /v1/listeners with %s = %d %s", tc.name, status, body)
			}
		})
	}
}
