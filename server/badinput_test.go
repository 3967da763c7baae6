package server_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// badMaxFrame is the server's cap on max_frame_bytes, fixed_size and
// await_reply.max_bytes (3 MiB); one more is the smallest oversized value.
const badMaxFrame = 3 << 20

// badCase is one row of TestBadInput: a request to one RPC and what the
// gateway must answer. The RPC is chosen by the request's type.
type badCase struct {
	rpc  string
	name string
	// limits runs the case on the gateway with small limits instead of the
	// default one.
	limits bool
	req    proto.Message
	code   codes.Code
	// mention must appear in the status message: the field's name for
	// InvalidArgument, otherwise what a person needs to act (the id, the
	// address, the limit's name). Empty only for codes.OK.
	mention string
}

// badInvoke calls the RPC of req's type. A Subscribe that goes live (its
// headers arrive with the last-sequence header) counts as success; one that
// fails reports the error of its first Recv. Listeners that a case starts
// successfully are stopped again, so cases do not depend on each other.
func badInvoke(ctx context.Context, t *testing.T, c tcpgatev1.GatewayServiceClient, req proto.Message) error {
	t.Helper()
	switch r := req.(type) {
	case *tcpgatev1.StartListenerRequest:
		resp, err := c.StartListener(ctx, r)
		if err == nil {
			if _, serr := c.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: resp.GetListener().GetListenerId()}); serr != nil {
				t.Errorf("stopping the listener a case started: %v", serr)
			}
		}
		return err
	case *tcpgatev1.StopListenerRequest:
		_, err := c.StopListener(ctx, r)
		return err
	case *tcpgatev1.GetListenerRequest:
		_, err := c.GetListener(ctx, r)
		return err
	case *tcpgatev1.ListListenersRequest:
		_, err := c.ListListeners(ctx, r)
		return err
	case *tcpgatev1.ListConnectionsRequest:
		_, err := c.ListConnections(ctx, r)
		return err
	case *tcpgatev1.CloseConnectionRequest:
		_, err := c.CloseConnection(ctx, r)
		return err
	case *tcpgatev1.SendRequest:
		_, err := c.Send(ctx, r)
		return err
	case *tcpgatev1.SubscribeRequest:
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := c.Subscribe(ctx, r)
		if err != nil {
			return err
		}
		md, err := st.Header()
		if err != nil {
			return err
		}
		if len(md.Get(rpc.HeaderLastSequence)) > 0 {
			return nil // live: the request was accepted
		}
		_, err = st.Recv()
		if err == nil {
			t.Errorf("Subscribe sent a response without its headers")
		}
		return err
	}
	t.Fatalf("no RPC for %T", req)
	return nil
}

// badConnID waits until the listener l has an accepted connection and
// returns its id.
func badConnID(t *testing.T, g *servertest.Gateway, listenerID string) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: listenerID})
		if err != nil {
			t.Fatalf("ListConnections: %v", err)
		}
		if cs := resp.GetConnections(); len(cs) > 0 {
			return cs[0].GetConnectionId()
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection on %s within %s", listenerID, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// badUnbindable returns an IPv4 address of TEST-NET-1 that this machine
// does not own, so binding it fails with EADDRNOTAVAIL; "" when every
// candidate is bindable here.
func badUnbindable() string {
	for _, h := range []string{"192.0.2.1", "192.0.2.254", "198.51.100.1", "203.0.113.1"} {
		ln, err := net.Listen("tcp4", net.JoinHostPort(h, "0"))
		if err != nil {
			return h
		}
		ln.Close()
	}
	return ""
}

func badText(s string) *tcpgatev1.SendRequest_Text { return &tcpgatev1.SendRequest_Text{Text: s} }

func badAddr(a string) *tcpgatev1.SendRequest_Address {
	return &tcpgatev1.SendRequest_Address{Address: a}
}

func badDur(secs int64, nanos int32) *durationpb.Duration {
	return &durationpb.Duration{Seconds: secs, Nanos: nanos}
}

// TestBadInput sends every RPC its invalid inputs (out of range, unknown
// enum values, empty and oversized values, malformed durations, unknown
// ids, wrong oneof combinations, limits) and checks the code and that the
// message names the field. No case may answer Unknown or Internal. A few
// valid boundary cases (code OK) sit next to the invalid ones they bound.
func TestBadInput(t *testing.T) {
	start := time.Now()
	g := servertest.Start(t, server.Config{})
	keep := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "keep"})
	client := servertest.Dial(t, keep.GetAddress())
	connID := badConnID(t, g, "keep")
	_, keepPort, _ := net.SplitHostPort(keep.GetAddress())
	keepPortN, _ := strconv.Atoi(keepPort)
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	// silent reads what it is sent and never answers, until the gateway
	// gives up and closes.
	silent := servertest.Peer(t, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	})

	// The limited gateway: two listeners, one subscriber, 1 KiB sends, all
	// in use by the time its cases run.
	lim := servertest.Start(t, server.Config{MaxListeners: 2, MaxSendBytes: 1024, MaxSubscribers: 1})
	full := lim.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "full"})
	lim.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "full2"})
	lim.Subscribe(t, &tcpgatev1.SubscribeRequest{})

	unbindable := badUnbindable()

	const (
		sl   = "StartListener"
		stop = "StopListener"
		get  = "GetListener"
		list = "ListListeners"
		lc   = "ListConnections"
		cc   = "CloseConnection"
		send = "Send"
		sub  = "Subscribe"
	)
	inv := codes.InvalidArgument
	lp := "127.0.0.1"
	fr := func(f *tcpgatev1.Framing) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, Framing: f}
	}
	ar := func(a *tcpgatev1.AutoReply) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, AutoReply: a}
	}
	idle := func(d *durationpb.Duration) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, IdleTimeout: d}
	}
	drain := func(d *durationpb.Duration) *tcpgatev1.StopListenerRequest {
		return &tcpgatev1.StopListenerRequest{ListenerId: "keep", DrainTimeout: d}
	}
	// await sends to keep's own address, so a request that wrongly passed
	// validation would succeed instead of failing for another reason.
	await := func(a *tcpgatev1.AwaitReply) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(keep.GetAddress()), Payload: badText("x"), AwaitReply: a}
	}
	timeout := func(d *durationpb.Duration) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(keep.GetAddress()), Payload: badText("x"), Timeout: d}
	}
	to := func(addr string) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(addr), Payload: badText("x")}
	}
	kinds := func(k ...tcpgatev1.EventKind) *tcpgatev1.SubscribeRequest {
		return &tcpgatev1.SubscribeRequest{Kinds: k}
	}
	const (
		fmRaw   = tcpgatev1.FramingMode_FRAMING_MODE_RAW
		fmDelim = tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER
		fmLP    = tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX
		fmFixed = tcpgatev1.FramingMode_FRAMING_MODE_FIXED
		fmLine  = tcpgatev1.FramingMode_FRAMING_MODE_LINE
		arNone  = tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE
		arEcho  = tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO
		arFixed = tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED
		amFirst = tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ
		amFrame = tcpgatev1.AwaitMode_AWAIT_MODE_FRAME
		amUntil = tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE
		ekData  = tcpgatev1.EventKind_EVENT_KIND_DATA
	)
	arText := func(s string) *tcpgatev1.AutoReply_Text { return &tcpgatev1.AutoReply_Text{Text: s} }
	arData := func(b []byte) *tcpgatev1.AutoReply_Data { return &tcpgatev1.AutoReply_Data{Data: b} }

	tests := []badCase{
		// StartListener: port, id, host.
		{rpc: sl, name: "port 65536", req: &tcpgatev1.StartListenerRequest{Host: lp, Port: 65536}, code: inv, mention: "port"},
		{rpc: sl, name: "port 4294967295", req: &tcpgatev1.StartListenerRequest{Host: lp, Port: 4294967295}, code: inv, mention: "port"},
		{rpc: sl, name: "listener_id empty is generated", req: &tcpgatev1.StartListenerRequest{Host: lp}, code: codes.OK},
		{rpc: sl, name: "listener_id of 64 bytes is fine", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: strings.Repeat("x", 64)}, code: codes.OK},
		{rpc: sl, name: "listener_id with a slash", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "a/b"}, code: inv, mention: "listener_id"},
		{rpc: sl, name: "listener_id of 65 bytes", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: strings.Repeat("x", 65)}, code: inv, mention: "listener_id"},
		{rpc: sl, name: "listener_id blank", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: " "}, code: inv, mention: "listener_id"},
		{rpc: sl, name: "listener_id not ASCII", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "é"}, code: inv, mention: "listener_id"},
		{rpc: sl, name: "host of 256 bytes", req: &tcpgatev1.StartListenerRequest{Host: strings.Repeat("h", 256)}, code: inv, mention: "host"},
		{rpc: sl, name: "host with a port", req: &tcpgatev1.StartListenerRequest{ListenerId: "hostport", Host: "127.0.0.1:80"}, code: inv, mention: "host"},
		{rpc: sl, name: "host not owned here", req: &tcpgatev1.StartListenerRequest{ListenerId: "unbindable", Host: unbindable}, code: codes.FailedPrecondition, mention: unbindable},
		{rpc: sl, name: "listener_id taken", req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "keep"}, code: codes.AlreadyExists, mention: "keep"},
		{rpc: sl, name: "address in use", req: &tcpgatev1.StartListenerRequest{ListenerId: "inuse", Host: lp, Port: uint32(keepPortN)}, code: codes.Unavailable, mention: keep.GetAddress()},
		{rpc: sl, name: "max_listeners reached", limits: true, req: &tcpgatev1.StartListenerRequest{Host: lp}, code: codes.ResourceExhausted, mention: "max_listeners"},

		// StartListener: framing.
		{rpc: sl, name: "framing mode 99", req: fr(&tcpgatev1.Framing{Mode: 99}), code: inv, mention: "framing.mode"},
		{rpc: sl, name: "framing mode -1", req: fr(&tcpgatev1.Framing{Mode: -1}), code: inv, mention: "framing.mode"},
		{rpc: sl, name: "delimiter mode without delimiter", req: fr(&tcpgatev1.Framing{Mode: fmDelim}), code: inv, mention: "framing.delimiter"},
		{rpc: sl, name: "delimiter of 64 bytes is fine", req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 64))}), code: codes.OK},
		{rpc: sl, name: "delimiter of 65 bytes", req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 65))}), code: inv, mention: "framing.delimiter: 65 bytes, more than the limit of 64"},
		{rpc: sl, name: "delimiter of 3 MiB", req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: make([]byte, 3<<20)}), code: inv, mention: "framing.delimiter"},
		{rpc: sl, name: "delimiter of 65 bytes in raw mode", req: fr(&tcpgatev1.Framing{Mode: fmRaw, Delimiter: []byte(strings.Repeat("d", 65))}), code: inv, mention: "framing.delimiter"},
		{rpc: send, name: "await_reply.framing delimiter of 65 bytes", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 65))}}), code: inv, mention: "await_reply.framing.delimiter"},
		{rpc: sl, name: "prefix_bytes 3", req: fr(&tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 3}), code: inv, mention: "framing.prefix_bytes"},
		{rpc: sl, name: "prefix_bytes 16", req: fr(&tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 16}), code: inv, mention: "framing.prefix_bytes"},
		{rpc: sl, name: "prefix_bytes 3 in raw mode", req: fr(&tcpgatev1.Framing{Mode: fmRaw, PrefixBytes: 3}), code: inv, mention: "framing.prefix_bytes"},
		{rpc: sl, name: "fixed_size 0", req: fr(&tcpgatev1.Framing{Mode: fmFixed}), code: inv, mention: "framing.fixed_size"},
		{rpc: sl, name: "fixed_size above max_frame_bytes", req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 2048, MaxFrameBytes: 1024}), code: inv, mention: "framing.fixed_size"},
		{rpc: sl, name: "fixed_size above the default max_frame_bytes", req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 1<<20 + 1}), code: inv, mention: "framing.fixed_size"},
		{rpc: sl, name: "fixed_size over 3 MiB", req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: badMaxFrame + 1, MaxFrameBytes: badMaxFrame}), code: inv, mention: "framing.fixed_size"},
		{rpc: sl, name: "fixed_size 4294967295", req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 4294967295}), code: inv, mention: "framing.fixed_size"},
		{rpc: sl, name: "max_frame_bytes of 3 MiB is fine", req: fr(&tcpgatev1.Framing{Mode: fmLine, MaxFrameBytes: badMaxFrame}), code: codes.OK},
		{rpc: sl, name: "max_frame_bytes over 3 MiB", req: fr(&tcpgatev1.Framing{Mode: fmLine, MaxFrameBytes: badMaxFrame + 1}), code: inv, mention: "framing.max_frame_bytes"},
		{rpc: sl, name: "max_frame_bytes 4294967295", req: fr(&tcpgatev1.Framing{MaxFrameBytes: 4294967295}), code: inv, mention: "framing.max_frame_bytes"},

		// StartListener: auto_reply, including its oneof.
		{rpc: sl, name: "auto_reply mode 99", req: ar(&tcpgatev1.AutoReply{Mode: 99}), code: inv, mention: "auto_reply.mode"},
		{rpc: sl, name: "auto_reply FIXED without payload", req: ar(&tcpgatev1.AutoReply{Mode: arFixed}), code: inv, mention: "auto_reply"},
		{rpc: sl, name: "auto_reply ECHO with text", req: ar(&tcpgatev1.AutoReply{Mode: arEcho, Payload: arText("hi")}), code: inv, mention: "auto_reply.mode"},
		{rpc: sl, name: "auto_reply NONE with data", req: ar(&tcpgatev1.AutoReply{Mode: arNone, Payload: arData([]byte{1})}), code: inv, mention: "auto_reply.mode"},
		{rpc: sl, name: "auto_reply UNSPECIFIED with text", req: ar(&tcpgatev1.AutoReply{Payload: arText("hi")}), code: inv, mention: "auto_reply.mode"},
		{rpc: sl, name: "auto_reply FIXED over 3 MiB", req: ar(&tcpgatev1.AutoReply{Mode: arFixed, Payload: arData(make([]byte, badMaxFrame+1))}), code: inv, mention: "auto_reply"},

		// StartListener: idle_timeout.
		{rpc: sl, name: "idle_timeout negative", req: idle(durationpb.New(-time.Second)), code: inv, mention: "idle_timeout"},
		{rpc: sl, name: "idle_timeout seconds and nanos of different signs", req: idle(badDur(1, -1)), code: inv, mention: "idle_timeout"},
		{rpc: sl, name: "idle_timeout nanos 1e9", req: idle(badDur(0, 1e9)), code: inv, mention: "idle_timeout"},
		{rpc: sl, name: "idle_timeout seconds above 10000 years", req: idle(badDur(315576000001, 0)), code: inv, mention: "idle_timeout"},
		{rpc: sl, name: "idle_timeout of 10000 years is fine", req: idle(badDur(315576000000, 0)), code: codes.OK},

		// StopListener.
		{rpc: stop, name: "listener_id empty", req: &tcpgatev1.StopListenerRequest{}, code: inv, mention: "listener_id"},
		{rpc: stop, name: "listener_id malformed", req: &tcpgatev1.StopListenerRequest{ListenerId: "a/b"}, code: inv, mention: "listener_id"},
		{rpc: stop, name: "listener_id unknown", req: &tcpgatev1.StopListenerRequest{ListenerId: "nope"}, code: codes.NotFound, mention: "nope"},
		{rpc: stop, name: "drain_timeout negative", req: drain(durationpb.New(-time.Second)), code: inv, mention: "drain_timeout"},
		{rpc: stop, name: "drain_timeout nanos negative", req: drain(badDur(0, -1)), code: inv, mention: "drain_timeout"},
		{rpc: stop, name: "drain_timeout nanos 1e9", req: drain(badDur(1, 1e9)), code: inv, mention: "drain_timeout"},
		{rpc: stop, name: "drain_timeout seconds and nanos of different signs", req: drain(badDur(1, -1)), code: inv, mention: "drain_timeout"},
		{rpc: stop, name: "drain_timeout seconds above 10000 years", req: drain(badDur(315576000001, 0)), code: inv, mention: "drain_timeout"},

		// GetListener.
		{rpc: get, name: "listener_id empty", req: &tcpgatev1.GetListenerRequest{}, code: inv, mention: "listener_id"},
		{rpc: get, name: "listener_id unknown", req: &tcpgatev1.GetListenerRequest{ListenerId: "nope"}, code: codes.NotFound, mention: "nope"},
		{rpc: get, name: "listener_id malformed", req: &tcpgatev1.GetListenerRequest{ListenerId: "a/b"}, code: inv, mention: `listener_id: must be 1 to 64 of A-Z a-z 0-9 . _ ~ -, got "a/b"`},
		{rpc: get, name: "listener_id of 65 bytes", req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 65)}, code: inv, mention: "listener_id"},
		{rpc: get, name: "listener_id of 3 MiB", req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 3<<20)}, code: inv, mention: "(3145728 bytes)"},
		{rpc: get, name: "listener_id of 64 bytes is not found", req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 64)}, code: codes.NotFound, mention: strings.Repeat("x", 64)},

		// ListListeners has no input to get wrong.
		{rpc: list, name: "empty request", req: &tcpgatev1.ListListenersRequest{}, code: codes.OK},

		// ListConnections.
		{rpc: lc, name: "listener_id malformed", req: &tcpgatev1.ListConnectionsRequest{ListenerId: "a b"}, code: inv, mention: "listener_id"},
		{rpc: lc, name: "listener_id unknown", req: &tcpgatev1.ListConnectionsRequest{ListenerId: "nope"}, code: codes.NotFound, mention: "nope"},
		{rpc: lc, name: "listener_id empty lists all", req: &tcpgatev1.ListConnectionsRequest{}, code: codes.OK},

		// CloseConnection.
		{rpc: cc, name: "connection_id empty", req: &tcpgatev1.CloseConnectionRequest{}, code: inv, mention: "connection_id"},
		{rpc: cc, name: "connection_id malformed", req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "c/1"}, code: inv, mention: "connection_id"},
		{rpc: cc, name: "connection_id of 65 bytes", req: &tcpgatev1.CloseConnectionRequest{ConnectionId: strings.Repeat("c", 65)}, code: inv, mention: "connection_id"},
		{rpc: cc, name: "connection_id not ASCII", req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "cé"}, code: inv, mention: "connection_id"},
		{rpc: cc, name: "connection_id unknown", req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "c999"}, code: codes.NotFound, mention: "c999"},

		// Send: the target and payload oneofs ("both" is only expressible
		// over REST; see gateway/badinput_test.go).
		{rpc: send, name: "no target", req: &tcpgatev1.SendRequest{Payload: badText("x")}, code: inv, mention: "target"},
		{rpc: send, name: "no payload", req: &tcpgatev1.SendRequest{Target: badAddr(keep.GetAddress())}, code: inv, mention: "payload"},
		{rpc: send, name: "neither target nor payload", req: &tcpgatev1.SendRequest{}, code: inv, mention: "payload"},
		{rpc: send, name: "empty text is a payload", req: &tcpgatev1.SendRequest{Target: badAddr(silent), Payload: badText("")}, code: codes.OK},
		{rpc: send, name: "address empty", req: to(""), code: inv, mention: "address"},
		{rpc: send, name: "address without port", req: to("no-port"), code: inv, mention: "address"},
		{rpc: send, name: "address port 0", req: to("127.0.0.1:0"), code: inv, mention: "address"},
		{rpc: send, name: "address port 70000", req: to("127.0.0.1:70000"), code: inv, mention: "address"},
		{rpc: send, name: "address port not a number", req: to("127.0.0.1:http"), code: inv, mention: "address"},
		{rpc: send, name: "address port negative", req: to("127.0.0.1:-1"), code: inv, mention: "address"},
		{rpc: send, name: "address host empty", req: to(":80"), code: inv, mention: "address"},
		{rpc: send, name: "address refused", req: to(refused), code: codes.Unavailable, mention: refused},
		{rpc: send, name: "connection_id empty", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{}, Payload: badText("x")}, code: inv, mention: "connection_id"},
		{rpc: send, name: "connection_id malformed", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c 1"}, Payload: badText("x")}, code: inv, mention: "connection_id"},
		{rpc: send, name: "listener_id of 65 bytes", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: strings.Repeat("l", 65)}, Payload: badText("x")}, code: inv, mention: "listener_id"},
		{rpc: send, name: "address of 3 MiB", req: to(strings.Repeat("h", 3<<20) + ":80"), code: inv, mention: "(3145731 bytes)"},
		{rpc: send, name: "connection_id unknown", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c999"}, Payload: badText("x")}, code: codes.NotFound, mention: "c999"},
		{rpc: send, name: "listener_id empty", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{}, Payload: badText("x")}, code: inv, mention: "listener_id"},
		{rpc: send, name: "listener_id unknown", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "nope"}, Payload: badText("x")}, code: codes.NotFound, mention: "nope"},

		// Send: await_reply.
		{rpc: send, name: "await_reply with listener_id", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "keep"}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amFirst}}, code: inv, mention: "await_reply"},
		{rpc: send, name: "await_reply until close with listener_id", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "keep"}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amUntil}}, code: inv, mention: "await_reply"},
		{rpc: send, name: "await_reply.framing with connection_id", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: connID}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmLine}}}, code: inv, mention: "await_reply.framing"},
		{rpc: send, name: "await_reply.framing with FIRST_READ", req: await(&tcpgatev1.AwaitReply{Mode: amFirst, Framing: &tcpgatev1.Framing{Mode: fmLine}}), code: inv, mention: "await_reply.framing"},
		{rpc: send, name: "await_reply.framing without a mode", req: await(&tcpgatev1.AwaitReply{Framing: &tcpgatev1.Framing{Mode: fmLine}}), code: inv, mention: "await_reply.framing"},
		{rpc: send, name: "await_reply.mode 99", req: await(&tcpgatev1.AwaitReply{Mode: 99}), code: inv, mention: "await_reply.mode"},
		{rpc: send, name: "await_reply.mode 99 to a connection", req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: connID}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: 99}}, code: inv, mention: "await_reply.mode"},
		{rpc: send, name: "await_reply.max_bytes over 3 MiB", req: await(&tcpgatev1.AwaitReply{Mode: amFirst, MaxBytes: badMaxFrame + 1}), code: inv, mention: "await_reply.max_bytes"},
		{rpc: send, name: "await_reply.framing delimiter mode without delimiter", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmDelim}}), code: inv, mention: "await_reply.framing.delimiter"},
		{rpc: send, name: "await_reply.framing mode 99", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: 99}}), code: inv, mention: "await_reply.framing.mode"},
		{rpc: send, name: "await_reply.framing prefix_bytes 3", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 3}}), code: inv, mention: "await_reply.framing.prefix_bytes"},
		{rpc: send, name: "await_reply.framing fixed_size 0", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmFixed}}), code: inv, mention: "await_reply.framing.fixed_size"},
		{rpc: send, name: "await_reply.framing max_frame_bytes over 3 MiB", req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{MaxFrameBytes: badMaxFrame + 1}}), code: inv, mention: "await_reply.framing.max_frame_bytes"},
		{rpc: send, name: "reply timeout", req: &tcpgatev1.SendRequest{Target: badAddr(silent), Payload: badText("x"), AwaitReply: &tcpgatev1.AwaitReply{Mode: amFirst},
			Timeout: durationpb.New(200 * time.Millisecond)}, code: codes.DeadlineExceeded, mention: silent},

		// Send: timeout.
		{rpc: send, name: "timeout negative", req: timeout(durationpb.New(-time.Second)), code: inv, mention: "timeout"},
		{rpc: send, name: "timeout nanos 1e9", req: timeout(badDur(0, 1e9)), code: inv, mention: "timeout"},
		{rpc: send, name: "timeout seconds and nanos of different signs", req: timeout(badDur(1, -1)), code: inv, mention: "timeout"},
		{rpc: send, name: "timeout seconds above 10000 years", req: timeout(badDur(315576000001, 0)), code: inv, mention: "timeout"},

		// Send: payload size against server.Config.MaxSendBytes (1024 there).
		{rpc: send, name: "payload of max_send_bytes is fine", limits: true, req: &tcpgatev1.SendRequest{Target: badAddr(full.GetAddress()), Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 1024)}}, code: codes.OK},
		{rpc: send, name: "payload over max_send_bytes", limits: true, req: &tcpgatev1.SendRequest{Target: badAddr(full.GetAddress()), Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 2000)}},
			code: codes.ResourceExhausted, mention: "max_send_bytes"},
		{rpc: send, name: "text over max_send_bytes", limits: true, req: &tcpgatev1.SendRequest{Target: badAddr(full.GetAddress()), Payload: badText(strings.Repeat("é", 600))},
			code: codes.ResourceExhausted, mention: "max_send_bytes"},

		// Subscribe: the error arrives on the first Recv.
		{rpc: sub, name: "kinds UNSPECIFIED", req: kinds(tcpgatev1.EventKind_EVENT_KIND_UNSPECIFIED), code: inv, mention: "kinds[0]"},
		{rpc: sub, name: "kinds EVENTS_DROPPED", req: kinds(tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED), code: inv, mention: "kinds[0]"},
		{rpc: sub, name: "kinds 99 after a good one", req: kinds(ekData, 99), code: inv, mention: "kinds[1]"},
		{rpc: sub, name: "kinds -1", req: kinds(-1), code: inv, mention: "kinds[0]"},
		{rpc: sub, name: "slow_consumer 9", req: &tcpgatev1.SubscribeRequest{SlowConsumer: 9}, code: inv, mention: "slow_consumer"},
		{rpc: sub, name: "slow_consumer -1", req: &tcpgatev1.SubscribeRequest{SlowConsumer: -1}, code: inv, mention: "slow_consumer"},
		{rpc: sub, name: "kinds DATA is fine", req: kinds(ekData), code: codes.OK},
		{rpc: sub, name: "since_sequence in the future is fine", req: &tcpgatev1.SubscribeRequest{SinceSequence: 1 << 63}, code: codes.OK},
		{rpc: sub, name: "1025 listener_ids", req: &tcpgatev1.SubscribeRequest{ListenerIds: manyIDs(1025, 8)}, code: inv, mention: "listener_ids has 1025 ids, at most 1024"},
		{rpc: sub, name: "a connection_id of 65 bytes", req: &tcpgatev1.SubscribeRequest{ConnectionIds: manyIDs(2, 65)}, code: inv, mention: "connection_ids[0]: must be 1 to 64"},
		{rpc: sub, name: "a malformed listener_id after a good one", req: &tcpgatev1.SubscribeRequest{ListenerIds: []string{"keep", "a/b"}}, code: inv, mention: "listener_ids[1]"},
		{rpc: sub, name: "an empty connection_id", req: &tcpgatev1.SubscribeRequest{ConnectionIds: []string{""}}, code: inv, mention: "connection_ids[0]"},
		{rpc: sub, name: "1024 ids of 64 bytes are fine", req: &tcpgatev1.SubscribeRequest{ListenerIds: manyIDs(1024, 64), ConnectionIds: manyIDs(1024, 64)}, code: codes.OK},
		{rpc: sub, name: "max_subscribers reached", limits: true, req: &tcpgatev1.SubscribeRequest{}, code: codes.ResourceExhausted, mention: "max_subscribers"},
	}

	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.rpc] = true
		if tt.code != codes.OK && tt.mention == "" {
			t.Fatalf("case %s/%s: an error case needs what its message must mention", tt.rpc, tt.name)
		}
		t.Run(tt.rpc+"/"+tt.name, func(t *testing.T) {
			if tt.name == "host not owned here" && unbindable == "" {
				t.Skip("every TEST-NET address is bindable on this machine")
			}
			gw := g
			if tt.limits {
				gw = lim
			}
			err := badInvoke(servertest.Context(t), t, gw.Client, tt.req)
			st := status.Convert(err)
			t.Logf("%v %q", st.Code(), st.Message())
			if st.Code() == codes.Unknown || st.Code() == codes.Internal {
				t.Fatalf("%v %q: never Unknown or Internal for a bad input", st.Code(), st.Message())
			}
			ok := st.Code() == tt.code && strings.Contains(st.Message(), tt.mention)
			if !ok {
				t.Fatalf("got %v %q, want %v mentioning %q", st.Code(), st.Message(), tt.code, tt.mention)
			}
			if strings.Contains(st.Message(), "panic") || strings.Contains(st.Message(), "goroutine ") {
				t.Fatalf("message looks like a crash: %q", st.Message())
			}
		})
	}
	for _, m := range tcpgatev1.GatewayService_ServiceDesc.Methods {
		if !seen[m.MethodName] {
			t.Errorf("no case for %s", m.MethodName)
		}
	}
	for _, s := range tcpgatev1.GatewayService_ServiceDesc.Streams {
		if !seen[s.StreamName] {
			t.Errorf("no case for %s", s.StreamName)
		}
	}

	// Nothing the bad requests asked for was left behind: the listener set
	// is what the setup started, the ids of failed starts are free, the
	// connection was not closed, and the gateway still works.
	t.Run("state after the table", func(t *testing.T) {
		resp, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range resp.GetListeners() {
			ids = append(ids, l.GetListenerId())
		}
		if !slices.Equal(ids, []string{"keep"}) {
			t.Fatalf("listeners = %v, want [keep]", ids)
		}
		for _, id := range []string{"hostport", "unbindable", "inuse"} {
			g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: id})
		}
		got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "keep"})
		if err != nil {
			t.Fatal(err)
		}
		if l := got.GetListener(); l.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_LISTENING || l.GetConnectionsActive() != 1 {
			t.Fatalf("keep = %v, want listening with its one connection", l)
		}
		if _, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: connID}, Payload: badText("ok")}); err != nil {
			t.Fatalf("Send to the kept connection: %v", err)
		}
		if b := servertest.ReadN(t, client, 2); string(b) != "ok" {
			t.Fatalf("client read %q", b)
		}
		lresp, err := lim.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil || len(lresp.GetListeners()) != 2 {
			t.Fatalf("limited gateway listeners = %v, %v; want 2", lresp.GetListeners(), err)
		}
	})
	t.Logf("%d cases in %s", len(tests), time.Since(start).Round(time.Millisecond))
}

// manyIDs returns n distinct ids of length bytes each.
func manyIDs(n, length int) []string {
	out := make([]string, n)
	for i := range out {
		id := strconv.Itoa(i) + "-"
		out[i] = id + strings.Repeat("x", length-len(id))
	}
	return out
}

// rawCodec sends a request's bytes as they are, so that a test can send
// what no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestMalformedProtobuf sends every method of the API bytes that do not
// decode as its request, and a string field that is not UTF-8, over a raw
// gRPC call: each answers InvalidArgument naming the request (and the
// string field that is not UTF-8), never Internal.
func TestMalformedProtobuf(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	invoke := func(t *testing.T, method string, stream bool, req []byte) error {
		t.Helper()
		full := "/" + tcpgatev1.GatewayService_ServiceDesc.ServiceName + "/" + method
		if !stream {
			var resp []byte
			return g.Conn.Invoke(servertest.Context(t), full, req, &resp, grpc.ForceCodec(rawCodec{}))
		}
		ctx, cancel := context.WithCancel(servertest.Context(t))
		defer cancel()
		st, err := g.Conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, full, grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return err
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		var resp []byte
		return st.RecvMsg(&resp)
	}
	type method struct {
		name   string
		stream bool
	}
	var methods []method
	for _, m := range tcpgatev1.GatewayService_ServiceDesc.Methods {
		methods = append(methods, method{m.MethodName, false})
	}
	for _, s := range tcpgatev1.GatewayService_ServiceDesc.Streams {
		methods = append(methods, method{s.StreamName, true})
	}
	// 0x0a is field 1, length-delimited; every request's field 1 but
	// ListListenersRequest's (which has none: it stays an unknown field)
	// and SendRequest's (a string in a oneof) is a string or a message.
	cases := []struct {
		name    string
		req     []byte
		mention string
	}{
		{"truncated varint", []byte{0x08, 0xff, 0xff}, "not valid protobuf wire format"},
		{"length past the end", []byte{0x0a, 0x7f, 'x'}, "not valid protobuf wire format"},
		{"field number 0", []byte{0x02, 0x01, 'x'}, "not valid protobuf wire format"},
	}
	for _, m := range methods {
		for _, tt := range cases {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				err := invoke(t, m.name, m.stream, tt.req)
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tt.mention) || !strings.Contains(st.Message(), "tcpgate.v1."+m.name+"Request") {
					t.Fatalf("%v %q, want InvalidArgument naming tcpgate.v1.%sRequest and saying %q", st.Code(), st.Message(), m.name, tt.mention)
				}
			})
		}
	}
	for _, tt := range []struct {
		method  string
		stream  bool
		req     []byte
		mention string
	}{
		{"GetListener", false, []byte{0x0a, 0x01, 0xff}, "listener_id"},
		{"CloseConnection", false, []byte{0x0a, 0x02, 'c', 0xff}, "connection_id"},
		{"Subscribe", true, []byte{0x0a, 0x01, 0xff}, "listener_ids"},
	} {
		t.Run(tt.method+"/invalid UTF-8", func(t *testing.T) {
			st := status.Convert(invoke(t, tt.method, tt.stream, tt.req))
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tt.mention) || !strings.Contains(st.Message(), "UTF-8") {
				t.Fatalf("%v %q, want InvalidArgument naming %s and UTF-8", st.Code(), st.Message(), tt.mention)
			}
		})
	}
	// A well-formed request still works through the same raw path.
	ok, _ := proto.Marshal(&tcpgatev1.ListListenersRequest{})
	if err := invoke(t, "ListListeners", false, ok); err != nil {
		t.Fatalf("ListListeners with a valid request: %v", err)
	}
}
