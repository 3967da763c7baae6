package server_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// answerLines runs a peer on c: each line "req-N" is answered by what
// answer returns (nothing when it returns "").
func answerLines(c net.Conn, answer func(n string) string) {
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		n, ok := strings.CutPrefix(sc.Text(), "req-")
		if !ok {
			continue
		}
		if a := answer(n); a != "" {
			if _, err := c.Write([]byte(a)); err != nil {
				return
			}
		}
	}
}

// lineConn starts a line listener, connects a client to it that runs
// answer, and returns the connection's id.
func lineConn(t *testing.T, g *servertest.Gateway, answer func(n string) string) (id string, s *servertest.Stream) {
	t.Helper()
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	s = g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	go answerLines(c, answer)
	return s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId(), s
}

func awaitSend(t *testing.T, g *servertest.Gateway, id, text string, timeout time.Duration, aw *tcpgatev1.AwaitReply) (*tcpgatev1.SendResponse, error) {
	t.Helper()
	if aw.Mode == tcpgatev1.AwaitMode_AWAIT_MODE_UNSPECIFIED {
		aw.Mode = tcpgatev1.AwaitMode_AWAIT_MODE_FRAME
	}
	return g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload:    &tcpgatev1.SendRequest_Text{Text: text},
		AwaitReply: aw,
		Timeout:    durationpb.New(timeout),
	})
}

// The repro of a lost reply: a peer answers req-N with ack-N, except req-5.
// req-5 times out, and every other request still gets its own reply. Then
// on_timeout CLOSE closes the connection with REPLY_TIMEOUT when a reply is
// lost.
func TestAwaitedSendAfterLostReply(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	id, s := lineConn(t, g, func(n string) string {
		if n == "5" {
			return ""
		}
		return "ack-" + n + "\n"
	})
	for _, n := range []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"} {
		timeout := 3 * time.Second
		if n == "5" {
			timeout = 300 * time.Millisecond
		}
		resp, err := awaitSend(t, g, id, "req-"+n+"\n", timeout, &tcpgatev1.AwaitReply{})
		switch {
		case n == "5":
			if status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("req-5 = %v, %v; want DeadlineExceeded", resp.GetReply(), err)
			}
		case err != nil:
			t.Errorf("req-%s: %v", n, err)
		case resp.GetReply().GetText() != "ack-"+n:
			t.Errorf("req-%s got %q, want ack-%s", n, resp.GetReply().GetText(), n)
		}
	}

	_, err := awaitSend(t, g, id, "req-5\n", 300*time.Millisecond, &tcpgatev1.AwaitReply{OnTimeout: tcpgatev1.OnTimeout_ON_TIMEOUT_CLOSE})
	servertest.WantCode(t, err, codes.DeadlineExceeded)
	closed := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if got := closed.GetCloseReason(); got != tcpgatev1.CloseReason_CLOSE_REASON_REPLY_TIMEOUT {
		t.Errorf("close reason = %s, want CLOSE_REASON_REPLY_TIMEOUT", got)
	}
}

// await_reply.match picks the reply among frames that are not one.
func TestAwaitReplyMatch(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	id, _ := lineConn(t, g, func(n string) string { return "notice " + n + "\nack-" + n + "\n" })
	tests := []struct {
		name  string
		match *tcpgatev1.ReplyMatch
		want  string
	}{
		{"prefix", &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "ack-1"}}, "ack-1"},
		{"prefix_data", &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_PrefixData{PrefixData: []byte("ack-2")}}, "ack-2"},
		{"regex", &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Regex{Regex: `^ack-3$`}}, "ack-3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.want[len("ack-"):]
			resp, err := awaitSend(t, g, id, "req-"+n+"\n", 3*time.Second, &tcpgatev1.AwaitReply{Match: tt.match})
			if err != nil || resp.GetReply().GetText() != tt.want {
				t.Fatalf("Send = %v, %v; want %s", resp.GetReply(), err, tt.want)
			}
		})
	}

	// On an address, AWAIT_MODE_FRAME skips frames that do not match.
	addr := servertest.Peer(t, func(c net.Conn) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			_, _ = c.Write([]byte("hello\nack-9\n"))
		}
	})
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_Address{Address: addr},
		Payload: &tcpgatev1.SendRequest_Text{Text: "req-9\n"},
		AwaitReply: &tcpgatev1.AwaitReply{
			Mode:    tcpgatev1.AwaitMode_AWAIT_MODE_FRAME,
			Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
			Match:   &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "ack-"}},
		},
	})
	if err != nil || resp.GetReply().GetText() != "ack-9" {
		t.Errorf("Send to an address = %v, %v; want ack-9", resp.GetReply(), err)
	}
}

// Bad match and on_timeout values are InvalidArgument naming the field.
func TestAwaitReplyMatchInvalid(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	frame := tcpgatev1.AwaitMode_AWAIT_MODE_FRAME
	prefix := &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "a"}}
	conn := &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c1"}
	addr := &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:9"}
	tests := []struct {
		name   string
		target any
		aw     *tcpgatev1.AwaitReply
		field  string
	}{
		{"bad regex", conn, &tcpgatev1.AwaitReply{Mode: frame, Match: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Regex{Regex: "("}}}, "await_reply.match.regex"},
		{"long regex", conn, &tcpgatev1.AwaitReply{Mode: frame, Match: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Regex{Regex: strings.Repeat("a", 1025)}}}, "await_reply.match.regex"},
		{"empty prefix", conn, &tcpgatev1.AwaitReply{Mode: frame, Match: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{}}}, "await_reply.match.prefix"},
		{"empty prefix_data", conn, &tcpgatev1.AwaitReply{Mode: frame, Match: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_PrefixData{}}}, "await_reply.match.prefix_data"},
		{"no rule", conn, &tcpgatev1.AwaitReply{Mode: frame, Match: &tcpgatev1.ReplyMatch{}}, "await_reply.match"},
		{"match without a mode", conn, &tcpgatev1.AwaitReply{Match: prefix}, "await_reply.match"},
		{"on_timeout without a mode", conn, &tcpgatev1.AwaitReply{OnTimeout: tcpgatev1.OnTimeout_ON_TIMEOUT_CLOSE}, "await_reply.on_timeout"},
		{"unknown on_timeout", conn, &tcpgatev1.AwaitReply{Mode: frame, OnTimeout: 9}, "await_reply.on_timeout"},
		{"on_timeout on an address", addr, &tcpgatev1.AwaitReply{Mode: frame, OnTimeout: tcpgatev1.OnTimeout_ON_TIMEOUT_CLOSE}, "await_reply.on_timeout"},
		{"match on an address without frames", addr, &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ, Match: prefix}, "await_reply.match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &tcpgatev1.SendRequest{Payload: &tcpgatev1.SendRequest_Text{Text: "x"}, AwaitReply: tt.aw}
			switch tg := tt.target.(type) {
			case *tcpgatev1.SendRequest_ConnectionId:
				req.Target = tg
			case *tcpgatev1.SendRequest_Address:
				req.Target = tg
			}
			_, err := g.Client.Send(servertest.Context(t), req)
			if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), tt.field+":") {
				t.Errorf("Send = %v, want InvalidArgument naming %s", err, tt.field)
			}
		})
	}
}
