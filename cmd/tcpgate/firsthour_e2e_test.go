package main_test

// End-to-end tests of what a new user meets in the CLI first: replies
// printed as they came, line protocols, arguments named, help that reads
// right, and --version.

import (
	"bufio"
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestCLIFirstHour drives the built binary against one gateway through the
// things a first session trips on.
func TestCLIFirstHour(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	listen := func(t *testing.T, id string, args ...string) string {
		t.Helper()
		out, _ := tg.mustRun(t, append([]string{"listen", "0", "--host", "127.0.0.1", "--id", id}, args...)...)
		m := regexp.MustCompile(`^listener ` + id + ` listening on (127\.0\.0\.1:\d+) `).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("tcpgate listen printed %q", out)
		}
		return m[1]
	}

	t.Run("reply bytes as they came", func(t *testing.T) {
		addr := listen(t, "echo", "--echo")
		// 01 02 03 04 is valid UTF-8: it must still come out as four bytes,
		// with no newline added, into a pipe.
		stdout, _ := tg.mustRun(t, "send", addr, "--hex", "01020304", "--await", "first")
		if stdout != "\x01\x02\x03\x04" {
			t.Errorf("send --hex 01020304 --await first into a pipe: stdout = %q, want %q", stdout, "\x01\x02\x03\x04")
		}
		stdout, _ = tg.mustRun(t, "send", addr, "no newline", "--await", "first")
		if stdout != "no newline" {
			t.Errorf("send --await first into a pipe: stdout = %q, want %q", stdout, "no newline")
		}
	})

	t.Run("await line on an accepted connection", func(t *testing.T) {
		addr := listen(t, "lines", "--framing", "line")
		sub := tg.start(t, "subscribe", "--listener", "lines")
		sub.sync(t, addr)
		conn, local := dialLocal(t, addr)
		id := sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened listener=lines conn=(c\d+) remote=`+regexp.QuoteMeta(local)+`$`))[1]
		// The client answers the line it reads with one of its own.
		done := make(chan error, 1)
		go func() {
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err == nil && line != "ping\n" {
				err = errors.New("read " + strings.TrimSpace(line) + ", want ping and a newline")
			}
			if err == nil {
				_, err = conn.Write([]byte("pong\n"))
			}
			done <- err
		}()
		stdout, _ := tg.mustRun(t, "send", "--to-conn", id, "ping", "--newline", "--await", "line")
		if err := <-done; err != nil {
			t.Errorf("the client: %v", err)
		}
		// The listener's line framing hands over the line without its newline.
		if stdout != "pong" {
			t.Errorf("send --to-conn --newline --await line: stdout = %q, want %q", stdout, "pong")
		}
	})

	t.Run("timeout hints at --newline", func(t *testing.T) {
		addr := listen(t, "silent") // never answers
		_, stderr, err := tg.run(t, "send", addr, "ping", "--await", "line", "--timeout", "300ms")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !strings.Contains(stderr, "DeadlineExceeded") || !strings.Contains(stderr, "--newline") {
			t.Errorf("send without a newline that times out: %v, stderr %q; want DeadlineExceeded and a hint at --newline", err, stderr)
		}
		_, stderr, _ = tg.run(t, "send", addr, "ping", "--newline", "--await", "line", "--timeout", "300ms")
		if !strings.Contains(stderr, "DeadlineExceeded") || strings.Contains(stderr, "--newline") {
			t.Errorf("send --newline that times out: stderr %q; want DeadlineExceeded and no hint", stderr)
		}
	})

	t.Run("missing arguments are named", func(t *testing.T) {
		for cmd, name := range map[string]string{"listen": "PORT", "stop": "LISTENER", "close": "CONNECTION"} {
			_, stderr, err := tg.run(t, cmd)
			if err == nil || !strings.Contains(stderr, "missing "+name) || strings.Contains(stderr, "arg(s)") {
				t.Errorf("tcpgate %s: %v, stderr %q; want it to say \"missing %s\"", cmd, err, stderr, name)
			}
		}
	})

	t.Run("help", func(t *testing.T) {
		out, _ := tg.mustRun(t, "send", "--help")
		if !regexp.MustCompile(`(?m)^\s+--timeout duration .*\(default 30s\)$`).MatchString(out) {
			t.Errorf("send --help: --timeout is not 30s by default, as the API's:\n%s", out)
		}
		out, _ = tg.mustRun(t, "listen", "--help")
		if !regexp.MustCompile(`(?m)^\s+--half-close duration `).MatchString(out) {
			t.Errorf("listen --help: --half-close does not take a duration:\n%s", out)
		}
	})

	t.Run("version", func(t *testing.T) {
		stdout, _ := tg.mustRun(t, "--version")
		if !strings.HasPrefix(stdout, "tcpgate version ") || !strings.Contains(stdout, "go1.") {
			t.Errorf("tcpgate --version printed %q, want \"tcpgate version ...\" with the Go version", stdout)
		}
		// Whatever commit `go build` stamped is what --version names.
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		info, err := exec.CommandContext(ctx, "go", "version", "-m", tcpgateBin).Output()
		if err != nil {
			t.Fatalf("go version -m: %v", err)
		}
		if m := regexp.MustCompile(`(?m)^\s+build\s+vcs\.revision=(\S+)$`).FindSubmatch(info); m != nil && !strings.Contains(stdout, string(m[1])) {
			t.Errorf("tcpgate --version printed %q, want the commit %s", stdout, m[1])
		}
	})
}
