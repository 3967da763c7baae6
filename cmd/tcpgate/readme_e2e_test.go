package main_test

// The README's snippets, read from README.md at test time and run as a user
// pastes them, so that the README and the product cannot drift apart. Only
// the addresses change: the README's fixed ports become free ones.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The addresses the README uses, replaced by the test's own.
const (
	readmeGRPCAddr = "127.0.0.1:50051"
	readmeHTTPURL  = "http://127.0.0.1:50080"
)

// readmeListenerPort matches the README's listener port, 9000.
var readmeListenerPort = regexp.MustCompile(`\b9000\b`)

// TestReadmeSnippets runs the README's Python program, its curl, grpcurl
// and CLI walkthroughs and the one of an outbound connection, each against
// a gateway of its own.
func TestReadmeSnippets(t *testing.T) {
	t.Parallel()
	blocks := readmeBlocks(t)
	t.Run("python", func(t *testing.T) {
		t.Parallel()
		testReadmePython(t, blocks)
	})
	t.Run("curl", func(t *testing.T) {
		t.Parallel()
		testReadmeCurl(t, blocks)
	})
	t.Run("grpcurl", func(t *testing.T) {
		t.Parallel()
		testReadmeGrpcurl(t, blocks)
	})
	t.Run("cli", func(t *testing.T) {
		t.Parallel()
		testReadmeCLI(t, blocks)
	})
	t.Run("outbound", func(t *testing.T) {
		t.Parallel()
		testReadmeOutbound(t, blocks)
	})
	t.Run("handle", func(t *testing.T) {
		t.Parallel()
		testReadmeHandle(t, blocks)
	})
}

// requireTool returns the path of a program the README's snippets use. A
// missing one fails the test rather than skipping it, so that a passing run
// means the snippets ran: `make test` installs them (.ci/deps).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: `make test` installs what the tests need (.ci/deps): %v", name, err)
	}
	return path
}

// testReadmePython runs the Python program with TCPGATE_URL set.
func testReadmePython(t *testing.T, blocks []codeBlock) {
	python := requireTool(t, "python3")
	code := sectionBlocks(t, blocks, "From Python", "python")
	if len(code) != 1 {
		t.Fatalf("README section \"From Python\" has %d python blocks, want 1", len(code))
	}
	g := startGateway(t)
	script := filepath.Join(t.TempDir(), "readme.py")
	if err := os.WriteFile(script, []byte(code[0].text), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, script)
	cmd.Env = readmeEnv("TCPGATE_URL=http://" + g.httpAddr)
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("README.md:%d: the Python program is still running after %v:\n%s", code[0].line, callTimeout, out)
	}
	if err != nil {
		t.Fatalf("README.md:%d: the Python program: %v\n%s", code[0].line, err, out)
	}
	for _, want := range []string{"client got: Message received\n", "event: EVENT_KIND_DATA Hello, World!\n", "client got: hello back\n", "stopped "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("README.md:%d: the Python program printed\n%s\nwant it to include %q", code[0].line, out, want)
		}
	}
	g.d.stop(t)
}

// testReadmeCurl runs the REST walkthrough with curl: the event streams in
// the background, every other command in turn.
func testReadmeCurl(t *testing.T, blocks []codeBlock) {
	requireTool(t, "curl")
	code := sectionBlocks(t, blocks, "The same over REST", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"The same over REST\" has %d sh blocks, want 1", len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"H": "http://" + g.httpAddr})
	laddr := net.JoinHostPort("127.0.0.1", sh.port)

	var ndjson, sse *proc
	synced := false
	checked := map[string]bool{}
	for _, c := range splitCommands(t, code[0]) {
		text, ok := sh.prepare(t, c)
		if !ok {
			continue
		}
		if strings.HasPrefix(text, "curl -N ") {
			p := sh.startElsewhere(t, c, text)
			if strings.Contains(text, "text/event-stream") {
				sse = p
			} else {
				ndjson = p
			}
			continue
		}
		if !synced && (ndjson != nil || sse != nil) {
			for _, p := range []*proc{ndjson, sse} {
				if p != nil {
					p.sync(t, laddr)
				}
			}
			synced = true
		}

		out := sh.mustRun(t, c, text)
		var body map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &body); err != nil {
			t.Fatalf("README.md:%d: %s\nprinted %q, want a JSON object: %v", c.line, text, out, err)
		}
		if _, ok := body["code"]; ok {
			t.Fatalf("README.md:%d: %s\nanswered with an error: %s", c.line, text, out)
		}
		if _, ok := body["error"]; ok {
			t.Fatalf("README.md:%d: %s\nanswered with an error: %s", c.line, text, out)
		}
		switch {
		case strings.Contains(text, "$H/v1/listeners --json"):
			// demo, then lp for the framed send on the port demo freed.
			want := "demo"
			if checked["start"] {
				want = "lp"
			}
			checked["start"] = true
			var resp struct {
				Listener listenerJSON `json:"listener"`
			}
			decodeJSON(t, out, &resp)
			if resp.Listener.ListenerID != want || resp.Listener.Address != laddr || resp.Listener.State != "LISTENER_STATE_LISTENING" {
				t.Fatalf("README.md:%d: POST /v1/listeners = %s, want %s listening on %s", c.line, out, want, laddr)
			}
		case strings.Contains(text, "/v1/send") && strings.Contains(text, `"framed": true`):
			checked["send framed"] = true
			var resp sendResponseJSON
			decodeJSON(t, out, &resp)
			// 2 bytes of length prefix and "hello", echoed as one frame.
			if resp.BytesWritten != 7 || resp.Reply == nil || resp.Reply.Text != "hello" {
				t.Errorf("README.md:%d: POST /v1/send = %s, want 7 bytes written and reply.text \"hello\"", c.line, out)
			}
		case strings.Contains(text, "/v1/send") && strings.Contains(text, "awaitReply"):
			checked["send text"] = true
			var resp sendResponseJSON
			decodeJSON(t, out, &resp)
			if resp.Reply == nil || resp.Reply.Text != "Message received" {
				t.Errorf("README.md:%d: POST /v1/send = %s, want reply.text \"Message received\"", c.line, out)
			}
		case strings.Contains(text, "/v1/send") && strings.Contains(text, `"data": "AQIDBA=="`):
			checked["send bytes"] = true
			var resp sendResponseJSON
			decodeJSON(t, out, &resp)
			if resp.BytesWritten != 4 || resp.ConnectionsReached != 1 {
				t.Errorf("README.md:%d: POST /v1/send = %s, want 4 bytes written to 1 connection", c.line, out)
			}
		case strings.Contains(text, "-X DELETE") && strings.Contains(text, "/v1/listeners/demo"):
			checked["stop"] = true
			var resp struct {
				Listener listenerJSON `json:"listener"`
			}
			decodeJSON(t, out, &resp)
			if resp.Listener.State != "LISTENER_STATE_STOPPED" {
				t.Errorf("README.md:%d: DELETE /v1/listeners/demo = %s, want LISTENER_STATE_STOPPED", c.line, out)
			}
			if ln, err := net.Listen("tcp", laddr); err != nil {
				t.Errorf("%s still bound after DELETE /v1/listeners/demo: %v", laddr, err)
			} else {
				ln.Close()
			}
		}
	}
	for _, what := range []string{"start", "send text", "send bytes", "stop", "send framed"} {
		if !checked[what] {
			t.Errorf("README section \"The same over REST\" has no %s command the test recognizes", what)
		}
	}
	if ndjson == nil || sse == nil {
		t.Fatalf("README section \"The same over REST\": want a curl -N NDJSON and an SSE stream, got NDJSON %v, SSE %v", ndjson != nil, sse != nil)
	}

	// Both streams show the text send's connection open and its data, the
	// bytes, and the stop.
	want := func(evs []eventJSON) bool {
		var hello eventJSON
		for _, e := range evs {
			if e.Kind == kindData && e.Text == "Hello, World!" {
				hello = e
			}
		}
		return hello.ConnectionID != "" &&
			slices.ContainsFunc(evs, func(e eventJSON) bool {
				return e.Kind == kindConnectionOpened && e.ConnectionID == hello.ConnectionID && e.Sequence < hello.Sequence
			}) &&
			slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindData && e.payload() == "\x01\x02\x03\x04" }) &&
			slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindListenerStopped && e.ListenerID == "demo" })
	}
	ndjson.waitFor(t, "NDJSON events of the sends and the stop", eventTimeout, func(out string) bool {
		return want(jsonLines(out))
	})
	for i, line := range strings.Split(strings.TrimSuffix(ndjson.stdout.String(), "\n"), "\n") {
		if !json.Valid([]byte(line)) || !strings.Contains(line, `"kind":"EVENT_KIND_`) {
			t.Errorf("curl -N NDJSON: line %d is not an event: %q", i+1, line)
		}
	}
	sse.waitFor(t, "SSE events of the sends and the stop", eventTimeout, func(out string) bool {
		evs, err := sseEvents(out)
		return err == nil && want(evs)
	})
	if _, err := sseEvents(sse.stdout.String()); err != nil {
		t.Errorf("curl -N SSE: %v", err)
	}
	g.d.stop(t)
}

// sseEvents decodes the complete events of a Server-Sent Events stream: an
// "id:" line with the sequence, then a "data:" line with the event.
func sseEvents(out string) ([]eventJSON, error) {
	var evs []eventJSON
	id := ""
	for line := range strings.Lines(out) {
		if !strings.HasSuffix(line, "\n") {
			break // still being written
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			var e eventJSON
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e); err != nil {
				return nil, fmt.Errorf("data line %q: %v", line, err)
			}
			// An id is INCARNATION-SEQUENCE: the event's sequence, or
			// on STREAM_STARTED the one its stream starts after.
			_, seq, _ := strings.Cut(id, "-")
			if e.Sequence != 0 && seq != fmt.Sprint(e.Sequence) || e.Kind == kindStreamStarted && seq == "" {
				return nil, fmt.Errorf("data line %q after id %q, want the id to end in its sequence", line, id)
			}
			id = ""
			evs = append(evs, e)
		}
	}
	return evs, nil
}

// testReadmeGrpcurl runs the grpcurl walkthrough with the grpcurl built
// from go.mod as `grpcurl`, the Subscribe in the background.
func testReadmeGrpcurl(t *testing.T, blocks []codeBlock) {
	code := sectionBlocks(t, blocks, "Walkthrough with grpcurl", "sh")
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"G": g.grpcAddr})
	laddr := net.JoinHostPort("127.0.0.1", sh.port)

	var sub *proc
	var client net.Conn // what the README does with nc
	var clientID string
	checked := map[string]bool{}
	for _, b := range code {
		for _, c := range splitCommands(t, b) {
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			if strings.Contains(text, service+"/Subscribe") {
				sub = sh.startElsewhere(t, c, text) // "In a third terminal"
				sub.sync(t, laddr)
				continue
			}
			if strings.Contains(text, service+"/ListConnections") {
				// The README: `printf 'hi\n' | nc 127.0.0.1 9000`, a
				// connection to answer.
				if sub == nil {
					t.Fatalf("README.md:%d: ListConnections before Subscribe; the test needs the stream", c.line)
				}
				var local string
				client, local = dialLocal(t, laddr)
				if _, err := client.Write([]byte("hi\n")); err != nil {
					t.Fatal(err)
				}
				readUntil(t, client, "Message received")
				out := sub.waitFor(t, "DATA \"hi\\n\"", eventTimeout, func(out string) bool {
					return slices.ContainsFunc(grpcurlEvents(out), func(e eventJSON) bool {
						return e.Kind == kindData && e.Text == "hi\n"
					})
				})
				for _, e := range grpcurlEvents(out) {
					if e.Kind == kindConnectionOpened && e.RemoteAddress == local {
						clientID = e.ConnectionID
					}
				}
			}
			if strings.Contains(text, `"connection_id"`) && strings.Contains(text, "Send") {
				// The README takes the id from ListConnections, as C.
				if clientID == "" || sh.vars["C"] != clientID {
					t.Fatalf("README.md:%d: sends to connection C=%q, want the client's %q", c.line, sh.vars["C"], clientID)
				}
			}

			out := sh.mustRun(t, c, text)
			switch {
			case strings.HasSuffix(text, " list"):
				checked["list"] = true
				if !slices.Contains(strings.Fields(out), service) {
					t.Errorf("README.md:%d: %s printed %q, want %s in it", c.line, text, out, service)
				}
			case strings.Contains(text, " describe "+service):
				checked["describe"] = true
				if !strings.Contains(out, "rpc StartListener (") {
					t.Errorf("README.md:%d: %s printed no rpc StartListener:\n%s", c.line, text, out)
				}
				// The README: "the same text is what grpcurl describe shows".
				if !strings.Contains(out, "// StartListener binds host:port") {
					t.Errorf("README.md:%d: %s printed no comments of the proto:\n%s", c.line, text, out)
				}
			case strings.Contains(text, service+"/StartListener"):
				// demo, then lp for the framed send on the port demo freed.
				want := "demo"
				if checked["start"] {
					want = "lp"
				}
				checked["start"] = true
				var resp struct {
					Listener listenerJSON `json:"listener"`
				}
				decodeJSON(t, out, &resp)
				if resp.Listener.ListenerID != want || resp.Listener.Address != laddr {
					t.Fatalf("README.md:%d: StartListener = %s, want %s on %s", c.line, out, want, laddr)
				}
			case strings.Contains(text, service+"/Send") && strings.Contains(text, `"framed": true`):
				checked["send framed"] = true
				var resp sendResponseJSON
				decodeJSON(t, out, &resp)
				if resp.BytesWritten != 7 || resp.Reply == nil || resp.Reply.Text != "hello" {
					t.Errorf("README.md:%d: Send = %s, want 7 bytes written and reply text \"hello\"", c.line, out)
				}
			case strings.Contains(text, service+"/Send") && strings.Contains(text, "Hello, World!"):
				checked["send text"] = true
				var resp sendResponseJSON
				decodeJSON(t, out, &resp)
				if resp.Reply == nil || resp.Reply.Text != "Message received" {
					t.Errorf("README.md:%d: Send = %s, want reply text \"Message received\"", c.line, out)
				}
			case strings.Contains(text, service+"/Send") && strings.Contains(text, `"data": "AQIDBA=="`):
				checked["send bytes"] = true
				var resp sendResponseJSON
				decodeJSON(t, out, &resp)
				if resp.BytesWritten != 4 {
					t.Errorf("README.md:%d: Send = %s, want 4 bytes written", c.line, out)
				}
			case strings.Contains(text, service+"/ListConnections"):
				checked["list connections"] = true
				var resp struct {
					Connections []connectionJSON `json:"connections"`
				}
				decodeJSON(t, out, &resp)
				if !slices.ContainsFunc(resp.Connections, func(c connectionJSON) bool {
					return c.ConnectionID == clientID && c.ListenerID == "demo"
				}) {
					t.Errorf("README.md:%d: ListConnections = %s, want connection %s", c.line, out, clientID)
				}
			case strings.Contains(text, service+"/Send") && strings.Contains(text, `"connection_id"`):
				checked["send to connection"] = true
				var resp sendResponseJSON
				decodeJSON(t, out, &resp)
				if resp.ConnectionsReached != 1 {
					t.Errorf("README.md:%d: Send = %s, want 1 connection reached", c.line, out)
				}
				readUntil(t, client, "hello from the gateway\n")
				// Closed now, so that the stop's drain has nothing to wait for.
				client.Close()
			case strings.Contains(text, service+"/StopListener"):
				checked["stop"] = true
				var resp struct {
					Listener listenerJSON `json:"listener"`
				}
				decodeJSON(t, out, &resp)
				if resp.Listener.State != "LISTENER_STATE_STOPPED" {
					t.Errorf("README.md:%d: StopListener = %s, want LISTENER_STATE_STOPPED", c.line, out)
				}
			}
		}
	}
	for _, what := range []string{"list", "describe", "start", "send text", "send bytes", "list connections", "send to connection", "stop", "send framed"} {
		if !checked[what] {
			t.Errorf("README section \"Walkthrough with grpcurl\" has no %s command the test recognizes", what)
		}
	}
	if sub == nil {
		t.Fatal("README section \"Walkthrough with grpcurl\" has no Subscribe command")
	}

	// The README: CONNECTION_OPENED, then DATA "Hello, World!", then
	// CONNECTION_CLOSED, and the bytes as data "AQIDBA==".
	out := sub.waitFor(t, "the events of both sends", eventTimeout, func(out string) bool {
		evs := grpcurlEvents(out)
		var hello string
		for _, e := range evs {
			if e.Kind == kindData && e.Text == "Hello, World!" {
				hello = e.ConnectionID
			}
		}
		return hello != "" &&
			slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindConnectionClosed && e.ConnectionID == hello }) &&
			slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindData && e.payload() == "\x01\x02\x03\x04" })
	})
	var hello []string
	var helloID string
	for _, e := range grpcurlEvents(out) {
		if e.Kind == kindData && e.Text == "Hello, World!" {
			helloID = e.ConnectionID
		}
	}
	for _, e := range grpcurlEvents(out) {
		if e.ConnectionID == helloID {
			hello = append(hello, e.Kind)
		}
	}
	if want := []string{kindConnectionOpened, kindData, kindConnectionClosed}; !slices.Equal(hello, want) {
		t.Errorf("Subscribe: events of the Hello connection %s = %v, want %v", helloID, hello, want)
	}
	g.d.stop(t)
}

// connectionJSON is the part of tcpgate.v1.Connection the tests read.
type connectionJSON struct {
	ConnectionID string `json:"connectionId"`
	ListenerID   string `json:"listenerId"`
}

// grpcurlEvents decodes the events of the complete responses grpcurl has
// printed: one pretty-printed JSON object per response.
func grpcurlEvents(out string) []eventJSON {
	var evs []eventJSON
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var resp struct {
			Events []eventJSON `json:"events"`
		}
		if dec.Decode(&resp) != nil {
			return evs // the end, or a response still being written
		}
		evs = append(evs, resp.Events...)
	}
}

// testReadmeCLI runs the CLI walkthrough with the built binary as $T.
func testReadmeCLI(t *testing.T, blocks []codeBlock) {
	code := sectionBlocks(t, blocks, "From the terminal with the tcpgate CLI", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"From the terminal with the tcpgate CLI\" has %d sh blocks, want 1", len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"T": tcpgateBin})
	sh.env = append(sh.env, "TCPGATE_SERVER="+g.grpcAddr)
	laddr := net.JoinHostPort("127.0.0.1", sh.port)

	background := regexp.MustCompile(`\s&(\s+#.*)?$`)
	var sub *proc
	var client net.Conn
	var clientID string
	checked := map[string]bool{}
	for _, c := range splitCommands(t, code[0]) {
		text, ok := sh.prepare(t, c)
		if !ok {
			continue
		}
		if background.MatchString(text) {
			sub = sh.start(t, c, background.ReplaceAllString(text, ""))
			sub.sync(t, laddr)
			continue
		}
		if strings.HasPrefix(text, "$T conns ") {
			// The README has no client connected here; `conns` would list
			// nothing and `send --to-conn` find nothing. Connect one.
			if sub == nil {
				t.Fatalf("README.md:%d: conns before subscribe; the test needs the stream", c.line)
			}
			var local string
			client, local = dialLocal(t, laddr)
			clientID = sub.waitMatch(t, regexp.MustCompile(`(?m) connection_opened listener=demo conn=(c-[a-z2-7]{10}) remote=`+regexp.QuoteMeta(local)+`$`))[1]
		}
		if strings.Contains(text, "--to-conn ") {
			// The README takes the id from conns, as C.
			if clientID == "" || sh.vars["C"] != clientID {
				t.Fatalf("README.md:%d: sends to connection C=%q, want the client's %q", c.line, sh.vars["C"], clientID)
			}
		}

		out := sh.mustRun(t, c, text)
		switch {
		case strings.HasPrefix(text, "$T listen "):
			// demo, then lines for the framed send on the port demo freed.
			want := "listener demo listening on " + laddr + " (framing raw)\n"
			if checked["listen"] {
				want = "listener lines listening on " + laddr + " (framing line)\n"
			}
			checked["listen"] = true
			if out != want {
				t.Fatalf("README.md:%d: %s printed %q, want %q", c.line, text, out, want)
			}
		case strings.HasPrefix(text, "$T send ") && strings.Contains(text, "--framed"):
			checked["send framed"] = true
			// The echo of the line "PING\n", without its newline.
			if out != "PING" {
				t.Errorf("README.md:%d: %s printed %q, want %q", c.line, text, out, "PING")
			}
		case strings.HasPrefix(text, "$T send ") && strings.Contains(text, "--await first"):
			checked["send text"] = true
			if out != "Message received" {
				t.Errorf("README.md:%d: %s printed %q, want %q", c.line, text, out, "Message received")
			}
		case strings.HasPrefix(text, "$T ls"):
			checked["ls"] = true
			if !regexp.MustCompile(`(?m)^demo +` + regexp.QuoteMeta(laddr) + ` +listening `).MatchString(out) {
				t.Errorf("README.md:%d: %s printed\n%s\nwant a row of demo on %s", c.line, text, out, laddr)
			}
		case strings.HasPrefix(text, "$T conns "):
			checked["conns"] = true
			if !regexp.MustCompile(`(?m)^` + clientID + ` +demo `).MatchString(out) {
				t.Errorf("README.md:%d: %s printed\n%s\nwant a row of %s", c.line, text, out, clientID)
			}
		case strings.HasPrefix(text, "$T send --to-conn "):
			checked["send to connection"] = true
			if got := readN(t, client, len("hello back")); got != "hello back" {
				t.Errorf("the client read %q, want %q", got, "hello back")
			}
			client.Close()
		case strings.HasPrefix(text, "$T stop "):
			checked["stop"] = true
			if !strings.HasPrefix(out, "listener demo stopped: ") {
				t.Errorf("README.md:%d: %s printed %q, want \"listener demo stopped: ...\"", c.line, text, out)
			}
		}
	}
	for _, what := range []string{"listen", "send text", "ls", "conns", "send to connection", "stop", "send framed"} {
		if !checked[what] {
			t.Errorf("README section \"From the terminal with the tcpgate CLI\" has no %s command the test recognizes", what)
		}
	}
	if sub == nil {
		t.Fatal("README section \"From the terminal with the tcpgate CLI\" has no subscribe in the background")
	}
	sub.waitMatch(t, regexp.MustCompile(`(?m) data listener=demo conn=c-[a-z2-7]{10} 13 bytes "Hello, World!"$`))
	sub.waitMatch(t, regexp.MustCompile(`(?m) listener_stopped listener=demo `))
	g.d.stop(t)
}

// codeBlock is one fenced code block of README.md.
type codeBlock struct {
	section string // the "## " heading it is under
	lang    string
	text    string
	line    int // of its first line of code
}

// readmeBlocks reads the fenced code blocks of the module's README.md.
func readmeBlocks(t *testing.T) []codeBlock {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatalf("reading the README: %v", err)
	}
	var (
		blocks  []codeBlock
		section string
		cur     *codeBlock
	)
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case strings.HasPrefix(line, "```"):
			cur = &codeBlock{section: section, lang: strings.TrimPrefix(line, "```"), line: i + 2}
		case strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
		}
	}
	if cur != nil {
		t.Fatalf("README.md:%d: code block never closed", cur.line-1)
	}
	return blocks
}

// sectionBlocks returns the blocks in lang under the heading that starts
// with section, failing the test when there are none.
func sectionBlocks(t *testing.T, blocks []codeBlock, section, lang string) []codeBlock {
	t.Helper()
	var out []codeBlock
	for _, b := range blocks {
		if strings.HasPrefix(b.section, section) && b.lang == lang {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		t.Fatalf("README.md has no %s block under a heading \"## %s...\"", lang, section)
	}
	return out
}

// shellCommand is one command of a README sh block, with its continuation
// lines.
type shellCommand struct {
	text string
	line int // in README.md
}

// splitCommands splits an sh block into commands, skipping comments and
// blank lines and joining lines continued by a backslash or an open quote.
func splitCommands(t *testing.T, b codeBlock) []shellCommand {
	t.Helper()
	var (
		cmds []shellCommand
		cur  []string
		line int
	)
	for i, l := range strings.Split(strings.TrimSuffix(b.text, "\n"), "\n") {
		if len(cur) == 0 {
			if trimmed := strings.TrimSpace(l); trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			line = b.line + i
		}
		cur = append(cur, l)
		text := strings.Join(cur, "\n")
		if !strings.HasSuffix(text, `\`) && quotesClosed(text) {
			cmds = append(cmds, shellCommand{text: text, line: line})
			cur = nil
		}
	}
	if len(cur) > 0 {
		t.Fatalf("README.md:%d: command never ends: %s", line, strings.Join(cur, "\n"))
	}
	return cmds
}

// quotesClosed reports whether every quote of a shell command is closed.
func quotesClosed(s string) bool {
	var single, double, escaped bool
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case single:
			single = r != '\''
		case r == '\\':
			escaped = true
		case double:
			double = r != '"'
		case r == '\'':
			single = true
		case r == '"':
			double = true
		}
	}
	return !single && !double
}

// snippetShell runs README commands with bash as a user pastes them, with
// the README's addresses replaced by the test's.
type snippetShell struct {
	bash string
	env  []string
	dir  string
	// vars are the values the test gives the block's variables (G, H, T).
	vars map[string]string
	// port replaces the README's listener port 9000.
	port string
	// ports are every port a command may name.
	ports []string
	// replacer puts the test's addresses where the README has its own.
	replacer *strings.Replacer
}

func newSnippetShell(t *testing.T, g gateway, vars map[string]string) *snippetShell {
	t.Helper()
	bash := requireTool(t, "bash")
	sh := &snippetShell{bash: bash, dir: t.TempDir(), vars: vars, port: freePort(t)}
	_, grpcPort, _ := net.SplitHostPort(g.grpcAddr)
	_, httpPort, _ := net.SplitHostPort(g.httpAddr)
	sh.ports = []string{sh.port, grpcPort, httpPort}
	sh.replacer = strings.NewReplacer(
		"go tool grpcurl", "grpcurl", // the grpcurl built from go.mod is on PATH
		readmeGRPCAddr, g.grpcAddr,
		readmeHTTPURL, "http://"+g.httpAddr,
	)
	// The binaries under test first on PATH: grpcurl, and tcpgate.
	path := filepath.Dir(grpcurlBin) + string(os.PathListSeparator) + os.Getenv("PATH")
	sh.env = raceEnv(readmeEnv("PATH=" + path))
	for k, v := range vars {
		sh.env = append(sh.env, k+"="+v)
	}
	return sh
}

// readmeEnv is hermeticEnv with no proxy for the local gateway.
func readmeEnv(extra ...string) []string {
	return hermeticEnv(append([]string{"NO_PROXY=127.0.0.1", "no_proxy=127.0.0.1"}, extra...)...)
}

var (
	assignment = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$`)
	// capture is a variable set from a command's output, C=$(...): the
	// test runs the command and gives the variable to the commands after
	// it, as the user's shell would.
	capture = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=\$\((.*)\)(\s+#.*)?$`)
	// hostPort finds the addresses a command names.
	hostPort = regexp.MustCompile(`127\.0\.0\.1:(\d+)`)
	// readmePorts are the README's fixed ports of the gateway.
	readmePorts = regexp.MustCompile(`\b(50051|50080)\b`)
)

// prepare returns the command to run, with the test's addresses, and false
// for a line the test does itself: a variable it sets, or the grpcurl
// function it replaces by putting grpcurl on PATH.
func (sh *snippetShell) prepare(t *testing.T, c shellCommand) (string, bool) {
	t.Helper()
	if strings.HasPrefix(c.text, "alias ") {
		t.Fatalf("README.md:%d: %s: an alias is not expanded in a script; use a function", c.line, c.text)
	}
	if strings.HasPrefix(c.text, "grpcurl() {") {
		return "", false
	}
	if m := capture.FindStringSubmatch(c.text); m != nil {
		inner, ok := sh.prepare(t, shellCommand{text: m[2], line: c.line})
		if !ok {
			t.Fatalf("README.md:%d: %s: the command substitution is no command", c.line, c.text)
		}
		v := strings.TrimSpace(sh.mustRun(t, c, inner))
		if v == "" {
			t.Fatalf("README.md:%d: %s set %s to nothing", c.line, c.text, m[1])
		}
		sh.vars[m[1]] = v
		sh.env = append(sh.env, m[1]+"="+v)
		return "", false
	}
	if m := assignment.FindStringSubmatch(c.text); m != nil {
		if _, ok := sh.vars[m[1]]; !ok {
			t.Fatalf("README.md:%d: sets %s=%s, a variable the test does not know", c.line, m[1], m[2])
		}
		return "", false
	}
	unreplaced := strings.NewReplacer(readmeGRPCAddr, "", readmeHTTPURL, "").Replace(c.text)
	if m := readmePorts.FindString(unreplaced); m != "" {
		t.Fatalf("README.md:%d: names port %s in a way the test does not replace:\n%s", c.line, m, c.text)
	}
	text := readmeListenerPort.ReplaceAllString(sh.replacer.Replace(c.text), sh.port)
	for _, m := range hostPort.FindAllStringSubmatch(text, -1) {
		if !slices.Contains(sh.ports, m[1]) {
			t.Fatalf("README.md:%d: names %s, a port the test does not replace:\n%s", c.line, m[0], c.text)
		}
	}
	return text, true
}

// run runs text with bash within callTimeout.
func (sh *snippetShell) run(t *testing.T, text string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh.bash, "-c", text)
	cmd.Env, cmd.Dir = sh.env, sh.dir
	cmd.WaitDelay = waitDelay
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s: still running after %v", text, callTimeout)
	}
	return out.String(), errOut.String(), err
}

// mustRun runs the command c, prepared as text, and fails the test unless
// it exits 0.
func (sh *snippetShell) mustRun(t *testing.T, c shellCommand, text string) string {
	t.Helper()
	stdout, stderr, err := sh.run(t, text)
	if err != nil {
		t.Fatalf("README.md:%d: %s\n%v\nstdout: %s\nstderr: %s", c.line, text, err, stdout, stderr)
	}
	return stdout
}

// start runs the command c, prepared as text, in the background.
func (sh *snippetShell) start(t *testing.T, c shellCommand, text string) *proc {
	t.Helper()
	return startProc(t, fmt.Sprintf("README.md:%d: %s", c.line, text), sh.env, sh.dir, sh.bash, "-c", text)
}

// startElsewhere is start in another terminal, as the README has it: one
// without the block's variables (G, H, T), which that terminal never set.
func (sh *snippetShell) startElsewhere(t *testing.T, c shellCommand, text string) *proc {
	t.Helper()
	env := slices.DeleteFunc(slices.Clone(sh.env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		_, ok := sh.vars[name]
		return ok
	})
	return startProc(t, fmt.Sprintf("README.md:%d: %s", c.line, text), env, sh.dir, sh.bash, "-c", text)
}

// TestReadmeFacts: what the README states about the build and the defaults
// agrees with the module and the daemon: the Go version go.mod asks for,
// listeners on every interface by default, and the browser snippet's
// `--cors-origins null` for a page opened from a file.
func TestReadmeFacts(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join("..", "..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "Go (" + string(goVersion[1]) + " or later"; !strings.Contains(string(readme), want) {
		t.Errorf("README.md does not say %q, the minimum go.mod asks for", want)
	}
	security := string(readme)
	if _, after, ok := strings.Cut(security, "\n## Security\n"); ok {
		security, _, _ = strings.Cut(after, "\n## ")
	}
	if !strings.Contains(security, "every interface by default (`0.0.0.0`") {
		t.Errorf("README.md's Security section does not say that listeners bind every interface (0.0.0.0) by default")
	}
	if !strings.Contains(string(readme), "`--cors-origins null`") {
		t.Errorf("README.md does not say that a page opened from a file needs --cors-origins null")
	}

	// --cors-origins null lets a file:// page's EventSource in, as the
	// README says; without it the same request is refused.
	for _, tc := range []struct {
		args []string
		want int
	}{{nil, http.StatusForbidden}, {[]string{"--cors-origins", "null"}, http.StatusOK}} {
		d := startDaemon(t, hermeticEnv(), append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, tc.args...)...)
		d.waitServing(t)
		m := httpAddrLine.FindStringSubmatch(d.stderr.String())
		if m == nil {
			t.Fatalf("tcpgate logged no http_addr:\n%s", d.stderr.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+strings.Trim(m[1], `"`)+"/v1/events?kinds=EVENT_KIND_DATA", nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Origin", "null")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("GET /v1/events from a file page: %v", err)
		}
		if resp.StatusCode != tc.want || (tc.want == http.StatusOK && resp.Header.Get("Access-Control-Allow-Origin") != "null") {
			t.Errorf("serve %v: GET /v1/events with Origin null = %d, Access-Control-Allow-Origin %q; want %d",
				tc.args, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), tc.want)
		}
		resp.Body.Close()
		cancel()
		d.stop(t)
	}
}
