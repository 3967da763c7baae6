package server_test

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

func prefix(p string) *tcpgatev1.ReplyMatch {
	return &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: p}}
}

// count returns how many of lines are line.
func count(lines []string, line string) int {
	n := 0
	for _, l := range lines {
		if l == line {
			n++
		}
	}
	return n
}

// Heartbeats are written after each interval without a write, and not
// while Sends keep the connection busy; their replies answer no Send, so
// Sends with await_reply running alongside get their own.
func TestHeartbeat(t *testing.T) {
	srv := servertest.NewLineServer(t, func(l string) string {
		if l == "ping" {
			return "pong"
		}
		return "echo " + l
	})
	g := servertest.Start(t, server.Config{})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "hb", Address: srv.Addr(), Framing: lineFraming(),
		Heartbeat: &tcpgatev1.Heartbeat{Interval: ms(200), Payload: &tcpgatev1.Heartbeat_Text{Text: "ping"}, Framed: true, Expect: prefix("pong"), Timeout: durationpb.New(2 * time.Second)}})
	servertest.Eventually(t, "three heartbeats while idle", func() bool { return count(srv.Lines(0), "ping") >= 3 })

	before := count(srv.Lines(0), "ping")
	for i := range 40 {
		w := "w" + string(rune('a'+i%26))
		if reply, err := sendLine(t, g, "hb", w); err != nil || reply != "echo "+w {
			t.Fatalf("Send %d with heartbeats running = %q, %v; want its own reply", i, reply, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// One may have been due as the Sends began.
	if n := count(srv.Lines(0), "ping") - before; n > 1 {
		t.Errorf("%d heartbeats while Sends wrote every 20ms, want none (interval 200ms)", n)
	}
	if c := getConn(t, g, "hb"); c.GetGeneration() != 1 || c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN {
		t.Errorf("after the heartbeats: %v, want generation 1 still OPEN", c)
	}
}

// A heartbeat whose expected reply does not come takes the peer as dead:
// the socket closes with HEARTBEAT_FAILED, saying why, and the connection
// dials again.
func TestHeartbeatFailedReconnects(t *testing.T) {
	srv := servertest.NewLineServer(t, func(string) string { return "" }) // never answers
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"dead"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "dead", Address: srv.Addr(), Framing: lineFraming(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(20)},
		Heartbeat: &tcpgatev1.Heartbeat{Interval: ms(100), Payload: &tcpgatev1.Heartbeat_Text{Text: "ping"}, Framed: true, Expect: prefix("pong"), Timeout: ms(200)}})
	closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_HEARTBEAT_FAILED || closed.GetGeneration() != 1 || !strings.Contains(closed.GetError(), "heartbeat") {
		t.Fatalf("closed %v, want HEARTBEAT_FAILED of generation 1 saying why", closed)
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED); !strings.Contains(e.GetError(), "heartbeat") {
		t.Errorf("scheduled %v, want the heartbeat's failure as its error", e)
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED); e.GetGeneration() != 2 {
		t.Fatalf("opened %v, want generation 2", e)
	}
}

// A peer that says nothing for idle_timeout is taken as dead: closed with
// IDLE_TIMEOUT, dialed again.
func TestIdlePeerReconnects(t *testing.T) {
	srv := servertest.NewLineServer(t, func(string) string { return "" })
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"idle"}})
	start := time.Now()
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "idle", Address: srv.Addr(), IdleTimeout: ms(200), Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(20)}})
	closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("closed %v after %s, want IDLE_TIMEOUT after 200ms", closed, time.Since(start))
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED); e.GetGeneration() != 2 {
		t.Fatalf("opened %v, want generation 2", e)
	}
	servertest.Eventually(t, "the server dialed again", func() bool { return srv.Accepted() >= 2 })
}

// A server that accepts and never answers: a Send with await_reply times
// out with REPLY_TIMEOUT and the connection stays usable; with on_timeout
// CLOSE the socket closes with REPLY_TIMEOUT and the connection dials
// again.
func TestSilentServer(t *testing.T) {
	srv := servertest.NewLineServer(t, func(string) string { return "" })
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"mute"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "mute", Address: srv.Addr(), Framing: lineFraming(), Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(20)}})
	await := func(onTimeout tcpgatev1.OnTimeout) error {
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "mute"}, Payload: &tcpgatev1.SendRequest_Text{Text: "q"}, Framed: true,
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, OnTimeout: onTimeout},
			Timeout:    ms(300),
		})
		return err
	}
	if e := servertest.ErrorOf(await(tcpgatev1.OnTimeout_ON_TIMEOUT_UNSPECIFIED)); e.Code != codes.DeadlineExceeded || e.Reason != "REPLY_TIMEOUT" {
		t.Fatalf("Send to a silent server: %v, want DeadlineExceeded REPLY_TIMEOUT", e)
	}
	if c := getConn(t, g, "mute"); c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN || c.GetGeneration() != 1 {
		t.Fatalf("after a reply timeout: %v, want generation 1 OPEN", c)
	}
	if _, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "mute"}, Payload: &tcpgatev1.SendRequest_Text{Text: "still here"}, Framed: true,
	}); err != nil {
		t.Fatalf("a Send after the reply timeout: %v", err)
	}
	servertest.Eventually(t, "the server got the later Send", func() bool { return count(srv.Lines(0), "still here") == 1 })

	if e := servertest.ErrorOf(await(tcpgatev1.OnTimeout_ON_TIMEOUT_CLOSE)); e.Code != codes.DeadlineExceeded || e.Reason != "REPLY_TIMEOUT" {
		t.Fatalf("Send with on_timeout CLOSE: %v, want DeadlineExceeded REPLY_TIMEOUT", e)
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED); e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_REPLY_TIMEOUT {
		t.Fatalf("closed %v, want REPLY_TIMEOUT", e)
	}
	if e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED); e.GetGeneration() != 2 {
		t.Fatalf("opened %v, want generation 2", e)
	}
}

// A peer that sends unsolicited frames all along: a Send with a match gets
// the reply that names its request, and one whose reply never comes times
// out with REPLY_TIMEOUT while the frames keep flowing to subscribers.
func TestUnsolicitedFramesMatch(t *testing.T) {
	addr := servertest.Peer(t, func(c net.Conn) {
		var mu sync.Mutex // one writer at a time
		write := func(s string) error {
			mu.Lock()
			defer mu.Unlock()
			_, err := c.Write([]byte(s))
			return err
		}
		done := make(chan struct{})
		defer close(done)
		go func() {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
					if write("tick\n") != nil {
						return
					}
				}
			}
		}()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if id, ok := strings.CutPrefix(strings.TrimSpace(line), "req "); ok {
				time.Sleep(20 * time.Millisecond) // ticks come first
				if write("resp "+id+"\n") != nil {
					return
				}
			}
		}
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"chatty"}, Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "chatty", Address: addr, Framing: lineFraming()})
	send := func(text, match string) (string, error) {
		resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "chatty"}, Payload: &tcpgatev1.SendRequest_Text{Text: text}, Framed: true,
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, Match: prefix(match)},
			Timeout:    ms(500),
		})
		return resp.GetReply().GetText(), err
	}
	for _, id := range []string{"id=1", "id=2", "id=3"} {
		if reply, err := send("req "+id, "resp "+id); err != nil || reply != "resp "+id {
			t.Fatalf("Send req %s = %q, %v; want its reply among the ticks", id, reply, err)
		}
	}
	if _, err := send("ignored", "resp id=99"); servertest.ErrorOf(err).Reason != "REPLY_TIMEOUT" {
		t.Fatalf("a Send whose reply never comes: %v, want REPLY_TIMEOUT", err)
	}
	if e := sub.Next(); e.GetText() != "tick" && !strings.HasPrefix(e.GetText(), "resp") {
		t.Fatalf("data %v, want the peer's frames", e)
	}
	if c := getConn(t, g, "chatty"); c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN || c.GetGeneration() != 1 {
		t.Fatalf("after the timeout: %v, want generation 1 OPEN", c)
	}
}

// switchResolver resolves every name to the address it holds now.
type switchResolver struct{ addr atomic.Value }

func (r *switchResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return []netip.Addr{r.addr.Load().(netip.Addr)}, nil
}

// The dial policy holds at every reconnect, on that attempt's addresses: a
// name that starts resolving to a denied address is refused then, the
// refusal is a RECONNECT_SCHEDULED's error, and no dial reaches anything;
// when the name resolves to an allowed address again, the connection
// comes back.
func TestPolicyRefusesReconnect(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	_, port, _ := net.SplitHostPort(srv.Addr())
	res := &switchResolver{}
	res.addr.Store(netip.MustParseAddr("127.0.0.1"))
	g := servertest.Start(t, server.Config{DialResolver: res, DenyDial: "127.0.0.2"})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"named"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "named", Address: "plc.example:" + port, Framing: lineFraming(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(20), MaxBackoff: ms(50)}})
	res.addr.Store(netip.MustParseAddr("127.0.0.2"))
	srv.Kill()
	srv.Start()
	var denied *tcpgatev1.Event
	for denied == nil {
		e := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED)
		if strings.Contains(e.GetError(), "denied") {
			denied = e
		}
	}
	if !strings.Contains(denied.GetError(), "127.0.0.2") {
		t.Errorf("scheduled %v, want the denial naming the address resolved", denied)
	}
	if n := srv.Accepted(); n != 1 {
		t.Fatalf("the server accepted %d connections while the name resolved to a denied address, want 1", n)
	}
	res.addr.Store(netip.MustParseAddr("127.0.0.1"))
	if e := sub.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, 5*time.Second); e.GetGeneration() != 2 {
		t.Fatalf("opened %v, want generation 2", e)
	}
}
