package server_test

import (
	"net/url"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

const (
	oAccepted = tcpgatev1.Origin_ORIGIN_ACCEPTED
	oOutbound = tcpgatev1.Origin_ORIGIN_OUTBOUND
)

// quiet is how long a stream that must get nothing is watched once
// another stream has seen the events it must not get.
const quiet = 300 * time.Millisecond

// originQuery is the REST query of an origins filter.
func originQuery(os ...tcpgatev1.Origin) string {
	q := url.Values{}
	for _, o := range os {
		q.Add("origins", o.String())
	}
	return q.Encode()
}

// TestListenerSource: a listener started by the API says so, over gRPC
// and REST, in StartListener's answer, GetListener and ListListeners.
func TestListenerSource(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "src"})
	if l.GetSource() != tcpgatev1.Source_SOURCE_API {
		t.Errorf("StartListener: source = %v, want SOURCE_API", l.GetSource())
	}
	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "src"})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.GetListener().GetSource(); s != tcpgatev1.Source_SOURCE_API {
		t.Errorf("GetListener: source = %v, want SOURCE_API", s)
	}
	var rest tcpgatev1.GetListenerResponse
	body := g.REST.Call("GET", "/v1/listeners/src", "", &rest)
	if s := rest.GetListener().GetSource(); s != tcpgatev1.Source_SOURCE_API {
		t.Errorf("GET /v1/listeners/src: source = %v, want SOURCE_API in %s", s, body)
	}
	var list tcpgatev1.ListListenersResponse
	g.REST.Call("GET", "/v1/listeners", "", &list)
	if ls := list.GetListeners(); len(ls) != 1 || ls[0].GetSource() != tcpgatev1.Source_SOURCE_API {
		t.Errorf("GET /v1/listeners = %v, want one listener of SOURCE_API", ls)
	}
}

// TestConnectionOrigin: a real client's connection is ORIGIN_ACCEPTED in
// ListConnections and GetConnection over gRPC and REST, and the origins
// filter lists it for ACCEPTED and for both origins, and never for
// OUTBOUND (no outbound connection exists yet).
func TestConnectionOrigin(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "o"})
	watch := listsWatch(t, g, "o")
	servertest.Dial(t, l.GetAddress())
	listsAwait(t, watch, 1, 0)

	ctx := servertest.Context(t)
	for _, tc := range []struct {
		name    string
		origins []tcpgatev1.Origin
		want    int
	}{
		{"every origin", nil, 1},
		{"accepted", []tcpgatev1.Origin{oAccepted}, 1},
		{"outbound", []tcpgatev1.Origin{oOutbound}, 0},
		{"both", []tcpgatev1.Origin{oOutbound, oAccepted}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{Origins: tc.origins})
			if err != nil {
				t.Fatal(err)
			}
			var rest tcpgatev1.ListConnectionsResponse
			path := "/v1/connections"
			if q := originQuery(tc.origins...); q != "" {
				path += "?" + q
			}
			body := g.REST.Call("GET", path, "", &rest)
			for api, cs := range map[string][]*tcpgatev1.Connection{"gRPC": resp.GetConnections(), "REST": rest.GetConnections()} {
				if len(cs) != tc.want {
					t.Fatalf("%s: %d connections, want %d (REST: %s)", api, len(cs), tc.want, body)
				}
				for _, c := range cs {
					if c.GetOrigin() != oAccepted {
						t.Errorf("%s: connection %s has origin %v, want ORIGIN_ACCEPTED", api, c.GetConnectionId(), c.GetOrigin())
					}
				}
			}
		})
	}

	all, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := all.GetConnections()[0].GetConnectionId()
	got, err := g.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if o := got.GetConnection().GetOrigin(); o != oAccepted {
		t.Errorf("GetConnection: origin = %v, want ORIGIN_ACCEPTED", o)
	}
	var rest tcpgatev1.GetConnectionResponse
	body := g.REST.Call("GET", "/v1/connections/"+id, "", &rest)
	if o := rest.GetConnection().GetOrigin(); o != oAccepted {
		t.Errorf("GET /v1/connections/%s: origin = %v, want ORIGIN_ACCEPTED in %s", id, o, body)
	}

	// A page token is bound to the filter it was made for, origins
	// included: a token of the accepted list is refused for outbound.
	servertest.Dial(t, l.GetAddress())
	listsAwait(t, watch, 1, 0)
	first, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{PageSize: 1, Origins: []tcpgatev1.Origin{oAccepted}})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetNextPageToken() == "" {
		t.Fatal("a page of 1 of 2 accepted connections has no next_page_token")
	}
	_, err = g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{PageSize: 1, PageToken: first.GetNextPageToken(), Origins: []tcpgatev1.Origin{oOutbound}})
	servertest.WantCode(t, err, codes.InvalidArgument)
	next, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{PageSize: 1, PageToken: first.GetNextPageToken(), Origins: []tcpgatev1.Origin{oAccepted}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(next.GetConnections()); n != 1 {
		t.Errorf("second page of accepted connections: %d, want 1", n)
	}
}

// TestEventOrigin: the events of a real client's connection carry
// ORIGIN_ACCEPTED, over gRPC and REST; listener events carry no origin;
// a stream filtered on ACCEPTED (or both origins) gets every connection
// event and no listener event, and one filtered on OUTBOUND gets nothing.
func TestEventOrigin(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	all := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	grpcStreams := map[string]*servertest.Stream{
		"accepted": g.Subscribe(t, &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oAccepted}}),
		"both":     g.Subscribe(t, &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oAccepted, oOutbound}}),
	}
	outbound := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oOutbound}})
	restAll := g.REST.OpenEvents("", nil)
	restStreams := map[string]*servertest.EventStream{
		"accepted": g.REST.OpenEvents(originQuery(oAccepted), nil),
		"both":     g.REST.OpenEvents(originQuery(oOutbound, oAccepted), nil),
	}
	restOutbound := g.REST.OpenEvents(originQuery(oOutbound), nil)

	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "ev"})
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	// TCP delivers the bytes before the close: DATA comes first.
	c.Close()

	connKinds := []tcpgatev1.EventKind{
		tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED,
		tcpgatev1.EventKind_EVENT_KIND_DATA,
		tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	}
	check := func(t *testing.T, api string, next func() *tcpgatev1.Event, listenerEvents bool) {
		t.Helper()
		if listenerEvents {
			e := next()
			if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || e.GetOrigin() != tcpgatev1.Origin_ORIGIN_UNSPECIFIED {
				t.Fatalf("%s: first event %v, want LISTENER_STARTED without an origin", api, e)
			}
		}
		for _, k := range connKinds {
			e := next()
			if e.GetKind() != k || e.GetOrigin() != oAccepted {
				t.Fatalf("%s: got %v, want %v with ORIGIN_ACCEPTED", api, e, k)
			}
		}
	}
	check(t, "gRPC, no filter", all.Next, true)
	check(t, "REST, no filter", func() *tcpgatev1.Event { e, _ := restAll.Next(); return e }, true)
	for name, s := range grpcStreams {
		check(t, "gRPC, origins "+name, s.Next, false)
	}
	for name, s := range restStreams {
		check(t, "REST, origins "+name, func() *tcpgatev1.Event { e, _ := s.Next(); return e }, false)
	}
	// Every event was published and reached the other streams: the
	// outbound ones got none of them.
	outbound.Quiet(quiet)
	restOutbound.Quiet(quiet)
}
