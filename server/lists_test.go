package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// listsWatch subscribes to the CONNECTION_OPENED and CONNECTION_CLOSED
// events of a listener, so a test knows the registry has taken in what its
// clients did: a connection is listed before its OPENED event is published
// and forgotten before its CLOSED event is.
func listsWatch(t *testing.T, g *servertest.Gateway, listenerID string) *servertest.Stream {
	t.Helper()
	return g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		ListenerIds: []string{listenerID},
		Kinds:       []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED},
	})
}

// listsAwait waits for opened CONNECTION_OPENED and closed
// CONNECTION_CLOSED events on s, within servertest.Wait in all.
func listsAwait(t *testing.T, s *servertest.Stream, opened, closed int) {
	t.Helper()
	deadline := time.Now().Add(servertest.Wait)
	for opened > 0 || closed > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("within %s: %d more CONNECTION_OPENED and %d more CONNECTION_CLOSED expected", servertest.Wait, opened, closed)
		}
		switch s.NextWithin(time.Until(deadline)).GetKind() {
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED:
			opened--
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
			closed--
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
		resp, err := g.Client.ListConnections(servertest.Context(t), req)
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

// TestListConnectionsPages: 250 connections listed 100 at a time are
// three pages with every connection once, in acceptance order; between
// pages, connections that close are skipped (never repeated) and those
// that open later come on a later page; a token is for the filters and
// the incarnation it was made for, and nothing else.
func TestListConnectionsPages(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "paged", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.GetListener().GetAddress()
	evs := listsWatch(t, g, "paged")
	clients, remotes := servertest.Clients(t, "127.0.0.1", addr, 250)
	listsAwait(t, evs, 250, 0)

	// A first walk, nothing changing: 100, 100, 50, in acceptance order.
	req := &tcpgatev1.ListConnectionsRequest{PageSize: 100}
	var walked []string
	ids := map[string]bool{}
	var sizes []int
	for range 10 {
		resp, err := g.Client.ListConnections(servertest.Context(t), req)
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
	resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(resp.GetConnections()) != 100 || resp.GetNextPageToken() == "" {
		t.Fatalf("page_size 0: %d connections, next %q, %v; want 100 and a next page", len(resp.GetConnections()), resp.GetNextPageToken(), err)
	}
	resp, err = g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageSize: 1 << 30})
	if err != nil || len(resp.GetConnections()) != 250 || resp.GetNextPageToken() != "" {
		t.Fatalf("page_size 2^30: %d connections, next %q, %v; want all 250 on the last page", len(resp.GetConnections()), resp.GetNextPageToken(), err)
	}
	_, err = g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageSize: -1})
	if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Reason != "INVALID_ARGUMENT" || !slices.Equal(e.Fields, []string{"page_size"}) {
		t.Fatalf("page_size -1: %v %s %v (%v), want InvalidArgument INVALID_ARGUMENT [page_size]", e.Code, e.Reason, e.Fields, err)
	}

	// A walk while connections come and go.
	first, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	// Gone: five already listed, ten not yet listed. New: five.
	for _, c := range slices.Concat(clients[:5], clients[100:110]) {
		c.Close()
	}
	_, fresh := servertest.Clients(t, "127.0.0.1", addr, 5)
	listsAwait(t, evs, 5, 15)
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
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageToken: token})
			return err
		},
		"with a state": func() error {
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", State: tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN, PageToken: token})
			return err
		},
		"with a remote address prefix": func() error {
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", RemoteAddressPrefix: "127.", PageToken: token})
			return err
		},
		"for ListListeners": func() error {
			_, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{PageToken: token})
			return err
		},
		"garbage": func() error {
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageToken: "garbage"})
			return err
		},
		"cut short": func() error {
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "paged", PageToken: token[:20]})
			return err
		},
	} {
		e := servertest.ErrorOf(call())
		if e.Code != codes.InvalidArgument || e.Reason != "INVALID_PAGE_TOKEN" || !slices.Equal(e.Fields, []string{"page_token"}) {
			t.Errorf("page token %s: %v %s %v, want InvalidArgument INVALID_PAGE_TOKEN [page_token]", name, e.Code, e.Reason, e.Fields)
		}
	}

	// A token from before a restart: another gateway, another incarnation.
	plain, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageSize: 10})
	if err != nil || plain.GetNextPageToken() == "" {
		t.Fatalf("ListConnections: %v, next %q", err, plain.GetNextPageToken())
	}
	restarted := servertest.Start(t, server.Config{})
	_, err = restarted.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageSize: 10, PageToken: plain.GetNextPageToken()})
	if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Reason != "INVALID_PAGE_TOKEN" || !strings.Contains(err.Error(), "restarted") {
		t.Errorf("a token of another incarnation: %v, want InvalidArgument INVALID_PAGE_TOKEN saying the gateway restarted", err)
	}

	// Over REST: the same pages, by pageSize and pageToken.
	var restGot []string
	query := url.Values{"pageSize": {"100"}, "listenerId": {"paged"}}
	sizes = nil
	for range 10 {
		var page tcpgatev1.ListConnectionsResponse
		g.REST.Call(http.MethodGet, "/v1/connections?"+query.Encode(), "", &page)
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
	hresp, body := g.REST.Do(http.MethodGet, "/v1/connections?"+query.Encode(), "", nil)
	if reason, _, fields := servertest.WantError(t, hresp, body, http.StatusBadRequest, int(codes.InvalidArgument), "page_token").Info(); reason != "INVALID_PAGE_TOKEN" || !slices.Contains(fields, "page_token") {
		t.Errorf("REST token for other filters: %s, want reason INVALID_PAGE_TOKEN on field page_token", body)
	}
}

// TestListConnectionsFilters: each filter, and all of them together, over
// connections of two listeners from two loopback addresses, one of them
// half-closed by its client, and the connections of a draining listener.
func TestListConnectionsFilters(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	start := func(id string, halfClose time.Duration) string {
		resp, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1", HalfCloseTimeout: durationpb.New(halfClose)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetListener().GetAddress()
	}
	a, b := start("a", 30*time.Second), start("b", 0)
	evA, evB := listsWatch(t, g, "a"), listsWatch(t, g, "b")
	_, a1 := servertest.Clients(t, "127.0.0.1", a, 3)
	_, a2 := servertest.Clients(t, "127.0.0.2", a, 2)
	half, aHalf := servertest.Clients(t, "127.0.0.2", a, 1)
	// Two listeners accept on their own: b's clients come after a's in
	// acceptance order only once a has accepted all of its own.
	listsAwait(t, evA, 6, 0)
	bConns, b2 := servertest.Clients(t, "127.0.0.2", b, 2)
	listsAwait(t, evB, 2, 0)

	// The client shuts down its sending side: the gateway keeps the
	// connection writable (half_close_timeout) and says so.
	if err := half[0].CloseWrite(); err != nil {
		t.Fatal(err)
	}
	halfID := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: aHalf[0]})[0].GetConnectionId()
	servertest.Eventually(t, "the half-closed connection in state HALF_CLOSED", func() bool {
		resp, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: halfID})
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
	g.REST.Call(http.MethodGet, "/v1/connections?listenerId=a&state=CONNECTION_STATE_HALF_CLOSED&remoteAddressPrefix="+url.QueryEscape("127.0.0.2:"), "", &page)
	if got := listsRemotes(page.GetConnections()); !slices.Equal(got, aHalf) {
		t.Errorf("REST filters: %v, want %v", got, aHalf)
	}
	if _, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "nope"}); status.Code(err) != codes.NotFound {
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
	one, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: got[0].GetConnectionId()})
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
	listsAwait(t, evB, 0, 2)
}

// TestGetConnection: one open connection over gRPC and REST, with what
// ListConnections says of it, and NotFound with CONNECTION_NOT_FOUND for
// an unknown or a closed one.
func TestGetConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "get", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	evs := listsWatch(t, g, "get")
	clients, remotes := servertest.Clients(t, "127.0.0.1", ln.GetListener().GetAddress(), 1)
	listsAwait(t, evs, 1, 0)
	if _, err := clients[0].Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	var listed *tcpgatev1.Connection
	servertest.Eventually(t, "the connection's 5 bytes counted", func() bool {
		all := listsAll(t, g, &tcpgatev1.ListConnectionsRequest{})
		listed = all[0]
		return len(all) == 1 && listed.GetBytesIn() == 5
	})
	id := listed.GetConnectionId()

	resp, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: id})
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
	g.REST.Call(http.MethodGet, "/v1/connections/"+id, "", &restResp)
	if !proto.Equal(restResp.GetConnection(), listed) {
		t.Errorf("GET /v1/connections/%s = %v, want %v", id, restResp.GetConnection(), listed)
	}

	clients[0].Close()
	listsAwait(t, evs, 0, 1)
	for _, cid := range []string{id, "c-nosuchconn"} {
		_, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: cid})
		if e := servertest.ErrorOf(err); e.Code != codes.NotFound || e.Reason != "CONNECTION_NOT_FOUND" || !strings.Contains(err.Error(), cid) {
			t.Errorf("GetConnection %s: %v, want NotFound CONNECTION_NOT_FOUND naming it", cid, err)
		}
		resp, body := g.REST.Do(http.MethodGet, "/v1/connections/"+cid, "", nil)
		if reason, _, _ := servertest.WantError(t, resp, body, http.StatusNotFound, int(codes.NotFound), cid).Info(); reason != "CONNECTION_NOT_FOUND" {
			t.Errorf("GET /v1/connections/%s: %s, want reason CONNECTION_NOT_FOUND", cid, body)
		}
	}
}

// TestListListenersPages: listeners page in creation order, and one
// started between pages comes on a later page.
func TestListListenersPages(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	for i := range 5 {
		id := fmt.Sprintf("l%d", i)
		if _, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	req := &tcpgatev1.ListListenersRequest{PageSize: 2}
	var got []string
	var sizes []int
	for i := range 10 {
		resp, err := g.Client.ListListeners(servertest.Context(t), req)
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
			if _, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "l2"}); err != nil {
				t.Fatal(err)
			}
			if _, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "late", Host: "127.0.0.1"}); err != nil {
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
	ln, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "target", Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	evs := listsWatch(t, g, "target")
	for range 2 {
		if _, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_Address{Address: ln.GetListener().GetAddress()},
			Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	listsAwait(t, evs, 2, 2)
	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "target"})
	if err != nil {
		t.Fatal(err)
	}
	if n := got.GetListener().GetConnectionsTotal(); n != 2 {
		t.Fatalf("two Sends to %s: the listener accepted %d connections, want 2", ln.GetListener().GetAddress(), n)
	}
}
