package main_test

// End-to-end tests of outbound connections from a user's side: the built
// binary's `tcpgate connect`, `conns`, `send --to-conn`, `close` and
// `subscribe`, real curl on POST /v1/connections and real grpcurl on
// Connect, all against servertest's line server, killed and started
// again on its port.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// upperLines answers a line in upper case.
func upperLines(line string) string { return strings.ToUpper(line) }

// said returns what each connection a line server accepted has said so
// far, its lines each with its newline, in acceptance order.
func said(s *servertest.LineServer) []string {
	out := make([]string, s.Accepted())
	for i := range out {
		for _, l := range s.Lines(i) {
			out[i] += l + "\n"
		}
	}
	return out
}

// saidStartingWith returns what the connections that began with prefix said.
func saidStartingWith(s *servertest.LineServer, prefix string) []string {
	var out []string
	for _, got := range said(s) {
		if strings.HasPrefix(got, prefix) {
			out = append(out, got)
		}
	}
	return out
}

// connsRow returns the fields of the row of id in a `tcpgate conns`
// table, or nil.
func connsRow(out, id string) []string {
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == id {
			return f
		}
	}
	return nil
}

// backoffLine matches a reconnect_scheduled line of subscribe's text
// output.
var backoffLine = regexp.MustCompile(`(?m)^#\d+ \S+ reconnect_scheduled conn=(\S+) gen=(\d+) attempt=(\d+) delay=(\S+)(?: error="(.*)")?$`)

// TestConnectCLI keeps two connections to a line server with the CLI, kills
// the server and starts it again: connect prints the connection open, the
// on-connect text (framed, with --expect) and bytes (--on-connect-hex)
// are written first on every generation, heartbeats flow, a send --await
// line answers before and after, a send queued while down (--queue) is
// written after the reconnect's on-connect, a send to a connection
// without a queue fails with a hint, the stream shows the drop, the
// backoff within --backoff's bounds and the new generation, conns shows
// the states, and close stops the reconnects.
func TestConnectCLI(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	srv := servertest.NewLineServer(t, upperLines)

	// A listener only to know when the stream is live.
	out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "probe")
	laddr := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(out)[1]
	sub := tg.start(t, "subscribe")
	sub.sync(t, laddr)

	out, _ = tg.mustRun(t, "connect", srv.Addr(), "--id", "feed", "--framing", "line", "--on-connect", "login demo", "--framed",
		"--expect", "LOGIN", "--backoff", "50ms:400ms", "--queue", "1KiB")
	if want := "connection feed open to " + srv.Addr() + " (generation 1)\n"; out != want {
		t.Fatalf("tcpgate connect printed %q, want %q", out, want)
	}
	sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened conn=feed gen=1 remote=`+regexp.QuoteMeta(srv.Addr())+`$`))
	out, _ = tg.mustRun(t, "connect", srv.Addr(), "--id", "bare", "--framing", "line", "--on-connect-hex", "6869",
		"--heartbeat", "150ms:ping", "--framed", "--backoff", "50ms:400ms")
	if want := "connection bare open to " + srv.Addr() + " (generation 1)\n"; out != want {
		t.Fatalf("tcpgate connect --on-connect-hex printed %q, want %q", out, want)
	}

	stdout, stderr := tg.mustRun(t, "send", "--to-conn", "feed", "hello", "--framed", "--await", "line")
	if stdout != "HELLO" || !strings.Contains(stderr, "sent 6 bytes to 1 connection(s)") {
		t.Errorf("send --to-conn feed --await line: stdout %q, stderr %q; want HELLO, 6 bytes sent", stdout, stderr)
	}
	// The heartbeat goes after 150ms without a write; the gateway reads
	// its answer and the one to on-connect as data.
	servertest.Eventually(t, "two heartbeats of bare", func() bool {
		b := saidStartingWith(srv, "hi\n")
		return len(b) == 1 && strings.Count(b[0], "ping\n") >= 2
	})
	sub.waitMatch(t, regexp.MustCompile(`(?m) data conn=bare gen=1 4 bytes "PING"$`))

	out = tg.mustRunOut(t, "conns", "--origin", "outbound")
	// ID LISTENER STATE REMOTE OPENED(date time) BYTES-IN BYTES-OUT ORIGIN GEN NODE LAST-ERROR
	if row := connsRow(out, "feed"); len(row) != 12 || row[1] != "-" || row[2] != "open" || row[3] != srv.Addr() || row[8] != "outbound" || row[9] != "1" {
		t.Errorf("tcpgate conns --origin outbound:\n%s\nwant feed open to %s, outbound, generation 1", out, srv.Addr())
	}
	if accepted := connsRow(tg.mustRunOut(t, "conns", "--origin", "accepted"), "feed"); accepted != nil {
		t.Errorf("tcpgate conns --origin accepted lists feed: %v", accepted)
	}

	srv.Kill()
	sub.waitMatch(t, regexp.MustCompile(`(?m) connection_closed conn=feed gen=1 remote=\S+ reason=\S+`))
	// Every dial is refused now: attempts 1, 2, 3 at least, each delay
	// within half to all of min(50ms * 2^(n-1), 400ms).
	down := sub.waitFor(t, "three reconnects of feed scheduled", eventTimeout, func(out string) bool {
		for _, m := range backoffLine.FindAllStringSubmatch(out, -1) {
			if m[1] == "feed" && m[3] == "3" {
				return true
			}
		}
		return false
	})
	for _, m := range backoffLine.FindAllStringSubmatch(down, -1) {
		if m[1] != "feed" {
			continue
		}
		n, _ := strconv.Atoi(m[3])
		delay, err := time.ParseDuration(m[4])
		ceiling := min(50*time.Millisecond<<(n-1), 400*time.Millisecond)
		if err != nil || delay < ceiling/2-time.Millisecond || delay > ceiling+time.Millisecond {
			t.Errorf("reconnect_scheduled attempt %d: delay %s, want %v to %v: %s", n, m[4], ceiling/2, ceiling, m[0])
		}
		if m[2] != "1" {
			t.Errorf("reconnect_scheduled while down: generation %s, want 1 (the last socket's): %s", m[2], m[0])
		}
		if n >= 2 && !strings.Contains(m[5], "refused") {
			t.Errorf("reconnect_scheduled attempt %d: error %q, want the refused dial", n, m[5])
		}
	}

	var row []string
	servertest.Eventually(t, "conns --state waiting to show feed with its last error", func() bool {
		row = connsRow(tg.mustRunOut(t, "conns", "--state", "waiting"), "feed")
		return len(row) > 10 && row[2] == "waiting" && row[8] == "outbound" && strings.Contains(strings.Join(row[10:], " "), "refused")
	})
	if !strings.Contains(strings.Join(row[10:], " "), srv.Addr()) {
		t.Errorf("tcpgate conns: feed's last error %q, want the refused dial of %s", strings.Join(row[10:], " "), srv.Addr())
	}
	out = tg.mustRunOut(t, "conn", "feed")
	for _, want := range []string{"origin:", "outbound", "address:", srv.Addr(), "generation:", "failed attempts:", "last error:", "refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("tcpgate conn feed while down:\n%s\nwant it to show %q", out, want)
		}
	}

	// No queue: a send fails at once, saying what to do.
	_, stderr, err := tg.run(t, "send", "--to-conn", "bare", "x", "--framed")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr, "Unavailable") || !strings.Contains(stderr, "--queue") {
		t.Errorf("send to bare while down: %v, stderr %q; want exit status 1, Unavailable and a hint naming --queue", err, stderr)
	}
	// With a queue: the send waits for the reconnect.
	queued := tg.start(t, "send", "--to-conn", "feed", "queued", "--framed", "--await", "line")
	// Held while down ("queued\n"), rather than sent after the restart.
	servertest.Eventually(t, "the send to be held while down", func() bool {
		return metric(t, g.httpAddr, "tcpgate_outbound_queued_bytes") == 7
	})

	srv.Start()
	sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened conn=feed gen=2 remote=`+regexp.QuoteMeta(srv.Addr())+`$`))
	sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened conn=bare gen=2 `))
	select {
	case <-queued.done:
	case <-time.After(eventTimeout):
		t.Fatalf("the send queued while down did not return %v after the reconnect", eventTimeout)
	}
	if queued.err != nil || queued.stdout.String() != "QUEUED" {
		t.Errorf("send queued while down: %v, stdout %q, stderr %q; want QUEUED", queued.err, queued.stdout.String(), queued.stderr.String())
	}
	stdout, _ = tg.mustRun(t, "send", "--to-conn", "feed", "again", "--framed", "--await", "line")
	if stdout != "AGAIN" {
		t.Errorf("send --await line after the reconnect: stdout %q, want AGAIN", stdout)
	}

	// On every generation on-connect came first, then the queued send.
	feeds := saidStartingWith(srv, "login demo\n")
	if len(feeds) != 2 {
		t.Fatalf("the server saw %d connections of feed, want 2 (one per generation): %q", len(feeds), said(srv))
	}
	if feeds[0] != "login demo\nhello\n" || feeds[1] != "login demo\nqueued\nagain\n" {
		t.Errorf("feed's generations wrote %q, want on-connect first on each, the queued send after the second's", feeds)
	}
	if bare := saidStartingWith(srv, "hi\n"); len(bare) != 2 {
		t.Errorf("the server saw %d connections starting with bare's on-connect bytes, want 2: %q", len(bare), said(srv))
	}
	for _, got := range said(srv) {
		if !strings.HasPrefix(got, "login demo\n") && !strings.HasPrefix(got, "hi\n") {
			t.Errorf("a connection to the server began %q, not with its on-connect", got)
		}
	}
	out = tg.mustRunOut(t, "conn", "feed")
	for _, want := range []string{"state:", "open", "generation:", "2"} {
		if !strings.Contains(out, want) {
			t.Errorf("tcpgate conn feed after the reconnect:\n%s\nwant it to show %q", out, want)
		}
	}

	// By name: connect prints the address as given and the peer it
	// resolved to; conns shows the address as given.
	_, port, _ := net.SplitHostPort(srv.Addr())
	out = tg.mustRunOut(t, "connect", "localhost:"+port, "--id", "named", "--no-reconnect")
	if !regexp.MustCompile(`^connection named open to localhost:` + port + ` at (127\.0\.0\.1|\[::1\]):` + port + ` \(generation 1\)\n$`).MatchString(out) {
		t.Errorf("tcpgate connect localhost:%s printed %q, want it open to localhost:%s at the address it resolved to", port, out, port)
	}
	if row := connsRow(tg.mustRunOut(t, "conns"), "named"); len(row) < 4 || row[3] != "localhost:"+port {
		t.Errorf("tcpgate conns: the row of named is %q, want REMOTE localhost:%s, the address it dials", row, port)
	}
	tg.mustRun(t, "close", "named")

	stdout, _ = tg.mustRun(t, "close", "feed")
	if want := "connection feed to " + srv.Addr() + " closed (after 2 generations): no more reconnects\n"; stdout != want {
		t.Errorf("tcpgate close feed: %q, want %q", stdout, want)
	}
	tg.mustRun(t, "close", "bare")
	sub.waitMatch(t, regexp.MustCompile(`(?m) connection_closed conn=feed gen=2 remote=\S+ reason=closed_by_api$`))
	// Many backoff periods later, nothing dialed again.
	dialed := len(said(srv))
	time.Sleep(time.Second)
	if now := len(said(srv)); now != dialed {
		t.Errorf("the server accepted %d connections after close, want none", now-dialed)
	}
	if rows := strings.Count(tg.mustRunOut(t, "conns", "--origin", "outbound"), "\n") - 1; rows != 0 {
		t.Errorf("tcpgate conns --origin outbound after close lists %d connections, want none", rows)
	}
	if err := sub.interrupt(t); err != nil {
		t.Errorf("subscribe after SIGINT: %v", err)
	}
	g.d.stop(t)
}

// TestConnectCLIErrors: --no-reconnect to a closed port fails with exit
// status 1, the gateway's reason and a hint, and keeps nothing; a
// --no-reconnect connection that drops is closed for good; bad flags fail
// naming the flag, before or at the gateway.
func TestConnectCLIErrors(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	closed := servertest.RefusedAddr(t)

	t.Run("no reconnect to a closed port", func(t *testing.T) {
		stdout, stderr, err := tg.run(t, "connect", closed, "--id", "nr", "--no-reconnect")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || stdout != "" {
			t.Fatalf("tcpgate connect --no-reconnect %s: %v, stdout %q, stderr %q; want exit status 1 and nothing on stdout", closed, err, stdout, stderr)
		}
		for _, want := range []string{"tcpgate: Unavailable: ", closed, "without --no-reconnect"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("tcpgate connect --no-reconnect: stderr %q, want it to say %q", stderr, want)
			}
		}
		if _, stderr, err := tg.run(t, "conn", "nr"); err == nil || !strings.Contains(stderr, "NotFound") {
			t.Errorf("tcpgate conn nr after the failed connect: %v, %q; want NotFound: nothing kept", err, stderr)
		}
	})

	t.Run("waiting, and closed before it connected", func(t *testing.T) {
		out := tg.mustRunOut(t, "connect", closed, "--id", "w", "--backoff", "50ms:100ms")
		if !regexp.MustCompile(`^connection w waiting to reconnect to ` + regexp.QuoteMeta(closed) + ` in \d+ms \(1 failed attempt\): .*refused\n$`).MatchString(out) {
			t.Errorf("tcpgate connect to a closed port printed %q, want it waiting to reconnect after 1 failed attempt, refused", out)
		}
		_, stderr, err := tg.run(t, "connect", closed, "--id", "w")
		if err == nil || !strings.Contains(stderr, "AlreadyExists") || !strings.Contains(stderr, "--id") || !strings.Contains(stderr, "tcpgate close w") {
			t.Errorf("tcpgate connect with an id in use: %v, stderr %q; want AlreadyExists and a hint naming --id and tcpgate close w", err, stderr)
		}
		if want := "connection w to " + closed + " closed (it never connected): no more reconnects\n"; tg.mustRunOut(t, "close", "w") != want {
			t.Errorf("tcpgate close w: want %q", want)
		}
	})

	t.Run("a send larger than the queue", func(t *testing.T) {
		tg.mustRun(t, "connect", closed, "--id", "small", "--queue", "3")
		_, stderr, err := tg.run(t, "send", "--to-conn", "small", "hello")
		if err == nil || !strings.Contains(stderr, "ResourceExhausted") || !strings.Contains(stderr, "larger --queue") {
			t.Errorf("send of 5 bytes to a connection down with --queue 3: %v, stderr %q; want ResourceExhausted and a hint of a larger --queue", err, stderr)
		}
		tg.mustRun(t, "close", "small")
	})

	t.Run("no reconnect, on-connect unanswered", func(t *testing.T) {
		srv := servertest.NewLineServer(t, upperLines)
		_, stderr, err := tg.run(t, "connect", srv.Addr(), "--id", "login", "--no-reconnect", "--framing", "line",
			"--on-connect", "login", "--framed", "--expect", "WELCOME", "--expect-timeout", "300ms")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr, "Unavailable") || !strings.Contains(stderr, "--expect") {
			t.Errorf("connect --no-reconnect whose --expect never comes: %v, stderr %q; want exit status 1, Unavailable and a hint naming --expect", err, stderr)
		}
		if got := said(srv); len(got) != 1 || got[0] != "login\n" {
			t.Errorf("the server saw %q, want one connection that logged in", got)
		}
		if _, stderr, err := tg.run(t, "conn", "login"); err == nil || !strings.Contains(stderr, "NotFound") {
			t.Errorf("tcpgate conn login after the failed connect: %v, %q; want NotFound: nothing kept", err, stderr)
		}
	})

	t.Run("no reconnect after a drop", func(t *testing.T) {
		srv := servertest.NewLineServer(t, upperLines)
		tg.mustRun(t, "connect", srv.Addr(), "--id", "once", "--no-reconnect")
		servertest.Eventually(t, "the server to accept once", func() bool { return len(said(srv)) == 1 })
		srv.Kill()
		servertest.Eventually(t, "once to be gone from conns", func() bool {
			return connsRow(tg.mustRunOut(t, "conns"), "once") == nil
		})
		srv.Start()
		time.Sleep(500 * time.Millisecond) // longer than the default first backoff
		if n := len(said(srv)); n != 1 {
			t.Errorf("the server accepted %d connections, want 1: --no-reconnect dialed again", n)
		}
	})

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no address", []string{"connect"}, []string{"missing HOST:PORT"}},
		{"queue size", []string{"connect", closed, "--queue", "1XB"}, []string{`--queue "1XB"`, "64KiB"}},
		{"backoff", []string{"connect", closed, "--backoff", "soon"}, []string{`--backoff "soon"`, "100ms:30s"}},
		{"backoff max", []string{"connect", closed, "--backoff", "1s:later"}, []string{`--backoff "1s:later"`, "the longest delay"}},
		{"heartbeat without text", []string{"connect", closed, "--heartbeat", "10s"}, []string{`--heartbeat "10s"`, "INTERVAL:TEXT"}},
		{"heartbeat interval", []string{"connect", closed, "--heartbeat", "often:PING"}, []string{`--heartbeat "often:PING"`, "interval"}},
		{"no reconnect with backoff", []string{"connect", closed, "--no-reconnect", "--backoff", "1s"}, []string{"--no-reconnect excludes --backoff"}},
		{"two on-connects", []string{"connect", closed, "--on-connect", "a", "--on-connect-hex", "00"}, []string{"--on-connect and --on-connect-hex"}},
		{"on-connect hex", []string{"connect", closed, "--on-connect-hex", "zz"}, []string{"--on-connect-hex"}},
		{"expect alone", []string{"connect", closed, "--expect", "OK"}, []string{"--expect", "--on-connect"}},
		{"expect timeout alone", []string{"connect", closed, "--on-connect", "a", "--expect-timeout", "1s"}, []string{"--expect-timeout needs --expect"}},
		{"heartbeat expect alone", []string{"connect", closed, "--heartbeat-expect", "PONG"}, []string{"--heartbeat-expect needs --heartbeat"}},
		{"framed alone", []string{"connect", closed, "--framed"}, []string{"--framed", "--on-connect"}},
		{"framing", []string{"connect", closed, "--framing", "len:x"}, []string{"--framing", "len:4"}},
		{"timeout", []string{"connect", closed, "--timeout", "soon"}, []string{`"--timeout"`}},
		{"client certificate without key", []string{"connect", closed, "--target-cert", "c.pem"}, []string{"--target-cert and --target-key"}},
		// Bounds the gateway owns: its error names the request's field.
		{"backoff below the floor", []string{"connect", closed, "--backoff", "1ms"}, []string{"InvalidArgument", "reconnect.initial_backoff", "set by --backoff"}},
		{"heartbeat too often", []string{"connect", closed, "--heartbeat", "1ms:PING"}, []string{"InvalidArgument", "heartbeat.interval", "set by --heartbeat"}},
		{"bad address", []string{"connect", "nowhere"}, []string{"InvalidArgument", "address", "set by HOST:PORT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := tg.run(t, tt.args...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || stdout != "" || !strings.HasPrefix(stderr, "tcpgate: ") {
				t.Fatalf("tcpgate %s: %v, stdout %q, stderr %q; want exit status 1, \"tcpgate: \" and the error", strings.Join(tt.args, " "), err, stdout, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("tcpgate %s: stderr %q, want it to mention %q", strings.Join(tt.args, " "), stderr, w)
				}
			}
			if strings.Contains(stderr, "rpc error:") {
				t.Errorf("tcpgate %s: stderr %q, want the gateway's message without gRPC's rendering", strings.Join(tt.args, " "), stderr)
			}
		})
	}
	if rows := strings.Count(tg.mustRunOut(t, "conns", "--origin", "outbound"), "\n") - 1; rows != 0 {
		t.Errorf("after the failed connects, conns --origin outbound lists %d connections, want none", rows)
	}
	g.d.stop(t)
}

// TestConnectREST opens an outbound connection with curl (POST
// /v1/connections with a JSON body), sends on it, watches the reconnect
// in GET /v1/events, closes it (DELETE), and checks the error JSON of bad
// bodies; then the same Connect with grpcurl through reflection.
func TestConnectREST(t *testing.T) {
	t.Parallel()
	g, h := startRESTGateway(t)
	srv := servertest.NewLineServer(t, upperLines)

	events := h.events(t, "curl -N /v1/events", "/v1/events?origins=ORIGIN_OUTBOUND")
	events.waitEvents(t, "the stream's start", func(evs []eventJSON) bool { return len(evs) > 0 })

	var resp struct {
		Connection struct {
			ConnectionID string `json:"connectionId"`
			Address      string `json:"address"`
			State        string `json:"state"`
			Origin       string `json:"origin"`
			Generation   uint64 `json:"generation,string"`
		} `json:"connection"`
		Header struct {
			Incarnation string `json:"incarnation"`
		} `json:"header"`
	}
	h.mustDo(t, "POST", "/v1/connections", fmt.Sprintf(`{"connectionId": "rest", "address": %q,
		"framing": {"mode": "FRAMING_MODE_LINE"}, "reconnect": {"initialBackoff": "0.05s", "maxBackoff": "0.4s"},
		"onConnect": {"text": "login rest", "framed": true}}`, srv.Addr()), &resp)
	if c := resp.Connection; c.ConnectionID != "rest" || c.Address != srv.Addr() || c.State != "CONNECTION_STATE_OPEN" ||
		c.Origin != "ORIGIN_OUTBOUND" || c.Generation != 1 || resp.Header.Incarnation == "" {
		t.Fatalf("POST /v1/connections = %+v, want rest open to %s, outbound, generation 1, with a header", resp, srv.Addr())
	}
	var sent sendResponseJSON
	h.mustDo(t, "POST", "/v1/send", `{"connectionId": "rest", "text": "hello", "framed": true, "awaitReply": {"mode": "AWAIT_MODE_FRAME"}}`, &sent)
	if sent.Reply == nil || sent.Reply.Text != "HELLO" {
		t.Errorf("POST /v1/send to rest = %+v, want the reply HELLO", sent)
	}

	srv.Kill()
	srv.Start()
	evs := events.waitEvents(t, "the drop, a scheduled reconnect and generation 2", func(evs []eventJSON) bool {
		var closed, scheduled, reopened bool
		for _, e := range evs {
			closed = closed || e.Kind == kindConnectionClosed && e.ConnectionID == "rest" && e.Generation == 1
			scheduled = scheduled || e.Kind == "EVENT_KIND_RECONNECT_SCHEDULED" && e.ConnectionID == "rest" && e.Attempt == 1 && e.Delay != ""
			reopened = reopened || e.Kind == kindConnectionOpened && e.ConnectionID == "rest" && e.Generation == 2
		}
		return closed && scheduled && reopened
	})
	for _, e := range evs {
		if e.Kind != kindStreamStarted && e.Origin != "ORIGIN_OUTBOUND" {
			t.Errorf("GET /v1/events?origins=ORIGIN_OUTBOUND sent %s #%d of origin %q", e.Kind, e.Sequence, e.Origin)
		}
	}
	h.mustDo(t, "POST", "/v1/send", `{"connectionId": "rest", "text": "again", "framed": true, "awaitReply": {"mode": "AWAIT_MODE_FRAME"}}`, &sent)
	if sent.Reply == nil || sent.Reply.Text != "AGAIN" {
		t.Errorf("POST /v1/send to rest after the reconnect = %+v, want the reply AGAIN", sent)
	}
	h.mustDo(t, "DELETE", "/v1/connections/rest", "", &resp)
	if resp.Connection.State != "CONNECTION_STATE_CLOSED" || resp.Connection.Generation != 2 {
		t.Errorf("DELETE /v1/connections/rest = %+v, want it closed at generation 2", resp.Connection)
	}
	if got := saidStartingWith(srv, "login rest\n"); len(got) != 2 {
		t.Errorf("the server saw %d connections that logged in, want 2: %q", len(got), said(srv))
	}

	t.Run("bad bodies", func(t *testing.T) {
		h.wantError(t, "POST", "/v1/connections", `{"address": "nowhere"}`, 400, 3, "address")
		h.wantError(t, "POST", "/v1/connections", `{"address": "127.0.0.1:1", "bogus": 1}`, 400, 3, "bogus")
		h.wantError(t, "POST", "/v1/connections", fmt.Sprintf(`{"address": %q, "reconnect": {"initialBackoff": "0.001s"}}`, srv.Addr()), 400, 3, "initial_backoff")
		h.wantError(t, "POST", "/v1/connections", fmt.Sprintf(`{"address": %q, "reconnect": {"disabled": true}}`, servertest.RefusedAddr(t)), 503, 14, "refused")
	})

	t.Run("grpcurl", func(t *testing.T) {
		gc := client{addr: g.grpcAddr}
		desc := gc.mustRun(t, "describe", "tcpgate.v1.ConnectRequest")
		if !strings.Contains(desc, "queue_while_down_bytes") || !strings.Contains(desc, "// ") {
			t.Errorf("grpcurl describe tcpgate.v1.ConnectRequest shows no documented queue_while_down_bytes:\n%s", desc)
		}
		var resp struct {
			Connection struct {
				ConnectionID string `json:"connectionId"`
				State        string `json:"state"`
				Generation   uint64 `json:"generation,string"`
			} `json:"connection"`
		}
		gc.call(t, "Connect", map[string]any{"connection_id": "grpc", "address": srv.Addr(), "framing": map[string]any{"mode": "FRAMING_MODE_LINE"}}, &resp)
		if resp.Connection.ConnectionID != "grpc" || resp.Connection.State != "CONNECTION_STATE_OPEN" || resp.Connection.Generation != 1 {
			t.Errorf("grpcurl Connect = %+v, want grpc open, generation 1", resp.Connection)
		}
		var reply sendResponseJSON
		gc.call(t, "Send", map[string]any{"connection_id": "grpc", "text": "hi", "framed": true, "await_reply": map[string]any{"mode": "AWAIT_MODE_FRAME"}}, &reply)
		if reply.Reply == nil || reply.Reply.Text != "HI" {
			t.Errorf("grpcurl Send to grpc = %+v, want the reply HI", reply)
		}
		// An id in use, by the outbound connection or anyone: AlreadyExists.
		_, stderr, err := gc.run(t, "-d", fmt.Sprintf(`{"connection_id": "grpc", "address": %q}`, srv.Addr()), g.grpcAddr, service+"/Connect")
		if err == nil || !strings.Contains(stderr, "AlreadyExists") {
			t.Errorf("grpcurl Connect with an id in use: %v, %s; want AlreadyExists", err, stderr)
		}
	})
	g.d.stop(t)
}

// TestSendTargetTLS: send's --target-* flags make the gateway speak TLS to
// the address, trusting the CA and showing the client certificate read
// from the files named; without the CA the handshake fails, and the flags
// are refused for a connection the gateway already holds.
func TestSendTargetTLS(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	ca := servertest.NewCA(t)
	certPEM, keyPEM := ca.IssueLoopback(t)
	clientPEM, clientKeyPEM := ca.Issue(t, "gateway", nil, nil, true)
	files := servertest.WriteFiles(t, map[string][]byte{"ca.pem": ca.CertPEM, "client.pem": clientPEM, "client.key": clientKeyPEM})
	cfg := &tls.Config{
		Certificates: []tls.Certificate{servertest.KeyPair(t, certPEM, keyPEM)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}
	addr := servertest.Peer(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		buf := make([]byte, 64)
		n, err := tc.Read(buf)
		if err != nil {
			return
		}
		name := tc.ConnectionState().PeerCertificates[0].Subject.CommonName
		_, _ = tc.Write([]byte(strings.ToUpper(string(buf[:n])) + " " + name))
	})

	stdout, _ := tg.mustRun(t, "send", addr, "ping", "--await", "first",
		"--target-ca", files["ca.pem"], "--target-cert", files["client.pem"], "--target-key", files["client.key"])
	if stdout != "PING gateway" {
		t.Errorf("send --target-ca --target-cert: stdout %q, want %q (the peer's answer, naming the client certificate)", stdout, "PING gateway")
	}
	for name, args := range map[string][]string{
		"no CA":        {"send", addr, "ping", "--await", "first", "--target-tls"},
		"no client":    {"send", addr, "ping", "--await", "first", "--target-ca", files["ca.pem"]},
		"held conn":    {"send", "--to-conn", "c-k3v7q2m5xa", "ping", "--target-tls"},
		"missing file": {"send", addr, "ping", "--target-ca", files["ca.pem"] + ".gone"},
	} {
		stdout, stderr, err := tg.run(t, args...)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || stdout != "" {
			t.Errorf("%s: tcpgate %s: %v, stdout %q, stderr %q; want exit status 1", name, strings.Join(args, " "), err, stdout, stderr)
		}
		switch name {
		case "no CA":
			if !strings.Contains(stderr, "certificate") {
				t.Errorf("send --target-tls to a test CA's peer: stderr %q, want the certificate refused", stderr)
			}
		case "held conn":
			if !strings.Contains(stderr, "are for an address") {
				t.Errorf("send --to-conn --target-tls: stderr %q, want the flags refused for a held connection", stderr)
			}
		case "missing file":
			if !strings.Contains(stderr, "--target-ca") {
				t.Errorf("send --target-ca of a missing file: stderr %q, want it to name --target-ca", stderr)
			}
		}
	}
	g.d.stop(t)
}
