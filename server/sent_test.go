package server_test

import (
	"slices"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// dataLine is a DATA event as these tests compare them: its direction and
// its bytes.
type dataLine struct {
	dir  tcpgatev1.Direction
	data string
}

// A subscriber that asks include_sent, over gRPC and over REST (NDJSON
// and SSE), sees what the gateway wrote (an echo, a Send to the
// connection) as DIRECTION_SENT data, in order with what the peer said;
// a default subscriber sees exactly the received data, as before.
func TestIncludeSent(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	both := g.Subscribe(t, &tcpgatev1.SubscribeRequest{IncludeSent: true})
	plain := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	ndjson := g.REST.OpenEvents("includeSent=true", nil)
	sse := g.REST.OpenEvents("includeSent=true", servertest.SSEHeader(""))
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	servertest.ReadN(t, c, len("hello\n"))
	opened := both.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: opened.GetConnectionId()},
		Payload: &tcpgatev1.SendRequest_Text{Text: "from the API\n"},
	})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	servertest.ReadN(t, c, len("from the API\n"))
	_ = c.Close()

	sent, recv := tcpgatev1.Direction_DIRECTION_SENT, tcpgatev1.Direction_DIRECTION_RECEIVED
	want := []dataLine{{recv, "hello"}, {sent, "hello\n"}, {sent, "from the API\n"}}
	collect := func(next func() *tcpgatev1.Event) []dataLine {
		var got []dataLine
		for {
			e := next()
			switch e.GetKind() {
			case tcpgatev1.EventKind_EVENT_KIND_DATA:
				got = append(got, dataLine{e.GetDirection(), string(e.GetData()) + e.GetText()})
			case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
				return got
			}
		}
	}
	if got := collect(both.Next); !slices.Equal(got, want) {
		t.Errorf("gRPC with include_sent: %v, want %v", got, want)
	}
	if got := collect(plain.Next); !slices.Equal(got, want[:1]) {
		t.Errorf("gRPC without include_sent: %v, want the received line alone", got)
	}
	if got := collect(func() *tcpgatev1.Event { e, _ := ndjson.Next(); return e }); !slices.Equal(got, want) {
		t.Errorf("NDJSON with includeSent: %v, want %v", got, want)
	}
	if got := collect(sse.NextSSE); !slices.Equal(got, want) {
		t.Errorf("SSE with includeSent: %v, want %v", got, want)
	}

	// The replay honours it too.
	replay := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: 1, IncludeSent: true})
	if got := collect(replay.Next); !slices.Equal(got, want) {
		t.Errorf("replay with include_sent: %v, want %v", got, want)
	}
	replayPlain := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	if got := collect(replayPlain.Next); !slices.Equal(got, want[:1]) {
		t.Errorf("replay without include_sent: %v, want the received line alone", got)
	}
}
