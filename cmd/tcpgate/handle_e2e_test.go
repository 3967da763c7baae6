package main_test

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestHandleCLI: tcpgate handle answers with --reply in the connection's
// framing, answers with nothing without it (the frame does not wait for
// the timeout's fallback), refuses what it cannot register with the
// gateway's error, and fails with a clear error when the gateway ends
// the stream.
func TestHandleCLI(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	listen := func(id string, args ...string) string {
		t.Helper()
		out, _ := tg.mustRun(t, append([]string{"listen", "0", "--host", "127.0.0.1", "--id", id}, args...)...)
		m := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+) `).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("tcpgate listen printed %q", out)
		}
		return m[1]
	}
	registered := regexp.MustCompile(`(?m)^registered stream=h-\S+ group=(\S+) max_in_flight=(\d+)$`)

	t.Run("reply in the framing", func(t *testing.T) {
		addr := listen("hd", "--framing", "delim:3b") // frames end at ";"
		h := tg.start(t, "handle", "--listener", "hd", "--group", "g1", "--max-in-flight", "8", "--reply", "ok")
		if m := h.waitMatch(t, registered); m[1] != "g1" || m[2] != "8" {
			t.Fatalf("registered group %s max_in_flight %s, want g1 and 8", m[1], m[2])
		}
		c, local := dialLocal(t, addr)
		if _, err := c.Write([]byte("a;\xff\xfe;")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, len("ok;ok;")); got != "ok;ok;" {
			t.Fatalf("client read %q, want %q", got, "ok;ok;")
		}
		h.waitMatch(t, regexp.MustCompile(`(?m)^received from `+regexp.QuoteMeta(local)+` conn=c-\S+ frame=\d+: 1 bytes "a"$`))
		h.waitMatch(t, regexp.MustCompile(`(?m)^received from `+regexp.QuoteMeta(local)+` conn=c-\S+ frame=\d+: 2 bytes hex=fffe$`))
		if err := h.interrupt(t); err != nil {
			t.Fatalf("after Ctrl-C: %v", err)
		}
	})

	t.Run("no reply", func(t *testing.T) {
		// The fallback echoes. Answered with nothing, "one" never gets
		// it. With --max-in-flight 1, "two" reaches the handler only
		// once "one" is answered; after the handler ends, the frames it
		// leaves (perhaps "two") and "three" get the fallback, in frame
		// order, so the first bytes the client reads are not "one".
		addr := listen("hn", "--framing", "line", "--echo")
		h := tg.start(t, "handle", "--listener", "hn", "--max-in-flight", "1")
		h.waitMatch(t, registered)
		c, local := dialLocal(t, addr)
		if _, err := c.Write([]byte("one\ntwo\n")); err != nil {
			t.Fatal(err)
		}
		h.waitMatch(t, regexp.MustCompile(`(?m)^received from `+regexp.QuoteMeta(local)+` conn=c-\S+ frame=\d+: 3 bytes "one"$`))
		h.waitMatch(t, regexp.MustCompile(`(?m)^received from `+regexp.QuoteMeta(local)+` conn=c-\S+ frame=\d+: 3 bytes "two"$`))
		if err := h.interrupt(t); err != nil {
			t.Fatalf("after Ctrl-C: %v", err)
		}
		if _, err := c.Write([]byte("three\n")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, 3); got != "two" && got != "thr" {
			t.Fatalf("client read %q first, want the echo of \"two\" or \"three\": nothing for \"one\"", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		out := runFailing(t, tg.env, "handle", "--listener", "nope")
		if !strings.Contains(out, "NotFound") || !strings.Contains(out, "nope") {
			t.Fatalf("handle of an unknown listener printed %q, want NotFound naming it", out)
		}
		out = runFailing(t, tg.env, "handle")
		if !strings.Contains(out, "--listener or --connection") {
			t.Fatalf("handle of nothing printed %q", out)
		}
	})

	t.Run("gateway ends the stream", func(t *testing.T) {
		listen("he")
		h := tg.start(t, "handle", "--listener", "he")
		h.waitMatch(t, registered)
		g.d.stop(t)
		select {
		case <-h.done:
		case <-time.After(exitTimeout):
			t.Fatalf("tcpgate handle still running %v after the gateway stopped", exitTimeout)
		}
		if h.err == nil || !strings.Contains(h.stderr.String(), "Unavailable") {
			t.Fatalf("tcpgate handle exited with %v, stderr %q; want a failure saying Unavailable", h.err, h.stderr.String())
		}
	})
}
