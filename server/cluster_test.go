package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// clusterOf starts one node per id on a shared NATS server, each binding
// its listeners on its own loopback address (--node-host).
func clusterOf(t *testing.T, ns *natstest.Server, nodes ...string) map[string]*servertest.Gateway {
	t.Helper()
	gs := map[string]*servertest.Gateway{}
	for i, id := range nodes {
		gs[id] = servertest.Start(t, server.Config{
			NodeID:   id,
			NodeHost: fmt.Sprintf("127.0.0.%d", 11+i),
			HTTPAddr: "127.0.0.1:0",
			Cluster:  &server.ClusterConfig{URL: ns.URL(), Name: "test"},
		})
	}
	for _, g := range gs {
		servertest.Eventually(t, "every node to see the others", func() bool {
			return len(g.Server.ClusterNodes()) == len(nodes)
		})
	}
	return gs
}

// Three nodes as one gateway: a listener on A, a client on it, a
// subscriber on C that sees its data; Send with await through B; lists on
// B that show A's objects; control routed to the owner.
func TestClusterThreeNodes(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b", "c")
	a, b, c := gs["a"], gs["b"], gs["c"]
	ctx := servertest.Context(t)

	sub := c.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	l := a.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	if l.GetNodeId() != "a" {
		t.Fatalf("listener's node %q, want a", l.GetNodeId())
	}
	tc := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(tc)
	opened := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	if opened.GetNodeId() != "a" || opened.GetListenerId() != l.GetListenerId() {
		t.Fatalf("opened on C: %v, want node a, listener %s", opened, l.GetListenerId())
	}
	io.WriteString(tc, "hello from a client of a\n")
	if d := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA); d.GetText()+string(d.GetData()) != "hello from a client of a" || d.GetNodeId() != "a" {
		t.Fatalf("data on C: %v", d)
	}

	// Send with await through B: the reply comes back through B.
	id := opened.GetConnectionId()
	go func() {
		line, _ := r.ReadString('\n')
		io.WriteString(tc, "re: "+line)
	}()
	resp, err := b.Client.Send(ctx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload: &tcpgatev1.SendRequest_Text{Text: "ping\n"}, Timeout: durationpb.New(servertest.Wait),
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME}})
	if err != nil {
		t.Fatalf("Send through b: %v", err)
	}
	if got := resp.GetReply().GetText() + string(resp.GetReply().GetData()); got != "re: ping" && got != "re: ping\n" {
		t.Fatalf("reply through b: %q", got)
	}

	// B lists A's connection and listener, with their node.
	conns, err := b.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 1 || conns.GetConnections()[0].GetNodeId() != "a" || conns.GetConnections()[0].GetConnectionId() != id {
		t.Fatalf("ListConnections on b: %v, %v; want a's connection", conns, err)
	}
	got, err := c.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: id})
	if err != nil || got.GetConnection().GetNodeId() != "a" {
		t.Fatalf("GetConnection on c: %v, %v", got, err)
	}
	if _, err := c.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "l-nowhere"}); servertest.ErrorOf(err).Code != codes.NotFound {
		t.Fatalf("GetListener of no listener on c: %v, want NotFound", err)
	}

	// StartListener on A for B, lists over all nodes page by page.
	lb, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{NodeId: "b"})
	if err != nil || lb.GetListener().GetNodeId() != "b" || !strings.HasPrefix(lb.GetListener().GetAddress(), "127.0.0.12:") {
		t.Fatalf("StartListener for b through a: %v, %v; want it on b's address 127.0.0.12", lb, err)
	}
	if _, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{NodeId: "z"}); servertest.ErrorOf(err).Reason != "UNKNOWN_NODE" {
		t.Fatalf("StartListener on node z: %v, want UNKNOWN_NODE", err)
	}
	var seen []string
	tok := ""
	for range 10 {
		page, err := c.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{PageSize: 1, PageToken: tok})
		if err != nil {
			t.Fatalf("ListListeners page: %v", err)
		}
		for _, l := range page.GetListeners() {
			seen = append(seen, l.GetNodeId()+"/"+l.GetListenerId())
		}
		if tok = page.GetNextPageToken(); tok == "" {
			break
		}
	}
	want := []string{"a/" + l.GetListenerId(), "b/" + lb.GetListener().GetListenerId()}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("ListListeners page by page on c: %v, want %v", seen, want)
	}

	// Close through C; StopListener through B.
	if _, err := c.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: id}); err != nil {
		t.Fatalf("CloseConnection through c: %v", err)
	}
	if cl := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED); cl.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API || cl.GetNodeId() != "a" {
		t.Fatalf("closed: %v", cl)
	}
	if _, err := b.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: l.GetListenerId()}); err != nil {
		t.Fatalf("StopListener through b: %v", err)
	}
	if _, err := a.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()}); servertest.ErrorOf(err).Code != codes.NotFound {
		t.Fatalf("the stopped listener: %v, want NotFound", err)
	}
}

// A listener on every node: one id, the same port on each node's own
// address; each serves; stopping it through one node stops it on all.
func TestClusterEveryNode(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b", "c")
	ctx := servertest.Context(t)
	resp, err := gs["b"].Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{EveryNode: true,
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(resp.GetListener().GetAddress())
	list, err := gs["a"].Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if err != nil || len(list.GetListeners()) != 3 {
		t.Fatalf("ListListeners: %v, %v; want the listener once per node", list, err)
	}
	var wg sync.WaitGroup
	for i, l := range list.GetListeners() {
		want := fmt.Sprintf("127.0.0.%d:%s", 11+i, port)
		if l.GetAddress() != want || l.GetListenerId() != resp.GetListener().GetListenerId() || !l.GetEveryNode() {
			t.Errorf("listener on %s: %v, want %s, same id, every_node", l.GetNodeId(), l, want)
		}
		wg.Go(func() {
			tc := servertest.Dial(t, want)
			r := bufio.NewReader(tc)
			if got := exchange(t, tc, r, "echo "+want); got != "echo "+want {
				t.Errorf("echo from %s: %q", want, got)
			}
		})
	}
	wg.Wait()
	// An update through one node changes every copy.
	if _, err := gs["a"].Client.UpdateListener(ctx, &tcpgatev1.UpdateListenerRequest{ListenerId: resp.GetListener().GetListenerId(),
		Listener:   &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: "changed\n"}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_reply"}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.%d:%s", 11+i, port)
		tc := servertest.Dial(t, addr)
		if got := exchange(t, tc, bufio.NewReader(tc), "again"); got != "changed" {
			t.Errorf("after the update, %s answers %q, want changed", addr, got)
		}
	}
	if _, err := gs["c"].Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: resp.GetListener().GetListenerId()}); err != nil {
		t.Fatal(err)
	}
	list, err = gs["a"].Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if err != nil || len(list.GetListeners()) != 0 {
		t.Fatalf("after StopListener: %v, %v; want none on any node", list, err)
	}
}

// Per-connection order with two nodes under load: clients of listeners
// on a and b write as fast as they can; a subscriber on c gets every
// line of each connection, in order.
func TestClusterOrderUnderLoad(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b", "c")
	const perConn = 3000
	sub := gs["c"].Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	var addrs []string
	for _, n := range []string{"a", "b"} {
		l := gs[n].StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
		addrs = append(addrs, l.GetAddress(), l.GetAddress())
	}
	var wg sync.WaitGroup
	for i, addr := range addrs {
		c := servertest.Dial(t, addr)
		wg.Go(func() {
			w := bufio.NewWriter(c)
			for j := range perConn {
				fmt.Fprintf(w, "client %d line %d\n", i, j)
			}
			w.Flush()
		})
	}
	wg.Wait()
	next := map[string]int{}
	byConn := map[string]string{}
	for total := 0; total < perConn*len(addrs); total++ {
		e := sub.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_DATA, time.Minute)
		if e == nil {
			t.Fatalf("after %d lines (%v), no more", total, next)
		}
		var client, line int
		if _, err := fmt.Sscanf(e.GetText(), "client %d line %d", &client, &line); err != nil {
			t.Fatalf("data %q: %v", e.GetText(), err)
		}
		who := fmt.Sprint(client)
		if prev, ok := byConn[who]; ok && prev != e.GetConnectionId() {
			t.Fatalf("client %d's lines on two connections", client)
		}
		byConn[who] = e.GetConnectionId()
		if line != next[who] {
			t.Fatalf("client %d: line %d after %d lines, want in order", client, line, next[who])
		}
		next[who]++
	}
}

// NATS restarts while a node's client writes: the nodes reconnect, the
// subscriber on the other node gets every line in order, nothing is
// counted lost, and the node's metrics show the recovery.
func TestClusterNATSRestart(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	sub := gs["b"].Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	l := gs["a"].StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	tc := servertest.Dial(t, l.GetAddress())
	const n = 300
	write := func(from, to int) {
		for i := from; i < to; i++ {
			fmt.Fprintf(tc, "line %d\n", i)
		}
	}
	write(0, n/3)
	read := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			e := sub.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_DATA, time.Minute)
			if want := fmt.Sprintf("line %d", i); e.GetText() != want {
				t.Fatalf("got %q, want %q", e.GetText(), want)
			}
		}
	}
	read(0, n/3)
	ns.Stop()
	write(n/3, 2*n/3) // held by a's publisher while NATS is down
	ns.Restart()
	write(2*n/3, n)
	read(n/3, n)
	_, metrics := gs["a"].REST.Do("GET", "/metrics", "", nil)
	for _, want := range []string{"tcpgate_cluster_events_lost_total 0", "tcpgate_cluster_connected 1"} {
		if !strings.Contains(string(metrics), want+"\n") {
			t.Errorf("a's /metrics lacks %q", want)
		}
	}
	if strings.Contains(string(metrics), "tcpgate_cluster_publish_recoveries_total 0\n") {
		t.Error("a's /metrics counts no recovery after the NATS restart")
	}
}

// A NATS server with a small max_payload: limits left at their defaults
// are lowered to fit it (a Send past it is refused naming the flag), and
// one set above it stops the start naming both settings.
func TestClusterFitsMaxPayload(t *testing.T) {
	ns := natstest.Start(t, func(o *natsserver.Options) { o.MaxPayload = 256 << 10 })
	g := servertest.Start(t, server.Config{NodeID: "a", Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "small"}})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: l.GetAddress()},
		Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 256<<10)}})
	if e := servertest.ErrorOf(err); e.Reason != "LIMIT_REACHED" || e.Meta["flag"] != "--max-send-bytes" {
		t.Fatalf("a Send of max_payload bytes: %v, want LIMIT_REACHED naming --max-send-bytes", err)
	}
	_, err = server.New(server.Config{GRPCAddr: "127.0.0.1:0", NodeID: "b", MaxSendBytes: 1 << 20, Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "small"}})
	if err == nil || !strings.Contains(err.Error(), "--max-send-bytes") || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("--max-send-bytes above max_payload: %v, want an error naming both", err)
	}
}
