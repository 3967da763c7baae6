package servertest_test

import (
	"bufio"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestErrorOf: the code, message, reason, metadata and fields of the
// gateway's errors, as a program reads them; nil is OK with nothing.
func TestErrorOf(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	_, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "c-nosuchconn"})
	if e := servertest.ErrorOf(err); e.Code != codes.NotFound || e.Reason != "CONNECTION_NOT_FOUND" || !strings.Contains(e.Message, "c-nosuchconn") {
		t.Errorf("GetConnection of no connection: %+v, want NotFound CONNECTION_NOT_FOUND naming it", e)
	}
	_, err = g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{PageSize: -1})
	if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Reason != "INVALID_ARGUMENT" || !slices.Equal(e.Fields, []string{"page_size"}) || e.Meta[rpc.MetaField] != "page_size" {
		t.Errorf("page_size -1: %+v, want InvalidArgument INVALID_ARGUMENT on page_size", e)
	}
	if e := servertest.ErrorOf(nil); e.Code != codes.OK || e.Reason != "" || e.Meta != nil || e.Fields != nil {
		t.Errorf("ErrorOf(nil) = %+v, want OK and nothing else", e)
	}
}

// TestClients: connections from another loopback address, in order, with
// the local addresses the peer sees as theirs.
func TestClients(t *testing.T) {
	var mu sync.Mutex // guards seen
	var seen []string
	accepted := make(chan struct{}, 3)
	addr := servertest.Peer(t, func(c net.Conn) {
		mu.Lock()
		seen = append(seen, c.RemoteAddr().String())
		mu.Unlock()
		accepted <- struct{}{}
		_, _ = c.Read(make([]byte, 1)) // until the client closes
	})
	conns, locals := servertest.Clients(t, "127.0.0.2", addr, 3)
	for range 3 {
		<-accepted
	}
	for _, c := range conns {
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(seen)
	sorted := slices.Sorted(slices.Values(locals))
	if len(conns) != 3 || !slices.Equal(seen, sorted) {
		t.Fatalf("the peer saw %v, Clients returned %v", seen, locals)
	}
	for _, l := range locals {
		if !strings.HasPrefix(l, "127.0.0.2:") {
			t.Errorf("local address %s, want one of 127.0.0.2", l)
		}
	}
}

// TestEventStream: an SSE stream's STREAM_STARTED block is taken aside
// with its id, and the next event comes with its INCARNATION-SEQUENCE id;
// an NDJSON stream of the same gateway says the same.
func TestEventStream(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	sse := g.REST.OpenEvents("", servertest.SSEHeader(""))
	nd := g.REST.OpenEvents("kinds=EVENT_KIND_LISTENER_STARTED", nil)
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "a"})
	if e := sse.NextSSE(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED || e.GetSequence() != 1 {
		t.Fatalf("first SSE event %v, want LISTENER_STARTED 1", e)
	}
	if sse.Started.GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED || sse.StartBlock.ID != sse.Incarnation+"-0" || sse.Incarnation == "" {
		t.Fatalf("SSE STREAM_STARTED %v in block %q, want id %s-0", sse.Started, sse.StartBlock.Lines, sse.Incarnation)
	}
	if e, line := nd.Next(); e.GetListenerId() != "a" || !strings.Contains(line, `"listenerId":"a"`) || nd.Started.GetHeader().GetIncarnation() != sse.Incarnation {
		t.Fatalf("NDJSON %s after %v, want listener a's start in incarnation %s", line, nd.Started, sse.Incarnation)
	}
}

// A LineServer keeps its connections numbered across a Kill and a Start:
// Conn(i) and Lines(i) name the same connection, and a killed one's Conn
// is nil.
func TestLineServerRestart(t *testing.T) {
	s := servertest.NewLineServer(t, servertest.EchoLine)
	say := func(line string) {
		t.Helper()
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "echo "+line+"\n" {
			t.Fatalf("answer %q, %v", got, err)
		}
	}
	say("first")
	s.Kill()
	s.Start()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("second\n")); err != nil {
		t.Fatal(err)
	}
	servertest.Eventually(t, "the second connection's line", func() bool { return s.Accepted() == 2 && len(s.Lines(1)) == 1 })
	if s.Conn(0) != nil {
		t.Error("Conn(0) of a killed connection is not nil")
	}
	if got := s.Conn(1); got == nil || got.RemoteAddr().String() != c.LocalAddr().String() {
		t.Errorf("Conn(1) = %v, want the server's end of the second connection (%s)", got, c.LocalAddr())
	}
	if got := s.Lines(1); len(got) != 1 || got[0] != "second" {
		t.Errorf("Lines(1) = %q, want [second]", got)
	}
}
