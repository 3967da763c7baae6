package server_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
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

// The kn-sock example: a server answering "Message received", a client
// sending "Hello, World!", and a subscriber seeing it all in order.
func TestSeedFlow(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		AutoReply: &tcpgatev1.AutoReply{
			Mode:    tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: "Message received"},
		},
	})
	if l.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_LISTENING || !strings.HasPrefix(l.GetAddress(), "127.0.0.1:") {
		t.Fatalf("listener = %v", l)
	}
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})

	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("Hello, World!")); err != nil {
		t.Fatal(err)
	}
	if got := servertest.ReadN(t, c, len("Message received")); string(got) != "Message received" {
		t.Fatalf("reply = %q", got)
	}
	c.Close()

	opened := s.Next()
	data := s.Next()
	closed := s.Next()
	if opened.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED ||
		data.GetKind() != tcpgatev1.EventKind_EVENT_KIND_DATA ||
		closed.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
		t.Fatalf("kinds = %v, %v, %v", opened.GetKind(), data.GetKind(), closed.GetKind())
	}
	// PAYLOAD_FORMAT_TEXT_OR_DATA, the default: text, once.
	if data.GetText() != "Hello, World!" || data.GetData() != nil {
		t.Fatalf("data event = %v", data)
	}
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("close reason = %v", closed.GetCloseReason())
	}
	if !(opened.GetSequence() < data.GetSequence() && data.GetSequence() < closed.GetSequence()) {
		t.Fatalf("sequences not increasing: %d %d %d", opened.GetSequence(), data.GetSequence(), closed.GetSequence())
	}
	if opened.GetConnectionId() == "" || opened.GetConnectionId() != data.GetConnectionId() || opened.GetRemoteAddress() != c.LocalAddr().String() {
		t.Fatalf("opened = %v, client at %s", opened, c.LocalAddr())
	}

	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	gl := got.GetListener()
	if gl.GetConnectionsTotal() != 1 || gl.GetBytesIn() != 13 || gl.GetFramesIn() != 1 || gl.GetBytesOut() != 16 || gl.GetConnectionsActive() != 0 {
		t.Fatalf("counters = %v", gl)
	}
}

func TestRawBytesArriveExact(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})

	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_Address{Address: l.GetAddress()},
		Payload: &tcpgatev1.SendRequest_Data{Data: []byte{1, 2, 3, 4}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetBytesWritten() != 4 || resp.GetConnectionsReached() != 1 || resp.GetReply() != nil {
		t.Fatalf("Send = %v", resp)
	}
	if e := s.Next(); e.GetData() != nil || e.GetText() != "\x01\x02\x03\x04" {
		t.Fatalf("event = %v", e)
	}

	// Bytes that are not UTF-8 go as data.
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte{0xff, 0xfe, 0x00})
	if e := s.Next(); !bytes.Equal(e.GetData(), []byte{0xff, 0xfe, 0x00}) || e.GetText() != "" {
		t.Fatalf("event = %v", e)
	}
}

func TestIPv6Listener(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	ln.Close()
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "::1", AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	if !strings.HasPrefix(l.GetAddress(), "[::1]:") {
		t.Fatalf("address = %s", l.GetAddress())
	}
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte("v6"))
	if got := servertest.ReadN(t, c, 2); string(got) != "v6" {
		t.Fatalf("echo = %q", got)
	}
}

// TestSendAwaitModes sends to an address served by a plain Go TCP server.
func TestSendAwaitModes(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	// The peer reads the request, answers in two writes ("hello\n" then
	// "world\n", 200 ms apart, so that a first read on a loaded machine
	// still takes the first alone) and closes.
	addr := servertest.Peer(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if string(buf[:n]) != "ping" {
			c.Write([]byte("unexpected " + string(buf[:n])))
			return
		}
		c.Write([]byte("hello\n"))
		time.Sleep(200 * time.Millisecond)
		c.Write([]byte("world\n"))
	})
	tests := []struct {
		name  string
		await *tcpgatev1.AwaitReply
		want  string
	}{
		{"none", nil, ""},
		{"first read", &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ}, "hello\n"},
		{"line frame", &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME,
			Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}}, "hello"},
		{"delimiter frame across writes", &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME,
			Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte("ld")}}, "hello\nwor"},
		{"until close", &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE}, "hello\nworld\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
				Target:     &tcpgatev1.SendRequest_Address{Address: addr},
				Payload:    &tcpgatev1.SendRequest_Text{Text: "ping"},
				AwaitReply: tt.await,
				Timeout:    durationpb.New(5 * time.Second),
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetBytesWritten() != 4 {
				t.Fatalf("bytes_written = %d", resp.GetBytesWritten())
			}
			if tt.await == nil {
				if resp.Reply != nil {
					t.Fatalf("unexpected reply %v", resp.Reply)
				}
				return
			}
			if resp.GetReply().GetText() != tt.want || resp.GetReply().GetData() != nil {
				t.Fatalf("reply = %v, want text %q only", resp.GetReply(), tt.want)
			}
		})
	}

	t.Run("reply larger than max_bytes", func(t *testing.T) {
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: addr},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "ping"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE, MaxBytes: 8},
		})
		servertest.WantCode(t, err, codes.ResourceExhausted)
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "await_reply.max_bytes") {
			t.Errorf("message %q does not name await_reply.max_bytes", msg)
		}
	})
}

func TestSendReplyTimeout(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	release := make(chan struct{})
	addr := servertest.Peer(t, func(c net.Conn) { <-release }) // reads nothing, answers nothing
	defer close(release)
	start := time.Now()
	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_Address{Address: addr},
		Payload:    &tcpgatev1.SendRequest_Text{Text: "anyone?"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
		Timeout:    durationpb.New(200 * time.Millisecond),
	})
	servertest.WantCode(t, err, codes.DeadlineExceeded)
	if !strings.Contains(status.Convert(err).Message(), addr) {
		t.Fatalf("message %q does not name %s", status.Convert(err).Message(), addr)
	}
	if time.Since(start) > wait {
		t.Fatalf("timeout not applied")
	}
}

func TestBroadcast(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED}})
	var clients []*net.TCPConn
	for range 3 {
		clients = append(clients, servertest.Dial(t, l.GetAddress()))
		s.Next()
	}
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_ListenerId{ListenerId: l.GetListenerId()},
		Payload: &tcpgatev1.SendRequest_Text{Text: "to all"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetConnectionsReached() != 3 || resp.GetBytesWritten() != 18 {
		t.Fatalf("Send = %v", resp)
	}
	for i, c := range clients {
		if got := servertest.ReadN(t, c, 6); string(got) != "to all" {
			t.Fatalf("client %d got %q", i, got)
		}
	}
}

// TestSendToConnection answers a client through the gateway, in order, with
// replies matched to their sends.
func TestSendToConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})

	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	id := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	if len(conns.GetConnections()) != 1 || conns.GetConnections()[0].GetConnectionId() != id ||
		conns.GetConnections()[0].GetRemoteAddress() != c.LocalAddr().String() {
		t.Fatalf("ListConnections = %v", conns)
	}

	// The client answers each "qN\n" with "aN\n"; three sends run at once
	// and each must get its own answer.
	go func() {
		buf := make([]byte, 0, 64)
		tmp := make([]byte, 64)
		for {
			n, err := c.Read(tmp)
			if err != nil {
				return
			}
			buf = append(buf, tmp[:n]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				c.Write([]byte("a" + string(buf[1:i]) + "\r\n"))
				buf = buf[i+1:]
			}
		}
	}()
	type result struct {
		q, a string
		err  error
	}
	results := make(chan result, 3)
	for _, q := range []string{"1", "2", "3"} {
		go func() {
			resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
				Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
				Payload:    &tcpgatev1.SendRequest_Text{Text: "q" + q + "\n"},
				AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
			})
			results <- result{q, resp.GetReply().GetText(), err}
		}()
	}
	for range 3 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.a != "a"+r.q {
			t.Fatalf("send q%s got reply %q", r.q, r.a)
		}
	}
	// Replies are events too.
	for range 3 {
		if e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA); !strings.HasPrefix(e.GetText(), "a") {
			t.Fatalf("event = %v", e)
		}
	}

	closed, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	if closed.GetConnection().GetBytesOut() != 9 || closed.GetConnection().GetBytesIn() != 12 {
		t.Fatalf("CloseConnection = %v", closed)
	}
	if e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED); e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API {
		t.Fatalf("close event = %v", e)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("client still connected after CloseConnection")
	}
	_, err = g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload: &tcpgatev1.SendRequest_Text{Text: "late"},
	})
	servertest.WantCode(t, err, codes.NotFound)
}

func TestFramingOverSockets(t *testing.T) {
	lp := func(s string) []byte {
		b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
		return append(b, s...)
	}
	tests := []struct {
		name    string
		framing *tcpgatev1.Framing
		send    [][]byte // written one by one, with a pause so reads split
		want    []string // DATA events in order
		partial string   // data of the partial DATA event right before the close
		reason  tcpgatev1.CloseReason
	}{
		{
			name:    "line with CRLF and a last line without newline",
			framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
			send:    [][]byte{[]byte("one\r\ntw"), []byte("o\n\nthree")},
			want:    []string{"one", "two", "", "three"},
			reason:  tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED,
		},
		{
			name:    "binary delimiter",
			framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte{0, 0xff}},
			send:    [][]byte{{'a', 0}, {0xff, 'b', 0, 0xff}},
			want:    []string{"a", "b"},
			reason:  tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED,
		},
		{
			name:    "length prefix with a partial frame at close",
			framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2},
			send:    [][]byte{append(lp("alpha"), lp("be")[:3]...), append(lp("be")[3:], lp("gamma")[:4]...)},
			want:    []string{"alpha", "be"},
			partial: string(lp("gamma")[:4]),
			reason:  tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED,
		},
		{
			name:    "fixed",
			framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 3},
			send:    [][]byte{[]byte("abcd"), []byte("efgh")},
			want:    []string{"abc", "def"},
			partial: "gh",
			reason:  tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED,
		},
		{
			name:    "frame too large closes the connection",
			framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: 8},
			send:    [][]byte{[]byte("short\nthis line is too long\n")},
			want:    []string{"short"},
			reason:  tcpgatev1.CloseReason_CLOSE_REASON_FRAME_TOO_LARGE,
		},
	}
	g := servertest.Start(t, server.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: tt.framing})
			s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
			c := servertest.Dial(t, l.GetAddress())
			s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
			for _, b := range tt.send {
				c.Write(b)
				time.Sleep(20 * time.Millisecond)
			}
			if tt.reason == tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
				c.CloseWrite()
			}
			var got []string
			partial := ""
			for {
				e := s.Next()
				if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
					if e.GetCloseReason() != tt.reason || len(e.GetData())+len(e.GetText()) != 0 || partial != tt.partial {
						t.Fatalf("close event = %v after partial DATA %q, want reason %v, no data, after partial %q", e, partial, tt.reason, tt.partial)
					}
					break
				}
				if partial != "" {
					t.Fatalf("event %v after the partial DATA, want the close right after it", e)
				}
				if e.GetPartial() {
					partial = string(payloadOf(e))
					continue
				}
				got = append(got, string(payloadOf(e)))
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
				t.Fatalf("frames = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEchoReencodesFrames(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte("a\r\nbc\n"))
	if got := servertest.ReadN(t, c, 5); string(got) != "a\nbc\n" {
		t.Fatalf("echo = %q", got)
	}
}

// A client that half-closes still gets the reply to its last, unterminated line.
func TestHalfCloseGetsReply(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: "ok\n"}},
	})
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte("no newline"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ok\n" {
		t.Fatalf("reply = %q, %v", got, err)
	}
}

// TestHalfCloseSendReply: with half_close_timeout, a client that sends its
// request and shuts down writing (nc -N, a shell's `printf ... | nc`) can
// still be answered through the API: its last frame arrives, a Send to the
// connection reaches it, and the connection closes with PEER_CLOSED when
// the timeout passes. A Send awaiting a reply cannot be answered, and says
// so.
func TestHalfCloseSendReply(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:          &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		HalfCloseTimeout: durationpb.New(time.Second),
	})
	if got := l.GetHalfCloseTimeout().AsDuration(); got != time.Second {
		t.Fatalf("listener half_close_timeout = %v, want 1s", got)
	}
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("GET status")); err != nil { // no newline: the last frame
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	data := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA)
	if data.GetText() != "GET status" {
		t.Fatalf("last frame = %q, want %q", data.GetText(), "GET status")
	}
	id := data.GetConnectionId()

	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload:    &tcpgatev1.SendRequest_Text{Text: "ignored"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
	})
	servertest.WantCode(t, err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "sending side") {
		t.Errorf("awaiting Send on a half-closed connection: %q does not say why", msg)
	}
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
		Payload: &tcpgatev1.SendRequest_Text{Text: "200 OK\n"},
	})
	if err != nil || resp.GetBytesWritten() != 7 {
		t.Fatalf("Send to the half-closed connection: %v, %v", resp, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "200 OK\n" {
		t.Fatalf("client read %q, %v; want the reply, then the end of the stream", got, err)
	}
	closed := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetConnectionId() != id || closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("close event %v, want %s closed with PEER_CLOSED", closed, id)
	}
	if !closed.GetTime().AsTime().After(data.GetTime().AsTime()) {
		t.Errorf("closed at %v, not after the last frame at %v", closed.GetTime().AsTime(), data.GetTime().AsTime())
	}

	// Without the option the connection closes at the peer's end, as before.
	plain := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	c2 := servertest.Dial(t, plain.GetAddress())
	c2.CloseWrite()
	_ = c2.SetReadDeadline(time.Now().Add(wait))
	if got, err := io.ReadAll(c2); err != nil || len(got) != 0 {
		t.Fatalf("plain listener after half-close: read %q, %v; want the end of the stream", got, err)
	}

	_, err = g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{HalfCloseTimeout: durationpb.New(2 * time.Minute)})
	servertest.WantCode(t, err, codes.InvalidArgument)
}

func TestStopListenerDrains(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		ListenerId: "drain-me",
		AutoReply:  &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{"drain-me"}})
	finishing := servertest.Dial(t, l.GetAddress())
	lingering := servertest.Dial(t, l.GetAddress())
	s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)

	type stopResult struct {
		resp *tcpgatev1.StopListenerResponse
		err  error
	}
	stopped := make(chan stopResult, 1)
	go func() {
		resp, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{
			ListenerId: "drain-me", DrainTimeout: durationpb.New(500 * time.Millisecond),
		})
		stopped <- stopResult{resp, err}
	}()

	// New connects are refused at once, while the old ones still work.
	deadline := time.Now().Add(wait)
	for {
		c, err := net.DialTimeout("tcp", l.GetAddress(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after StopListener")
		}
		time.Sleep(5 * time.Millisecond)
	}
	finishing.Write([]byte("last words"))
	if got := servertest.ReadN(t, finishing, 10); string(got) != "last words" {
		t.Fatalf("echo during drain = %q", got)
	}
	finishing.Close()

	r := <-stopped
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.resp.GetListener().GetState() != tcpgatev1.ListenerState_LISTENER_STATE_STOPPED || r.resp.GetListener().GetConnectionsTotal() < 2 {
		t.Fatalf("stopped listener = %v", r.resp.GetListener())
	}
	reasons := map[string]tcpgatev1.CloseReason{} // by remote address
	for {
		e := s.Next()
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
			reasons[e.GetRemoteAddress()] = e.GetCloseReason()
		}
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED {
			break
		}
	}
	if reasons[finishing.LocalAddr().String()] != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED ||
		reasons[lingering.LocalAddr().String()] != tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED {
		t.Fatalf("close reasons = %v", reasons)
	}
	if _, err := lingering.Read(make([]byte, 1)); err == nil {
		t.Fatal("lingering connection still open after drain")
	}
	// The port is free and the id can be used again.
	ln, err := net.Listen("tcp", l.GetAddress())
	if err != nil {
		t.Fatalf("port not free after StopListener: %v", err)
	}
	ln.Close()
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "drain-me"})
	_, err = g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "drain-me"})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLimitsAndIdle(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		MaxConnections: 1,
		IdleTimeout:    durationpb.New(300 * time.Millisecond),
	})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED}})
	first := servertest.Dial(t, l.GetAddress())
	second := servertest.Dial(t, l.GetAddress())
	if e := s.Next(); e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED || e.GetRemoteAddress() != second.LocalAddr().String() {
		t.Fatalf("event = %v", e)
	}
	if e := s.Next(); e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT || e.GetRemoteAddress() != first.LocalAddr().String() {
		t.Fatalf("event = %v", e)
	}
}

func TestReplayAndResume(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	live := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte("1\n2\n3\n"))
	var seqs []uint64
	for range 3 {
		seqs = append(seqs, live.Next().GetSequence())
	}
	// Resume after the first: get 2 and 3 again from the ring, then live ones.
	r := g.Subscribe(t, &tcpgatev1.SubscribeRequest{
		SinceSequence: seqs[0] + 1, Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA},
	})
	c.Write([]byte("4\n"))
	for _, want := range []string{"2", "3", "4"} {
		if e := r.Next(); e.GetText() != want {
			t.Fatalf("resumed event = %v, want %q", e, want)
		}
	}
}

func TestReplayRingOverrun(t *testing.T) {
	g := servertest.Start(t, server.Config{ReplayBytes: 4096})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	live := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_DATA}})
	c := servertest.Dial(t, l.GetAddress())
	line := strings.Repeat("x", 500) + "\n"
	c.Write([]byte(strings.Repeat(line, 40)))
	var last uint64
	for range 40 {
		last = live.Next().GetSequence()
	}
	r := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SinceSequence: 1})
	marker := r.Next()
	if marker.GetKind() != tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED || marker.GetDropped() == 0 || marker.GetSequence() != 0 {
		t.Fatalf("first resumed event = %v, want an EVENTS_DROPPED marker", marker)
	}
	first := r.Next()
	if first.GetSequence() != marker.GetDropped()+1 {
		t.Fatalf("after dropping %d the stream resumed at %d", marker.GetDropped(), first.GetSequence())
	}
	prev := first.GetSequence()
	for prev < last {
		e := r.Next()
		if e.GetSequence() != prev+1 {
			t.Fatalf("gap: %d after %d", e.GetSequence(), prev)
		}
		prev = e.GetSequence()
	}
}

func TestSlowConsumerDisconnect(t *testing.T) {
	g := servertest.Start(t, server.Config{SubscriberQueueBytes: 64 << 10})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	ctx := servertest.Context(t)
	// A subscriber that never reads: its stream must end with ResourceExhausted.
	cl, err := g.Client.Subscribe(ctx, &tcpgatev1.SubscribeRequest{
		SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Header(); err != nil {
		t.Fatal(err)
	}
	c := servertest.Dial(t, l.GetAddress())
	chunk := bytes.Repeat([]byte("z"), 32<<10)
	// gRPC and socket buffers hold a few MiB before the gateway's queue fills;
	// write until the stream ends, bounded in count.
	var streamErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := cl.Recv(); err != nil {
				streamErr = err
				return
			}
			time.Sleep(50 * time.Millisecond) // a slow reader
		}
	}()
	for i := 0; i < 4096; i++ {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
			i = 4096
		default:
		}
	}
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("slow subscriber was not disconnected")
	}
	servertest.WantCode(t, streamErr, codes.ResourceExhausted)
	if msg := status.Convert(streamErr).Message(); !strings.Contains(msg, "since_sequence=") || !strings.Contains(msg, "--subscriber-queue-bytes") {
		t.Fatalf("message %q does not name the limit and say where to resume", msg)
	}
}

func TestErrors(t *testing.T) {
	g := servertest.Start(t, server.Config{MaxListeners: 3})
	taken := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "taken"})
	refused := servertest.RefusedAddr(t)
	_, takenPort, _ := net.SplitHostPort(taken.GetAddress())
	port := func(s string) uint32 {
		var p uint32
		for _, ch := range s {
			p = p*10 + uint32(ch-'0')
		}
		return p
	}(takenPort)
	text := &tcpgatev1.SendRequest_Text{Text: "x"}

	tests := []struct {
		name    string
		call    func() error
		code    codes.Code
		mention string
	}{
		{"port out of range", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Port: 70000})
			return err
		}, codes.InvalidArgument, "port"},
		{"unknown framing mode", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: 42}})
			return err
		}, codes.InvalidArgument, "framing.mode"},
		{"delimiter mode without delimiter", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER}})
			return err
		}, codes.InvalidArgument, "framing.delimiter"},
		{"prefix of 3 bytes", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 3}})
			return err
		}, codes.InvalidArgument, "framing.prefix_bytes"},
		{"fixed size 0", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED}})
			return err
		}, codes.InvalidArgument, "framing.fixed_size"},
		{"fixed auto reply without payload", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED}})
			return err
		}, codes.InvalidArgument, "auto_reply"},
		{"bad listener id", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "a/b"})
			return err
		}, codes.InvalidArgument, "listener_id"},
		{"listener id taken", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "taken", Host: "127.0.0.1"})
			return err
		}, codes.AlreadyExists, "taken"},
		{"address in use", func() error {
			_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Port: port})
			return err
		}, codes.Unavailable, taken.GetAddress()},
		{"unknown listener", func() error {
			_, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "nope"})
			return err
		}, codes.NotFound, "nope"},
		{"stop unknown listener", func() error {
			_, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "nope"})
			return err
		}, codes.NotFound, "nope"},
		{"connections of unknown listener", func() error {
			_, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "nope"})
			return err
		}, codes.NotFound, "nope"},
		{"close unknown connection", func() error {
			_, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "c999"})
			return err
		}, codes.NotFound, "c999"},
		{"send without payload", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: refused}})
			return err
		}, codes.InvalidArgument, "payload"},
		{"send without target", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Payload: text})
			return err
		}, codes.InvalidArgument, "target"},
		{"send to a malformed address", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: "no-port"}, Payload: text})
			return err
		}, codes.InvalidArgument, "address"},
		{"send refused", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: refused}, Payload: text})
			return err
		}, codes.Unavailable, refused},
		{"send to unknown connection", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c999"}, Payload: text})
			return err
		}, codes.NotFound, "c999"},
		{"broadcast to unknown listener", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "nope"}, Payload: text})
			return err
		}, codes.NotFound, "nope"},
		{"broadcast awaiting a reply", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "taken"}, Payload: text,
				AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ}})
			return err
		}, codes.InvalidArgument, "await_reply"},
		{"negative timeout", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: refused}, Payload: text,
				Timeout: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument, "timeout"},
		{"unknown await mode", func() error {
			_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: refused}, Payload: text,
				AwaitReply: &tcpgatev1.AwaitReply{Mode: 9}})
			return err
		}, codes.InvalidArgument, "await_reply.mode"},
		{"subscribe to unspecified kind", func() error {
			cl, err := g.Client.Subscribe(servertest.Context(t), &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{0}})
			if err != nil {
				return err
			}
			_, err = cl.Recv()
			return err
		}, codes.InvalidArgument, "kinds[0]"},
		{"unknown slow consumer policy", func() error {
			cl, err := g.Client.Subscribe(servertest.Context(t), &tcpgatev1.SubscribeRequest{SlowConsumer: 7})
			if err != nil {
				return err
			}
			_, err = cl.Recv()
			return err
		}, codes.InvalidArgument, "slow_consumer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.mention) {
				t.Fatalf("got %v %q, want %v mentioning %q", st.Code(), st.Message(), tt.code, tt.mention)
			}
		})
	}

	t.Run("listener limit", func(t *testing.T) {
		g.StartListener(t, &tcpgatev1.StartListenerRequest{})
		g.StartListener(t, &tcpgatev1.StartListenerRequest{})
		_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
		servertest.WantCode(t, err, codes.ResourceExhausted)
		if !strings.Contains(status.Convert(err).Message(), "max_listeners") {
			t.Fatalf("message %q does not name the limit", status.Convert(err).Message())
		}
	})
}

// TestShutdownEndsStreams checks that shutdown ends Subscribe streams with a
// status and frees every port.
func TestShutdownEndsStreams(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	c := servertest.Dial(t, l.GetAddress())
	s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)

	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	err := s.End()
	if code := status.Code(err); code != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) {
		t.Fatalf("connection not closed by shutdown: %v", err)
	}
	for _, addr := range []string{l.GetAddress(), g.Server.GRPCAddr()} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s still bound after shutdown: %v", addr, err)
		}
		ln.Close()
	}
}
