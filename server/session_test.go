package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestSessionTTL: --session-ttl is how long the REST login's cookie
// lasts, and a value outside 1m to 30 days is refused at start.
func TestSessionTTL(t *testing.T) {
	for _, ttl := range []time.Duration{30 * time.Second, 31 * 24 * time.Hour, -time.Hour} {
		if _, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", AuthToken: "tok", SessionTTL: ttl}); err == nil || !strings.Contains(err.Error(), "--session-ttl") {
			t.Errorf("--session-ttl %s: err = %v, want one naming the flag", ttl, err)
		}
	}

	g := servertest.Start(t, server.Config{AuthToken: "tok", SessionTTL: 2 * time.Minute, HTTPAddr: "127.0.0.1:0"})
	resp, b := g.REST.Do(http.MethodPost, "/v1/session", `{"token":"tok"}`, nil)
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusOK || len(cookies) != 1 || cookies[0].MaxAge != 120 {
		t.Fatalf("login = %d %s, cookies %v: want one of Max-Age 120", resp.StatusCode, b, cookies)
	}
}
