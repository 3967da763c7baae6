package main_test

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// clusterNode starts `tcpgate serve` as node id of the cluster on ns,
// binding its listeners on host, and returns it with its gRPC address.
func clusterNode(t *testing.T, ns *natstest.Server, id, host string) (*daemon, client) {
	t.Helper()
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--cluster", ns.URL(), "--cluster-name", "e2e",
		"--node-id", id, "--node-host", host, "--cluster-detection", "2s")
	return d, client{addr: d.waitServing(t)}
}

// startEveryNode starts an echo listener on every node through c, once c
// sees n nodes: until then it stops what it started and tries again.
func startEveryNode(t *testing.T, c client, n int) []listenerJSON {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		var started struct{ Listener listenerJSON }
		c.call(t, "StartListener", map[string]any{"everyNode": true, "framing": map[string]any{"mode": "FRAMING_MODE_LINE"},
			"autoReply": map[string]any{"mode": "AUTO_REPLY_MODE_ECHO"}}, &started)
		var list struct{ Listeners []listenerJSON }
		c.call(t, "ListListeners", map[string]any{}, &list)
		var mine []listenerJSON
		for _, l := range list.Listeners {
			if l.ListenerID == started.Listener.ListenerID {
				mine = append(mine, l)
			}
		}
		if len(mine) == n {
			return mine
		}
		c.call(t, "StopListener", map[string]any{"listenerId": started.Listener.ListenerID}, &struct{}{})
		if time.Now().After(deadline) {
			t.Fatalf("the nodes did not see each other within %v: a listener on every node is on %d of %d", startTimeout, len(mine), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func echoes(t *testing.T, addr, line string) {
	t.Helper()
	c := servertest.Dial(t, addr)
	defer c.Close()
	io.WriteString(c, line+"\n")
	c.SetReadDeadline(time.Now().Add(eventTimeout))
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo from %s: %q, %v", addr, got, err)
	}
}

// A node is killed (SIGKILL: it cannot leave): the others report its
// connections closed with NODE_LOST, a listener on every node keeps
// serving on the others, and a node that joins afterwards replays from
// the cluster's stream, since_sequence 1, everything a subscriber saw,
// nothing lost.
func TestClusterNodeKilled(t *testing.T) {
	ns := natstest.Start(t)
	a, ca := clusterNode(t, ns, "a", "127.0.0.11")
	_, cb := clusterNode(t, ns, "b", "127.0.0.12")
	_, cc := clusterNode(t, ns, "c", "127.0.0.13")
	every := startEveryNode(t, cb, 3)

	sub := subscribe(t, cc.addr, map[string]any{})
	var la struct{ Listener listenerJSON }
	ca.call(t, "StartListener", map[string]any{"framing": map[string]any{"mode": "FRAMING_MODE_LINE"}}, &la)
	if la.Listener.NodeID != "a" || !strings.HasPrefix(la.Listener.Address, "127.0.0.11:") {
		t.Fatalf("listener on a: %+v", la.Listener)
	}
	sub.sync(t, la.Listener.Address)
	tc := servertest.Dial(t, la.Listener.Address)
	local := tc.LocalAddr().String()
	_, opened := sub.waitFor(t, 0, "a's connection opened on c", func(e eventJSON) bool {
		return e.Kind == kindConnectionOpened && e.RemoteAddress == local
	})
	if opened.NodeID != "a" {
		t.Fatalf("opened: node %q, want a", opened.NodeID)
	}
	io.WriteString(tc, "said before a was killed\n")
	sub.waitFor(t, 0, "a's data on c", func(e eventJSON) bool { return e.Kind == kindData && e.payload() == "said before a was killed" })

	// An outbound connection with take_over, from a to a device the test
	// runs, which accepts one connection at a time.
	device := servertest.NewDevice(t)
	var made struct{ Connection struct{ NodeID string } }
	ca.call(t, "Connect", map[string]any{"connectionId": "device-1", "address": device.Addr(), "takeOver": true}, &made)
	if made.Connection.NodeID != "a" {
		t.Fatalf("Connect on a: node %q", made.Connection.NodeID)
	}
	first := device.Next("a's dial")

	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, lost := sub.waitFor(t, 0, "NODE_LOST close of a's connection", func(e eventJSON) bool {
		return e.Kind == kindConnectionClosed && e.ConnectionID == opened.ConnectionID
	})
	if lost.CloseReason != "CLOSE_REASON_NODE_LOST" || lost.NodeID != "a" {
		t.Fatalf("a's connection closed as %+v, want CLOSE_REASON_NODE_LOST of node a", lost)
	}
	for _, l := range every {
		if l.NodeID != "a" {
			echoes(t, l.Address, "still served by "+l.NodeID)
		}
	}
	// The device: a's socket died with a, then b or c dials it again,
	// under the same id, once a's lease has run out.
	first.SetReadDeadline(time.Now().Add(eventTimeout))
	if _, err := io.Copy(io.Discard, first); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("a's socket after the kill: %v, want it closed", err)
	}
	device.Next("the take-over dial")
	var got struct {
		Connection struct{ NodeID, ConnectionID string }
	}
	cb.call(t, "GetConnection", map[string]any{"connectionId": "device-1"}, &got)
	if got.Connection.NodeID != "b" && got.Connection.NodeID != "c" {
		t.Fatalf("device-1 after the take-over: on %q, want b or c", got.Connection.NodeID)
	}

	// A node that joins now has an empty ring: since_sequence 1 comes
	// from the stream, and holds every event c saw.
	_, cd := clusterNode(t, ns, "d", "127.0.0.14")
	seen := sub.len()
	replay := subscribe(t, cd.addr, map[string]any{"sinceSequence": "1"})
	sub.mu.Lock()
	want := append([]eventJSON(nil), sub.events[:seen]...)
	sub.mu.Unlock()
	for _, w := range want {
		if w.Sequence == 0 {
			continue // the stream's own markers
		}
		replay.waitFor(t, 0, fmt.Sprintf("sequence %d (%s) in d's replay", w.Sequence, w.Kind), func(e eventJSON) bool {
			return e.Sequence == w.Sequence && e.Kind == w.Kind && e.ConnectionID == w.ConnectionID && e.NodeID == w.NodeID
		})
	}
	replay.checkSequences(t)
}

// A node that does not answer (stopped with SIGSTOP: its NATS connection
// stays, nothing answers on it) makes a call it would have to answer
// Unavailable, NODE_UNAVAILABLE naming it, within the call's deadline; a
// node whose own NATS is down answers CLUSTER_UNAVAILABLE.
func TestClusterUnavailable(t *testing.T) {
	ns := natstest.Start(t)
	a, _ := clusterNode(t, ns, "a", "127.0.0.41")
	_, cb := clusterNode(t, ns, "b", "127.0.0.42")
	startEveryNode(t, cb, 2)
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			a.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	_, stderr, err := cb.run(t, "-max-time", "3", "-d", `{"listenerId":"l-nowhere"}`, cb.addr, service+"/GetListener")
	if err == nil || !strings.Contains(stderr, "NODE_UNAVAILABLE") || !strings.Contains(stderr, `node "a"`) {
		t.Fatalf("GetListener with a stopped: %v\n%s\nwant Unavailable NODE_UNAVAILABLE naming node a", err, stderr)
	}
	a.cmd.Process.Signal(syscall.SIGCONT)
	stopped = false

	ns.Stop()
	_, stderr, err = cb.run(t, "-max-time", "5", "-d", `{"listenerId":"l-nowhere"}`, cb.addr, service+"/GetListener")
	if err == nil || !strings.Contains(stderr, "CLUSTER_UNAVAILABLE") {
		t.Fatalf("GetListener with NATS down: %v\n%s\nwant Unavailable CLUSTER_UNAVAILABLE", err, stderr)
	}
}
