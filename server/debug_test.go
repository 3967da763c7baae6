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
