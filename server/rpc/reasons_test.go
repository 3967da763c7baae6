package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// grpcInfo returns the ErrorInfo and BadRequest fields of a gRPC error,
// failing the test when err is not a gRPC status.
func grpcInfo(t *testing.T, err error) (reason string, meta map[string]string, fields []string) {
	t.Helper()
	if _, ok := status.FromError(err); !ok || err == nil {
		t.Fatalf("want a gRPC status, got %v", err)
	}
	e := servertest.ErrorOf(err)
	return e.Reason, e.Meta, e.Fields
}

// TestErrorReasons checks, over real gRPC and REST, that the API's errors
// carry their ErrorInfo (and the metadata and field violations each
// knows), that every row of the sentinel table has its reason, and that
// every ErrorReason value is produced by some path: a value added
// without one fails here.
func TestErrorReasons(t *testing.T) {
	seen := map[string]bool{}

	// Every sentinel row, through toStatus.
	errs, reasons := rpc.SentinelRows()
	log := slog.New(slog.DiscardHandler)
	for i, e := range errs {
		err := rpc.ToStatus(log, fmt.Errorf("doing something: %w", e))
		got, _, _ := grpcInfo(t, err)
		if want := rpc.Reason(reasons[i]); got != want || reasons[i] == tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			t.Errorf("sentinel %q: reason %q, want %q", e, got, want)
		}
		seen[got] = true
	}
	// The errors toStatus knows by type rather than by sentinel.
	for err, want := range map[error]string{
		&hub.SlowConsumerError{QueueBytes: 1}:                 "SLOW_CONSUMER",
		&net.DNSError{Err: "no such host", Name: "x.invalid"}: "HOST_NOT_FOUND",
		errors.New("something unforeseen"):                    "INTERNAL",
	} {
		got, _, _ := grpcInfo(t, rpc.ToStatus(log, err))
		if got != want {
			t.Errorf("%v: reason %q, want %q", err, got, want)
		}
		seen[got] = true
	}
	lim, meta, _ := grpcInfo(t, rpc.ToStatus(log, &limits.Error{Doing: "subscribing", Name: "max_subscribers", Flag: "--max-subscribers", Limit: 3, Err: hub.ErrTooManySubscribers}))
	if lim != "LIMIT_REACHED" || meta["flag"] != "--max-subscribers" || meta["limit"] != "3" {
		t.Errorf("limit error: reason %q metadata %v, want LIMIT_REACHED flag --max-subscribers limit 3", lim, meta)
	}

	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", MaxListeners: 2, MaxSendBytes: 1024, AuthToken: "s3cret-token-for-tests"})
	ctx := context.Background()
	authed := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret-token-for-tests")
	}
	c := g.Client

	// gRPC paths.
	check := func(name string, err error, want string, wantMeta map[string]string, wantField string) {
		t.Helper()
		got, meta, fields := grpcInfo(t, err)
		if got != want {
			t.Errorf("gRPC %s: reason %q, want %q (%v)", name, got, want, err)
		}
		for k, v := range wantMeta {
			if meta[k] != v {
				t.Errorf("gRPC %s: metadata %s=%q, want %q (all: %v)", name, k, meta[k], v, meta)
			}
		}
		if wantField != "" && (len(fields) != 1 || fields[0] != wantField) {
			t.Errorf("gRPC %s: BadRequest fields %v, want [%s]", name, fields, wantField)
		}
		seen[got] = true
	}
	_, err := c.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	check("no token", err, "UNAUTHENTICATED", nil, "")
	actx := authed(ctx)
	// Before any event: the newest sequence is 0.
	sub, err := c.Subscribe(actx, &tcpgatev1.SubscribeRequest{SinceSequence: 5})
	if err == nil {
		_, err = sub.Recv()
	}
	check("since_sequence in the future", err, "SEQUENCE_OUT_OF_RANGE", map[string]string{"last_sequence": "0", "field": "since_sequence"}, "")
	_, err = c.StartListener(actx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Port: 70000})
	check("bad port", err, "INVALID_ARGUMENT", map[string]string{"field": "port"}, "port")
	_, err = c.Send(actx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:1"}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, Match: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Regex{Regex: "("}}}})
	check("bad regex", err, "INVALID_ARGUMENT", map[string]string{"field": "await_reply.match.regex"}, "await_reply.match.regex")
	_, err = c.Send(actx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:1"}, Payload: &tcpgatev1.SendRequest_Text{Text: strings.Repeat("x", 2000)}})
	check("payload over --max-send-bytes", err, "LIMIT_REACHED", map[string]string{"flag": "--max-send-bytes", "limit": "1024"}, "")
	_, err = c.GetListener(actx, &tcpgatev1.GetListenerRequest{ListenerId: "nope"})
	check("unknown listener", err, "LISTENER_NOT_FOUND", nil, "")
	_, err = c.CloseConnection(actx, &tcpgatev1.CloseConnectionRequest{ConnectionId: "nope"})
	check("unknown connection", err, "CONNECTION_NOT_FOUND", nil, "")
	_, err = c.GetConnection(actx, &tcpgatev1.GetConnectionRequest{ConnectionId: "nope"})
	check("GetConnection of an unknown connection", err, "CONNECTION_NOT_FOUND", nil, "")
	_, err = c.ListConnections(actx, &tcpgatev1.ListConnectionsRequest{PageToken: "garbage"})
	check("garbage page token", err, "INVALID_PAGE_TOKEN", map[string]string{"field": "page_token"}, "page_token")
	_, err = c.ListListeners(actx, &tcpgatev1.ListListenersRequest{PageSize: -1})
	check("negative page size", err, "INVALID_ARGUMENT", map[string]string{"field": "page_size"}, "page_size")
	first, err := c.StartListener(actx, &tcpgatev1.StartListenerRequest{ListenerId: "a", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.StartListener(actx, &tcpgatev1.StartListenerRequest{ListenerId: "a", Host: "127.0.0.1"})
	check("listener id taken", err, "LISTENER_EXISTS", nil, "")
	_, port, _ := net.SplitHostPort(first.GetListener().GetAddress())
	var p uint32
	fmt.Sscan(port, &p)
	_, err = c.StartListener(actx, &tcpgatev1.StartListenerRequest{ListenerId: "b", Host: "127.0.0.1", Port: p})
	check("address in use", err, "ADDRESS_IN_USE", nil, "")
	if _, err := c.StartListener(actx, &tcpgatev1.StartListenerRequest{ListenerId: "c", Host: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.StartListener(actx, &tcpgatev1.StartListenerRequest{ListenerId: "d", Host: "127.0.0.1"})
	check("--max-listeners", err, "LIMIT_REACHED", map[string]string{"flag": "--max-listeners", "limit": "2"}, "")
	_, err = c.Send(actx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: "0.0.0.0:" + port}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"}})
	check("dial denied", err, "POLICY_DENIED", map[string]string{"rule": "0.0.0.0"}, "")
	_, err = healthpb.NewHealthClient(g.Conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	check("health of an unknown service", err, "UNKNOWN_SERVICE", nil, "")
	closed := servertest.RefusedAddr(t)
	_, err = c.Send(actx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: closed}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"}})
	check("refused", err, "CONNECTION_REFUSED", nil, "")

	// A single gateway is a cluster of one node: placing on another is
	// UNKNOWN_NODE, naming the node and the field. NODE_UNAVAILABLE and
	// CLUSTER_UNAVAILABLE need a cluster whose node or NATS does not
	// answer, which a single gateway has not: their paths are the
	// sentinel rows above (placement.ErrNodeUnavailable and
	// ErrClusterUnavailable in codeOf), walked through toStatus.
	_, err = c.StartListener(actx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", NodeId: "elsewhere"})
	check("StartListener on another node", err, "UNKNOWN_NODE", map[string]string{"node": "elsewhere", "field": "node_id"}, "node_id")
	_, err = c.Connect(actx, &tcpgatev1.ConnectRequest{Address: closed, NodeId: "elsewhere"})
	check("Connect on another node", err, "UNKNOWN_NODE", map[string]string{"node": "elsewhere", "field": "node_id"}, "node_id")

	// A change the state file cannot take: its directory is gone.
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	saving := servertest.Start(t, server.Config{StateFile: filepath.Join(dir, "state.tcpgate")})
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	_, err = saving.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{ListenerId: "unsaved", Host: "127.0.0.1"})
	check("state file not writable", err, "STATE_NOT_SAVED", nil, "")
	if err == nil || !strings.Contains(err.Error(), "listener unsaved started") || !strings.Contains(err.Error(), dir) {
		t.Errorf("STATE_NOT_SAVED: %v, want it to say the listener started and name the file", err)
	}

	// REST paths, the gateway's own answers among them.
	rest := func(name, method, path, ctype, body string, hdr map[string]string, wantHTTP int, want, wantField string) {
		t.Helper()
		req, _ := http.NewRequest(method, g.BaseURL+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		req.Header.Set("Authorization", "Bearer s3cret-token-for-tests")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e servertest.APIError
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("REST %s: body %q: %v", name, b, err)
		}
		got, meta, fields := e.Info()
		if want == "UNKNOWN_NODE" && meta["node"] != "elsewhere" {
			t.Errorf("REST %s: metadata node %q, want elsewhere (all: %v)", name, meta["node"], meta)
		}
		if resp.StatusCode != wantHTTP || got != want {
			t.Errorf("REST %s: HTTP %d reason %q, want %d %q; body %s", name, resp.StatusCode, got, wantHTTP, want, b)
		}
		if wantField != "" && (len(fields) != 1 || fields[0] != wantField) {
			t.Errorf("REST %s: field violations %v, want [%s]", name, fields, wantField)
		}
		seen[got] = true
	}
	rest("unknown listener", "GET", "/v1/listeners/nope", "", "", nil, 404, "LISTENER_NOT_FOUND", "")
	rest("garbage page token", "GET", "/v1/connections?pageToken=garbage", "", "", nil, 400, "INVALID_PAGE_TOKEN", "page_token")
	rest("remote address prefix too long", "GET", "/v1/connections?remoteAddressPrefix="+strings.Repeat("1", 65), "", "", nil, 400, "INVALID_ARGUMENT", "remote_address_prefix")
	rest("sinceSequence in the future", "GET", "/v1/events?sinceSequence=999999", "", "", nil, 400, "SEQUENCE_OUT_OF_RANGE", "")
	rest("bad framing field", "POST", "/v1/listeners", "application/json", `{"host":"127.0.0.1","framing":{"mode":"FRAMING_MODE_DELIMITER","maxFrameBytes":999999999}}`, nil, 400, "INVALID_ARGUMENT", "framing.max_frame_bytes")
	rest("framing without its delimiter", "POST", "/v1/listeners", "application/json", `{"host":"127.0.0.1","framing":{"mode":"FRAMING_MODE_DELIMITER"}}`, nil, 400, "INVALID_ARGUMENT", "framing.delimiter")
	rest("StartListener on another node", "POST", "/v1/listeners", "application/json", `{"host":"127.0.0.1","nodeId":"elsewhere"}`, nil, 400, "UNKNOWN_NODE", "node_id")
	rest("Connect on another node", "POST", "/v1/connections", "application/json", `{"address":"`+closed+`","nodeId":"elsewhere"}`, nil, 400, "UNKNOWN_NODE", "node_id")
	rest("health of an unknown service", "GET", "/healthz?service=nope", "", "", nil, 404, "UNKNOWN_SERVICE", "")
	rest("bad JSON", "POST", "/v1/listeners", "application/json", `{"host":`, nil, 400, "MALFORMED_REQUEST", "")
	rest("unknown query parameter", "GET", "/v1/listeners?bogus=1", "", "", nil, 400, "MALFORMED_REQUEST", "")
	rest("no route", "GET", "/v1/nothing-here", "", "", nil, 404, "ROUTE_NOT_FOUND", "")
	rest("wrong method", "PUT", "/v1/listeners", "application/json", "{}", nil, 405, "METHOD_NOT_ALLOWED", "")
	rest("not JSON", "POST", "/v1/listeners", "text/plain", "x", nil, 415, "UNSUPPORTED_MEDIA_TYPE", "")
	rest("foreign origin", "GET", "/v1/listeners", "", "", map[string]string{"Origin": "http://evil.example"}, 403, "REQUEST_FORBIDDEN", "")
	rest("bad token", "GET", "/v1/listeners", "", "", map[string]string{"Authorization": "Bearer wrong"}, 401, "UNAUTHENTICATED", "")

	// Every value of ErrorReason is produced by some path above.
	for v := range tcpgatev1.ErrorReason_name {
		r := rpc.Reason(tcpgatev1.ErrorReason(v))
		if v != 0 && !seen[r] {
			t.Errorf("no error path produces ErrorReason %s", r)
		}
	}
}
