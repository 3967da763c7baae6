package server_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// framedCases are the framings a framed Send encodes with, and the bytes a
// peer must read for the payload "hello", spelled out by hand rather
// than by the encoder under test.
var framedCases = []struct {
	name    string
	framing *tcpgatev1.Framing
	payload string
	want    []byte
}{
	{"line", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}, "hello", []byte("hello\n")},
	// A lone "\n" would have the reader strip the payload's own "\r".
	{"line ending in CR", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}, "hello\r", []byte("hello\r\r\n")},
	{"delimiter", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte("<END>")}, "hello", []byte("hello<END>")},
	{"length prefix 1", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 1}, "hello", []byte("\x05hello")},
	{"length prefix 2 big-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2}, "hello", []byte("\x00\x05hello")},
	{"length prefix 2 little-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2, LittleEndian: true}, "hello", []byte("\x05\x00hello")},
	{"length prefix 4 big-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 4}, "hello", []byte("\x00\x00\x00\x05hello")},
	{"length prefix 4 little-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 4, LittleEndian: true}, "hello", []byte("\x05\x00\x00\x00hello")},
	{"length prefix default (4 big-endian)", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX}, "hello", []byte("\x00\x00\x00\x05hello")},
	{"length prefix 8 big-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 8}, "hello", []byte("\x00\x00\x00\x00\x00\x00\x00\x05hello")},
	{"length prefix 8 little-endian", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 8, LittleEndian: true}, "hello", []byte("\x05\x00\x00\x00\x00\x00\x00\x00hello")},
	{"fixed", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 5}, "hello", []byte("hello")},
	{"raw", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW}, "hello", []byte("hello")},
	{"unspecified is raw", nil, "hello\n", []byte("hello\n")},
}

// connOf starts a listener with f, connects a client to it, and returns
// the client and its connection's id.
func connOf(t *testing.T, g *servertest.Gateway, f *tcpgatev1.Framing) (*tcpgatev1.Listener, *net.TCPConn, string) {
	t.Helper()
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: f})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}, Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED}})
	c := servertest.Dial(t, l.GetAddress())
	return l, c, s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
}

// readExactly reads want from c and then the unframed marker "!" that the
// caller sent after it, so that a byte too many fails as surely as one
// too few.
func readExactly(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got := servertest.ReadN(t, c, len(want)+1)
	if !bytes.Equal(got, append(slices.Clip(want), '!')) {
		t.Fatalf("peer read %q, want %q then the marker \"!\"", got, want)
	}
}

func sendMarker(t *testing.T, g *servertest.Gateway, target *tcpgatev1.SendRequest) {
	t.Helper()
	m := &tcpgatev1.SendRequest{Target: target.Target, Payload: &tcpgatev1.SendRequest_Text{Text: "!"}}
	if _, err := g.Client.Send(servertest.Context(t), m); err != nil {
		t.Fatalf("sending the marker: %v", err)
	}
}

// TestFramedSendToConnection: a framed Send to an accepted connection
// writes the payload encoded with its listener's framing, exactly as
// written by hand, in every mode; the response counts the encoded bytes.
func TestFramedSendToConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	for _, tc := range framedCases {
		t.Run(tc.name, func(t *testing.T) {
			_, c, id := connOf(t, g, tc.framing)
			req := &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
				Payload: &tcpgatev1.SendRequest_Data{Data: []byte(tc.payload)},
				Framed:  true,
			}
			resp, err := g.Client.Send(servertest.Context(t), req)
			if err != nil {
				t.Fatalf("Send framed: %v", err)
			}
			if resp.GetBytesWritten() != uint64(len(tc.want)) || resp.GetConnectionsReached() != 1 {
				t.Errorf("response %v, want %d bytes written to 1 connection", resp, len(tc.want))
			}
			sendMarker(t, g, req)
			readExactly(t, c, tc.want)
		})
	}
}

// TestFramedBroadcast: a framed Send to a listener reaches each of its
// connections encoded once with the listener's framing.
func TestFramedBroadcast(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	f := &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2, LittleEndian: true}
	l, c1, _ := connOf(t, g, f)
	clients := []*net.TCPConn{c1, servertest.Dial(t, l.GetAddress()), servertest.Dial(t, l.GetAddress())}
	servertest.Eventually(t, "three connections", func() bool {
		got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
		return err == nil && got.GetListener().GetConnectionsActive() == 3
	})
	payload := bytes.Repeat([]byte("ab"), 150) // 300 bytes: a prefix of 0x2c 0x01
	req := &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: l.GetListenerId()}, Payload: &tcpgatev1.SendRequest_Data{Data: payload}, Framed: true}
	resp, err := g.Client.Send(servertest.Context(t), req)
	if err != nil {
		t.Fatalf("Send framed to the listener: %v", err)
	}
	want := append([]byte{0x2c, 0x01}, payload...)
	if resp.GetConnectionsReached() != 3 || resp.GetBytesWritten() != 3*uint64(len(want)) {
		t.Errorf("response %v, want 3 connections and %d bytes", resp, 3*len(want))
	}
	sendMarker(t, g, req)
	for _, c := range clients {
		readExactly(t, c, want)
	}
}

// TestFramedSendToAddress: to an address, framed encodes with
// await_reply.framing, and the reply is cut by the same framing; whatever
// the mode, the framing is what the payload is encoded with. Without
// await_reply.framing, framed is refused naming "framed".
func TestFramedSendToAddress(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	got := make(chan []byte, 4)
	// report never blocks the peer: a test that failed before reading
	// must not hold the peer's end up.
	report := func(b []byte) {
		select {
		case got <- b:
		default:
		}
	}
	// The peer reads one 4-byte big-endian length-prefixed frame and
	// answers with one.
	addr := servertest.Peer(t, func(c net.Conn) {
		var n uint32
		if binary.Read(c, binary.BigEndian, &n) != nil || n > 1<<10 {
			report(nil)
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			report(nil)
			return
		}
		report(b)
		ans := "got " + string(b)
		_, _ = c.Write(binary.BigEndian.AppendUint32(nil, uint32(len(ans))))
		_, _ = c.Write([]byte(ans))
	})
	lp := &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX}
	for _, tc := range []struct {
		name string
		mode tcpgatev1.AwaitMode
	}{{"awaiting a frame", tcpgatev1.AwaitMode_AWAIT_MODE_FRAME}, {"not awaiting", tcpgatev1.AwaitMode_AWAIT_MODE_NONE}} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
				Target:     &tcpgatev1.SendRequest_Address{Address: addr},
				Payload:    &tcpgatev1.SendRequest_Text{Text: "status?"},
				Framed:     true,
				AwaitReply: &tcpgatev1.AwaitReply{Mode: tc.mode, Framing: lp},
			})
			if err != nil {
				t.Fatalf("Send framed: %v", err)
			}
			if b := <-got; string(b) != "status?" {
				t.Fatalf("peer read the frame %q, want %q", b, "status?")
			}
			if resp.GetBytesWritten() != 4+7 {
				t.Errorf("bytes_written %d, want 11", resp.GetBytesWritten())
			}
			if tc.mode == tcpgatev1.AwaitMode_AWAIT_MODE_FRAME && resp.GetReply().GetText() != "got status?" {
				t.Errorf("reply %v, want the frame \"got status?\"", resp.GetReply())
			}
		})
	}
	t.Run("without await_reply.framing", func(t *testing.T) {
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target: &tcpgatev1.SendRequest_Address{Address: addr}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"}, Framed: true,
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
		})
		servertest.WantCode(t, err, codes.InvalidArgument)
		if reason, meta := rpc.ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT || meta[rpc.MetaField] != "framed" {
			t.Errorf("got %v (%v %v), want INVALID_ARGUMENT naming framed", err, reason, meta)
		}
	})
}

// TestFramedAwaitOnConnection: a request/response on a kept line
// connection without computing the "\n": the framed request reaches the
// peer as one line, and its answer comes back as the reply.
func TestFramedAwaitOnConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	_, c, id := connOf(t, g, &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE})
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if _, err := fmt.Fprintf(c, "ack %s\n", sc.Text()); err != nil {
				return
			}
		}
	}()
	for i := range 3 {
		req := fmt.Sprintf("req-%d", i)
		resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
			Payload:    &tcpgatev1.SendRequest_Text{Text: req},
			Framed:     true,
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
		})
		if err != nil {
			t.Fatalf("Send %s: %v", req, err)
		}
		if got := resp.GetReply().GetText(); got != "ack "+req {
			t.Fatalf("reply %q, want %q", got, "ack "+req)
		}
	}
}

// TestFramedUnencodable: a payload the target's framing cannot encode is
// refused over gRPC and REST, naming text or data and the reason, and
// nothing reaches the connection; to a listener it is refused whether or
// not the listener has connections.
func TestFramedUnencodable(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	type target struct {
		name    string
		framing *tcpgatev1.Framing
		payload string
		mention string
	}
	for _, tc := range []target{
		{"line with a newline", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}, "a\nb", "newline"},
		{"delimiter inside", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte("||")}, "a||b", "contains the delimiter"},
		{"longer than max_frame_bytes", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, MaxFrameBytes: 8}, "123456789", "max_frame_bytes (8)"},
		{"longer than a 1-byte prefix", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 1}, strings.Repeat("x", 256), "1-byte length prefix"},
		{"not fixed_size", &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 4}, "abc", "fixed_size, 4 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, c, id := connOf(t, g, tc.framing)
			empty := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: tc.framing})
			targets := map[string]*tcpgatev1.SendRequest{
				"connection_id":                   {Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id}},
				"listener_id":                     {Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: l.GetListenerId()}},
				"listener_id without connections": {Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: empty.GetListenerId()}},
			}
			for tname, req := range targets {
				// gRPC, as text.
				req.Payload, req.Framed = &tcpgatev1.SendRequest_Text{Text: tc.payload}, true
				_, err := g.Client.Send(servertest.Context(t), req)
				servertest.WantCode(t, err, codes.InvalidArgument)
				reason, meta := rpc.ReasonOf(err)
				if reason != tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT || meta[rpc.MetaField] != "text" || !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("%s over gRPC: %v (%v %v), want INVALID_ARGUMENT naming text and mentioning %q", tname, err, reason, meta, tc.mention)
				}
				// REST, as data.
				tjson := map[string]string{
					"connection_id":                   `"connectionId":"` + id + `"`,
					"listener_id":                     `"listenerId":"` + l.GetListenerId() + `"`,
					"listener_id without connections": `"listenerId":"` + empty.GetListenerId() + `"`,
				}[tname]
				body := `{` + tjson + `,"data":"` + base64.StdEncoding.EncodeToString([]byte(tc.payload)) + `","framed":true}`
				hresp, b := g.REST.Do(http.MethodPost, "/v1/send", body, nil)
				e := servertest.WantError(t, hresp, b, http.StatusBadRequest, int(codes.InvalidArgument), tc.mention)
				if reason, meta, fields := e.Info(); reason != "INVALID_ARGUMENT" || meta[rpc.MetaField] != "data" || !slices.Equal(fields, []string{"data"}) {
					t.Errorf("%s over REST: %s, want INVALID_ARGUMENT naming data", tname, b)
				}
			}
			// Nothing of the refused sends reached the connection.
			sendMarker(t, g, targets["connection_id"])
			readExactly(t, c, nil)
		})
	}
}
