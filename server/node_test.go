package server_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// nodeKinds are the kinds of event a node publishes that a single gateway
// can be made to publish here; each must carry the node on every
// encoding. (EVENTS_LOST is a cluster's; EVENTS_DROPPED, STREAM_STARTED
// and INCARNATION_CHANGED are markers of one stream and carry none.)
var nodeKinds = []tcpgatev1.EventKind{
	tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED,
	tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED,
	tcpgatev1.EventKind_EVENT_KIND_DATA,
	tcpgatev1.EventKind_EVENT_KIND_LISTENER_UPDATED,
	tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED,
	tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED,
}

// TestNodeEverywhere: a single gateway is a cluster of one node, named by
// --node-id or, by default, the host name. That node is on every
// listener and connection (gRPC and REST) and on every event the gateway
// publishes, over gRPC, NDJSON and SSE alike.
func TestNodeEverywhere(t *testing.T) {
	for _, tc := range []struct{ name, set, want string }{
		{"--node-id", "node-7", "node-7"},
		{"default", "", rpc.DefaultNodeID()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NodeID: tc.set})
			nodeEverywhere(t, g, tc.want)
		})
	}
}

func nodeEverywhere(t *testing.T, g *servertest.Gateway, want string) {
	ctx := context.Background()
	grpcSub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	data := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	ndjson := g.REST.OpenEvents("", nil)
	defer ndjson.Close()
	sse := g.REST.OpenEvents("", servertest.SSEHeader(""))
	defer sse.Close()

	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "n", Host: "127.0.0.1",
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	if l.GetNodeId() != want {
		t.Errorf("StartListener: node_id %q, want %q", l.GetNodeId(), want)
	}
	client, err := net.Dial("tcp", l.GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	// Listed before its OPENED event is published (see listsWatch).
	data.Next()
	if _, err := g.Client.UpdateListener(ctx, &tcpgatev1.UpdateListenerRequest{ListenerId: "n",
		Listener: &tcpgatev1.StartListenerRequest{MaxConnections: 5}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_connections"}}}); err != nil {
		t.Fatalf("UpdateListener: %v", err)
	}
	out := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "out", Address: servertest.RefusedAddr(t)})
	if out.GetNodeId() != want {
		t.Errorf("Connect: node_id %q, want %q", out.GetNodeId(), want)
	}

	// Every list and get, over gRPC and REST.
	got, err := g.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "n"})
	if err != nil || got.GetListener().GetNodeId() != want {
		t.Errorf("GetListener: node_id %q, %v; want %q", got.GetListener().GetNodeId(), err, want)
	}
	ls, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if err != nil || len(ls.GetListeners()) != 1 || ls.GetListeners()[0].GetNodeId() != want {
		t.Errorf("ListListeners = %v, %v; want one listener of node %q", ls.GetListeners(), err, want)
	}
	cs, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(cs.GetConnections()) != 2 {
		t.Fatalf("ListConnections = %v, %v; want the accepted and the outbound connection", cs.GetConnections(), err)
	}
	for _, c := range cs.GetConnections() {
		if c.GetNodeId() != want {
			t.Errorf("ListConnections: %s has node_id %q, want %q", c.GetConnectionId(), c.GetNodeId(), want)
		}
		gc, err := g.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: c.GetConnectionId()})
		if err != nil || gc.GetConnection().GetNodeId() != want {
			t.Errorf("GetConnection(%s): node_id %q, %v; want %q", c.GetConnectionId(), gc.GetConnection().GetNodeId(), err, want)
		}
	}
	var rl tcpgatev1.ListListenersResponse
	g.REST.Call("GET", "/v1/listeners", "", &rl)
	var rc tcpgatev1.ListConnectionsResponse
	g.REST.Call("GET", "/v1/connections", "", &rc)
	if len(rl.GetListeners()) != 1 || rl.GetListeners()[0].GetNodeId() != want || len(rc.GetConnections()) != 2 ||
		rc.GetConnections()[0].GetNodeId() != want || rc.GetConnections()[1].GetNodeId() != want {
		t.Errorf("REST lists: %v and %v, want every listener and connection of node %q", rl.GetListeners(), rc.GetConnections(), want)
	}

	if _, err := g.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: "out"}); err != nil {
		t.Fatalf("CloseConnection: %v", err)
	}
	if _, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: "n"}); err != nil {
		t.Fatalf("StopListener: %v", err)
	}

	for _, enc := range []struct {
		name string
		next func() *tcpgatev1.Event
	}{
		{"gRPC", grpcSub.Next},
		{"NDJSON", func() *tcpgatev1.Event { e, _ := ndjson.Next(); return e }},
		{"SSE", sse.NextSSE},
	} {
		missing := map[tcpgatev1.EventKind]bool{}
		for _, k := range nodeKinds {
			missing[k] = true
		}
		// Each stream saw everything from before the listener started;
		// reading stops once every kind has come (Next fails the test
		// after servertest.Wait).
		for len(missing) > 0 {
			e := enc.next()
			if e.GetNodeId() != want {
				t.Errorf("%s: event %d %s has node_id %q, want %q", enc.name, e.GetSequence(), e.GetKind(), e.GetNodeId(), want)
			}
			delete(missing, e.GetKind())
		}
	}
}

// The placement fields go into the state file and ExportConfig as they
// were asked, and come back with a restart: a listener on every node
// (on a single gateway, on itself) and an outbound connection on its
// node, to be taken over.
func TestNodeInStateFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	a := servertest.Start(t, server.Config{StateFile: state, NodeID: "n1"})
	a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "every", Host: "127.0.0.1", EveryNode: true})
	a.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "out", Address: servertest.RefusedAddr(t), NodeId: "n1", TakeOver: true})
	exp, err := a.Client.ExportConfig(servertest.Context(t), &tcpgatev1.ExportConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ls, cs := exp.GetConfig().GetListeners(), exp.GetConfig().GetConnections()
	if len(ls) != 1 || !ls[0].GetEveryNode() || len(cs) != 1 || cs[0].GetNodeId() != "n1" || !cs[0].GetTakeOver() {
		t.Fatalf("ExportConfig: listeners %v, connections %v; want every_node, and node_id n1 with take_over", ls, cs)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}

	b := servertest.Start(t, server.Config{StateFile: state, NodeID: "n1"})
	ctx := servertest.Context(t)
	l, err := b.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "every"})
	if err != nil || !l.GetListener().GetEveryNode() || l.GetListener().GetNodeId() != "n1" {
		t.Fatalf("restored listener: %v, %v; want every_node on n1", l.GetListener(), err)
	}
	c, err := b.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "out"})
	if err != nil || c.GetConnection().GetNodeId() != "n1" {
		t.Fatalf("restored connection: %v, %v; want it on n1", c.GetConnection(), err)
	}
}
