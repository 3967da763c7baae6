package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// wait bounds every wait in these tests; reaching it is a failure, not a
// measurement.
const wait = 10 * time.Second

// seedReply is the auto reply of kn-sock's example server.
const seedReply = "Message received"

// rest is an HTTP client of one gateway's REST API. Its transport is its
// own, so that the test's end closes its keep-alive connections (and their
// goroutines, which goleak would report).
type rest struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newREST(t *testing.T, base string) *rest {
	t.Helper()
	if base == "" {
		t.Fatal("no REST gateway: start servertest with HTTPAddr 127.0.0.1:0")
	}
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &rest{t: t, base: base, hc: &http.Client{Transport: tr}}
}

// startREST runs a whole gateway with a REST front on 127.0.0.1:0.
func startREST(t *testing.T, cfg server.Config) (*servertest.Gateway, *rest) {
	t.Helper()
	cfg.HTTPAddr = "127.0.0.1:0"
	g := servertest.Start(t, cfg)
	return g, newREST(t, g.BaseURL)
}

// do sends one request and reads the whole response.
func (r *rest) do(method, path, body string, header http.Header) (*http.Response, []byte) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, rd)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

// call sends a request that must succeed with 200 and decodes the body
// into out, strictly: a field the API does not define fails the test.
func (r *rest) call(method, path, body string, out proto.Message) string {
	r.t.Helper()
	resp, b := r.do(method, path, body, nil)
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("%s %s = %d %s, want 200", method, path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		r.t.Fatalf("%s %s: Content-Type = %q", method, path, ct)
	}
	if out != nil {
		if err := protojson.Unmarshal(b, out); err != nil {
			r.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
	return string(b)
}

// apiError is grpc-gateway's error body.
type apiError struct {
	Code    *int   `json:"code"`
	Message string `json:"message"`
	Details []any  `json:"details"`
}

// wantError checks an error response: its HTTP status, and a JSON body
// with the gRPC code and a message containing msg.
func wantError(t *testing.T, resp *http.Response, body []byte, httpStatus, code int, msg string) apiError {
	t.Helper()
	if resp.StatusCode != httpStatus {
		t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, httpStatus, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type = %q, want application/json; body %s", ct, body)
	}
	var e apiError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	if e.Code == nil || *e.Code != code {
		t.Fatalf("error body %s: code want %d", body, code)
	}
	if e.Message == "" || !strings.Contains(e.Message, msg) {
		t.Fatalf("error body %s: message should contain %q", body, msg)
	}
	return e
}

// listenerBody is a StartListener body: kn-sock's example server on
// 127.0.0.1 and a free port, answering every frame with seedReply.
func listenerBody(id string) string {
	return fmt.Sprintf(`{
		"listenerId": %q,
		"host": "127.0.0.1",
		"port": 0,
		"framing": {"mode": "FRAMING_MODE_RAW"},
		"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": %q}
	}`, id, seedReply)
}

// startListener starts a seed listener over REST.
func (r *rest) startListener(id string) *tcpgatev1.Listener {
	r.t.Helper()
	var resp tcpgatev1.StartListenerResponse
	r.call(http.MethodPost, "/v1/listeners", listenerBody(id), &resp)
	l := resp.GetListener()
	if l.GetListenerId() != id || !strings.HasPrefix(l.GetAddress(), "127.0.0.1:") {
		r.t.Fatalf("started listener = %v", l)
	}
	return l
}

// send POSTs /v1/send and decodes the response.
func (r *rest) send(body string) *tcpgatev1.SendResponse {
	r.t.Helper()
	var resp tcpgatev1.SendResponse
	r.call(http.MethodPost, "/v1/send", body, &resp)
	return &resp
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(wait))
	return c.(*net.TCPConn)
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return buf
}

// seedClient is kn-sock's example client: it connects, sends "Hello,
// World!", reads the auto reply and closes.
func seedClient(t *testing.T, addr string) {
	t.Helper()
	c := dial(t, addr)
	if _, err := c.Write([]byte("Hello, World!")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, len(seedReply)); string(got) != seedReply {
		t.Fatalf("reply = %q, want %q", got, seedReply)
	}
	c.Close()
}

// peer is a plain Go TCP server for Send-to-address tests: it runs handle
// for every connection.
func peer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("peer accept: %v", err)
				}
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(wait))
				handle(c)
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// refusedAddr returns a 127.0.0.1 address nobody listens on: a port that
// was free a moment ago.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// eventually polls cond until it holds, failing the test after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// decode decodes a JSON body into out strictly.
func decode(t *testing.T, body string, out proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(body), out); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
}
