package main_test

// End-to-end tests of tcpgate's client commands: the built binary driving a
// running daemon, asserting what a user at a terminal sees.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestCLI follows the README's CLI walkthrough with the binary: listen with
// a fixed reply, subscribe in text and JSON, send text and bytes, list
// listeners and connections, answer and close an accepted connection, other
// framings, stop with a drain, then the error paths and every command's help.
func TestCLI(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}

	out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "demo", "--reply", "Message received")
	m := regexp.MustCompile(`^listener demo listening on (127\.0\.0\.1:\d+) \(framing raw\)\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tcpgate listen printed %q, want \"listener demo listening on 127.0.0.1:PORT (framing raw)\"", out)
	}
	addr := m[1]
	if strings.HasSuffix(addr, ":0") {
		t.Fatalf("tcpgate listen 0 printed address %s, want the bound port", addr)
	}

	sub := tg.start(t, "subscribe", "--listener", "demo")
	probes := sub.sync(t, addr)
	// --since 1 replays from the first event, so it needs no sync.
	jsonSub := tg.start(t, "subscribe", "--format", "json", "--since", "1")

	t.Run("send text", func(t *testing.T) {
		stdout, stderr := tg.mustRun(t, "send", addr, "Hello, World!", "--await", "first")
		// Into a pipe the reply comes as sent, with no newline added.
		if stdout != "Message received" {
			t.Errorf("send --await first: stdout = %q, want %q", stdout, "Message received")
		}
		if want := "sent 13 bytes to 1 connection(s)"; !strings.Contains(stderr, want) {
			t.Errorf("send: stderr = %q, want it to say %q", stderr, want)
		}
		sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ data listener=demo conn=c-[a-z2-7]{10} 13 bytes "Hello, World!"$`))
	})

	t.Run("send hex", func(t *testing.T) {
		stdout, stderr := tg.mustRun(t, "send", addr, "--hex", "01020304")
		if stdout != "" {
			t.Errorf("send --hex without --await: stdout = %q, want nothing", stdout)
		}
		if want := "sent 4 bytes to 1 connection(s)"; !strings.Contains(stderr, want) {
			t.Errorf("send --hex: stderr = %q, want it to say %q", stderr, want)
		}
		// 01 02 03 04 is valid UTF-8, so it comes quoted; other bytes as hex.
		sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ data listener=demo conn=c-[a-z2-7]{10} 4 bytes (hex=01020304|"\\x01\\x02\\x03\\x04")$`))
	})

	t.Run("send timeout governs the call", func(t *testing.T) {
		// The peer answers at once but closes only after closeAfter, so
		// --await close takes that long: longer than a --call-timeout of
		// 1s, shorter than a --timeout of 3s.
		const closeAfter = 1500 * time.Millisecond
		peer := lateClosePeer(t, "pong", closeAfter)

		start := time.Now()
		stdout, stderr := tg.mustRun(t, "send", peer, "ping", "--await", "close", "--timeout", "3s", "--call-timeout", "1s")
		if elapsed := time.Since(start); elapsed < closeAfter {
			t.Errorf("send --await close returned after %v, before the peer closed at %v", elapsed, closeAfter)
		}
		if stdout != "pong" {
			t.Errorf("send --await close: stdout = %q, want %q", stdout, "pong")
		}
		if want := "sent 4 bytes to 1 connection(s)"; !strings.Contains(stderr, want) {
			t.Errorf("send: stderr = %q, want it to say %q", stderr, want)
		}

		// A --timeout shorter than the wait still ends it, whatever
		// --call-timeout allows.
		stdout, stderr, err := tg.run(t, "send", peer, "ping", "--await", "close", "--timeout", "500ms", "--call-timeout", "10s")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr, "DeadlineExceeded") {
			t.Errorf("send --await close --timeout 500ms: %v, stdout %q, stderr %q; want exit status 1 with DeadlineExceeded", err, stdout, stderr)
		}
	})

	t.Run("subscribe json", func(t *testing.T) {
		jsonSub.waitFor(t, "the DATA events of both sends", eventTimeout, func(out string) bool {
			var text, data bool
			for _, e := range jsonLines(out) {
				text = text || e.Kind == kindData && e.Text == "Hello, World!"
				data = data || e.Kind == kindData && e.payload() == "\x01\x02\x03\x04"
			}
			return text && data
		})
		if err := jsonSub.interrupt(t); err != nil {
			t.Errorf("subscribe after SIGINT: %v, want exit status 0; stderr: %s", err, jsonSub.stderr.String())
		}
		lines := strings.Split(strings.TrimSuffix(jsonSub.stdout.String(), "\n"), "\n")
		// The stream's header comes first: STREAM_STARTED.
		var started eventJSON
		decodeJSON(t, lines[0], &started)
		if started.Kind != kindStreamStarted || started.Sequence != 0 || started.Header.Incarnation == "" {
			t.Errorf("subscribe --format json: first line %s, want STREAM_STARTED with the header", lines[0])
		}
		lines = lines[1:]
		var prev uint64
		for i, line := range lines {
			var raw map[string]any
			if err := json.Unmarshal([]byte(line), &raw); err != nil {
				t.Fatalf("subscribe --format json: line %d is not JSON (%v): %s", i+1, err, line)
			}
			if _, ok := raw["kind"].(string); !ok {
				t.Errorf("subscribe --format json: line %d has no \"kind\": %s", i+1, line)
			}
			var e eventJSON
			decodeJSON(t, line, &e)
			if e.Sequence <= prev {
				t.Errorf("subscribe --format json: line %d has sequence %d after %d, want increasing", i+1, e.Sequence, prev)
			}
			prev = e.Sequence
		}
		// A fresh gateway's first event is the start of demo.
		var first eventJSON
		decodeJSON(t, lines[0], &first)
		if first.Sequence != 1 || first.Kind != "EVENT_KIND_LISTENER_STARTED" || first.ListenerID != "demo" || first.LocalAddress != addr {
			t.Errorf("subscribe --since 1: first line %s, want sequence 1, LISTENER_STARTED of demo on %s", lines[0], addr)
		}
	})

	t.Run("subscribe kinds", func(t *testing.T) {
		// --kinds takes the short names and the enum's names that
		// --format json prints, in any case.
		allData := []string{kindData}
		tests := []struct {
			name, kinds string
			want        []string
		}{
			{name: "short", kinds: "data", want: allData},
			{name: "short upper case", kinds: "DATA", want: allData},
			{name: "enum name", kinds: "EVENT_KIND_DATA", want: allData},
			{name: "enum name lower case", kinds: "event_kind_data", want: allData},
			{
				name:  "mixed",
				kinds: "Event_Kind_Listener_Started,connection_closed",
				want:  []string{"EVENT_KIND_LISTENER_STARTED", kindConnectionClosed},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				// --since 1 replays what happened so far, so it needs no sync.
				p := tg.start(t, "subscribe", "--since", "1", "--format", "json", "--kinds", tt.kinds)
				p.waitFor(t, fmt.Sprintf("events of kinds %v", tt.want), eventTimeout, func(out string) bool {
					evs := jsonLines(out)
					for _, k := range tt.want {
						if !slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == k }) {
							return false
						}
					}
					return true
				})
				if err := p.interrupt(t); err != nil {
					t.Errorf("subscribe after SIGINT: %v, want exit status 0; stderr: %s", err, p.stderr.String())
				}
				for _, e := range jsonLines(p.stdout.String()) {
					if !slices.Contains(tt.want, e.Kind) && e.Kind != kindStreamStarted {
						t.Errorf("subscribe --kinds %s printed a %s event (#%d), want only %v", tt.kinds, e.Kind, e.Sequence, tt.want)
					}
				}
			})
		}
	})

	t.Run("subscribe origin", func(t *testing.T) {
		// The connections so far are all accepted: --origin accepted
		// replays their events, each saying so, and no listener event.
		p := tg.start(t, "subscribe", "--since", "1", "--format", "json", "--origin", "accepted")
		p.waitFor(t, "a connection_opened event", eventTimeout, func(out string) bool {
			return slices.ContainsFunc(jsonLines(out), func(e eventJSON) bool { return e.Kind == "EVENT_KIND_CONNECTION_OPENED" })
		})
		if err := p.interrupt(t); err != nil {
			t.Errorf("subscribe after SIGINT: %v, want exit status 0; stderr: %s", err, p.stderr.String())
		}
		for _, e := range jsonLines(p.stdout.String()) {
			if e.Kind != kindStreamStarted && e.Origin != "ORIGIN_ACCEPTED" {
				t.Errorf("subscribe --origin accepted printed %s #%d with origin %q, want only events of accepted connections", e.Kind, e.Sequence, e.Origin)
			}
		}
	})

	t.Run("ls", func(t *testing.T) {
		// --server wins over TCPGATE_SERVER, which names no gateway here.
		ls := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + servertest.RefusedAddr(t))}
		out, _ := ls.mustRun(t, "ls", "--server", g.grpcAddr)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "ADDRESS") {
			t.Fatalf("tcpgate ls:\n%s\nwant a header and one row", out)
		}
		// ID ADDRESS STATE FRAMING OPEN TOTAL BYTES-IN BYTES-OUT FRAMES-IN
		// NODE (the gateway's --node-id, by default the host name)
		row := strings.Fields(lines[1])
		want := []string{"demo", addr, "listening", "raw"}
		if len(row) != 10 || !slices.Equal(row[:4], want) || row[9] != rpc.DefaultNodeID() {
			t.Fatalf("tcpgate ls row = %q, want it to start with %q and have 10 columns, the last node %s", row, want, rpc.DefaultNodeID())
		}
		// The sync probes and two sends; 13 + 4 bytes in two reads.
		if total := fmt.Sprint(probes + 2); row[5] != total || row[6] != "17" || row[8] != "2" {
			t.Errorf("tcpgate ls row = %q, want TOTAL %s, BYTES IN 17, FRAMES IN 2", row, total)
		}
	})

	t.Run("answer and close a connection", func(t *testing.T) {
		conn, local := dialLocal(t, addr)
		id := sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened listener=demo conn=(c-[a-z2-7]{10}) remote=`+regexp.QuoteMeta(local)+`$`))[1]

		out, _ := tg.mustRun(t, "conns", "demo")
		var row []string
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) > 0 && f[0] == id {
				row = f
			}
		}
		// ID LISTENER STATE REMOTE OPENED(date time) BYTES-IN BYTES-OUT
		// ORIGIN GEN NODE LAST-ERROR
		if len(row) != 12 || row[1] != "demo" || row[2] != "open" || row[3] != local || row[8] != "accepted" || row[9] != "-" ||
			row[10] != rpc.DefaultNodeID() || row[11] != "-" {
			t.Fatalf("tcpgate conns demo:\n%s\nwant a row for %s of demo from %s", out, id, local)
		}

		stdout, stderr := tg.mustRun(t, "send", "--to-conn", id, "hi")
		if stdout != "" || !strings.Contains(stderr, "sent 2 bytes to 1 connection(s)") {
			t.Errorf("send --to-conn %s: stdout %q, stderr %q; want nothing and \"sent 2 bytes to 1 connection(s)\"", id, stdout, stderr)
		}
		if got := readN(t, conn, 2); got != "hi" {
			t.Errorf("the client read %q, want %q", got, "hi")
		}

		stdout, _ = tg.mustRun(t, "close", id)
		if want := fmt.Sprintf("connection %s closed (%s)\n", id, local); stdout != want {
			t.Errorf("tcpgate close: stdout = %q, want %q", stdout, want)
		}
		expectClosed(t, conn)
		sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_closed listener=demo conn=`+id+` remote=\S+ reason=closed_by_api$`))
	})

	t.Run("answer a client that shut down writing", func(t *testing.T) {
		out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "hc", "--framing", "line",
			"--half-close", "30s", "--idle", "1m", "--max-conns", "4")
		m := regexp.MustCompile(`^listener hc listening on (127\.0\.0\.1:\d+) \(framing line\)\n$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("tcpgate listen --half-close printed %q", out)
		}
		hsub := tg.start(t, "subscribe", "--listener", "hc")
		hsub.sync(t, m[1])
		conn, local := dialLocal(t, m[1])
		id := hsub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened listener=hc conn=(c-[a-z2-7]{10}) remote=`+regexp.QuoteMeta(local)+`$`))[1]
		if _, err := conn.Write([]byte("GET status")); err != nil {
			t.Fatal(err)
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		hsub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ data listener=hc conn=`+id+` 10 bytes "GET status"$`))
		tg.mustRun(t, "send", "--to-conn", id, "200 OK")
		if got := readN(t, conn, 6); got != "200 OK" {
			t.Errorf("the half-closed client read %q, want %q", got, "200 OK")
		}
		tg.mustRun(t, "close", id)
		expectClosed(t, conn)
		tg.mustRun(t, "stop", "hc")
	})

	t.Run("framings", func(t *testing.T) {
		tests := []struct {
			name, framing string
			send, want    string
		}{
			{name: "line", framing: "line", send: "a\n", want: "a\n"},
			// A little-endian 2-byte length: a big-endian reader would
			// wait for 768 bytes and echo nothing.
			{name: "len2le", framing: "len:2le", send: "\x03\x00abc", want: "\x03\x00abc"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", tt.name, "--framing", tt.framing, "--echo")
				m := regexp.MustCompile(`^listener ` + tt.name + ` listening on (127\.0\.0\.1:\d+) \(framing ` + regexp.QuoteMeta(tt.framing) + `\)\n$`).FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("tcpgate listen --framing %s printed %q", tt.framing, out)
				}
				conn, _ := dialLocal(t, m[1])
				if _, err := conn.Write([]byte(tt.send)); err != nil {
					t.Fatal(err)
				}
				if got := readN(t, conn, len(tt.want)); got != tt.want {
					t.Errorf("echo of %q = %q, want %q", tt.send, got, tt.want)
				}
			})
		}
	})

	t.Run("stop with drain", func(t *testing.T) {
		held, local := dialLocal(t, addr)
		sub.waitMatch(t, regexp.MustCompile(`(?m) connection_opened listener=demo conn=c-[a-z2-7]{10} remote=`+regexp.QuoteMeta(local)+`$`))

		const drain = time.Second
		start := time.Now()
		out, _ := tg.mustRun(t, "stop", "demo", "--drain", drain.String())
		elapsed := time.Since(start)
		if !regexp.MustCompile(`^listener demo stopped: \d+ connections, 17 bytes in, \d+ bytes out\n$`).MatchString(out) {
			t.Errorf("tcpgate stop printed %q, want \"listener demo stopped: N connections, 17 bytes in, M bytes out\"", out)
		}
		// The held connection stays open, so the drain runs to its end.
		if elapsed < drain {
			t.Errorf("tcpgate stop --drain %v returned after %v with a connection open, want at least the drain", drain, elapsed)
		}
		expectClosed(t, held)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s still bound after tcpgate stop: %v", addr, err)
		} else {
			ln.Close()
		}
		sub.waitMatch(t, regexp.MustCompile(`(?m)connection_closed listener=demo conn=c-[a-z2-7]{10} remote=`+regexp.QuoteMeta(local)+` reason=listener_stopped$`))
		sub.waitMatch(t, regexp.MustCompile(`(?m) listener_stopped listener=demo address=`+regexp.QuoteMeta(addr)+`$`))
	})

	if err := sub.interrupt(t); err != nil {
		t.Errorf("subscribe after SIGINT: %v, want exit status 0; stderr: %s", err, sub.stderr.String())
	}

	t.Run("errors", func(t *testing.T) {
		closed := servertest.RefusedAddr(t)
		tests := []struct {
			name string
			env  []string
			args []string
			want []string
		}{
			{name: "unknown listener", args: []string{"stop", "nope"}, want: []string{"NotFound", `"nope"`}},
			{name: "connection refused", args: []string{"send", closed, "x"}, want: []string{"Unavailable", closed}},
			{name: "port out of range", args: []string{"listen", "70000", "--host", "127.0.0.1"}, want: []string{"InvalidArgument", "port", "70000"}},
			{name: "bad framing", args: []string{"listen", "0", "--framing", "len:x"}, want: []string{"--framing", "len:4"}},
			{name: "echo and reply", args: []string{"listen", "0", "--echo", "--reply", "x"}, want: []string{"--echo and --reply"}},
			{name: "no payload", args: []string{"send", addr}, want: []string{"exactly one of TEXT, --hex, --file or --stdin"}},
			{name: "unknown connection", args: []string{"close", "c999999"}, want: []string{"NotFound", "c999999"}},
			{name: "unknown kind", args: []string{"subscribe", "--kinds", "event_kind_nope"}, want: []string{"--kinds", `"event_kind_nope"`, "EVENT_KIND_DATA"}},
			{name: "unknown origin", args: []string{"subscribe", "--origin", "inbound"}, want: []string{"--origin", `"inbound"`, "accepted or outbound"}},
			{
				name: "no daemon at --server",
				env:  hermeticEnv(),
				args: []string{"ls", "--server", closed},
				want: []string{"no gateway at " + closed, "tcpgate serve", "TCPGATE_SERVER"},
			},
			{
				name: "no daemon at TCPGATE_SERVER",
				env:  hermeticEnv("TCPGATE_SERVER=" + closed),
				args: []string{"conns"},
				want: []string{"no gateway at " + closed},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r := tg
				if tt.env != nil {
					r = cliRunner{env: tt.env}
				}
				stdout, stderr, err := r.run(t, tt.args...)
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Fatalf("tcpgate %s: %v, want exit status 1; stdout %q, stderr %q", strings.Join(tt.args, " "), err, stdout, stderr)
				}
				if stdout != "" {
					t.Errorf("tcpgate %s: stdout = %q, want nothing", strings.Join(tt.args, " "), stdout)
				}
				if !strings.HasPrefix(stderr, "tcpgate: ") {
					t.Errorf("tcpgate %s: stderr = %q, want it to start with \"tcpgate: \"", strings.Join(tt.args, " "), stderr)
				}
				for _, w := range tt.want {
					if !strings.Contains(stderr, w) {
						t.Errorf("tcpgate %s: stderr = %q, want it to mention %q", strings.Join(tt.args, " "), stderr, w)
					}
				}
			})
		}
	})

	t.Run("help", func(t *testing.T) {
		// Every command that help lists, cobra's own help and completion
		// included, and the commands under those, shows examples of itself.
		seen := map[string]bool{}
		queue := []string{""}
		for len(queue) > 0 {
			path := queue[0]
			queue = queue[1:]
			seen[path] = true
			name := strings.TrimSpace("tcpgate " + path)
			t.Run(name, func(t *testing.T) {
				out, _ := cliRunner{env: hermeticEnv()}.mustRun(t, append(strings.Fields(path), "--help")...)
				if examples := helpSection(out, "Examples:"); !strings.Contains(examples, name) {
					t.Errorf("%s --help has no examples of %s:\n%s", name, name, out)
				}
				for _, line := range strings.Split(helpSection(out, "Available Commands:"), "\n") {
					if f := strings.Fields(line); len(f) > 0 {
						queue = append(queue, strings.TrimSpace(path+" "+f[0]))
					}
				}
			})
		}
		for _, want := range []string{"listen", "stop", "connect", "ls", "conns", "close", "send", "subscribe", "serve",
			"help", "completion", "completion bash", "completion zsh", "completion fish", "completion powershell"} {
			if !seen[want] {
				t.Errorf("tcpgate %s: not listed by any --help, want it checked", want)
			}
		}
	})

	g.d.stop(t)
}

// gateway is a `tcpgate serve` on ports picked by the kernel.
type gateway struct {
	d        *daemon
	grpcAddr string
	httpAddr string
}

// httpAddrLine reads the REST address from the daemon's "gateway serving" line.
var httpAddrLine = regexp.MustCompile(`msg="gateway serving" .*\bhttp_addr=("[^"]*"|\S+)`)

// startGateway starts a daemon serving gRPC and REST on 127.0.0.1 port 0.
func startGateway(t *testing.T) gateway {
	t.Helper()
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	g := gateway{d: d, grpcAddr: d.waitServing(t)}
	// The serving line is in stderr before its address is handed over.
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("tcpgate logged no http_addr:\n%s", d.stderr.String())
	}
	g.httpAddr = strings.Trim(m[1], `"`)
	return g
}

// helpSection returns the lines of a --help output after the line header,
// up to the next blank line.
func helpSection(out, header string) string {
	_, section, ok := strings.Cut(out, "\n"+header+"\n")
	if !ok {
		return ""
	}
	section, _, _ = strings.Cut(section, "\n\n")
	return section
}

// lateClosePeer listens on 127.0.0.1:0 and answers the first read of every
// connection with reply at once, then closes it after delay. It returns
// its address; cleanup stops it and waits for its goroutines.
func lateClosePeer(t *testing.T, reply string, delay time.Duration) string {
	t.Helper()
	done := make(chan struct{})
	addr := servertest.Peer(t, func(c net.Conn) {
		if _, err := c.Read(make([]byte, 64)); err != nil {
			return
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return
		}
		select {
		case <-time.After(delay):
		case <-done:
		}
	})
	// Registered after the peer's, so it runs first: the peer's cleanup
	// waits for the handlers this releases.
	t.Cleanup(func() { close(done) })
	return addr
}

// raceEnv keeps a -race build from sleeping a second at exit, as startDaemon does.
func raceEnv(env []string) []string {
	if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GORACE=") }) {
		return env
	}
	return append(slices.Clip(env), "GORACE=atexit_sleep_ms=0")
}

// cliRunner runs the tcpgate binary with an environment.
type cliRunner struct{ env []string }

// run runs tcpgate with args to its end, within callTimeout.
func (r cliRunner) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tcpgateBin, args...)
	cmd.Env = raceEnv(r.env)
	cmd.WaitDelay = waitDelay
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tcpgate %s: still running after %v", strings.Join(args, " "), callTimeout)
	}
	return out.String(), errOut.String(), err
}

// mustRun runs tcpgate with args and fails the test unless it exits 0.
func (r cliRunner) mustRun(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := r.run(t, args...)
	if err != nil {
		t.Fatalf("tcpgate %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout, stderr
}

// start runs tcpgate with args in the background.
func (r cliRunner) start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProc(t, "tcpgate "+strings.Join(args, " "), raceEnv(r.env), "", tcpgateBin, args...)
}

// outputBuffer collects a process's output and wakes whoever waits for it
// to grow.
type outputBuffer struct {
	mu      sync.Mutex // guards b and changed
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (o *outputBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.changed != nil {
		close(o.changed)
	}
	o.changed = make(chan struct{})
	return o.b.Write(p)
}

// snapshot returns the output so far and a channel closed when it grows.
func (o *outputBuffer) snapshot() (string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.changed == nil {
		o.changed = make(chan struct{})
	}
	return o.b.String(), o.changed
}

func (o *outputBuffer) String() string {
	s, _ := o.snapshot()
	return s
}

// proc is a process running in the background in a process group of its
// own, so that a shell and what it started end together.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout outputBuffer
	stderr servertest.LogSink
	done   chan struct{} // closed once the process has exited and err is set
	err    error         // Wait's result
}

// startProc starts argv in dir (empty: the test's) with env. Cleanup kills
// its process group if it is still running, and logs its output when the
// test failed.
func startProc(t *testing.T, name string, env []string, dir, argv0 string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.CommandContext(ctx, argv0, args...)
	p.cmd.Env, p.cmd.Dir = env, dir
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Cancel = func() error { return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) }
	p.cmd.WaitDelay = waitDelay
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		if t.Failed() {
			t.Logf("%s: %v\nstdout:\n%s\nstderr:\n%s", name, p.err, p.stdout.String(), p.stderr.String())
		}
	})
	return p
}

// next waits up to timeout for the output to satisfy match, and returns the
// output then.
func (p *proc) next(t *testing.T, timeout time.Duration, match func(string) bool) (string, bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		out, changed := p.stdout.snapshot()
		if match(out) {
			return out, true
		}
		select {
		case <-changed:
		case <-p.done:
			// Wait has copied all the output.
			if out := p.stdout.String(); match(out) {
				return out, true
			}
			t.Fatalf("%s exited (%v) before the expected output:\nstdout:\n%s\nstderr:\n%s", p.name, p.err, p.stdout.String(), p.stderr.String())
		case <-deadline.C:
			return out, false
		}
	}
}

// waitFor is next that fails the test when the output does not come.
func (p *proc) waitFor(t *testing.T, what string, timeout time.Duration, match func(string) bool) string {
	t.Helper()
	out, ok := p.next(t, timeout, match)
	if !ok {
		t.Fatalf("%s: no %s within %v; output so far:\n%s", p.name, what, timeout, out)
	}
	return out
}

// waitMatch waits up to eventTimeout for re to match the output and
// returns the submatches.
func (p *proc) waitMatch(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	out := p.waitFor(t, "match of "+re.String(), eventTimeout, re.MatchString)
	return re.FindStringSubmatch(out)
}

// sync returns once the event stream printed by p is live: a TCP
// connection made to listenerAddr now shows up in it (its address printed
// in any format). Events from before a subscription is live are not sent,
// so it dials until one shows. It returns how many connections it made.
func (p *proc) sync(t *testing.T, listenerAddr string) int {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for n := 1; time.Now().Before(deadline); n++ {
		c, err := net.DialTimeout("tcp", listenerAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("sync probe: %v", err)
		}
		local := c.LocalAddr().String()
		c.Close()
		re := regexp.MustCompile(regexp.QuoteMeta(local) + `\b`)
		if _, ok := p.next(t, syncPoll, re.MatchString); ok {
			return n
		}
	}
	t.Fatalf("%s showed none of the probe connections to %s within %v:\n%s", p.name, listenerAddr, eventTimeout, p.stdout.String())
	return 0
}

// interrupt sends SIGINT, as Ctrl-C does, and returns Wait's result.
func (p *proc) interrupt(t *testing.T) error {
	t.Helper()
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatalf("interrupting %s: %v", p.name, err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(exitTimeout):
		t.Fatalf("%s still running %v after SIGINT", p.name, exitTimeout)
		return nil
	}
}

// jsonLines decodes the complete lines of out as protojson events, skipping
// a line still being written.
func jsonLines(out string) []eventJSON {
	var evs []eventJSON
	for line := range strings.Lines(out) {
		var e eventJSON
		if strings.HasSuffix(line, "\n") && json.Unmarshal([]byte(line), &e) == nil {
			evs = append(evs, e)
		}
	}
	return evs
}

// freePort returns a port of 127.0.0.1 that was free a moment ago, for the
// README's fixed ports.
func freePort(t *testing.T) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(servertest.RefusedAddr(t))
	return port
}

// dialLocal connects to addr and returns the connection and its local
// address, as the gateway sees the remote. Cleanup closes it.
func dialLocal(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.LocalAddr().String()
}

// readN reads exactly n bytes from c within eventTimeout.
func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(eventTimeout))
	b := make([]byte, n)
	if got, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes from the gateway: got %q, %v", n, b[:got], err)
	}
	return string(b)
}

// readUntil reads from c until what it read contains want, within eventTimeout.
func readUntil(t *testing.T, c net.Conn, want string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(eventTimeout))
	var got []byte
	buf := make([]byte, 1024)
	for !bytes.Contains(got, []byte(want)) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("reading from the gateway: got %q, %v; want %q", got, err, want)
		}
	}
	return string(got)
}

// expectClosed checks that the gateway closed c: a read ends within
// eventTimeout with EOF or a reset, not data or a timeout.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(eventTimeout))
	n, err := c.Read(make([]byte, 64))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read from the closed connection = %d bytes, %v; want EOF", n, err)
	}
}
