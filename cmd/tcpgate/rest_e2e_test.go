package main_test

// End-to-end tests of the REST front: the built daemon driven by the real
// curl, asserting the status codes, bodies and streams a REST user sees.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestREST walks the REST API with curl: health, OpenAPI, a listener's
// life, the event stream as NDJSON and as Server-Sent Events, an accepted
// connection listed, written to and closed, a one-shot send, metrics, the
// HTTP status of every error class, and the streams' last word at shutdown.
func TestREST(t *testing.T) {
	t.Parallel()
	g, h := startRESTGateway(t)

	t.Run("healthz", func(t *testing.T) {
		var health struct {
			Status string `json:"status"`
		}
		h.mustDo(t, "GET", "/healthz", "", &health)
		if health.Status != "SERVING" {
			t.Errorf("GET /healthz: status = %q, want SERVING", health.Status)
		}
	})

	t.Run("openapi", func(t *testing.T) {
		var doc struct {
			Swagger string                    `json:"swagger"`
			Paths   map[string]map[string]any `json:"paths"`
		}
		h.mustDo(t, "GET", "/openapi.json", "", &doc)
		if doc.Swagger == "" {
			t.Errorf(`GET /openapi.json: no "swagger" version`)
		}
		for _, m := range []string{"get", "post"} {
			if _, ok := doc.Paths["/v1/listeners"][m]; !ok {
				t.Errorf("GET /openapi.json: no %s /v1/listeners among %d paths", m, len(doc.Paths))
			}
		}
	})

	// The listener under test, and a second one that never answers: the
	// silent peer of the timeout, and the listener the filters leave out.
	var started struct {
		Listener listenerJSON `json:"listener"`
	}
	h.mustDo(t, "POST", "/v1/listeners", `{"listenerId": "rest", "host": "127.0.0.1", "port": 0}`, &started)
	l := started.Listener
	laddr := l.Address
	if host, port, err := net.SplitHostPort(laddr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("POST /v1/listeners: address = %q, want 127.0.0.1 with the bound port", laddr)
	}
	if l.ListenerID != "rest" || l.State != "LISTENER_STATE_LISTENING" {
		t.Fatalf("POST /v1/listeners = %+v, want listener rest, LISTENER_STATE_LISTENING", l)
	}
	var silent struct {
		Listener listenerJSON `json:"listener"`
	}
	h.mustDo(t, "POST", "/v1/listeners", `{"listenerId": "silent", "host": "127.0.0.1"}`, &silent)

	t.Run("get listener", func(t *testing.T) {
		var resp struct {
			Listener listenerJSON `json:"listener"`
		}
		h.mustDo(t, "GET", "/v1/listeners/rest", "", &resp)
		if got := resp.Listener; got.ListenerID != "rest" || got.Address != laddr || got.State != "LISTENER_STATE_LISTENING" {
			t.Errorf("GET /v1/listeners/rest = %+v, want rest listening on %s", got, laddr)
		}
	})

	t.Run("list listeners", func(t *testing.T) {
		var resp struct {
			Listeners []listenerJSON `json:"listeners"`
		}
		h.mustDo(t, "GET", "/v1/listeners", "", &resp)
		var ids []string
		for _, l := range resp.Listeners {
			ids = append(ids, l.ListenerID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"rest", "silent"}) {
			t.Errorf("GET /v1/listeners: listeners %q, want rest and silent", ids)
		}
	})

	ndjson := h.events(t, "NDJSON", "/v1/events?listenerIds=rest")
	sse := h.events(t, "SSE", "/v1/events?listenerIds=rest", "-H", "Accept: text/event-stream")
	for _, s := range []*eventStream{ndjson, sse} {
		s.sync(t, laddr)
	}
	t.Run("stream headers", func(t *testing.T) {
		for _, tt := range []struct {
			s    *eventStream
			want string
		}{
			{ndjson, "application/x-ndjson"},
			{sse, "text/event-stream"},
		} {
			hdr := tt.s.headers(t)
			if got := hdr.Get("Content-Type"); !strings.HasPrefix(got, tt.want) {
				t.Errorf("%s stream: Content-Type %q, want %s", tt.s.name, got, tt.want)
			}
			if _, err := strconv.ParseUint(hdr.Get("Tcpgate-Last-Sequence"), 10, 64); err != nil {
				t.Errorf("%s stream: Tcpgate-Last-Sequence %q, want a sequence number", tt.s.name, hdr.Get("Tcpgate-Last-Sequence"))
			}
		}
		if !strings.HasPrefix(sse.stdout.String(), "retry: 2000\n\n") {
			t.Errorf("SSE stream starts %.40q, want the EventSource retry first", sse.stdout.String())
		}
	})

	// A TCP client of listener rest, and one of silent that no filter or
	// listing of rest may show.
	conn, local := dialLocal(t, laddr)
	_, otherLocal := dialLocal(t, silent.Listener.Address)
	const hello = "hello over tcp"
	if _, err := conn.Write([]byte(hello)); err != nil {
		t.Fatalf("writing to listener rest: %v", err)
	}
	var connID string
	t.Run("data event", func(t *testing.T) {
		for _, s := range []*eventStream{ndjson, sse} {
			evs := s.waitEvents(t, "CONNECTION_OPENED and DATA of "+local, func(evs []eventJSON) bool {
				i := slices.IndexFunc(evs, func(e eventJSON) bool {
					return e.Kind == kindConnectionOpened && e.RemoteAddress == local
				})
				return i >= 0 && slices.ContainsFunc(evs, func(e eventJSON) bool {
					return e.Kind == kindData && e.ConnectionID == evs[i].ConnectionID && e.Text == hello
				})
			})
			i := slices.IndexFunc(evs, func(e eventJSON) bool { return e.Kind == kindConnectionOpened && e.RemoteAddress == local })
			opened := evs[i]
			if connID != "" && opened.ConnectionID != connID {
				t.Errorf("%s stream: connection %s, the other stream said %s", s.name, opened.ConnectionID, connID)
			}
			connID = opened.ConnectionID
			data := evs[slices.IndexFunc(evs, func(e eventJSON) bool { return e.Kind == kindData && e.ConnectionID == connID })]
			if data.ListenerID != "rest" || data.Sequence <= opened.Sequence {
				t.Errorf("%s stream: DATA %+v after CONNECTION_OPENED %+v, want listener rest and a later sequence", s.name, data, opened)
			}
			if want := "hello over tcp"; data.Text != want || data.Data != "" {
				t.Errorf("%s stream: DATA text %q data %q, want text %q only", s.name, data.Text, data.Data, want)
			}
		}
	})
	if connID == "" {
		t.Fatal("no connection id from the event streams")
	}

	t.Run("list connections", func(t *testing.T) {
		var resp struct {
			Connections []restConnectionJSON `json:"connections"`
		}
		h.mustDo(t, "GET", "/v1/connections?listenerId=rest", "", &resp)
		i := slices.IndexFunc(resp.Connections, func(c restConnectionJSON) bool { return c.ConnectionID == connID })
		if i < 0 {
			t.Fatalf("GET /v1/connections?listenerId=rest = %+v, want connection %s", resp.Connections, connID)
		}
		if got := resp.Connections[i]; got.ListenerID != "rest" || got.RemoteAddress != local || got.BytesIn != uint64(len(hello)) {
			t.Errorf("connection %s = %+v, want listener rest, remote %s, %d bytes in", connID, got, local, len(hello))
		}
		for _, c := range resp.Connections {
			if c.ListenerID != "rest" || c.RemoteAddress == otherLocal {
				t.Errorf("GET /v1/connections?listenerId=rest lists %+v, a connection of another listener", c)
			}
		}
	})

	t.Run("send to the connection", func(t *testing.T) {
		var resp sendResponseJSON
		h.mustDo(t, "POST", "/v1/send", fmt.Sprintf(`{"connectionId": %q, "text": "hi from rest"}`, connID), &resp)
		if resp.BytesWritten != 12 || resp.ConnectionsReached != 1 || resp.Reply != nil {
			t.Errorf("POST /v1/send = %+v, want 12 bytes to 1 connection and no reply", resp)
		}
		if got := readN(t, conn, 12); got != "hi from rest" {
			t.Errorf("the TCP client read %q, want %q", got, "hi from rest")
		}
	})

	t.Run("send to an address", func(t *testing.T) {
		var resp sendResponseJSON
		h.mustDo(t, "POST", "/v1/send", fmt.Sprintf(`{"address": %q, "data": "AQIDBA=="}`, laddr), &resp)
		if resp.BytesWritten != 4 || resp.ConnectionsReached != 1 {
			t.Errorf("POST /v1/send = %+v, want 4 bytes to 1 connection", resp)
		}
		ndjson.waitEvents(t, `DATA "AQIDBA=="`, func(evs []eventJSON) bool {
			return slices.ContainsFunc(evs, func(e eventJSON) bool {
				return e.Kind == kindData && e.payload() == "\x01\x02\x03\x04" && e.ConnectionID != connID
			})
		})
	})

	t.Run("close the connection", func(t *testing.T) {
		var resp struct {
			Connection restConnectionJSON `json:"connection"`
		}
		h.mustDo(t, "DELETE", "/v1/connections/"+connID, "", &resp)
		if resp.Connection.ConnectionID != connID || resp.Connection.RemoteAddress != local {
			t.Errorf("DELETE /v1/connections/%s = %+v, want that connection, remote %s", connID, resp.Connection, local)
		}
		conn.SetReadDeadline(time.Now().Add(eventTimeout))
		if n, err := conn.Read(make([]byte, 64)); !errors.Is(err, io.EOF) {
			t.Errorf("the TCP client read %d bytes, %v after DELETE; want EOF", n, err)
		}
		ndjson.waitEvents(t, "CONNECTION_CLOSED of "+connID, func(evs []eventJSON) bool {
			return slices.ContainsFunc(evs, func(e eventJSON) bool {
				return e.Kind == kindConnectionClosed && e.ConnectionID == connID && e.CloseReason == "CLOSE_REASON_CLOSED_BY_API"
			})
		})
	})

	t.Run("errors", func(t *testing.T) {
		closed := servertest.RefusedAddr(t)
		tests := []struct {
			name         string
			method, path string
			body         string
			status       int
			code         int    // the gRPC code in the JSON body
			mention      string // in the JSON body's message
		}{
			{"bad port", "POST", "/v1/listeners", `{"host": "127.0.0.1", "port": 70000}`, 400, 3, "70000"},
			{"unknown listener", "GET", "/v1/listeners/no-such-listener", "", 404, 5, "no-such-listener"},
			{"unknown connection", "DELETE", "/v1/connections/c999999", "", 404, 5, "c999999"},
			{"wrong method", "PUT", "/v1/listeners", `{}`, 405, 12, "PUT"},
			{"listener id taken", "POST", "/v1/listeners", `{"listenerId": "silent", "host": "127.0.0.1"}`, 409, 6, "silent"},
			{"connection refused", "POST", "/v1/send", fmt.Sprintf(`{"address": %q, "text": "x"}`, closed), 503, 14, closed},
			{
				"reply timeout", "POST", "/v1/send",
				fmt.Sprintf(`{"address": %q, "text": "x", "awaitReply": {"mode": "AWAIT_MODE_FIRST_READ"}, "timeout": "1s"}`, silent.Listener.Address),
				504, 4, "",
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h.wantError(t, tt.method, tt.path, tt.body, tt.status, tt.code, tt.mention)
			})
		}
	})

	t.Run("stop listener", func(t *testing.T) {
		var resp struct {
			Listener listenerJSON `json:"listener"`
		}
		h.mustDo(t, "DELETE", "/v1/listeners/rest", "", &resp)
		if resp.Listener.State != "LISTENER_STATE_STOPPED" {
			t.Errorf("DELETE /v1/listeners/rest: state = %q, want LISTENER_STATE_STOPPED", resp.Listener.State)
		}
		if c, err := net.DialTimeout("tcp", laddr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("dialing %s after DELETE /v1/listeners/rest succeeded, want connection refused", laddr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dialing %s after DELETE /v1/listeners/rest: %v, want connection refused", laddr, err)
		}
		h.wantError(t, "GET", "/v1/listeners/rest", "", 404, 5, "rest")
		for _, s := range []*eventStream{ndjson, sse} {
			s.waitEvents(t, "LISTENER_STOPPED of rest", func(evs []eventJSON) bool {
				return slices.ContainsFunc(evs, func(e eventJSON) bool { return e.Kind == kindListenerStopped && e.ListenerID == "rest" })
			})
		}
	})

	t.Run("metrics", func(t *testing.T) {
		status, body := h.do(t, "GET", "/metrics", "")
		if status != 200 {
			t.Fatalf("GET /metrics = %d: %s", status, body)
		}
		const calls = `tcpgate_grpc_calls_total{code="%s",method="/tcpgate.v1.GatewayService/%s"} %d`
		for _, want := range []string{
			"# TYPE tcpgate_listeners gauge",
			"tcpgate_listeners 1", // silent
			fmt.Sprintf(calls, "OK", "StartListener", 2),
			fmt.Sprintf(calls, "AlreadyExists", "StartListener", 1),
			fmt.Sprintf(calls, "InvalidArgument", "StartListener", 1),
			fmt.Sprintf(calls, "OK", "CloseConnection", 1),
			fmt.Sprintf(calls, "DeadlineExceeded", "Send", 1),
		} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).MatchString(body) {
				t.Errorf("GET /metrics lacks the line %s", want)
			}
		}
	})

	// Every complete NDJSON line so far is one event.
	for i, line := range strings.Split(strings.TrimSuffix(ndjson.stdout.String(), "\n"), "\n") {
		var e eventJSON
		if err := json.Unmarshal([]byte(line), &e); err != nil || !strings.HasPrefix(e.Kind, "EVENT_KIND_") {
			t.Errorf("NDJSON stream: line %d is not an event: %q", i+1, line)
		}
	}

	// The streams end by saying why, so a client can tell a shutdown from a
	// dropped connection.
	g.d.stop(t)
	for _, s := range []*eventStream{ndjson, sse} {
		select {
		case <-s.done:
		case <-time.After(exitTimeout):
			t.Fatalf("curl %s stream still running %v after the daemon exited", s.name, exitTimeout)
		}
	}
	lines := strings.Split(strings.TrimSuffix(ndjson.stdout.String(), "\n"), "\n")
	var last struct {
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Error == nil || last.Error.Code != 14 {
		t.Errorf("NDJSON stream: last line %q, want {\"error\": {\"code\": 14, ...}}", lines[len(lines)-1])
	}
	if !regexp.MustCompile(`(?m)^event: error\ndata: \{.*"code":14`).MatchString(sse.stdout.String()) {
		t.Errorf("SSE stream ends %q, want an \"event: error\" with code 14", lastLines(sse.stdout.String(), 4))
	}
}

// TestRESTLimit: a limit reached is 429 with a message naming the flag,
// and freeing the limit lets the call through.
func TestRESTLimit(t *testing.T) {
	t.Parallel()
	g, h := startRESTGateway(t, "--max-listeners", "1")

	h.mustDo(t, "POST", "/v1/listeners", `{"listenerId": "one", "host": "127.0.0.1"}`, nil)
	h.wantError(t, "POST", "/v1/listeners", `{"listenerId": "two", "host": "127.0.0.1"}`, 429, 8, "--max-listeners")
	h.mustDo(t, "DELETE", "/v1/listeners/one", "", nil)
	h.mustDo(t, "POST", "/v1/listeners", `{"listenerId": "two", "host": "127.0.0.1"}`, nil)
	g.d.stop(t)
}

// restConnectionJSON is the part of tcpgate.v1.Connection these tests read,
// as protojson prints it.
type restConnectionJSON struct {
	ConnectionID  string `json:"connectionId"`
	ListenerID    string `json:"listenerId"`
	RemoteAddress string `json:"remoteAddress"`
	BytesIn       uint64 `json:"bytesIn,string"`
}

// startRESTGateway starts a daemon serving gRPC and REST on 127.0.0.1
// port 0 with the extra serve flags, and returns it with a curl client of
// its REST address. curl is required: a missing one fails the test.
func startRESTGateway(t *testing.T, extra ...string) (gateway, restClient) {
	t.Helper()
	curl := requireTool(t, "curl")
	args := append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, extra...)
	d := startDaemon(t, hermeticEnv(), args...)
	g := gateway{d: d, grpcAddr: d.waitServing(t)}
	// The serving line is in stderr before its address is handed over.
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("tcpgate logged no http_addr:\n%s", d.stderr.String())
	}
	g.httpAddr = strings.Trim(m[1], `"`)
	return g, restClient{curl: curl, base: "http://" + g.httpAddr}
}

// restClient runs curl against one gateway's REST address.
type restClient struct {
	curl string // the curl binary
	base string // http://host:port
}

// curlArgs are the flags of every curl run: quiet but for errors, and no
// proxy from the environment between the test and loopback.
var curlArgs = []string{"-sS", "--noproxy", "*", "--connect-timeout", "5"}

// do runs one request with curl and returns the HTTP status that curl
// reports (-w '%{http_code}') and the body. A non-empty body is sent as
// the README does, with --json.
func (r restClient) do(t *testing.T, method, path, body string, extra ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	args := append(slices.Clone(curlArgs), "--max-time", strconv.Itoa(int(callTimeout/time.Second)),
		"-X", method, "-w", "\n%{http_code}")
	if body != "" {
		args = append(args, "--json", body)
	}
	args = append(append(args, extra...), r.base+path)
	cmd := exec.CommandContext(ctx, r.curl, args...)
	cmd.Env = hermeticEnv()
	cmd.WaitDelay = waitDelay
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("curl %s %s: no answer within %v", method, path, callTimeout)
	}
	if err != nil {
		var stderr []byte
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			stderr = exit.Stderr
		}
		t.Fatalf("curl %s %s: %v\n%s%s", method, path, err, out, stderr)
	}
	i := strings.LastIndexByte(string(out), '\n')
	status, err := strconv.Atoi(string(out[i+1:]))
	if i < 0 || err != nil {
		t.Fatalf("curl %s %s printed %q, want the body and then the status", method, path, out)
	}
	return status, string(out[:i])
}

// mustDo runs one request, fails the test unless the status is 200, and
// decodes the JSON body into resp unless it is nil.
func (r restClient) mustDo(t *testing.T, method, path, body string, resp any) {
	t.Helper()
	status, out := r.do(t, method, path, body)
	if status != 200 {
		t.Fatalf("%s %s %s = %d, want 200: %s", method, path, body, status, out)
	}
	if resp == nil {
		resp = new(map[string]any)
	}
	decodeJSON(t, out, resp)
}

// wantError runs one request and checks that it fails with the HTTP status
// and the gRPC code in the JSON error body, whose message mentions mention.
func (r restClient) wantError(t *testing.T, method, path, body string, status, code int, mention string) {
	t.Helper()
	got, out := r.do(t, method, path, body)
	if got != status {
		t.Errorf("%s %s %s = %d, want %d: %s", method, path, body, got, status, out)
	}
	var e struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.Code == nil {
		t.Fatalf("%s %s: body %q, want a JSON error with a code (%v)", method, path, out, err)
	}
	if *e.Code != code {
		t.Errorf("%s %s: code %d, want %d: %s", method, path, *e.Code, code, out)
	}
	if !strings.Contains(e.Message, mention) {
		t.Errorf("%s %s: message %q does not mention %q", method, path, e.Message, mention)
	}
}

// eventStream is a `curl -N` of the event stream running in the background.
type eventStream struct {
	*proc
	sse        bool
	headerFile string // where curl -D writes the response headers
}

// events starts curl -N on path with the extra curl flags; an Accept of
// text/event-stream among them makes it a Server-Sent Events stream.
func (r restClient) events(t *testing.T, name, path string, extra ...string) *eventStream {
	t.Helper()
	s := &eventStream{
		sse:        slices.Contains(extra, "Accept: text/event-stream"),
		headerFile: filepath.Join(t.TempDir(), "headers"),
	}
	args := append(slices.Clone(curlArgs), "-N", "-D", s.headerFile)
	args = append(append(args, extra...), r.base+path)
	s.proc = startProc(t, name, hermeticEnv(), "", r.curl, args...)
	return s
}

// decode returns the complete events printed so far.
func (s *eventStream) decode(out string) ([]eventJSON, error) {
	if s.sse {
		return sseEvents(out)
	}
	return jsonLines(out), nil
}

// waitEvents waits up to eventTimeout for the events printed to satisfy
// match and returns them.
func (s *eventStream) waitEvents(t *testing.T, what string, match func([]eventJSON) bool) []eventJSON {
	t.Helper()
	out := s.waitFor(t, what, eventTimeout, func(out string) bool {
		evs, err := s.decode(out)
		return err == nil && match(evs)
	})
	evs, err := s.decode(out)
	if err != nil {
		t.Fatalf("%s stream: %v", s.name, err)
	}
	return evs
}

// headers returns the response headers curl wrote, which it has done by
// the time the first event arrived.
func (s *eventStream) headers(t *testing.T) httpHeader {
	t.Helper()
	b, err := os.ReadFile(s.headerFile)
	if err != nil {
		t.Fatalf("%s stream: reading the response headers: %v", s.name, err)
	}
	h := httpHeader{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			h[strings.ToLower(k)] = strings.TrimSpace(v)
		}
	}
	return h
}

// httpHeader is a response's header fields by lower-case name, as curl -D
// printed them.
type httpHeader map[string]string

// Get returns the value of the field name.
func (h httpHeader) Get(name string) string { return h[strings.ToLower(name)] }

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
