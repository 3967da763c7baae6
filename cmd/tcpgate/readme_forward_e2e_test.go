package main_test

import (
	"encoding/json"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// readmeTargetPort matches the port of the README's line server, 7000.
var readmeTargetPort = regexp.MustCompile(`\b7000\b`)

// forwardEventJSON is an event of the forwarding walkthrough, with the
// fields of both directions.
type forwardEventJSON struct {
	Kind              string `json:"kind"`
	ConnectionID      string `json:"connectionId"`
	Text              string `json:"text"`
	Direction         string `json:"direction"`
	CloseReason       string `json:"closeReason"`
	TargetCloseReason string `json:"targetCloseReason"`
}

// TestReadmeForward runs the README's "tcpgate as socat -v" walkthrough as
// pasted: its line server, the forwarding listener in front of it, a
// stream with includeSent, and a client through the gateway; the client
// gets the answers, and the stream shows both directions in order.
func TestReadmeForward(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	requireTool(t, "python3")
	code := sectionBlocks(t, readmeBlocks(t), "tcpgate as socat -v", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"tcpgate as socat -v\" has %d sh blocks, want 1", len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"H": "http://" + g.httpAddr})
	targetPort := freePort(t)
	sh.ports = append(sh.ports, targetPort)
	laddr := net.JoinHostPort("127.0.0.1", sh.port)
	background := regexp.MustCompile(`\s&(\s+#.*)?$`)

	var stream *proc
	checked := map[string]bool{}
	for _, c := range splitCommands(t, code[0]) {
		c.text = readmeTargetPort.ReplaceAllString(c.text, targetPort)
		text, ok := sh.prepare(t, c)
		if !ok {
			continue
		}
		switch {
		case background.MatchString(text):
			checked["server"] = true
			sh.start(t, c, background.ReplaceAllString(text, ""))
			waitListening(t, net.JoinHostPort("127.0.0.1", targetPort))
		case strings.HasPrefix(text, "curl -N "):
			stream = sh.startElsewhere(t, c, text)
			stream.sync(t, laddr)
		case strings.Contains(text, "/v1/listeners --json"):
			checked["listener"] = true
			var resp struct {
				Listener struct {
					Address string `json:"address"`
					Forward struct {
						Address string `json:"address"`
					} `json:"forward"`
				} `json:"listener"`
			}
			decodeJSON(t, sh.mustRun(t, c, text), &resp)
			if resp.Listener.Address != laddr || resp.Listener.Forward.Address != "127.0.0.1:"+targetPort {
				t.Fatalf("README.md:%d: POST /v1/listeners = %+v, want %s forwarding to port %s", c.line, resp, laddr, targetPort)
			}
		default:
			checked["client"] = true
			if stream == nil {
				t.Fatalf("README.md:%d: the client runs before the stream; the test needs the stream", c.line)
			}
			if out := sh.mustRun(t, c, text); out != "HELLO\nWORLD\n" {
				t.Errorf("README.md:%d: the client printed %q, want HELLO and WORLD", c.line, out)
			}
		}
	}
	for _, what := range []string{"server", "listener", "client"} {
		if !checked[what] {
			t.Errorf("README section \"tcpgate as socat -v\" has no %s command the test recognizes", what)
		}
	}
	if stream == nil {
		t.Fatal("README section \"tcpgate as socat -v\" has no curl -N stream")
	}

	// The client's connection: the last one opened (the sync probes came
	// first), its lines received, the answers sent, both sides closed.
	var evs []forwardEventJSON
	stream.waitFor(t, "the client's connection closed", eventTimeout, func(out string) bool {
		evs = evs[:0]
		for line := range strings.Lines(out) {
			var e forwardEventJSON
			if json.Unmarshal([]byte(line), &e) == nil {
				evs = append(evs, e)
			}
		}
		return slices.ContainsFunc(evs, func(e forwardEventJSON) bool {
			return e.Kind == kindData && e.Text == "hello"
		}) && slices.ContainsFunc(evs, func(e forwardEventJSON) bool {
			return e.Kind == "EVENT_KIND_CONNECTION_CLOSED" && e.TargetCloseReason != ""
		})
	})
	var id string
	for _, e := range evs {
		if e.Kind == kindData && e.Text == "hello" {
			id = e.ConnectionID
		}
	}
	var received, sent []string
	var closed forwardEventJSON
	for _, e := range evs {
		switch {
		case e.ConnectionID != id:
		case e.Kind == kindData && e.Direction == "DIRECTION_SENT":
			sent = append(sent, e.Text)
		case e.Kind == kindData:
			received = append(received, e.Text)
		case e.Kind == "EVENT_KIND_CONNECTION_CLOSED":
			closed = e
		}
	}
	if !slices.Equal(received, []string{"hello", "world"}) || strings.Join(sent, "") != "HELLO\nWORLD\n" {
		t.Errorf("stream of %s: received %q, sent %q; want the lines hello, world and the answers HELLO\\nWORLD\\n", id, received, sent)
	}
	if closed.CloseReason != "CLOSE_REASON_PEER_CLOSED" || closed.TargetCloseReason != "CLOSE_REASON_PEER_CLOSED" {
		t.Errorf("close of %s: %+v, want PEER_CLOSED both sides", id, closed)
	}
	g.d.stop(t)
}

// waitListening waits until something accepts on addr.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after %v: %v", addr, eventTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
