package main_test

// End-to-end tests: the built tcpgate binary driven by the real grpcurl,
// asserting what a user following the README would see.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
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

	"github.com/tcpgate/tcpgate/server/servertest"
)

// Bounds of every wait. Generous, so a loaded CI machine does not flake;
// a healthy run takes a small fraction of each.
const (
	startTimeout = 20 * time.Second // until "gateway serving" is logged
	callTimeout  = 20 * time.Second // one grpcurl call, or one failing tcpgate run
	eventTimeout = 10 * time.Second // until an expected event reaches the stream
	exitTimeout  = 15 * time.Second // until a process exits after SIGTERM
	// syncPoll is how long one sync probe waits for its CONNECTION_OPENED
	// before it dials again: the subscription may not be live yet.
	syncPoll = 500 * time.Millisecond
	// waitDelay bounds Wait after a process is killed.
	waitDelay = 5 * time.Second
)

const service = "tcpgate.v1.GatewayService"

// Event kinds as protojson spells them.
const (
	kindListenerStopped  = "EVENT_KIND_LISTENER_STOPPED"
	kindConnectionOpened = "EVENT_KIND_CONNECTION_OPENED"
	kindData             = "EVENT_KIND_DATA"
	kindConnectionClosed = "EVENT_KIND_CONNECTION_CLOSED"
	kindEventsDropped    = "EVENT_KIND_EVENTS_DROPPED"
	kindStreamStarted    = "EVENT_KIND_STREAM_STARTED"
	kindIncarnationChg   = "EVENT_KIND_INCARNATION_CHANGED"
)

// TestGateway walks through the README with the binary and grpcurl: start
// the daemon, discover the API, start a listener with a fixed auto reply,
// watch it with Subscribe, send text and bytes, read counters, stop the
// listener, hit the error paths, and shut the daemon down with SIGTERM.
func TestGateway(t *testing.T) {
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0")
	addr := d.waitServing(t)
	c := client{addr: addr}

	t.Run("discovery", func(t *testing.T) {
		out := c.mustRun(t, "list")
		services := strings.Fields(out)
		for _, want := range []string{service, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
			if !slices.Contains(services, want) {
				t.Errorf("grpcurl list = %q, want it to include %s", services, want)
			}
		}

		out = c.mustRun(t, "describe", service)
		for _, rpc := range []string{"StartListener", "StopListener", "GetListener", "ListListeners",
			"ListConnections", "CloseConnection", "Send", "Subscribe"} {
			if !strings.Contains(out, "rpc "+rpc+" (") {
				t.Errorf("grpcurl describe %s does not show rpc %s:\n%s", service, rpc, out)
			}
		}

		var health struct {
			Status string `json:"status"`
		}
		decodeJSON(t, c.mustRun(t, "grpc.health.v1.Health/Check"), &health)
		if health.Status != "SERVING" {
			t.Errorf("Health/Check status = %q, want SERVING", health.Status)
		}
	})

	// kn-sock's example server: answers "Message received" to every frame.
	var started struct {
		Listener listenerJSON `json:"listener"`
	}
	c.call(t, "StartListener", map[string]any{
		"host": "127.0.0.1",
		"port": 0,
		"auto_reply": map[string]any{
			"mode": "AUTO_REPLY_MODE_FIXED",
			"text": "Message received",
		},
	}, &started)
	l := started.Listener
	lid, laddr := l.ListenerID, l.Address
	if lid == "" {
		t.Fatalf("StartListener: listenerId is empty in %+v", l)
	}
	if host, port, err := net.SplitHostPort(laddr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("StartListener: address = %q, want 127.0.0.1 with the bound port", laddr)
	}
	if l.State != "LISTENER_STATE_LISTENING" || l.AutoReply.Mode != "AUTO_REPLY_MODE_FIXED" || l.AutoReply.Text != "Message received" {
		t.Errorf("StartListener: listener = %+v, want LISTENER_STATE_LISTENING with the fixed auto reply", l)
	}

	sub := subscribe(t, addr, map[string]any{"listener_ids": []string{lid}})
	probes := sub.sync(t, laddr)

	// The Hello connection's events, to tell them from the probes'.
	var helloConn string
	t.Run("send text", func(t *testing.T) {
		from := sub.len()
		var resp sendResponseJSON
		c.call(t, "Send", map[string]any{
			"address":     laddr,
			"text":        "Hello, World!",
			"await_reply": map[string]any{"mode": "AWAIT_MODE_FIRST_READ"},
			"timeout":     "5s",
		}, &resp)
		if resp.Reply.Text != "Message received" {
			t.Errorf("Send: reply.text = %q, want %q", resp.Reply.Text, "Message received")
		}
		if resp.BytesWritten != uint64(len("Hello, World!")) || resp.ConnectionsReached != 1 {
			t.Errorf("Send: bytesWritten = %d, connectionsReached = %d; want %d and 1",
				resp.BytesWritten, resp.ConnectionsReached, len("Hello, World!"))
		}

		i, data := sub.waitFor(t, from, `DATA "Hello, World!"`, func(e eventJSON) bool {
			return e.Kind == kindData && e.Text == "Hello, World!"
		})
		helloConn = data.ConnectionID
		sub.waitFor(t, i, "CONNECTION_CLOSED of "+helloConn, func(e eventJSON) bool {
			return e.Kind == kindConnectionClosed && e.ConnectionID == helloConn
		})
		evs := sub.lifecycle(t, lid, helloConn)
		// PAYLOAD_FORMAT_TEXT_OR_DATA, the default: valid UTF-8 as text only.
		if evs[1].Text != "Hello, World!" || evs[1].Data != "" {
			t.Errorf("DATA event: text %q data %q, want text %q only", evs[1].Text, evs[1].Data, "Hello, World!")
		}
		// The gateway read the whole reply before closing, so the
		// listener sees an orderly close.
		if got := evs[2].CloseReason; got != "CLOSE_REASON_PEER_CLOSED" {
			t.Errorf("CONNECTION_CLOSED event: closeReason = %q, want CLOSE_REASON_PEER_CLOSED", got)
		}
	})

	t.Run("send bytes", func(t *testing.T) {
		from := sub.len()
		var resp sendResponseJSON
		c.call(t, "Send", map[string]any{"address": laddr, "data": "AQIDBA=="}, &resp)
		if resp.BytesWritten != 4 || resp.Reply != nil {
			t.Errorf("Send: bytesWritten = %d, reply = %+v; want 4 and no reply", resp.BytesWritten, resp.Reply)
		}
		i, data := sub.waitFor(t, from, `DATA "AQIDBA=="`, func(e eventJSON) bool {
			return e.Kind == kindData && e.payload() == "\x01\x02\x03\x04"
		})
		if data.ConnectionID == helloConn {
			t.Errorf("bytes arrived on the earlier connection %s, want a new one", helloConn)
		}
		sub.waitFor(t, i, "CONNECTION_CLOSED of "+data.ConnectionID, func(e eventJSON) bool {
			return e.Kind == kindConnectionClosed && e.ConnectionID == data.ConnectionID
		})
		sub.lifecycle(t, lid, data.ConnectionID)
	})

	t.Run("list listeners", func(t *testing.T) {
		var resp struct {
			Listeners []listenerJSON `json:"listeners"`
		}
		c.call(t, "ListListeners", map[string]any{}, &resp)
		i := slices.IndexFunc(resp.Listeners, func(l listenerJSON) bool { return l.ListenerID == lid })
		if i < 0 {
			t.Fatalf("ListListeners = %+v, want listener %s", resp.Listeners, lid)
		}
		got := resp.Listeners[i]
		// The sync probes, the text send and the bytes send.
		if want := uint64(probes + 2); got.ConnectionsTotal != want {
			t.Errorf("connectionsTotal = %d, want %d (%d sync probes and 2 sends)", got.ConnectionsTotal, want, probes)
		}
		if want := uint64(len("Hello, World!") + 4); got.BytesIn != want {
			t.Errorf("bytesIn = %d, want %d", got.BytesIn, want)
		}
		if got.State != "LISTENER_STATE_LISTENING" || got.Address != laddr {
			t.Errorf("listener = %+v, want LISTENER_STATE_LISTENING on %s", got, laddr)
		}
	})

	t.Run("stop listener", func(t *testing.T) {
		from := sub.len()
		var resp struct {
			Listener listenerJSON `json:"listener"`
		}
		c.call(t, "StopListener", map[string]any{"listener_id": lid, "drain_timeout": "0s"}, &resp)
		if resp.Listener.State != "LISTENER_STATE_STOPPED" {
			t.Errorf("StopListener: state = %q, want LISTENER_STATE_STOPPED", resp.Listener.State)
		}
		// StopListener returns once the port is free.
		conn, err := net.DialTimeout("tcp", laddr, 5*time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("dialing %s after StopListener succeeded, want connection refused", laddr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dialing %s after StopListener: %v, want connection refused", laddr, err)
		}
		sub.waitFor(t, from, "LISTENER_STOPPED", func(e eventJSON) bool {
			return e.Kind == kindListenerStopped && e.ListenerID == lid
		})
	})

	t.Run("errors", func(t *testing.T) {
		tests := []struct {
			name     string
			method   string
			req      map[string]any
			wantCode int // grpcurl exits with 64 + the gRPC status code
			want     []string
		}{
			{
				name:     "port out of range",
				method:   "StartListener",
				req:      map[string]any{"host": "127.0.0.1", "port": 70000},
				wantCode: 64 + 3,
				want:     []string{"InvalidArgument", "port"},
			},
			{
				name:     "unknown listener",
				method:   "GetListener",
				req:      map[string]any{"listener_id": "no-such-listener"},
				wantCode: 64 + 5,
				want:     []string{"NotFound", "no-such-listener"},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				stdout, stderr, err := c.run(t, "-d", mustJSON(t, tt.req), addr, service+"/"+tt.method)
				out := stdout + stderr
				var exit *exec.ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("%s: err = %v, want grpcurl to exit non-zero; output:\n%s", tt.method, err, out)
				}
				if exit.ExitCode() != tt.wantCode {
					t.Errorf("%s: grpcurl exit status = %d, want %d", tt.method, exit.ExitCode(), tt.wantCode)
				}
				for _, w := range tt.want {
					if !strings.Contains(out, w) {
						t.Errorf("%s: output does not mention %q:\n%s", tt.method, w, out)
					}
				}
			})
		}
	})

	// Sequences are gateway-wide and strictly increasing, and this small
	// stream never falls behind.
	sub.checkSequences(t)

	t.Run("shutdown", func(t *testing.T) {
		// A listener and an open connection left behind must not outlive
		// the daemon.
		var resp struct {
			Listener listenerJSON `json:"listener"`
		}
		c.call(t, "StartListener", map[string]any{"listener_id": "left-open", "host": "127.0.0.1"}, &resp)
		held, err := net.DialTimeout("tcp", resp.Listener.Address, 5*time.Second)
		if err != nil {
			t.Fatalf("dialing listener left-open: %v", err)
		}
		defer held.Close()

		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("sending SIGTERM: %v", err)
		}
		if err := d.waitExit(t, exitTimeout); err != nil {
			t.Errorf("tcpgate after SIGTERM: %v, want exit status 0", err)
		}

		select {
		case <-sub.done:
		case <-time.After(exitTimeout):
			t.Fatalf("Subscribe still running %v after the daemon exited", exitTimeout)
		}
		// The README: Subscribe streams end with Unavailable.
		if !strings.Contains(sub.stderr.String(), "Unavailable") {
			t.Errorf("Subscribe ended with %v and stderr %q, want status Unavailable", sub.waitErr, sub.stderr.String())
		}

		for _, a := range []string{addr, resp.Listener.Address} {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				t.Errorf("%s still bound after shutdown: %v", a, err)
				continue
			}
			ln.Close()
		}
		held.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection to listener left-open: read = %d, %v; want it closed by the shutdown", n, err)
		}
	})
}

// TestServeConfig checks how `tcpgate serve` takes its configuration:
// environment variables, flag precedence, and the errors a user gets.
func TestServeConfig(t *testing.T) {
	t.Run("env sets grpc-addr", func(t *testing.T) {
		d := startDaemon(t, hermeticEnv("TCPGATE_GRPC_ADDR=127.0.0.1:0"), "serve")
		addr := d.waitServing(t)
		host, port, err := net.SplitHostPort(addr)
		// The default is 127.0.0.1:50051; port 0 gives an ephemeral one.
		if err != nil || host != "127.0.0.1" || port == "0" || port == "50051" {
			t.Errorf("serving on %q, want 127.0.0.1 and the port picked for TCPGATE_GRPC_ADDR=127.0.0.1:0", addr)
		}
		c := client{addr: addr}
		var health struct {
			Status string `json:"status"`
		}
		decodeJSON(t, c.mustRun(t, "grpc.health.v1.Health/Check"), &health)
		if health.Status != "SERVING" {
			t.Errorf("Health/Check status = %q, want SERVING", health.Status)
		}
		d.stop(t)
	})

	t.Run("flag wins over env", func(t *testing.T) {
		d := startDaemon(t, hermeticEnv("TCPGATE_GRPC_ADDR=127.0.0.1:not-a-port"),
			"serve", "--grpc-addr", "127.0.0.1:0")
		d.waitServing(t)
		d.stop(t)
	})

	t.Run("bad log level", func(t *testing.T) {
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--log-level", "nope")
		if !strings.Contains(out, "--log-level") {
			t.Errorf("output does not mention --log-level:\n%s", out)
		}
	})

	t.Run("address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		taken := ln.Addr().String()
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", taken)
		if !strings.Contains(out, taken) {
			t.Errorf("output does not name the address in use %s:\n%s", taken, out)
		}
	})
}

// listenerJSON is the part of tcpgate.v1.Listener the tests read, as
// protojson prints it: lowerCamelCase, 64-bit integers as strings.
type listenerJSON struct {
	ListenerID        string `json:"listenerId"`
	Address           string `json:"address"`
	NodeID            string `json:"nodeId"`
	EveryNode         bool   `json:"everyNode"`
	State             string `json:"state"`
	ConnectionsActive uint32 `json:"connectionsActive"`
	ConnectionsTotal  uint64 `json:"connectionsTotal,string"`
	BytesIn           uint64 `json:"bytesIn,string"`
	AutoReply         struct {
		Mode string `json:"mode"`
		Text string `json:"text"`
	} `json:"autoReply"`
}

// sendResponseJSON is tcpgate.v1.SendResponse as protojson prints it.
type sendResponseJSON struct {
	BytesWritten       uint64 `json:"bytesWritten,string"`
	ConnectionsReached uint32 `json:"connectionsReached"`
	Reply              *struct {
		Data string `json:"data"`
		Text string `json:"text"`
	} `json:"reply"`
}

// eventJSON is tcpgate.v1.Event as protojson prints it.
type eventJSON struct {
	Sequence      uint64 `json:"sequence,string"`
	Kind          string `json:"kind"`
	ListenerID    string `json:"listenerId"`
	ConnectionID  string `json:"connectionId"`
	RemoteAddress string `json:"remoteAddress"`
	LocalAddress  string `json:"localAddress"`
	Data          string `json:"data"`
	Text          string `json:"text"`
	CloseReason   string `json:"closeReason"`
	Dropped       uint64 `json:"dropped,string"`
	Origin        string `json:"origin"`
	Generation    uint64 `json:"generation,string"`
	Attempt       uint32 `json:"attempt"`
	Delay         string `json:"delay"`
	Error         string `json:"error"`
	NodeID        string `json:"nodeId"`
	Header        struct {
		Incarnation  string `json:"incarnation"`
		NodeID       string `json:"nodeId"`
		LastSequence uint64 `json:"lastSequence,string"`
	} `json:"header"`
}

// payload returns the event's bytes, from data (base64) or text,
// whichever carries them.
func (e eventJSON) payload() string {
	if e.Data == "" {
		return e.Text
	}
	b, err := base64.StdEncoding.DecodeString(e.Data)
	if err != nil {
		return "invalid base64: " + e.Data
	}
	return string(b)
}

// client runs grpcurl against one gateway.
type client struct{ addr string }

// run runs grpcurl -plaintext with args and returns its output and exit error.
func (c client) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, grpcurlBin, append([]string{"-plaintext"}, args...)...)
	cmd.Env = hermeticEnv()
	cmd.WaitDelay = waitDelay
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("grpcurl %s: no answer within %v", strings.Join(args, " "), callTimeout)
	}
	return out.String(), errOut.String(), err
}

// mustRun runs grpcurl on the gateway with args after the address, and
// returns its stdout; it fails the test when grpcurl fails.
func (c client) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	full := append([]string{c.addr}, args...)
	stdout, stderr, err := c.run(t, full...)
	if err != nil {
		t.Fatalf("grpcurl %s: %v\n%s%s", strings.Join(full, " "), err, stdout, stderr)
	}
	return stdout
}

// call invokes one GatewayService method with req as JSON and decodes the
// response into resp; it fails the test when the call fails.
func (c client) call(t *testing.T, method string, req, resp any) {
	t.Helper()
	body := mustJSON(t, req)
	stdout, stderr, err := c.run(t, "-d", body, c.addr, service+"/"+method)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", method, body, err, stdout, stderr)
	}
	decodeJSON(t, stdout, resp)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decoding %T: %v\n%s", v, err, s)
	}
}

// hermeticEnv is this process's environment without TCPGATE_ variables,
// plus a REST address on a free port (tests never take the fixed default
// 127.0.0.1:50080), plus extra, which wins.
func hermeticEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "TCPGATE_") })
	env = append(env, "TCPGATE_HTTP_ADDR=127.0.0.1:0")
	return append(env, extra...)
}

// servingLine matches the daemon's log line once gRPC is served.
var servingLine = regexp.MustCompile(`msg="gateway serving" .*\bgrpc_addr=("[^"]*"|\S+)`)

// daemon is a running `tcpgate serve`.
type daemon struct {
	cmd     *exec.Cmd
	stderr  servertest.LogSink
	serving chan string   // the gRPC address, once logged
	done    chan struct{} // closed once the process has exited and err is set
	err     error         // Wait's result
}

// startDaemon starts tcpgate with args and env. Cleanup kills it if it is
// still running and logs its stderr when the test failed.
func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return startDaemonBin(t, tcpgateBin, env, args...)
}

// startDaemonBin is startDaemon with the binary bin (tcpgateBin or plainBin).
func startDaemonBin(t *testing.T, bin string, env []string, args ...string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{
		cmd:     exec.CommandContext(ctx, bin, args...),
		serving: make(chan string, 1),
		done:    make(chan struct{}),
	}
	d.cmd.Env = env
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GORACE=") }) {
		// A -race build sleeps a second at exit by default; nothing here
		// needs that time to flush reports.
		d.cmd.Env = append(slices.Clip(env), "GORACE=atexit_sleep_ms=0")
	}
	d.cmd.WaitDelay = waitDelay
	pipe, err := d.cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting tcpgate: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&d.stderr, line)
			if m := servingLine.FindStringSubmatch(line); m != nil {
				select {
				case d.serving <- strings.Trim(m[1], `"`):
				default:
				}
			}
		}
		io.Copy(&d.stderr, pipe) // after an overlong line
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-d.done
		if t.Failed() {
			t.Logf("tcpgate %s: %v; stderr:\n%s", strings.Join(args, " "), d.err, d.stderr.String())
		}
	})
	return d
}

// waitServing returns the gRPC address the daemon logs it serves on.
func (d *daemon) waitServing(t *testing.T) string {
	t.Helper()
	select {
	case addr := <-d.serving:
		return addr
	case <-d.done:
		t.Fatalf("tcpgate exited before serving: %v\n%s", d.err, d.stderr.String())
	case <-time.After(startTimeout):
		t.Fatalf("tcpgate did not log \"gateway serving\" within %v:\n%s", startTimeout, d.stderr.String())
	}
	return ""
}

// waitExit waits for the daemon to exit and returns Wait's result.
func (d *daemon) waitExit(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-d.done:
		return d.err
	case <-time.After(timeout):
		t.Fatalf("tcpgate did not exit within %v", timeout)
		return nil
	}
}

// stop sends SIGTERM and expects a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("sending SIGTERM: %v", err)
	}
	if err := d.waitExit(t, exitTimeout); err != nil {
		t.Errorf("tcpgate after SIGTERM: %v, want exit status 0", err)
	}
}

// runFailing runs tcpgate, expects it to exit non-zero within callTimeout,
// and returns its combined output.
func runFailing(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tcpgateBin, args...)
	cmd.Env = env
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("tcpgate %s: still running after %v, want it to exit non-zero:\n%s", strings.Join(args, " "), callTimeout, out)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("tcpgate %s: err = %v, want a non-zero exit:\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// subscription is a grpcurl Subscribe running in the background, with the
// events it has printed so far.
type subscription struct {
	stderr servertest.LogSink
	done   chan struct{} // closed once grpcurl has exited and waitErr is set
	// waitErr is Wait's result.
	waitErr error

	mu        sync.Mutex    // guards the fields below
	events    []eventJSON   // every event received, in stream order
	changed   chan struct{} // closed and replaced when events grow or the stream ends
	ended     bool
	decodeErr error
}

// subscribe starts grpcurl Subscribe with req. Cleanup kills it if it is
// still running and logs what it saw when the test failed.
func subscribe(t *testing.T, addr string, req any) *subscription {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscription{done: make(chan struct{}), changed: make(chan struct{})}
	cmd := exec.CommandContext(ctx, grpcurlBin, "-plaintext", "-d", mustJSON(t, req), addr, service+"/Subscribe")
	cmd.Env = hermeticEnv()
	cmd.WaitDelay = waitDelay
	cmd.Stderr = &s.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting grpcurl Subscribe: %v", err)
	}
	go func() {
		// grpcurl prints each response as one pretty-printed JSON object.
		dec := json.NewDecoder(stdout)
		for {
			var resp struct {
				Events []eventJSON `json:"events"`
			}
			err := dec.Decode(&resp)
			s.mu.Lock()
			if err == nil {
				s.events = append(s.events, resp.Events...)
			} else if err != io.EOF {
				s.decodeErr = err
			}
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
			if err != nil {
				break
			}
		}
		io.Copy(io.Discard, stdout)
		s.waitErr = cmd.Wait()
		s.mu.Lock()
		s.ended = true
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		close(s.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
		if t.Failed() {
			t.Logf("grpcurl Subscribe: %v; stderr: %s; events:\n%s", s.waitErr, s.stderr.String(), s.dump())
		}
	})
	return s
}

// len returns how many events have arrived.
func (s *subscription) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// next waits up to timeout for the first event at index from or later that
// matches, and returns its index.
func (s *subscription) next(t *testing.T, from int, timeout time.Duration, match func(eventJSON) bool) (int, eventJSON, bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		for i := from; i < len(s.events); i++ {
			if match(s.events[i]) {
				e := s.events[i]
				s.mu.Unlock()
				return i, e, true
			}
		}
		from = len(s.events)
		changed, ended, decodeErr := s.changed, s.ended, s.decodeErr
		s.mu.Unlock()
		if decodeErr != nil {
			t.Fatalf("decoding the Subscribe stream: %v", decodeErr)
		}
		if ended {
			t.Fatalf("Subscribe ended (%v): %s", s.waitErr, s.stderr.String())
		}
		select {
		case <-changed:
		case <-deadline.C:
			return 0, eventJSON{}, false
		}
	}
}

// waitFor returns the first event at index from or later that matches,
// failing the test when none arrives within eventTimeout.
func (s *subscription) waitFor(t *testing.T, from int, what string, match func(eventJSON) bool) (int, eventJSON) {
	t.Helper()
	i, e, ok := s.next(t, from, eventTimeout, match)
	if !ok {
		t.Fatalf("no %s event within %v; stream so far:\n%s", what, eventTimeout, s.dump())
	}
	return i, e
}

// sync returns once the subscription is live: a plain TCP connection made
// to listenerAddr now shows up as CONNECTION_OPENED. Events before the
// subscription went live are not sent, so it dials until one does. It
// returns how many connections it made.
func (s *subscription) sync(t *testing.T, listenerAddr string) int {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for n := 1; time.Now().Before(deadline); n++ {
		c, err := net.DialTimeout("tcp", listenerAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("sync probe: %v", err)
		}
		local := c.LocalAddr().String()
		c.Close()
		if _, _, ok := s.next(t, 0, syncPoll, func(e eventJSON) bool {
			return e.Kind == kindConnectionOpened && e.RemoteAddress == local
		}); ok {
			return n
		}
	}
	t.Fatalf("Subscribe showed none of the probe connections to %s within %v:\n%s", listenerAddr, eventTimeout, s.dump())
	return 0
}

// lifecycle checks that the events of connection id are exactly
// CONNECTION_OPENED, DATA, CONNECTION_CLOSED of listener lid, in that order
// with increasing sequences, and returns them.
func (s *subscription) lifecycle(t *testing.T, lid, id string) []eventJSON {
	t.Helper()
	s.mu.Lock()
	var evs []eventJSON
	for _, e := range s.events {
		if e.ConnectionID == id {
			evs = append(evs, e)
		}
	}
	s.mu.Unlock()
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	want := []string{kindConnectionOpened, kindData, kindConnectionClosed}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events of connection %s = %v, want %v", id, kinds, want)
	}
	for i, e := range evs {
		if e.ListenerID != lid {
			t.Errorf("%s event of connection %s: listenerId = %q, want %q", e.Kind, id, e.ListenerID, lid)
		}
		if i > 0 && e.Sequence <= evs[i-1].Sequence {
			t.Errorf("events of connection %s: sequence %d after %d, want increasing", id, e.Sequence, evs[i-1].Sequence)
		}
	}
	return evs
}

// checkSequences checks that every event so far has a sequence greater than
// the one before, and that none was dropped.
func (s *subscription) checkSequences(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.events {
		if i == 0 && e.Kind == kindStreamStarted {
			continue // every stream opens with it, sequence 0
		}
		if e.Kind == kindEventsDropped {
			t.Errorf("event %d: %s (dropped %d) in a stream that never fell behind", i, e.Kind, e.Dropped)
			continue
		}
		if e.Sequence == 0 {
			t.Errorf("event %d (%s): sequence 0, want it set", i, e.Kind)
		}
		if i > 0 && e.Sequence <= s.events[i-1].Sequence {
			t.Errorf("event %d (%s): sequence %d after %d, want strictly increasing", i, e.Kind, e.Sequence, s.events[i-1].Sequence)
		}
	}
}

// dump formats the events received so far, one per line.
func (s *subscription) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, e := range s.events {
		fmt.Fprintf(&b, "  %d %s listener=%s conn=%s remote=%s text=%q data=%s reason=%s\n",
			e.Sequence, e.Kind, e.ListenerID, e.ConnectionID, e.RemoteAddress, e.Text, e.Data, e.CloseReason)
	}
	return b.String()
}
