package server_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// CloseConnection of a connection waiting to reconnect closes it for good:
// CLOSED in the response, a CONNECTION_CLOSED of its own (CLOSED_BY_API),
// gone from the lists, and no attempt after it reaches the server.
func TestCloseWhileWaiting(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"w"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "w", Address: srv.Addr(), Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(300), MaxBackoff: ms(300)}})
	srv.Kill()
	sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED)
	srv.Start()
	resp, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "w"})
	if err != nil || resp.GetConnection().GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_CLOSED {
		t.Fatalf("CloseConnection while waiting = %v, %v; want CLOSED", resp, err)
	}
	e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API || e.GetGeneration() != 1 {
		t.Fatalf("closed %v, want CLOSED_BY_API carrying the last generation", e)
	}
	list, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(list.GetConnections()) != 0 {
		t.Fatalf("ListConnections after close = %v, %v; want none", list.GetConnections(), err)
	}
	time.Sleep(500 * time.Millisecond) // past the reconnect that was scheduled
	if n := srv.Accepted(); n != 1 {
		t.Fatalf("the server accepted %d connections, want 1: the close stops the reconnects", n)
	}
}

// max_attempts failed attempts in a row close the connection for good with
// RECONNECT_GAVE_UP, saying the last failure; it is no longer listed.
func TestReconnectGivesUp(t *testing.T) {
	addr := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"g"}})
	c := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "g", Address: addr, Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(10), MaxAttempts: 3}})
	if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING {
		t.Fatalf("Connect = %v, want WAITING", c)
	}
	for n := uint32(1); n <= 2; n++ {
		if e := sub.Next(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED || e.GetAttempt() != n {
			t.Fatalf("event %v, want RECONNECT_SCHEDULED attempt %d", e, n)
		}
	}
	e := sub.Next()
	if e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED || e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_RECONNECT_GAVE_UP || !strings.Contains(e.GetError(), "refused") {
		t.Fatalf("event %v, want CONNECTION_CLOSED RECONNECT_GAVE_UP with the refusal", e)
	}
	_, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "g"})
	servertest.WantCode(t, err, codes.NotFound)
	if got := metric(t, g, `tcpgate_connections_closed_total{reason="reconnect_gave_up"}`); got != 1 {
		t.Errorf(`tcpgate_connections_closed_total{reason="reconnect_gave_up"} = %v, want 1`, got)
	}
}

// Shutdown closes outbound connections with SHUTDOWN and dials none of
// them again, waiting or connected; StopListener leaves them alone.
func TestShutdownClosesOutbound(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	waiting := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "l", Host: "127.0.0.1"})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "up", Address: srv.Addr(), Framing: lineFraming(), Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(10)}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "down", Address: waiting, Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(10)}})
	servertest.Dial(t, l.GetAddress())
	if _, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "l"}); err != nil {
		t.Fatal(err)
	}
	if reply, err := sendLine(t, g, "up", "after stop"); err != nil || reply != "echo after stop" {
		t.Fatalf("Send after StopListener = %q, %v; want the outbound connection untouched", reply, err)
	}
	if c := getConn(t, g, "up"); c.GetGeneration() != 1 {
		t.Fatalf("after StopListener: %v, want generation 1", c)
	}

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		c := srv.Conn(0)
		_ = c.SetReadDeadline(time.Now().Add(servertest.Wait))
		var b [1]byte
		_, _ = c.Read(b[:]) // the gateway's close ends it
	}()
	if err := g.Stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(servertest.Wait):
		t.Fatal("the outbound socket was not closed by the shutdown")
	}
	time.Sleep(200 * time.Millisecond) // twenty initial backoffs
	if n := srv.Accepted(); n != 1 {
		t.Fatalf("the server accepted %d connections, want 1: shutdown reconnects nothing", n)
	}
}

// Connect with an id in use, accepted or outbound, is AlreadyExists
// CONNECTION_EXISTS; --max-outbound-connections counts each connection
// from Connect until closed for good, connected or not; --max-connections
// counts an outbound connection only while it holds a socket.
func TestOutboundLimits(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	refused := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{MaxOutboundConnections: 2, MaxConnections: 1})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "a", Address: srv.Addr()})
	_, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{ConnectionId: "a", Address: srv.Addr()})
	if e := servertest.ErrorOf(err); e.Code != codes.AlreadyExists || e.Reason != "CONNECTION_EXISTS" || !strings.Contains(e.Message, `"a"`) {
		t.Fatalf("Connect with an id in use: %v, want AlreadyExists CONNECTION_EXISTS naming it", err)
	}
	// A waiting connection holds no socket: --max-connections (1) is
	// a's, and b counts toward --max-outbound-connections only.
	b := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "b", Address: refused})
	if b.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING {
		t.Fatalf("b = %v, want WAITING", b)
	}
	_, err = g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{Address: srv.Addr()})
	if e := servertest.ErrorOf(err); e.Code != codes.ResourceExhausted || e.Reason != "LIMIT_REACHED" || e.Meta["flag"] != "--max-outbound-connections" {
		t.Fatalf("a third Connect: %v, want ResourceExhausted naming --max-outbound-connections", err)
	}
	// a's socket takes the one slot of --max-connections: a listener's
	// client is turned away.
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	servertest.Dial(t, l.GetAddress())
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED); e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED {
		t.Fatalf("an accepted connection past --max-connections: %v, want LIMIT_REACHED", e)
	}
	if _, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "b"}); err != nil {
		t.Fatal(err)
	}
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "c", Address: refused}) // b's place is free again
}

// A server that resets a connection in the middle of a frame: the line cut
// short is delivered as the last DATA (a line's last frame, as for an
// accepted connection), the socket closes with PEER_RESET,
// and the connection dials again. One that half-closes: PEER_CLOSED, and
// dialed again.
func TestOutboundPeerFaults(t *testing.T) {
	var mu sync.Mutex
	n := 0
	addr := servertest.Peer(t, func(c net.Conn) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		switch i {
		case 1:
			_, _ = c.Write([]byte("whole\npart"))
			time.Sleep(50 * time.Millisecond)
			_ = c.(*net.TCPConn).SetLinger(0) // RST
		case 2:
			_, _ = c.Write([]byte("bye\n"))
			_ = c.(*net.TCPConn).CloseWrite()
			var b [1]byte
			_, _ = c.Read(b[:]) // until the gateway closes its side
		default:
			var b [1]byte
			_, _ = c.Read(b[:])
		}
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"f"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "f", Address: addr, Framing: lineFraming(), Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(10)}})
	var seen []string
	for len(seen) < 7 {
		e := sub.Next()
		s := fmt.Sprintf("%s gen=%d", strings.TrimPrefix(e.GetKind().String(), "EVENT_KIND_"), e.GetGeneration())
		switch e.GetKind() {
		case tcpgatev1.EventKind_EVENT_KIND_DATA:
			s += fmt.Sprintf(" %q partial=%v", e.GetText(), e.GetPartial())
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
			s += " " + strings.TrimPrefix(e.GetCloseReason().String(), "CLOSE_REASON_")
		case tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED:
			continue
		}
		seen = append(seen, s)
	}
	want := []string{
		"CONNECTION_OPENED gen=1", `DATA gen=1 "whole" partial=false`, `DATA gen=1 "part" partial=false`, "CONNECTION_CLOSED gen=1 PEER_RESET",
		"CONNECTION_OPENED gen=2", `DATA gen=2 "bye" partial=false`, "CONNECTION_CLOSED gen=2 PEER_CLOSED",
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED); e.GetGeneration() != 3 {
		t.Fatalf("opened %v, want generation 3", e)
	}
}

// Connect over REST: POST /v1/connections with a JSON body returns the
// connection, and the REST Send to it gets the reply.
func TestConnectREST(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	var resp tcpgatev1.ConnectResponse
	g.REST.Call("POST", "/v1/connections", fmt.Sprintf(`{"connectionId": "r", "address": %q, "framing": {"mode": "FRAMING_MODE_LINE"}, "reconnect": {"initialBackoff": "0.05s"}}`, srv.Addr()), &resp)
	if c := resp.GetConnection(); c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN || c.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND || resp.GetHeader().GetIncarnation() == "" {
		t.Fatalf("POST /v1/connections = %v, want an OPEN outbound connection and a header", &resp)
	}
	var sent tcpgatev1.SendResponse
	g.REST.Call("POST", "/v1/send", `{"connectionId": "r", "text": "hi", "framed": true, "awaitReply": {"mode": "AWAIT_MODE_FRAME"}}`, &sent)
	if sent.GetReply().GetText() != "echo hi" {
		t.Fatalf("REST Send = %v, want \"echo hi\"", &sent)
	}
	var list tcpgatev1.ListConnectionsResponse
	g.REST.Call("GET", "/v1/connections?origins=ORIGIN_OUTBOUND&state=CONNECTION_STATE_OPEN", "", &list)
	if len(list.GetConnections()) != 1 || list.GetConnections()[0].GetAddress() != srv.Addr() {
		t.Fatalf("GET /v1/connections?origins=ORIGIN_OUTBOUND = %v, want r with its address", &list)
	}
}

// 1,000 outbound connections to one server opened and closed: every one
// listed while open, none after, and no goroutine left behind.
func TestManyOutbound(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1,000 connections")
	}
	const n = 1000
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	base := runtime.NumGoroutine()
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				resp, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{Address: srv.Addr()})
				if err != nil {
					errs <- err
					continue
				}
				ids[i] = resp.GetConnection().GetConnectionId()
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Connect: %v", err)
	}
	listed := 0
	for token := ""; ; {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{tcpgatev1.Origin_ORIGIN_OUTBOUND}, PageToken: token, PageSize: 500})
		if err != nil {
			t.Fatal(err)
		}
		listed += len(resp.GetConnections())
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if listed != n {
		t.Fatalf("listed %d outbound connections, want %d", listed, n)
	}
	work = make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if _, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: ids[i]}); err != nil {
					t.Errorf("CloseConnection %s: %v", ids[i], err)
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(resp.GetConnections()) != 0 {
		t.Fatalf("after closing: %d connections listed, %v; want none", len(resp.GetConnections()), err)
	}
	servertest.Eventually(t, "the goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= base+10 })
}

// An outbound connection speaks TLS to its server with the tls Send takes:
// the server's certificate is checked against ca_pem, the connection's
// peer_subject names it, and a wrong CA makes every attempt a
// TLS_HANDSHAKE_FAILED refusal (Unavailable with reconnect disabled).
func TestConnectTLS(t *testing.T) {
	ca := servertest.NewCA(t)
	certPEM, keyPEM := ca.IssueLoopback(t)
	cert := servertest.KeyPair(t, certPEM, keyPEM)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte("tls " + line)); err != nil {
						return
					}
				}
			})
		}
	})
	g := servertest.Start(t, server.Config{})
	c := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "sec", Address: ln.Addr().String(), Framing: lineFraming(), Tls: &tcpgatev1.DialTLS{CaPem: string(ca.CertPEM)}})
	if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN || !strings.Contains(c.GetPeerSubject(), "localhost") {
		t.Fatalf("Connect over TLS = %v, want OPEN with the server's subject", c)
	}
	if reply, err := sendLine(t, g, "sec", "hello"); err != nil || reply != "tls hello" {
		t.Fatalf("Send over TLS = %q, %v", reply, err)
	}
	other := servertest.NewCA(t)
	_, err = g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{Address: ln.Addr().String(), Tls: &tcpgatev1.DialTLS{CaPem: string(other.CertPEM)},
		Reconnect: &tcpgatev1.Reconnect{Disabled: true}})
	if e := servertest.ErrorOf(err); e.Code != codes.Unavailable || e.Reason != "TLS_HANDSHAKE_FAILED" {
		t.Fatalf("Connect with the wrong CA: %v, want Unavailable TLS_HANDSHAKE_FAILED", err)
	}
}

// Connect returns after its timeout when the first attempt has no outcome
// yet: CONNECTING (its on_connect awaits a reply that is late), and the
// connection goes on. With reconnect disabled, an on_connect whose reply
// does not come fails Connect with Unavailable ON_CONNECT_FAILED, and
// leaves the socket's OPENED and CLOSED (ON_CONNECT_FAILED) events only.
func TestConnectOutcomes(t *testing.T) {
	srv := servertest.NewLineServer(t, func(l string) string {
		if l == "login" {
			time.Sleep(500 * time.Millisecond)
			return "welcome"
		}
		return ""
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"slow", "once"}})
	login := &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "login\n"}, Expect: prefix("welcome"), Timeout: ms(2000)}
	c := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "slow", Address: srv.Addr(), Framing: lineFraming(), OnConnect: login, Timeout: ms(100)})
	if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING {
		t.Fatalf("Connect past its timeout = %v, want CONNECTING", c)
	}
	servertest.Eventually(t, "slow connected once welcomed", func() bool {
		return getConn(t, g, "slow").GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})

	short := &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "login\n"}, Expect: prefix("welcome"), Timeout: ms(100)}
	_, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{ConnectionId: "once", Address: srv.Addr(), Framing: lineFraming(), OnConnect: short,
		Reconnect: &tcpgatev1.Reconnect{Disabled: true}})
	if e := servertest.ErrorOf(err); e.Code != codes.Unavailable || e.Reason != "ON_CONNECT_FAILED" {
		t.Fatalf("Connect whose on_connect reply is late, reconnect disabled: %v, want Unavailable ON_CONNECT_FAILED", err)
	}
	_, err = g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "once"})
	servertest.WantCode(t, err, codes.NotFound)
	for {
		e := sub.Next()
		if e.GetConnectionId() != "once" {
			continue
		}
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
			if e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_ON_CONNECT_FAILED || !strings.Contains(e.GetError(), "on_connect") {
				t.Fatalf("closed %v, want ON_CONNECT_FAILED saying why", e)
			}
			break
		}
	}
	sub.Quiet(200 * time.Millisecond)
}
