package server_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

func lineFraming() *tcpgatev1.Framing {
	return &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
}

func ms(n int) *durationpb.Duration { return durationpb.New(time.Duration(n) * time.Millisecond) }

// sendLine sends text framed on connection id and returns the reply line.
func sendLine(t testing.TB, g *servertest.Gateway, id, text string) (string, error) {
	t.Helper()
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload:    &tcpgatev1.SendRequest_Text{Text: text},
		Framed:     true,
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
		Timeout:    durationpb.New(5 * time.Second),
	})
	return resp.GetReply().GetText(), err
}

// A managed outbound connection, end to end: Connect returns it OPEN, a
// Send with await_reply returns the server's answer, it is listed with
// its origin, address and generation, Subscribe sees its frames with
// origin OUTBOUND and its generation, and CloseConnection closes it for
// good: CLOSED in the response, no longer listed, no new dial.
func TestConnectSendClose(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{tcpgatev1.Origin_ORIGIN_OUTBOUND}})

	resp, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{ConnectionId: "plc", Address: srv.Addr(), Framing: lineFraming()})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.GetConnection()
	if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN || c.GetConnectionId() != "plc" || c.GetGeneration() != 1 ||
		c.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND || c.GetAddress() != srv.Addr() || c.GetRemoteAddress() != srv.Addr() {
		t.Fatalf("Connect returned %v, want plc OPEN, generation 1, outbound to %s", c, srv.Addr())
	}
	opened := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	if opened.GetConnectionId() != "plc" || opened.GetGeneration() != 1 || opened.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND {
		t.Fatalf("opened event %v, want plc generation 1 outbound", opened)
	}
	if resp.GetHeader().GetLastSequence() < opened.GetSequence() {
		t.Errorf("Connect's header at sequence %d, before its CONNECTION_OPENED (%d)", resp.GetHeader().GetLastSequence(), opened.GetSequence())
	}

	reply, err := sendLine(t, g, "plc", "status")
	if err != nil || reply != "echo status" {
		t.Fatalf("Send = %q, %v; want \"echo status\"", reply, err)
	}
	data := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA)
	if data.GetText() != "echo status" || data.GetGeneration() != 1 || data.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND {
		t.Fatalf("data event %v, want \"echo status\" of generation 1, outbound", data)
	}

	list, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{tcpgatev1.Origin_ORIGIN_OUTBOUND}})
	if err != nil || len(list.GetConnections()) != 1 || list.GetConnections()[0].GetConnectionId() != "plc" {
		t.Fatalf("ListConnections(outbound) = %v, %v; want plc", list.GetConnections(), err)
	}
	if got := list.GetConnections()[0]; got.GetBytesOut() != uint64(len("status\n")) || got.GetFramesIn() != 1 {
		t.Errorf("listed %v, want 7 bytes out and 1 frame in", got)
	}
	accepted, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{tcpgatev1.Origin_ORIGIN_ACCEPTED}})
	if err != nil || len(accepted.GetConnections()) != 0 {
		t.Fatalf("ListConnections(accepted) = %v, %v; want none", accepted.GetConnections(), err)
	}

	closed, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "plc"})
	if err != nil || closed.GetConnection().GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_CLOSED {
		t.Fatalf("CloseConnection = %v, %v; want state CLOSED", closed, err)
	}
	ev := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if ev.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API || ev.GetGeneration() != 1 {
		t.Fatalf("closed event %v, want CLOSED_BY_API of generation 1", ev)
	}
	_, err = g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "plc"})
	servertest.WantCode(t, err, codes.NotFound)
	if _, err := sendLine(t, g, "plc", "again"); codeOf(err) != codes.NotFound {
		t.Fatalf("Send after close: %v, want NotFound", err)
	}
	// No reconnect: the server sees no second connection.
	sub.Quiet(300 * time.Millisecond)
	if n := srv.Accepted(); n != 1 {
		t.Fatalf("server accepted %d connections, want 1: CloseConnection must stop reconnects", n)
	}
}

func codeOf(err error) codes.Code { return servertest.ErrorOf(err).Code }

// The server is killed and started again on the same port: the stream
// shows the socket's CONNECTION_CLOSED, RECONNECT_SCHEDULED with the last
// generation, and a CONNECTION_OPENED of generation 2; the id stays, and a
// Send with await works before and after.
func TestReconnectAfterServerRestart(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"feed"}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "feed", Address: srv.Addr(), Framing: lineFraming(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(50), MaxBackoff: ms(200)}})
	if reply, err := sendLine(t, g, "feed", "one"); err != nil || reply != "echo one" {
		t.Fatalf("Send before the restart = %q, %v", reply, err)
	}
	srv.Kill()
	closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetGeneration() != 1 || closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("closed %v, want generation 1 PEER_CLOSED", closed)
	}
	sched := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED)
	if sched.GetGeneration() != 1 || sched.GetAttempt() != 1 || sched.GetError() == "" || sched.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND {
		t.Fatalf("scheduled %v, want attempt 1 after generation 1, with its error", sched)
	}
	got, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "feed"})
	if err != nil {
		t.Fatal(err)
	}
	if st := got.GetConnection().GetState(); st != tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING && st != tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING {
		t.Fatalf("while the server is down: state %v, want WAITING or CONNECTING", st)
	}
	srv.Start()
	opened := sub.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, 10*time.Second)
	if opened.GetGeneration() != 2 || opened.GetConnectionId() != "feed" {
		t.Fatalf("opened %v, want generation 2 of feed", opened)
	}
	servertest.Eventually(t, "feed connected again", func() bool {
		c, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "feed"})
		return err == nil && c.GetConnection().GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if reply, err := sendLine(t, g, "feed", "two"); err != nil || reply != "echo two" {
		t.Fatalf("Send after the restart = %q, %v", reply, err)
	}
	c, _ := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "feed"})
	if c.GetConnection().GetGeneration() != 2 || c.GetConnection().GetLastError() == "" {
		t.Errorf("after the restart: %v, want generation 2 and the last error kept", c.GetConnection())
	}
}

// A server that refuses: the RECONNECT_SCHEDULED delays grow as the
// proto says, each within its jitter, [d/2, d] for d = min(initial·2^(n-1),
// max), and Connect returned WAITING with the refusal as last_error.
func TestReconnectBackoff(t *testing.T) {
	addr := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED}})
	const initial, maxB = 20 * time.Millisecond, 160 * time.Millisecond
	c := g.Connect(t, &tcpgatev1.ConnectRequest{Address: addr, Reconnect: &tcpgatev1.Reconnect{InitialBackoff: durationpb.New(initial), MaxBackoff: durationpb.New(maxB)}})
	if c.GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING || !strings.Contains(c.GetLastError(), "refused") || c.GetAttempts() != 1 || c.GetNextAttemptAt() == nil {
		t.Fatalf("Connect returned %v, want WAITING after 1 refused attempt, with next_attempt_at", c)
	}
	for n := uint32(1); n <= 7; n++ {
		e := sub.Next()
		d := min(initial<<(n-1), maxB)
		if e.GetAttempt() != n || e.GetConnectionId() != c.GetConnectionId() || !strings.Contains(e.GetError(), "refused") {
			t.Fatalf("event %d: %v, want attempt %d with the refusal", n, e, n)
		}
		if got := e.GetDelay().AsDuration(); got < d/2 || got > d {
			t.Errorf("attempt %d: delay %s, want within [%s, %s]", n, got, d/2, d)
		}
	}
}

// A server that accepts and closes at once: each socket that drops before
// it stayed up max(initial_backoff, 1 s) counts as a failed attempt, so the
// attempts go on counting and the backoff grows, instead of starting over
// at every connection.
func TestShortConnectionsBackOff(t *testing.T) {
	addr := servertest.Peer(t, func(net.Conn) {}) // closes at once
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"flap"}, Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "flap", Address: addr, Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(10), MaxBackoff: ms(80)}})
	for n := uint32(1); n <= 5; n++ {
		e := sub.Next()
		d := min(10*time.Millisecond<<(n-1), 80*time.Millisecond)
		if e.GetAttempt() != n || e.GetDelay().AsDuration() < d/2 || e.GetDelay().AsDuration() > d || e.GetGeneration() != uint64(n) {
			t.Fatalf("scheduled %v, want attempt %d after generation %d, delay within [%s, %s]", e, n, n, d/2, d)
		}
	}
	if c := getConn(t, g, "flap"); c.GetAttempts() < 5 {
		t.Errorf("attempts = %d, want at least 5 failed in a row", c.GetAttempts())
	}
}
