package server_test

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// clusterNode starts node id of cluster "test" on ns, binding on host.
func clusterNode(t *testing.T, ns *natstest.Server, id, host string) *servertest.Gateway {
	t.Helper()
	return servertest.Start(t, server.Config{NodeID: id, NodeHost: host,
		Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test"}})
}

// listenersOn is the listeners node runs, as "id@address", sorted.
func listenersOn(t *testing.T, g *servertest.Gateway, node string) []string {
	t.Helper()
	resp, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
	if err != nil {
		t.Fatalf("ListListeners: %v", err)
	}
	var out []string
	for _, l := range resp.GetListeners() {
		if l.GetNodeId() == node {
			out = append(out, l.GetListenerId()+"@"+l.GetAddress())
		}
	}
	slices.Sort(out)
	return out
}

// The desired state lives in the cluster: a listener made on b through
// a comes back when b restarts, on its port; a stopped one does not; a
// listener on every node starts on a node that joins after it was made;
// ExportConfig on any node shows every node's objects, each once.
func TestClusterStateRestored(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	a := gs["a"]
	ctx := servertest.Context(t)

	kept, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{ListenerId: "kept.on~b", NodeId: "b",
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	if err != nil || kept.GetListener().GetNodeId() != "b" {
		t.Fatalf("StartListener on b through a: %v, %v", kept, err)
	}
	gone, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{NodeId: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: gone.GetListener().GetListenerId()}); err != nil {
		t.Fatalf("StopListener through a: %v", err)
	}
	every, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{EveryNode: true})
	if err != nil {
		t.Fatal(err)
	}
	everyID := every.GetListener().GetListenerId()
	_, everyPort, _ := net.SplitHostPort(every.GetListener().GetAddress())
	before := listenersOn(t, a, "b")

	exported := func(g *servertest.Gateway) []string {
		t.Helper()
		resp, err := g.Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
		if err != nil {
			t.Fatalf("ExportConfig: %v", err)
		}
		var ids []string
		for _, l := range resp.GetConfig().GetListeners() {
			ids = append(ids, l.GetListenerId())
		}
		slices.Sort(ids)
		return ids
	}
	want := []string{everyID, "kept.on~b"}
	slices.Sort(want)
	if got := exported(gs["b"]); !slices.Equal(got, want) {
		t.Fatalf("ExportConfig on b: %v, want each of %v once", got, want)
	}

	if err := gs["b"].Stop(); err != nil {
		t.Fatal(err)
	}
	servertest.Eventually(t, "a to see b leave", func() bool { return len(a.Server.ClusterNodes()) == 1 })
	b := clusterNode(t, ns, "b", "127.0.0.12")
	if got := listenersOn(t, b, "b"); !slices.Equal(got, before) {
		t.Fatalf("b's listeners after its restart: %v, want %v (same ids, same ports; not the stopped one)", got, before)
	}
	tc := servertest.Dial(t, kept.GetListener().GetAddress())
	if got := exchange(t, tc, bufio.NewReader(tc), "still here"); got != "still here" {
		t.Fatalf("echo of the restored listener: %q", got)
	}

	c := clusterNode(t, ns, "c", "127.0.0.13")
	if got := listenersOn(t, c, "c"); !slices.Equal(got, []string{everyID + "@127.0.0.13:" + everyPort}) {
		t.Fatalf("listeners of c, started after the every-node listener was made: %v, want %s on port %s", got, everyID, everyPort)
	}
	if got := exported(c); !slices.Equal(got, want) {
		t.Fatalf("ExportConfig on c: %v, want each of %v once", got, want)
	}

	// Stopped through c: gone from the cluster's state, so a node that
	// starts later does not run it.
	if _, err := c.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: everyID}); err != nil {
		t.Fatal(err)
	}
	if got := exported(a); !slices.Equal(got, []string{"kept.on~b"}) {
		t.Fatalf("ExportConfig after the every-node listener stopped: %v", got)
	}
	d := clusterNode(t, ns, "d", "127.0.0.14")
	if got := listenersOn(t, d, "d"); len(got) != 0 {
		t.Fatalf("listeners of d: %v, want none", got)
	}
}

// A cluster keeps its state in NATS: --state-file is refused with it.
func TestClusterRefusesStateFile(t *testing.T) {
	ns := natstest.Start(t)
	_, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", NodeID: "a", StateFile: filepath.Join(t.TempDir(), "state"),
		Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test"}})
	if err == nil || !strings.Contains(err.Error(), "--state-file") || !strings.Contains(err.Error(), "--cluster") {
		t.Fatalf("New with --state-file and --cluster: %v, want an error naming both", err)
	}
}

// An outbound connection with take_over moves when its node goes: node a
// stops, and b or c, once a's lease has run out, dials it again under
// the same id; the target sees the first socket close before the second
// opens.
func TestClusterTakeOver(t *testing.T) {
	ns := natstest.Start(t)
	gs := map[string]*servertest.Gateway{}
	for i, id := range []string{"a", "b", "c"} {
		gs[id] = servertest.Start(t, server.Config{NodeID: id, NodeHost: "127.0.0." + string(rune('1'+i)),
			Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test", Detection: time.Second}})
	}
	servertest.Eventually(t, "the nodes to see each other", func() bool {
		return len(gs["a"].Server.ClusterNodes()) == 3 && len(gs["b"].Server.ClusterNodes()) == 3 && len(gs["c"].Server.ClusterNodes()) == 3
	})
	dev := servertest.NewDevice(t)
	ctx := servertest.Context(t)
	made, err := gs["a"].Client.Connect(ctx, &tcpgatev1.ConnectRequest{ConnectionId: "device-1", Address: dev.Addr(), TakeOver: true})
	if err != nil || made.GetConnection().GetNodeId() != "a" {
		t.Fatalf("Connect with take_over on a: %v, %v", made, err)
	}
	first := dev.Next("a's dial")
	if err := gs["a"].Stop(); err != nil {
		t.Fatal(err)
	}
	// The first socket is closed before any other node dials.
	first.SetReadDeadline(time.Now().Add(servertest.Wait))
	if _, err := io.Copy(io.Discard, first); err != nil {
		t.Fatalf("a's socket after a stopped: %v, want it closed", err)
	}
	select {
	case c := <-dev.Accepted():
		t.Fatalf("a second connection from %s while a's was open", c.RemoteAddr())
	default:
	}
	dev.Next("the take-over dial")
	var owner string
	servertest.Eventually(t, "the connection to be listed on b or c", func() bool {
		got, err := gs["b"].Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "device-1"})
		owner = got.GetConnection().GetNodeId()
		return err == nil && (owner == "b" || owner == "c")
	})
	exp, err := gs["c"].Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
	if err != nil || len(exp.GetConfig().GetConnections()) != 1 || exp.GetConfig().GetConnections()[0].GetConnectionId() != "device-1" {
		t.Fatalf("ExportConfig after the take-over: %v, %v; want device-1 once", exp, err)
	}
	select {
	case c := <-dev.Accepted():
		t.Fatalf("a third connection from %s: the lease was taken twice", c.RemoteAddr())
	case <-time.After(3 * time.Second):
	}
	// Closed for good through any node: no one takes it over again.
	if _, err := gs["b"].Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: "device-1"}); err != nil {
		t.Fatalf("CloseConnection on %s through b: %v", owner, err)
	}
	exp, err = gs["c"].Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
	if err != nil || len(exp.GetConfig().GetConnections()) != 0 {
		t.Fatalf("ExportConfig after CloseConnection: %v, %v; want no connection", exp, err)
	}
}

// natsLink is a TCP relay between one node and the NATS server, which
// the test can cut (a network partition of that node alone) and heal.
type natsLink struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards the fields below
	cut   bool
	conns []net.Conn
}

func newNATSLink(t *testing.T, natsURL string) *natsLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &natsLink{ln: ln, target: strings.TrimPrefix(natsURL, "nats://")}
	l.wg.Go(l.accept)
	t.Cleanup(func() {
		ln.Close()
		l.setCut(true)
		l.wg.Wait()
	})
	return l
}

// URL is the relay's NATS URL.
func (l *natsLink) URL() string { return "nats://" + l.ln.Addr().String() }

func (l *natsLink) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", l.target)
		if err != nil {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.conns = append(l.conns, c, up)
		l.mu.Unlock()
		l.wg.Go(func() { io.Copy(up, c); up.Close() })
		l.wg.Go(func() { io.Copy(c, up); c.Close() })
	}
}

// setCut cuts the link (every relayed connection closes, new ones are
// refused) or heals it.
func (l *natsLink) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}

// A node cut off from NATS while it keeps running gives its take_over
// connection up (NODE_LOST, saying the lease was lost) before another
// node, once the lease has run out, dials it again: the device never
// has two connections at once.
func TestClusterTakeOverPartition(t *testing.T) {
	ns := natstest.Start(t)
	link := newNATSLink(t, ns.URL())
	var logA servertest.LogSink
	a := servertest.Start(t, server.Config{NodeID: "a", NodeHost: "127.0.0.1", Logger: slog.New(slog.NewTextHandler(&logA, nil)),
		Cluster: &server.ClusterConfig{URL: link.URL(), Name: "test", Detection: time.Second}})
	b := servertest.Start(t, server.Config{NodeID: "b", NodeHost: "127.0.0.2",
		Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test", Detection: time.Second}})
	servertest.Eventually(t, "the nodes to see each other", func() bool {
		return len(a.Server.ClusterNodes()) == 2 && len(b.Server.ClusterNodes()) == 2
	})
	dev := servertest.NewDevice(t)
	ctx := servertest.Context(t)
	if _, err := a.Client.Connect(ctx, &tcpgatev1.ConnectRequest{ConnectionId: "device-1", Address: dev.Addr(), TakeOver: true}); err != nil {
		t.Fatalf("Connect with take_over on a: %v", err)
	}
	first := dev.Next("a's dial")

	link.setCut(true)
	first.SetReadDeadline(time.Now().Add(servertest.Wait))
	if _, err := io.Copy(io.Discard, first); err != nil {
		t.Fatalf("a's socket once a was cut off: %v, want a to close it", err)
	}
	select {
	case c := <-dev.Accepted():
		t.Fatalf("a second connection from %s while a's was open", c.RemoteAddr())
	default:
	}
	if log := logA.String(); !strings.Contains(log, "take-over lease") || !strings.Contains(log, "device-1") {
		t.Fatalf("a's log does not say it gave device-1 up for its lease:\n%s", log)
	}
	dev.Next("b's take-over dial")
	servertest.Eventually(t, "device-1 to be listed on b", func() bool {
		got, err := b.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "device-1"})
		return err == nil && got.GetConnection().GetNodeId() == "b"
	})
	// Cut off, a still makes what it is asked for, but says it is not
	// stored: STATE_NOT_SAVED.
	_, err := a.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if e := servertest.ErrorOf(err); e.Reason != "STATE_NOT_SAVED" || !strings.Contains(e.Message, "cluster's state bucket") {
		t.Fatalf("StartListener on a cut off from NATS: %v, want STATE_NOT_SAVED naming the cluster's state bucket", err)
	}
	// a comes back: it does not dial the device again (b holds the lease).
	link.setCut(false)
	servertest.Eventually(t, "a to reach NATS again", func() bool { return len(a.Server.ClusterNodes()) == 2 })
	select {
	case c := <-dev.Accepted():
		t.Fatalf("another connection from %s after a came back", c.RemoteAddr())
	case <-time.After(3 * time.Second):
	}
}
