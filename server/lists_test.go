package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// listsWait bounds every wait of these tests; reaching it is a failure.
const listsWait = 10 * time.Second

func listsCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), listsWait)
	t.Cleanup(cancel)
	return ctx
}

// listsDial opens n connections to addr one after another, from the
// loopback address src, and returns them with their local addresses: the
// remote_address the gateway lists. One after another, so the gateway
// accepts them in this order (its accept queue is first in, first out).
func listsDial(t *testing.T, addr, src string, n int) ([]*net.TCPConn, []string) {
	t.Helper()
	d := net.Dialer{Timeout: listsWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conns := make([]*net.TCPConn, 0, n)
	addrs := make([]string, 0, n)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dialing %s from %s: %v", addr, src, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c.(*net.TCPConn))
		addrs = append(addrs, c.LocalAddr().String())
	}
	return conns, addrs
}

// listsEvents counts the CONNECTION_OPENED and CONNECTION_CLOSED events of
// a listener, so a test knows the registry has taken in what its clients
// did: a connection is listed before its OPENED event is published and
// forgotten before its CLOSED event is.
type listsEvents struct {
	events chan *tcpgatev1.Event
	cancel context.CancelFunc
	done   chan struct{}
}

func listsSubscribe(t *testing.T, g *servertest.Gateway, listenerID string) *listsEvents {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{listenerID},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})
	if err == nil {
		_, err = st.Header()
	}
	if err != nil {
		cancel()
		t.Fatalf("Subscribe: %v", err)
	}
	s := &listsEvents{events: make(chan *tcpgatev1.Event, 1<<12), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			for _, e := range resp.GetEvents() {
				select {
				case s.events <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// wait waits for opened OPENED and closed CLOSED events.
func (s *listsEvents) wait(t *testing.T, opened, closed int) {
	t.Helper()
	deadline := time.After(listsWait)
	for opened > 0 || closed > 0 {
		select {
		case e := <-s.events:
			switch e.GetKind() {
			case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED:
				opened--
			case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
				closed--
			}
		case <-deadline:
			t.Fatalf("within %s: %d more CONNECTION_OPENED and %d more CONNECTION_CLOSED expected", listsWait, opened, closed)
		}
	}
}

// listsRemotes returns the remote addresses of conns, in order.
func listsRemotes(conns []*tcpgatev1.Connection) []string {
	out := make([]string, len(conns))
	for i, c := range conns {
		out[i] = c.GetRemoteAddress()
	}
	return out
}

// listsAll follows every page of req and returns the connections.
func listsAll(t *testing.T, g *servertest.Gateway, req *tcpgatev1.ListConnectionsRequest) []*tcpgatev1.Connection {
	t.Helper()
	req = proto.Clone(req).(*tcpgatev1.ListConnectionsRequest)
	var all []*tcpgatev1.Connection
	for range 100 {
		resp, err := g.Client.ListConnections(listsCtx(t), req)
		if err != nil {
			t.Fatalf("ListConnections %v: %v", req, err)
		}
		all = append(all, resp.GetConnections()...)
		if resp.GetNextPageToken() == "" {
			return all
		}
		req.PageToken = resp.GetNextPageToken()
	}
	t.Fatalf("ListConnections %v: more than 100 pages", req)
	return nil
}

// listsReason returns the code of err, its ErrorInfo reason and the
// fields of its BadRequest.
func listsReason(t *testing.T, err error) (codes.Code, string, []string) {
	t.Helper()
	reason, _ := rpc.ReasonOf(err)
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return status.Code(err), rpc.Reason(reason), fields
}

// TestListConnectionsPages: 250 connections listed 100 at a time are
// three pages with every connection once, in acceptance order; between
// pages, connections that close are skipped (never repeated) and those
// that open later come on a later page; a token is for the filters and
// the incarnation it was made for, and nothing else.
func TestListConnectionsPages(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: "paged", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.GetListener().GetAddress()
	evs := listsSubscribe(t, g, "paged")
	clients, remotes := listsDial(t, addr, "127.0.0.1", 250)
	evs.wait(t, 250, 0)

	// A first walk, nothing changing: 100, 100, 50, in acceptance order.
	req := &tcpgatev1.ListConnectionsRequest{PageSize: 100}
	var walked []string
	ids := map[string]bool{}
	var sizes []int
	for range 10 {
		resp, err := g.Client.ListConnections(listsCtx(t), req)
		if err != nil {
			t.Fatalf("ListConnections: %v", err)
		}
		if h := resp.GetHeader(); h.GetIncarnation() == "" || h.GetNodeId() == "" {
			t.Errorf("ListConnections header = %v, want the incarnation and the node", h)
		}
		sizes = append(sizes, len(resp.GetConnections()))
		for _, c := range resp.GetConnections() {
			if ids[c.GetConnectionId()] {
				t.Errorf("connection %s listed twice", c.GetConnectionId())
			}
			ids[c.GetConnectionId()] = true
			if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN {
				t.Errorf("connection %s state %v, want OPEN", c.GetConnectionId(), c.GetState())
			}
		}
		walked = append(walked, listsRemotes(resp.GetConnections())...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if !slices.Equal(sizes, []int{100, 100, 50}) {
		t.Fatalf("pages of %v connections, want [100 100 50]", sizes)
	}
	if !slices.Equal(walked, remotes) {
		t.Fatalf("pages list the connections out of acceptance order:\n got %v\nwant %v", walked, remotes)
	}

	// page_size 0 is 100; above 1000 is 1000 (here: all 250 at once).
	resp, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(resp.GetConnections()) != 100 || resp.GetNextPageToken() == "" {
		t.Fatalf("page_size 0: %d connections, next %q, %v; want 100 and a next page", len(resp.GetConnections()), resp.GetNextPageToken(), err)
	}
	resp, err = g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{PageSize: 1 << 30})
	if err != nil || len(resp.GetConnections()) != 250 || resp.GetNextPageToken() != "" {
		t.Fatalf("page_size 2^30: %d connections, next %q, %v; want all 250 on the last page", len(resp.GetConnections()), resp.GetNextPageToken(), err)
	}
	_, err = g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{PageSize: -1})
	if code, reason, fields := listsReason(t, err); code != codes.InvalidArgument || reason != "INVALID_ARGUMENT" || !slices.Equal(fields, []string{"page_size"}) {
		t.Fatalf("page_size -1: %v %s %v (%v), want InvalidArgument INVALID_ARGUMENT [page_size]", code, reason, fields, err)
	}

	// A walk while connections come and go.
	first, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	// Gone: five already listed, ten not yet listed. New: five.
	for _, c := range slices.Concat(clients[:5], clients[100:110]) {
		c.Close()
	}
	_, fresh := listsDial(t, addr, "127.0.0.1", 5)
	evs.wait(t, 5, 15)
	token := first.GetNextPageToken()
	rest := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageSize: 100, PageToken: token})
	got := slices.Concat(listsRemotes(first.GetConnections()), listsRemotes(rest))
	want := slices.Concat(remotes[:100], remotes[110:], fresh)
	if !slices.Equal(got, want) {
		t.Fatalf("a walk while connections closed and opened:\n got %v\nwant %v", got, want)
	}

	// The token of that walk, for other filters or another list: refused.
	for name, call := range map[string]func() error{
		"without the listener filter": func() error {
			_, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{PageToken: token})
			return err
		},
		"with a state": func() error {
			_, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", State: tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN, PageToken: token})
			return err
		},
		"with a remote address prefix": func() error {
			_, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", RemoteAddressPrefix: "127.", PageToken: token})
			return err
		},
		"for ListListeners": func() error {
			_, err := g.Client.ListListeners(listsCtx(t), &tcpgatev1.ListListenersRequest{PageToken: token})
			return err
		},
		"garbage": func() error {
			_, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageToken: "garbage"})
			return err
		},
		"cut short": func() error {
			_, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageToken: token[:20]})
			return err
		},
	} {
		code, reason, fields := listsReason(t, call())
		if code != codes.InvalidArgument || reason != "INVALID_PAGE_TOKEN" || !slices.Equal(fields, []string{"page_token"}) {
			t.Errorf("page token %s: %v %s %v, want InvalidArgument INVALID_PAGE_TOKEN [page_token]", name, code, reason, fields)
		}
	}

	// A token from before a restart: another gateway, another incarnation.
	plain, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{PageSize: 10})
	if err != nil || plain.GetNextPageToken() == "" {
		t.Fatalf("ListConnections: %v, next %q", err, plain.GetNextPageToken())
	}
	restarted := servertest.Start(t, server.Config{})
	_, err = restarted.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{PageSize: 10, PageToken: plain.GetNextPageToken()})
	if code, reason, _ := listsReason(t, err); code != codes.InvalidArgument || reason != "INVALID_PAGE_TOKEN" || !strings.Contains(err.Error(), "restarted") {
		t.Errorf("a token of another incarnation: %v, want InvalidArgument INVALID_PAGE_TOKEN saying the gateway restarted", err)
	}

	// Over REST: the same pages, by pageSize and pageToken.
	var restGot []string
	query := url.Values{"pageSize": {"100"}, "listenerId": {"paged"}}
	sizes = nil
	for range 10 {
		var page tcpgatev1.ListConnectionsResponse
		listsREST(t, g, "/v1/connections?"+query.Encode(), http.StatusOK, &page)
		sizes = append(sizes, len(page.GetConnections()))
		restGot = append(restGot, listsRemotes(page.GetConnections())...)
		if page.GetNextPageToken() == "" {
			break
		}
		query.Set("pageToken", page.GetNextPageToken())
	}
	if !slices.Equal(sizes, []int{100, 100, 40}) || !slices.Equal(restGot, want[5:]) {
		t.Fatalf("REST pages of %v connections, want [100 100 40] in acceptance order:\n got %v\nwant %v", sizes, restGot, want[5:])
	}
	query.Set("state", "CONNECTION_STATE_HALF_CLOSED")
	body := listsREST(t, g, "/v1/connections?"+query.Encode(), http.StatusBadRequest, nil)
	if !strings.Contains(body, `"reason":"INVALID_PAGE_TOKEN"`) || !strings.Contains(body, `"field":"page_token"`) {
		t.Errorf("REST token for other filters: %s, want reason INVALID_PAGE_TOKEN on field page_token", body)
	}
}

// listsREST GETs path from g's REST gateway, expects status, decodes a 200
// into into and returns the body.
func listsREST(t *testing.T, g *servertest.Gateway, path string, wantStatus int, into proto.Message) string {
	t.Helper()
	req, err := http.NewRequestWithContext(listsCtx(t), http.MethodGet, g.BaseURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %d %s, want %d", path, resp.StatusCode, b, wantStatus)
	}
	if into != nil {
		if err := protojson.Unmarshal(b, into); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	// Compact, so that tests may look for "key":"value".
	var v any
	if json.Unmarshal(b, &v) == nil {
		b, _ = json.Marshal(v)
	}
	return string(b)
}

// TestListConnectionsFilters: each filter, and all of them together, over
// connections of two listeners from two loopback addresses, one of them
// half-closed by its client, and the connections of a draining listener.
func TestListConnectionsFilters(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	start := func(id string, halfClose time.Duration) string {
		resp, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1", HalfCloseTimeout: durationpb.New(halfClose)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetListener().GetAddress()
	}
	a, b := start("a", 30*time.Second), start("b", 0)
	evA, evB := listsSubscribe(t, g, "a"), listsSubscribe(t, g, "b")
	_, a1 := listsDial(t, a, "127.0.0.1", 3)
	_, a2 := listsDial(t, a, "127.0.0.2", 2)
	half, aHalf := listsDial(t, a, "127.0.0.2", 1)
	bConns, b2 := listsDial(t, b, "127.0.0.2", 2)
	evA.wait(t, 6, 0)
	evB.wait(t, 2, 0)

	// The client shuts down its sending side: the gateway keeps the
	// connection writable (half_close_timeout) and says so.
	if err := half[0].CloseWrite(); err != nil {
		t.Fatal(err)
	}
	halfID := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: aHalf[0]})[0].GetConnectionId()
	listsEventually(t, "the half-closed connection in state HALF_CLOSED", func() bool {
		resp, err := g.Client.GetConnection(listsCtx(t), &tcpgatev1.GetConnectionRequest{ConnectionId: halfID})
		return err == nil && resp.GetConnection().GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED
	})

	const (
		open     = tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
		halfOpen = tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED
		draining = tcpgatev1.ConnectionState_CONNECTION_STATE_DRAINING
	)
	tests := []struct {
		name string
		req  *tcpgatev1.ListConnectionsRequest
		want []string
	}{
		{"no filter", &tcpgatev1.ListConnectionsRequest{}, slices.Concat(a1, a2, aHalf, b2)},
		{"listener a", &tcpgatev1.ListConnectionsRequest{ListenerId: "a"}, slices.Concat(a1, a2, aHalf)},
		{"listener b", &tcpgatev1.ListConnectionsRequest{ListenerId: "b"}, b2},
		{"state OPEN", &tcpgatev1.ListConnectionsRequest{State: open}, slices.Concat(a1, a2, b2)},
		{"state HALF_CLOSED", &tcpgatev1.ListConnectionsRequest{State: halfOpen}, aHalf},
		{"state DRAINING, none yet", &tcpgatev1.ListConnectionsRequest{State: draining}, nil},
		{"prefix 127.0.0.2:", &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: "127.0.0.2:"}, slices.Concat(a2, aHalf, b2)},
		{"prefix 127.0.0.1:", &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: "127.0.0.1:"}, a1},
		{"prefix [::1]:", &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: "[::1]:"}, nil},
		{"listener a, prefix 127.0.0.2:", &tcpgatev1.ListConnectionsRequest{ListenerId: "a", RemoteAddressPrefix: "127.0.0.2:"}, slices.Concat(a2, aHalf)},
		{"listener a, prefix 127.0.0.2:, OPEN", &tcpgatev1.ListConnectionsRequest{ListenerId: "a", RemoteAddressPrefix: "127.0.0.2:", State: open}, a2},
		{"listener a, prefix 127.0.0.2:, HALF_CLOSED", &tcpgatev1.ListConnectionsRequest{ListenerId: "a", RemoteAddressPrefix: "127.0.0.2:", State: halfOpen}, aHalf},
		{"listener b, HALF_CLOSED", &tcpgatev1.ListConnectionsRequest{ListenerId: "b", State: halfOpen}, nil},
		// Filtered pages: the token carries the filters.
		{"prefix 127.0.0.2:, pages of 2", &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: "127.0.0.2:", PageSize: 2}, slices.Concat(a2, aHalf, b2)},
		{"OPEN, pages of 1", &tcpgatev1.ListConnectionsRequest{State: open, PageSize: 1}, slices.Concat(a1, a2, b2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := listsAll(t, g, tt.req)
			if !slices.Equal(listsRemotes(got), tt.want) {
				t.Fatalf("remote addresses %v, want %v", listsRemotes(got), tt.want)
			}
			for _, c := range got {
				if want := map[bool]tcpgatev1.ConnectionState{true: halfOpen, false: open}[c.GetConnectionId() == halfID]; c.GetState() != want {
					t.Errorf("%s: state %v, want %v", c.GetConnectionId(), c.GetState(), want)
				}
			}
		})
	}

	// The same filters over REST, by name.
	var page tcpgatev1.ListConnectionsResponse
	listsREST(t, g, "/v1/connections?listenerId=a&state=CONNECTION_STATE_HALF_CLOSED&remoteAddressPrefix="+url.QueryEscape("127.0.0.2:"), http.StatusOK, &page)
	if got := listsRemotes(page.GetConnections()); !slices.Equal(got, aHalf) {
		t.Errorf("REST filters: %v, want %v", got, aHalf)
	}
	if _, err := g.Client.ListConnections(listsCtx(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("listener_id of no listener: %v, want NotFound", err)
	}

	// Listener b drains (its StopListener waits for the drain; the call
	// gives up waiting, the drain goes on): its connections are DRAINING.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: "b", DrainTimeout: durationpb.New(time.Minute)})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("StopListener of b with a connection open and a minute of drain: %v, want the call to time out", err)
	}
	got := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{State: draining})
	if !slices.Equal(listsRemotes(got), b2) {
		t.Fatalf("state DRAINING: %v, want b's %v", listsRemotes(got), b2)
	}
	for _, c := range got {
		if c.GetState() != draining {
			t.Errorf("%s of draining b: state %v", c.GetConnectionId(), c.GetState())
		}
	}
	one, err := g.Client.GetConnection(listsCtx(t), &tcpgatev1.GetConnectionRequest{ConnectionId: got[0].GetConnectionId()})
	if err != nil || one.GetConnection().GetState() != draining {
		t.Fatalf("GetConnection of a connection of draining b: %v, %v; want DRAINING", one.GetConnection(), err)
	}
	if got := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{ListenerId: "a", State: open}); !slices.Equal(listsRemotes(got), slices.Concat(a1, a2)) {
		t.Errorf("a's OPEN connections while b drains: %v", listsRemotes(got))
	}
	// Its clients leave: the drain ends, b stops.
	for _, c := range bConns {
		c.Close()
	}
	evB.wait(t, 0, 2)
}

// listsEventually polls cond until it holds, failing after listsWait.
func listsEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(listsWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, listsWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGetConnection: one open connection over gRPC and REST, with what
// ListConnections says of it, and NotFound with CONNECTION_NOT_FOUND for
// an unknown or a closed one.
func TestGetConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: "get", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	evs := listsSubscribe(t, g, "get")
	clients, remotes := listsDial(t, ln.GetListener().GetAddress(), "127.0.0.1", 1)
	evs.wait(t, 1, 0)
	if _, err := clients[0].Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	var listed *tcpgatev1.Connection
	listsEventually(t, "the connection's 5 bytes counted", func() bool {
		all := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{})
		listed = all[0]
		return len(all) == 1 && listed.GetBytesIn() == 5
	})
	id := listed.GetConnectionId()

	resp, err := g.Client.GetConnection(listsCtx(t), &tcpgatev1.GetConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatalf("GetConnection %s: %v", id, err)
	}
	if !proto.Equal(resp.GetConnection(), listed) || resp.GetConnection().GetRemoteAddress() != remotes[0] {
		t.Errorf("GetConnection = %v, want what ListConnections listed: %v", resp.GetConnection(), listed)
	}
	if h := resp.GetHeader(); h.GetIncarnation() == "" || h.GetLastSequence() == 0 {
		t.Errorf("GetConnection header = %v, want the incarnation and the newest sequence", h)
	}

	var restResp tcpgatev1.GetConnectionResponse
	listsREST(t, g, "/v1/connections/"+id, http.StatusOK, &restResp)
	if !proto.Equal(restResp.GetConnection(), listed) {
		t.Errorf("GET /v1/connections/%s = %v, want %v", id, restResp.GetConnection(), listed)
	}

	clients[0].Close()
	evs.wait(t, 0, 1)
	for _, cid := range []string{id, "c-nosuchconn"} {
		_, err := g.Client.GetConnection(listsCtx(t), &tcpgatev1.GetConnectionRequest{ConnectionId: cid})
		if code, reason, _ := listsReason(t, err); code != codes.NotFound || reason != "CONNECTION_NOT_FOUND" || !strings.Contains(err.Error(), cid) {
			t.Errorf("GetConnection %s: %v, want NotFound CONNECTION_NOT_FOUND naming it", cid, err)
		}
		body := listsREST(t, g, "/v1/connections/"+cid, http.StatusNotFound, nil)
		if !strings.Contains(body, `"reason":"CONNECTION_NOT_FOUND"`) {
			t.Errorf("GET /v1/connections/%s: %s, want reason CONNECTION_NOT_FOUND", cid, body)
		}
	}
}

// TestListListenersPages: listeners page in creation order, and one
// started between pages comes on a later page.
func TestListListenersPages(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("l%d", i)
		if _, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	req := &tcpgatev1.ListListenersRequest{PageSize: 2}
	var got []string
	var sizes []int
	for i := range 10 {
		resp, err := g.Client.ListListeners(listsCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetHeader().GetIncarnation() == "" {
			t.Errorf("ListListeners header = %v", resp.GetHeader())
		}
		sizes = append(sizes, len(resp.GetListeners()))
		for _, l := range resp.GetListeners() {
			got = append(got, l.GetListenerId())
		}
		if i == 0 {
			// One stops, one starts: "l0" was listed, "l2" was not.
			if _, err := g.Client.StopListener(listsCtx(t), &tcpgatev1.StopListenerRequest{ListenerId: "l2"}); err != nil {
				t.Fatal(err)
			}
			if _, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: "late", Host: "127.0.0.1"}); err != nil {
				t.Fatal(err)
			}
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if want := []string{"l0", "l1", "l3", "l4", "late"}; !slices.Equal(got, want) || !slices.Equal(sizes, []int{2, 2, 1}) {
		t.Fatalf("pages %v of %v, want [2 2 1] of %v", sizes, got, want)
	}
}

// TestSendToAddressDialsAnew: every Send to an address is a connection of
// its own: two Sends to a listener of the gateway are two connections it
// accepts, however close together.
func TestSendToAddressDialsAnew(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	ln, err := g.Client.StartListener(listsCtx(t), &tcpgatev1.StartListenerRequest{ListenerId: "target", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	evs := listsSubscribe(t, g, "target")
	for range 2 {
		if _, err := g.Client.Send(listsCtx(t), &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_Address{Address: ln.GetListener().GetAddress()},
			Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	evs.wait(t, 2, 2)
	got, err := g.Client.GetListener(listsCtx(t), &tcpgatev1.GetListenerRequest{ListenerId: "target"})
	if err != nil {
		t.Fatal(err)
	}
	if n := got.GetListener().GetConnectionsTotal(); n != 2 {
		t.Fatalf("two Sends to %s: the listener accepted %d connections, want 2", ln.GetListener().GetAddress(), n)
	}
}
