package main_test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// testReadmeOutbound runs the README's section "Keeping a connection to a
// server" as pasted: its Python server saved as upper.py, then the CLI
// block and the REST block in one shell, against one gateway. Each
// `python3 upper.py &` starts the server, each `kill $SERVER` kills it
// (SIGTERM, as kill does), and the checks follow the README's comments:
// the replies before and after the restart, the stream's drop, scheduled
// reconnects and new generation, and the waiting connection listed.
func testReadmeOutbound(t *testing.T, blocks []codeBlock) {
	const section = "Keeping a connection to a server"
	python := requireTool(t, "python3")
	requireTool(t, "curl")
	server := sectionBlocks(t, blocks, section, "python")
	code := sectionBlocks(t, blocks, section, "sh")
	if len(server) != 1 || len(code) != 2 {
		t.Fatalf("README section %q has %d python and %d sh blocks, want 1 and 2 (the CLI, then REST)", section, len(server), len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"T": tcpgateBin, "H": "http://" + g.httpAddr, "SERVER": ""})
	sh.env = append(sh.env, "TCPGATE_SERVER="+g.grpcAddr)
	saddr := net.JoinHostPort("127.0.0.1", sh.port)
	upper := readmeListenerPort.ReplaceAllString(server[0].text, sh.port)
	if upper == server[0].text {
		t.Fatalf("README.md:%d: the server does not listen on port 9000, the port the test replaces", server[0].line)
	}
	if err := os.WriteFile(filepath.Join(sh.dir, "upper.py"), []byte(upper), 0o644); err != nil {
		t.Fatal(err)
	}

	background := regexp.MustCompile(`\s&(\s+#.*)?$`)
	var (
		srv     *proc // the running python3 upper.py
		sub     *proc // $T subscribe
		stream  *proc // curl -N
		starts  int
		kills   int
		checked = map[string]bool{}
	)
	// subSaw waits for the CLI's stream to print a line matching re.
	subSaw := func(re string) { sub.waitMatch(t, regexp.MustCompile(`(?m)`+re)) }
	for bi, b := range code {
		for _, c := range splitCommands(t, b) {
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			switch {
			case strings.HasPrefix(text, "python3 upper.py") && background.MatchString(text):
				if srv != nil {
					t.Fatalf("README.md:%d: starts the server while it runs", c.line)
				}
				srv = sh.start(t, c, strings.Replace(background.ReplaceAllString(text, ""), "python3", python, 1))
				starts++
				waitListening(t, saddr)
				continue
			case strings.HasPrefix(text, "kill $SERVER"):
				if srv == nil {
					t.Fatalf("README.md:%d: kills the server, but none runs", c.line)
				}
				if err := syscall.Kill(-srv.cmd.Process.Pid, syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				<-srv.done
				srv = nil
				kills++
				// The README's comment: the drop, then a reconnect
				// scheduled after each refused dial.
				if bi == 0 {
					subSaw(` connection_closed conn=upper gen=1 remote=\S+ reason=\S+`)
					subSaw(` reconnect_scheduled conn=upper gen=1 attempt=2 delay=\S+ error=".*refused.*"$`)
				} else {
					waitStream(t, stream, "upper2's drop and its reconnects scheduled", func(evs []eventJSON) bool {
						return slices.ContainsFunc(evs, func(e eventJSON) bool {
							return e.Kind == "EVENT_KIND_RECONNECT_SCHEDULED" && e.ConnectionID == "upper2" && e.Attempt >= 2 && strings.Contains(e.Error, "refused")
						})
					})
				}
				continue
			case background.MatchString(text):
				sub = sh.start(t, c, background.ReplaceAllString(text, ""))
				subSaw(` stream_started `)
				continue
			case strings.HasPrefix(text, "curl -N "):
				stream = sh.startElsewhere(t, c, text)
				waitStream(t, stream, "the stream's start", func(evs []eventJSON) bool {
					return slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindStreamStarted })
				})
				continue
			}

			out := sh.mustRun(t, c, text)
			switch {
			case strings.HasPrefix(text, "$T connect "):
				checked["connect"] = true
				if want := "connection upper open to " + saddr + " (generation 1)\n"; out != want {
					t.Errorf("README.md:%d: %s printed %q, want %q", c.line, text, out, want)
				}
			case strings.HasPrefix(text, "$T send --to-conn upper hello"):
				checked["send before"] = true
				if out != "HELLO" {
					t.Errorf("README.md:%d: %s printed %q, want HELLO", c.line, text, out)
				}
			case strings.HasPrefix(text, "$T send --to-conn upper again"):
				checked["send after"] = true
				if out != "AGAIN" {
					t.Errorf("README.md:%d: %s printed %q, want AGAIN", c.line, text, out)
				}
				subSaw(` connection_opened conn=upper gen=2 remote=`)
			case strings.HasPrefix(text, "$T conns --origin outbound"):
				checked["conns"] = true
				row := connsRow(out, "upper")
				if len(row) < 11 || (row[2] != "waiting" && row[2] != "connecting") || row[8] != "outbound" || !strings.Contains(strings.Join(row[10:], " "), "refused") {
					t.Errorf("README.md:%d: %s printed\n%s\nwant upper waiting, outbound, with the refused dial as its last error", c.line, text, out)
				}
			case strings.HasPrefix(text, "$T close upper"):
				checked["close"] = true
				if want := "connection upper to " + saddr + " closed (after 2 generations): no more reconnects\n"; out != want {
					t.Errorf("README.md:%d: %s printed %q, want %q", c.line, text, out, want)
				}
				subSaw(` connection_closed conn=upper gen=2 remote=\S+ reason=closed_by_api$`)
			case strings.Contains(text, "$H/v1/connections --json"):
				checked["rest connect"] = true
				var resp struct {
					Connection struct {
						ConnectionID string `json:"connectionId"`
						State        string `json:"state"`
						Generation   uint64 `json:"generation,string"`
					} `json:"connection"`
				}
				decodeJSON(t, out, &resp)
				if cn := resp.Connection; cn.ConnectionID != "upper2" || cn.State != "CONNECTION_STATE_OPEN" || cn.Generation != 1 {
					t.Errorf("README.md:%d: POST /v1/connections = %s, want upper2 open, generation 1", c.line, out)
				}
			case strings.Contains(text, "$H/v1/send"):
				var resp sendResponseJSON
				decodeJSON(t, out, &resp)
				want := "HELLO"
				if strings.Contains(text, `"again"`) {
					want = "AGAIN"
				}
				checked["rest send "+want] = true
				if resp.Reply == nil || resp.Reply.Text != want {
					t.Errorf("README.md:%d: POST /v1/send = %s, want the reply %s", c.line, out, want)
				}
			case strings.Contains(text, "$H/v1/connections?origins=ORIGIN_OUTBOUND"):
				checked["rest list"] = true
				var resp struct {
					Connections []struct {
						ConnectionID string `json:"connectionId"`
						State        string `json:"state"`
						LastError    string `json:"lastError"`
					} `json:"connections"`
				}
				decodeJSON(t, out, &resp)
				if len(resp.Connections) != 1 || resp.Connections[0].ConnectionID != "upper2" || resp.Connections[0].State == "CONNECTION_STATE_OPEN" ||
					!strings.Contains(resp.Connections[0].LastError, "refused") {
					t.Errorf("README.md:%d: GET /v1/connections?origins=ORIGIN_OUTBOUND = %s, want upper2 alone, down, its last error the refused dial", c.line, out)
				}
			case strings.Contains(text, "-X DELETE $H/v1/connections/upper2"):
				checked["rest close"] = true
				if !strings.Contains(out, `"CONNECTION_STATE_CLOSED"`) {
					t.Errorf("README.md:%d: DELETE /v1/connections/upper2 = %s, want CONNECTION_STATE_CLOSED", c.line, out)
				}
			}
			if strings.Contains(out, `"code"`) {
				var e map[string]json.RawMessage
				if json.Unmarshal([]byte(out), &e) == nil && e["code"] != nil {
					t.Fatalf("README.md:%d: %s answered with an error: %s", c.line, text, out)
				}
			}
		}
	}
	for _, what := range []string{"connect", "send before", "conns", "send after", "close",
		"rest connect", "rest send HELLO", "rest list", "rest send AGAIN", "rest close"} {
		if !checked[what] {
			t.Errorf("README section %q has no %s command the test recognizes", section, what)
		}
	}
	if starts != 3 || kills != 2 || sub == nil || stream == nil {
		t.Errorf("README section %q: %d server starts, %d kills, subscribe %v, curl -N %v; want 3, 2 and both streams", section, starts, kills, sub != nil, stream != nil)
	}
	if stream != nil {
		waitStream(t, stream, "upper2's generation 2 and its close", func(evs []eventJSON) bool {
			var reopened, closed bool
			for _, e := range evs {
				reopened = reopened || e.Kind == kindConnectionOpened && e.ConnectionID == "upper2" && e.Generation == 2
				closed = closed || e.Kind == kindConnectionClosed && e.ConnectionID == "upper2" && e.Generation == 2 && e.CloseReason == "CLOSE_REASON_CLOSED_BY_API"
			}
			return reopened && closed
		})
	}
	g.d.stop(t)
}

// waitStream waits for the NDJSON events p printed to satisfy match.
func waitStream(t *testing.T, p *proc, what string, match func([]eventJSON) bool) {
	t.Helper()
	if p == nil {
		t.Fatalf("no curl -N stream before %s", what)
	}
	p.waitFor(t, what, eventTimeout, func(out string) bool { return match(jsonLines(out)) })
}
