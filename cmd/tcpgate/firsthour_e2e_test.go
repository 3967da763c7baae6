package main_test

// End-to-end tests of what a new user meets in the CLI first: replies
// printed as they came, line protocols, arguments named, help that reads
// right, and --version.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
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
		id := sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened listener=lines conn=(c-[a-z2-7]{10}) remote=`+regexp.QuoteMeta(local)+`$`))[1]
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

	t.Run("framed sends a frame of the listener's framing", func(t *testing.T) {
		addr := listen(t, "lp2", "--framing", "len:2")
		sub := tg.start(t, "subscribe", "--listener", "lp2")
		sub.sync(t, addr)
		conn, local := dialLocal(t, addr)
		id := sub.waitMatch(t, regexp.MustCompile(`(?m)^#\d+ \S+ connection_opened listener=lp2 conn=(c-[a-z2-7]{10}) remote=`+regexp.QuoteMeta(local)+`$`))[1]
		_, stderr := tg.mustRun(t, "send", "--to-conn", id, "hello", "--framed")
		if got := readN(t, conn, 7); got != "\x00\x05hello" {
			t.Errorf("send --to-conn --framed to a len:2 listener: the client read %q, want %q", got, "\x00\x05hello")
		}
		if !strings.Contains(stderr, "sent 7 bytes") {
			t.Errorf("send --framed: stderr %q, want the 7 bytes it wrote", stderr)
		}
		_, stderr, err := tg.run(t, "send", "--to-conn", id, "--hex", "00", "--framed", "--newline")
		if err == nil || !strings.Contains(stderr, "--newline and --framed") {
			t.Errorf("send --framed --newline: %v, stderr %q; want them refused together", err, stderr)
		}
	})

	t.Run("framed to an address takes --await line's framing", func(t *testing.T) {
		addr := listen(t, "framedaddr", "--framing", "line", "--echo")
		stdout, _ := tg.mustRun(t, "send", addr, "ping", "--framed", "--await", "line")
		if stdout != "ping" {
			t.Errorf("send --framed --await line to a line echo: stdout = %q, want %q", stdout, "ping")
		}
		_, stderr, err := tg.run(t, "send", addr, "ping", "--framed")
		if err == nil || !strings.Contains(stderr, "InvalidArgument") || !strings.Contains(stderr, "--await line") {
			t.Errorf("send --framed to an address without --await line: %v, stderr %q; want InvalidArgument and a hint at --await line", err, stderr)
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

// TestServeLogsJSON: with --log-format json, durations are text such as
// "1.2ms", not nanoseconds; and a subscriber ending its own stream (Ctrl-C)
// is logged at debug level, while a call that failed stays at info.
func TestServeLogsJSON(t *testing.T) {
	t.Parallel()
	grpcAddr := "127.0.0.1:" + freePort(t)
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", grpcAddr, "--log-format", "json", "--log-level", "debug")
	// waitServing reads text logs; find the JSON serving line instead.
	logLine := func(what string, match func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(startTimeout)
		for time.Now().Before(deadline) {
			for line := range strings.Lines(d.stderr.String()) {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && match(rec) {
					return rec
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("the daemon logged no %s:\n%s", what, d.stderr.String())
		return nil
	}
	logLine("serving line", func(r map[string]any) bool { return r["msg"] == "gateway serving" })
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + grpcAddr)}

	out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "logs")
	m := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tcpgate listen printed %q", out)
	}
	sub := tg.start(t, "subscribe", "--listener", "logs")
	sub.sync(t, m[1])
	if err := sub.interrupt(t); err != nil {
		t.Fatalf("subscribe after SIGINT: %v", err)
	}
	canceled := logLine("line for the canceled Subscribe", func(r map[string]any) bool {
		return r["msg"] == "rpc failed" && strings.HasSuffix(fmt.Sprint(r["method"]), "/Subscribe")
	})
	if canceled["level"] != "DEBUG" || canceled["code"] != "Canceled" {
		t.Errorf("a subscriber's own Ctrl-C logged %v, want level DEBUG and code Canceled", canceled)
	}

	secWantFail(t, tg, []string{"NotFound"}, "stop", "nope")
	failed := logLine("line for the failed StopListener", func(r map[string]any) bool {
		return r["msg"] == "rpc failed" && strings.HasSuffix(fmt.Sprint(r["method"]), "/StopListener")
	})
	if failed["level"] != "INFO" {
		t.Errorf("a failed call logged %v, want level INFO", failed)
	}
	for _, rec := range []map[string]any{canceled, failed} {
		s, ok := rec["duration"].(string)
		if _, err := time.ParseDuration(s); !ok || err != nil {
			t.Errorf("JSON log line %v: duration %#v, want text such as \"1.5ms\"", rec, rec["duration"])
		}
	}
	d.stop(t)
}

// TestMakeRunEnv: `make run` serves on the addresses TCPGATE_GRPC_ADDR and
// TCPGATE_HTTP_ADDR name, as `tcpgate serve` does, and GRPC_ADDR and
// HTTP_ADDR on make's command line win. make -n prints the command without
// building or starting anything.
func TestMakeRunEnv(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	makeRun := func(env []string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "make", append([]string{"-n", "-s", "-C", "../..", "run"}, args...)...)
		// hermeticEnv's TCPGATE_HTTP_ADDR is for daemons: none here.
		cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "TCPGATE_") }), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make -n run %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	serve := regexp.MustCompile(`(?m)^\S*tcpgate serve --grpc-addr (\S+) --http-addr (\S+)$`)
	for _, tc := range []struct {
		name       string
		env        []string
		args       []string
		grpc, http string
	}{
		{"defaults", nil, nil, "127.0.0.1:50051", "127.0.0.1:50080"},
		{"TCPGATE_ variables", []string{"TCPGATE_GRPC_ADDR=127.0.0.1:6051", "TCPGATE_HTTP_ADDR=127.0.0.1:6080"}, nil, "127.0.0.1:6051", "127.0.0.1:6080"},
		{"make variables win", []string{"TCPGATE_GRPC_ADDR=127.0.0.1:6051"}, []string{"GRPC_ADDR=127.0.0.1:7051"}, "127.0.0.1:7051", "127.0.0.1:50080"},
	} {
		out := makeRun(tc.env, tc.args...)
		m := serve.FindStringSubmatch(out)
		if m == nil || m[1] != tc.grpc || m[2] != tc.http {
			t.Errorf("%s: make run would run\n%s\nwant tcpgate serve --grpc-addr %s --http-addr %s", tc.name, out, tc.grpc, tc.http)
		}
	}
}

// TestRESTFirstLook: the OpenAPI document names the API and its version,
// and REST responses, successes and errors alike, carry no gRPC metadata
// as Grpc-Metadata-* headers.
func TestRESTFirstLook(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	base := "http://" + g.httpAddr
	get := func(method, path, body string) (*http.Response, []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp, b
	}

	_, b := get("GET", "/openapi.json", "")
	var doc struct {
		Info struct{ Title, Version string } `json:"info"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("GET /openapi.json: %v", err)
	}
	if doc.Info.Title != "tcpgate REST API" || doc.Info.Version != "v1" {
		t.Errorf("GET /openapi.json: info %+v, want title \"tcpgate REST API\" and version v1", doc.Info)
	}

	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/listeners", ""},
		{"POST", "/v1/listeners", `{"host": "127.0.0.1", "port": 0}`},
		{"GET", "/v1/listeners/nope", ""},
	} {
		resp, b := get(c.method, c.path, c.body)
		for name := range resp.Header {
			if strings.HasPrefix(name, "Grpc-") {
				t.Errorf("%s %s = %d: header %s: %v, want no gRPC metadata in a REST response (body %s)", c.method, c.path, resp.StatusCode, name, resp.Header[name], b)
			}
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q, want application/json", c.method, c.path, ct)
		}
	}
}

// TestDescribeShowsComments: grpcurl describe, through the gateway's
// reflection, prints the proto's comments: the service's, an RPC's, and a
// field's. The other services (health) still resolve.
func TestDescribeShowsComments(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	c := client{addr: g.grpcAddr}
	for _, tc := range []struct{ symbol, want string }{
		{"tcpgate.v1.GatewayService", "// GatewayService starts and stops raw TCP listeners"},
		{"tcpgate.v1.GatewayService", "// StartListener binds host:port"},
		{"tcpgate.v1.SendRequest", "// A connection to write to: an accepted one, or a managed outbound one"},
		{"tcpgate.v1.SendRequest.address", "// host:port to connect to"},
		{"grpc.health.v1.Health", "rpc Check ("},
	} {
		out := c.mustRun(t, "describe", tc.symbol)
		if !strings.Contains(out, tc.want) {
			t.Errorf("grpcurl describe %s printed\n%s\nwant %q in it", tc.symbol, out, tc.want)
		}
	}
	g.d.stop(t)
}
