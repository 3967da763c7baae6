package servertest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/rpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// REST is an HTTP client of one gateway's REST API. Its transport is its
// own, so that the test's end closes its keep-alive connections (and their
// goroutines, which goleak would report).
type REST struct {
	// Base is the gateway's root, "http://127.0.0.1:PORT".
	Base string
	// HTTP is the client, for requests Do does not make (streams, TLS).
	HTTP *http.Client
	t    testing.TB
}

// NewREST returns a client of the REST gateway at base ("http://host:port").
func NewREST(t testing.TB, base string) *REST {
	t.Helper()
	if base == "" {
		t.Fatal("no REST gateway: start servertest with HTTPAddr 127.0.0.1:0")
	}
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &REST{Base: base, HTTP: &http.Client{Transport: tr}, t: t}
}

// Do sends one request and reads the whole response, within Wait. A body
// is sent as application/json; a "Host" in header is the request's Host.
// The body of a live event stream (a 200 of NDJSON or SSE) is not read,
// since it would not end: Do returns it as nil, closed.
func (r *REST) Do(method, path, body string, header http.Header) (*http.Response, []byte) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.Base+path, rd)
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
	if h := header.Get("Host"); h != "" {
		req.Host = h // net/http sends req.Host, never a Host header
	}
	resp, err := r.HTTP.Do(req)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode == http.StatusOK &&
		(strings.HasPrefix(ct, "application/x-ndjson") || strings.HasPrefix(ct, "text/event-stream")) {
		return resp, nil
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

// Call sends a request that must succeed with 200 and a JSON body, decodes
// the body into out (unless nil) strictly, so that a field the API does
// not define fails the test, and returns the body.
func (r *REST) Call(method, path, body string, out proto.Message) string {
	r.t.Helper()
	resp, b := r.Do(method, path, body, nil)
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("%s %s = %d %s, want 200", method, path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		r.t.Fatalf("%s %s: Content-Type = %q", method, path, ct)
	}
	if out != nil {
		Decode(r.t, string(b), out)
	}
	return string(b)
}

// Decode decodes a JSON body into out strictly.
func Decode(t testing.TB, body string, out proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(body), out); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
}

// APIError is grpc-gateway's error body.
type APIError struct {
	Code    *int          `json:"code"`
	Message string        `json:"message"`
	Details []ErrorDetail `json:"details"`
}

// ErrorDetail is one of an APIError's details: an ErrorInfo or a
// BadRequest, as the REST gateway writes them.
type ErrorDetail struct {
	Type            string            `json:"@type"`
	Reason          string            `json:"reason"`
	Domain          string            `json:"domain"`
	Metadata        map[string]string `json:"metadata"`
	FieldViolations []struct {
		Field string `json:"field"`
	} `json:"fieldViolations"`
}

// Info returns the reason and metadata of e's tcpgate.v1 ErrorInfo (""
// and nil without one) and the fields of its BadRequest violations.
func (e APIError) Info() (reason string, meta map[string]string, violations []string) {
	for _, d := range e.Details {
		if d.Type == "type.googleapis.com/google.rpc.ErrorInfo" && d.Domain == rpc.ErrorDomain {
			reason, meta = d.Reason, d.Metadata
		}
		for _, v := range d.FieldViolations {
			violations = append(violations, v.Field)
		}
	}
	return reason, meta, violations
}

// WantError checks an error response: its HTTP status, and a JSON body
// with the gRPC code and a message containing msg.
func WantError(t testing.TB, resp *http.Response, body []byte, httpStatus, code int, msg string) APIError {
	t.Helper()
	if resp.StatusCode != httpStatus {
		t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, httpStatus, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type = %q, want application/json; body %s", ct, body)
	}
	var e APIError
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
