package server_test

import (
	"fmt"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// An include_sent subscriber sees both sides of an outbound connection's
// conversation, generation by generation: on_connect written first on
// each socket as DIRECTION_SENT data, the server's answer as received
// data, and a Send and its reply, each event with its socket's generation.
func TestOutboundSentData(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ConnectionIds: []string{"dev"}, IncludeSent: true,
		Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "dev", Address: srv.Addr(), Framing: lineFraming(),
		OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "login"}, Framed: true,
			Expect: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "echo login"}}},
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(50), MaxBackoff: ms(100)}})

	type data struct {
		dir  tcpgatev1.Direction
		text string
		gen  uint64
	}
	next := func() data {
		e := sub.NextOfWithin(tcpgatev1.EventKind_EVENT_KIND_DATA, 10*time.Second)
		return data{e.GetDirection(), e.GetText(), e.GetGeneration()}
	}
	sent, recv := tcpgatev1.Direction_DIRECTION_SENT, tcpgatev1.Direction_DIRECTION_RECEIVED
	want := func(gen uint64, ds ...data) {
		t.Helper()
		for _, d := range ds {
			d.gen = gen
			if got := next(); got != d {
				t.Fatalf("event %+v, want %+v", got, d)
			}
		}
	}
	want(1, data{dir: sent, text: "login\n"}, data{dir: recv, text: "echo login"})
	if reply, err := sendLine(t, g, "dev", "one"); err != nil || reply != "echo one" {
		t.Fatalf("Send = %q, %v", reply, err)
	}
	want(1, data{dir: sent, text: "one\n"}, data{dir: recv, text: "echo one"})
	// Each request comes before its answer, however fast the server
	// answers: the sent event is published as its write begins. (Published
	// once the write returned, the answer's event beat it about one run in
	// three here.)
	for i := range 100 {
		w := fmt.Sprintf("n%d", i)
		if reply, err := sendLine(t, g, "dev", w); err != nil || reply != "echo "+w {
			t.Fatalf("Send %s = %q, %v", w, reply, err)
		}
		want(1, data{dir: sent, text: w + "\n"}, data{dir: recv, text: "echo " + w})
	}

	srv.Kill()
	srv.Start()
	want(2, data{dir: sent, text: "login\n"}, data{dir: recv, text: "echo login"})
}
