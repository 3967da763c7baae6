package server_test

import (
	"bufio"
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestLargestFrameReachesDefaultClient sends the largest line the limits
// allow (3 MiB) through a gateway to a gRPC client with default settings
// (a 4 MiB receive limit, as grpcurl has): live, on resume from the ring,
// and as an awaited reply, under every payload format. Sent as both data
// and text it would be a 6 MiB message that the client refuses.
func TestLargestFrameReachesDefaultClient(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 3 MiB frames; skipped with -short")
	}
	g := servertest.Start(t, server.Config{})
	line := strings.Repeat("0123456789abcdef", rpc.MaxFrameLimit/16-1) + "0123456789abcde" // 3 MiB - 1, and "\n"
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Port:    0,
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: rpc.MaxFrameLimit},
	})
	formats := []tcpgatev1.PayloadFormat{
		tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_UNSPECIFIED,
		tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_TEXT_OR_DATA,
		tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA,
		tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_BOTH,
	}
	var subs []*servertest.Stream
	for _, f := range formats {
		subs = append(subs, g.Subscribe(t, &tcpgatev1.SubscribeRequest{
			ListenerIds: []string{l.GetListenerId()}, PayloadFormat: f,
			Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA},
		}))
	}
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	for i, s := range subs {
		e := s.Next()
		if got := payloadOf(e); string(got) != line {
			t.Fatalf("%v: a %d-byte frame arrived as %d bytes", formats[i], len(line), len(got))
		}
		wantData := formats[i] == tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA || formats[i] == tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_BOTH
		if (len(e.GetData()) > 0) != wantData || (e.GetText() != "") == wantData {
			t.Errorf("%v: data %d bytes, text %d bytes", formats[i], len(e.GetData()), len(e.GetText()))
		}
		seq = e.GetSequence()
	}
	// The frame in the replay ring does not block a resume.
	for _, f := range formats {
		s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: seq, PayloadFormat: f})
		if e := s.Next(); e.GetSequence() != seq || len(payloadOf(e)) != len(line) {
			t.Fatalf("%v: resume from %d got event %d of %d bytes", f, seq, e.GetSequence(), len(payloadOf(e)))
		}
	}

	// The same line as an awaited reply, from the peer of that connection.
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections: %v, %v", conns, err)
	}
	id := conns.GetConnections()[0].GetConnectionId()
	rd := bufio.NewReader(c)
	for _, f := range formats {
		done := make(chan error, 1)
		go func() {
			// The peer answers the request with the line.
			if _, err := rd.ReadString('\n'); err != nil {
				done <- err
				return
			}
			_, err := c.Write([]byte(line + "\n"))
			done <- err
		}()
		// 3 MiB each way under -race on a shared machine can take longer
		// than servertest.Wait: the bound is the Send's own 30 s.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		resp, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "req\n"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, MaxBytes: rpc.MaxFrameLimit, PayloadFormat: f},
		})
		cancel()
		if err != nil {
			t.Fatalf("%v: Send awaiting a %d-byte reply: %v", f, len(line), err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := payloadOf(resp.GetReply()); !bytes.Equal(got, []byte(line)) {
			t.Fatalf("%v: reply of %d bytes, want %d", f, len(got), len(line))
		}
	}
}

// TestPayloadFormats checks what each payload format sends for text and
// for binary frames, in events and in awaited replies.
func TestPayloadFormats(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte{'|'}},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	text, bin := "héllo", "\xff\x00"
	cases := []struct {
		f                    tcpgatev1.PayloadFormat
		textData, textText   string
		binData, binText     string
		replyData, replyText string
	}{
		{tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_UNSPECIFIED, "", text, bin, "", "", text},
		{tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_TEXT_OR_DATA, "", text, bin, "", "", text},
		{tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA, text, "", bin, "", text, ""},
		{tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_BOTH, text, text, bin, "", text, text},
	}
	var subs []*servertest.Stream
	for _, c := range cases {
		subs = append(subs, g.Subscribe(t, &tcpgatev1.SubscribeRequest{
			PayloadFormat: c.f, Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA},
		}))
	}
	conn := servertest.Dial(t, l.GetAddress())
	if _, err := conn.Write([]byte(text + "|" + bin + "|")); err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		te, be := subs[i].Next(), subs[i].Next()
		if string(te.GetData()) != c.textData || te.GetText() != c.textText {
			t.Errorf("%v: text frame as data %q text %q, want %q %q", c.f, te.GetData(), te.GetText(), c.textData, c.textText)
		}
		if string(be.GetData()) != c.binData || be.GetText() != c.binText {
			t.Errorf("%v: binary frame as data %q text %q, want %q %q", c.f, be.GetData(), be.GetText(), c.binData, c.binText)
		}
		// An echo listener answers with what it got: the address target
		// reads the reply of a one-shot connection.
		resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: l.GetAddress()},
			Payload:    &tcpgatev1.SendRequest_Text{Text: text + "|"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte{'|'}}, PayloadFormat: c.f},
		})
		if err != nil {
			t.Fatalf("%v: Send: %v", c.f, err)
		}
		if r := resp.GetReply(); string(r.GetData()) != c.replyData || r.GetText() != c.replyText {
			t.Errorf("%v: reply as data %q text %q, want %q %q", c.f, r.GetData(), r.GetText(), c.replyData, c.replyText)
		}
	}
	s, err := g.Client.Subscribe(servertest.Context(t), &tcpgatev1.SubscribeRequest{PayloadFormat: 9})
	if err == nil {
		_, err = s.Recv()
	}
	servertest.WantCode(t, err, codes.InvalidArgument)
	_, err = g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_Address{Address: l.GetAddress()},
		Payload:    &tcpgatev1.SendRequest_Text{Text: "x|"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ, PayloadFormat: 9},
	})
	servertest.WantCode(t, err, codes.InvalidArgument)
}
