package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestDebugProfiles: --debug-addr serves pprof on loopback, and refuses an
// exposed address without --insecure.
func TestDebugProfiles(t *testing.T) {
	g := servertest.Start(t, server.Config{DebugAddr: "127.0.0.1:0"})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + g.Server.DebugAddr() + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile: total") {
		t.Fatalf("GET goroutine profile = %d %.80q", resp.StatusCode, body)
	}

	_, err = server.New(server.Config{GRPCAddr: "127.0.0.1:0", DebugAddr: "0.0.0.0:0"})
	if err == nil || !strings.Contains(err.Error(), "--debug-addr") || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("exposed debug address: err = %v", err)
	}
}

// TestDebugProfilesGuarded: the profiling endpoint takes the REST API's
// checks: the token when the gateway has one, and the Host guard against
// DNS rebinding. Refusals are counted on /metrics.
func TestDebugProfilesGuarded(t *testing.T) {
	const token = "debug-token-0123456789"
	g := servertest.Start(t, server.Config{DebugAddr: "127.0.0.1:0", AuthToken: token, HTTPAddr: "127.0.0.1:0"})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(url, host, auth string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	cmdline := "http://" + g.Server.DebugAddr() + "/debug/pprof/cmdline"
	for _, tc := range []struct {
		name, host, auth string
		want             int
	}{
		{"no token", "", "", http.StatusUnauthorized},
		{"wrong token", "", "Bearer wrong", http.StatusUnauthorized},
		{"token", "", "Bearer " + token, http.StatusOK},
		{"rebound name", "evil.example:80", "Bearer " + token, http.StatusForbidden},
	} {
		if code, body := get(cmdline, tc.host, tc.auth); code != tc.want {
			t.Errorf("%s: GET %s = %d %.100q, want %d", tc.name, cmdline, code, body, tc.want)
		}
	}
	_, metrics := get(g.BaseURL+"/metrics", "", "Bearer "+token)
	for _, want := range []string{`tcpgate_http_refused_total{status="401"} 2`, `tcpgate_http_refused_total{status="403"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
