package main_test

import (
	"net"
	"strings"
	"testing"
)

// TestReadmeProxyProtocol runs the README's "Behind a load balancer"
// walkthrough as pasted: a listener that takes PROXY headers, and a
// client playing the balancer, whose rule reply names the client of the
// header rather than the socket's peer.
func TestReadmeProxyProtocol(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	requireTool(t, "python3")
	code := sectionBlocks(t, readmeBlocks(t), "Behind a load balancer", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"Behind a load balancer\" has %d sh blocks, want 1", len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"H": "http://" + g.httpAddr})
	laddr := net.JoinHostPort("127.0.0.1", sh.port)
	checked := map[string]bool{}
	for _, c := range splitCommands(t, code[0]) {
		text, ok := sh.prepare(t, c)
		if !ok {
			continue
		}
		switch {
		case strings.Contains(text, "/v1/listeners --json"):
			checked["listener"] = true
			var resp struct {
				Listener struct {
					Address       string `json:"address"`
					ProxyProtocol string `json:"proxyProtocol"`
				} `json:"listener"`
			}
			decodeJSON(t, sh.mustRun(t, c, text), &resp)
			if resp.Listener.Address != laddr || resp.Listener.ProxyProtocol != "PROXY_PROTOCOL_ANY" {
				t.Fatalf("README.md:%d: POST /v1/listeners = %+v, want %s taking PROXY_PROTOCOL_ANY", c.line, resp, laddr)
			}
		case strings.HasPrefix(text, "python3 "):
			checked["client"] = true
			if out := sh.mustRun(t, c, text); out != "you are 203.0.113.7:51000\n" {
				t.Errorf("README.md:%d: the client printed %q, want \"you are 203.0.113.7:51000\"", c.line, out)
			}
		default:
			t.Fatalf("README.md:%d: a command the test does not know: %s", c.line, text)
		}
	}
	for _, what := range []string{"listener", "client"} {
		if !checked[what] {
			t.Errorf("README section \"Behind a load balancer\" has no %s command the test recognizes", what)
		}
	}
}
