package servertest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
)

// maxFrame is the server's cap on max_frame_bytes, fixed_size and
// await_reply.max_bytes (3 MiB); one more is the smallest oversized value.
const maxFrame = 3 << 20

// BadInput is one row of the table of bad inputs: a request to one RPC
// (chosen by the request's type) and what the gateway must answer, over
// gRPC and over REST alike.
type BadInput struct {
	// RPC is the method's name, "StartListener"; the tests check that
	// every method of the service has a row.
	RPC  string
	Name string
	// Limits runs the row on BadInputs.Limited instead of BadInputs.Gateway.
	Limits bool
	Req    proto.Message
	Code   codes.Code
	// Reason is the ErrorInfo reason the error carries; unset only for
	// codes.OK.
	Reason tcpgatev1.ErrorReason
	// Field is the request field the error names in its ErrorInfo's
	// "field" and, for INVALID_ARGUMENT, its BadRequest field violation
	// (proto names, "await_reply.framing.delimiter"); "" when the error is
	// not about one field.
	Field string
	// Mention must appear in the status message: the field's name for
	// InvalidArgument, otherwise what a person needs to act (the id, the
	// address, the limit's name). Empty only for codes.OK.
	Mention string
}

// BadInputs is the table of bad inputs and the two gateways it runs on.
// Rows that succeed (the valid boundary cases next to the invalid ones
// they bound) start listeners the runner must stop again, so that rows do
// not depend on each other.
type BadInputs struct {
	// Gateway runs the rows without Limits. Its listener "keep" (KeepAddr)
	// has one connection open, Client's, with the id ConnID; a correct
	// gateway leaves both as they are.
	Gateway *Gateway
	// Limited has two listeners ("full" at FullAddr, and "full2"), one
	// subscriber, and sends of 1 KiB at most: each of its limits in use.
	Limited  *Gateway
	KeepAddr string
	Client   *net.TCPConn
	ConnID   string
	FullAddr string
	// Refused is an address nobody listens on; Silent a peer that reads
	// and never answers.
	Refused string
	Silent  string
	// Unbindable is an address of the documentation ranges this machine
	// does not own; "" when all are bindable here, and the row "host not
	// owned here" must be skipped.
	Unbindable string
	Rows       []BadInput

	keepPort uint32
}

// StartBadInputs starts the gateways of the table with cfg (set
// cfg.HTTPAddr to "127.0.0.1:0" to run the rows over REST), the listeners,
// connection and peers its rows refer to, and returns the table.
func StartBadInputs(t testing.TB, cfg server.Config) *BadInputs {
	t.Helper()
	b := &BadInputs{Gateway: Start(t, cfg)}
	keep := b.Gateway.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "keep"})
	b.KeepAddr = keep.GetAddress()
	b.Client = Dial(t, b.KeepAddr)
	Eventually(t, "the client's connection listed", func() bool {
		resp, err := b.Gateway.Client.ListConnections(Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "keep"})
		if err != nil {
			t.Fatalf("ListConnections: %v", err)
		}
		if cs := resp.GetConnections(); len(cs) > 0 {
			b.ConnID = cs[0].GetConnectionId()
		}
		return b.ConnID != ""
	})
	_, port, _ := net.SplitHostPort(b.KeepAddr)
	p, _ := strconv.Atoi(port)
	b.keepPort = uint32(p)
	b.Refused = RefusedAddr(t)
	b.Silent = Peer(t, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				return // the gateway gave up and closed
			}
		}
	})

	lim := cfg
	lim.MaxListeners, lim.MaxSendBytes, lim.MaxSubscribers = 2, 1024, 1
	b.Limited = Start(t, lim)
	b.FullAddr = b.Limited.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "full"}).GetAddress()
	b.Limited.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "full2"})
	b.Limited.Subscribe(t, &tcpgatev1.SubscribeRequest{})

	b.Unbindable = unbindable()
	b.Rows = b.rows()
	return b
}

// unbindable returns an IPv4 address of TEST-NET-1 and its neighbours
// that this machine does not own, so binding it fails with EADDRNOTAVAIL;
// "" when every candidate is bindable here.
func unbindable() string {
	for _, h := range []string{"192.0.2.1", "192.0.2.254", "198.51.100.1", "203.0.113.1"} {
		ln, err := net.Listen("tcp4", net.JoinHostPort(h, "0"))
		if err != nil {
			return h
		}
		ln.Close()
	}
	return ""
}

// ManyIDs returns n distinct ids of length bytes each.
func ManyIDs(n, length int) []string {
	out := make([]string, n)
	for i := range out {
		id := strconv.Itoa(i) + "-"
		out[i] = id + strings.Repeat("x", length-len(id))
	}
	return out
}

func badText(s string) *tcpgatev1.SendRequest_Text { return &tcpgatev1.SendRequest_Text{Text: s} }

func badAddr(a string) *tcpgatev1.SendRequest_Address {
	return &tcpgatev1.SendRequest_Address{Address: a}
}

// mask is an update mask of paths.
func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func badDur(secs int64, nanos int32) *durationpb.Duration {
	return &durationpb.Duration{Seconds: secs, Nanos: nanos}
}

// rows is the table: every RPC with its invalid inputs (out of range,
// unknown enum values, empty and oversized values, malformed durations,
// unknown ids, wrong oneof combinations, limits), and a few valid boundary
// cases (code OK) next to the invalid ones they bound.
func (b *BadInputs) rows() []BadInput {
	const (
		sl   = "StartListener"
		stop = "StopListener"
		get  = "GetListener"
		list = "ListListeners"
		lc   = "ListConnections"
		gc   = "GetConnection"
		cc   = "CloseConnection"
		send = "Send"
		sub  = "Subscribe"
		con  = "Connect"
		hdl  = "Handle"
		upd  = "UpdateListener"
	)
	inv := codes.InvalidArgument
	const (
		rInvalid     = tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT
		rUnknownNode = tcpgatev1.ErrorReason_ERROR_REASON_UNKNOWN_NODE
		rNoListener  = tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_NOT_FOUND
		rNoConn      = tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_NOT_FOUND
		rExists      = tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_EXISTS
		rInUse       = tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_IN_USE
		rNotUsable   = tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_NOT_USABLE
		rLimit       = tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED
		rFilter      = tcpgatev1.ErrorReason_ERROR_REASON_FILTER_TOO_LARGE
		rRefused     = tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_REFUSED
		rReplyTime   = tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TIMEOUT
		rToken       = tcpgatev1.ErrorReason_ERROR_REASON_INVALID_PAGE_TOKEN
		rAhead       = tcpgatev1.ErrorReason_ERROR_REASON_SEQUENCE_OUT_OF_RANGE
		rNotUpd      = tcpgatev1.ErrorReason_ERROR_REASON_FIELD_NOT_UPDATABLE
	)
	lp := "127.0.0.1"
	fr := func(f *tcpgatev1.Framing) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, Framing: f}
	}
	ar := func(a *tcpgatev1.AutoReply) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, AutoReply: a}
	}
	fw := func(addr string) *tcpgatev1.Forward { return &tcpgatev1.Forward{Address: addr} }
	idle := func(d *durationpb.Duration) *tcpgatev1.StartListenerRequest {
		return &tcpgatev1.StartListenerRequest{Host: lp, IdleTimeout: d}
	}
	drain := func(d *durationpb.Duration) *tcpgatev1.StopListenerRequest {
		return &tcpgatev1.StopListenerRequest{ListenerId: "keep", DrainTimeout: d}
	}
	// await sends to keep's own address, so a request that wrongly passed
	// validation would succeed instead of failing for another reason.
	await := func(a *tcpgatev1.AwaitReply) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(b.KeepAddr), Payload: badText("x"), AwaitReply: a}
	}
	timeout := func(d *durationpb.Duration) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(b.KeepAddr), Payload: badText("x"), Timeout: d}
	}
	to := func(addr string) *tcpgatev1.SendRequest {
		return &tcpgatev1.SendRequest{Target: badAddr(addr), Payload: badText("x")}
	}
	// framed sends text, or data when text is empty, framed with f.
	framed := func(addr string, text string, data []byte, f *tcpgatev1.Framing) *tcpgatev1.SendRequest {
		r := &tcpgatev1.SendRequest{Target: badAddr(addr), Payload: badText(text), Framed: true, AwaitReply: &tcpgatev1.AwaitReply{Framing: f}}
		if text == "" {
			r.Payload = &tcpgatev1.SendRequest_Data{Data: data}
		}
		return r
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
		// An origin filter names ACCEPTED or OUTBOUND; UNSPECIFIED is refused.
		oUnspec   = tcpgatev1.Origin_ORIGIN_UNSPECIFIED
		oAccepted = tcpgatev1.Origin_ORIGIN_ACCEPTED
		oOutbound = tcpgatev1.Origin_ORIGIN_OUTBOUND
	)
	// dial is a Connect to Refused, with reconnect disabled: a row that
	// wrongly passed validation fails with CONNECTION_REFUSED instead, and
	// leaves nothing behind.
	dial := func(edit func(r *tcpgatev1.ConnectRequest)) *tcpgatev1.ConnectRequest {
		r := &tcpgatev1.ConnectRequest{Address: b.Refused, Reconnect: &tcpgatev1.Reconnect{Disabled: true}}
		edit(r)
		return r
	}
	ocText := func(s string) *tcpgatev1.OnConnect {
		return &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: s}}
	}
	hbText := func(s string, interval *durationpb.Duration) *tcpgatev1.Heartbeat {
		return &tcpgatev1.Heartbeat{Interval: interval, Payload: &tcpgatev1.Heartbeat_Text{Text: s}}
	}
	regex := func(r string) *tcpgatev1.ReplyMatch {
		return &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Regex{Regex: r}}
	}
	arText := func(s string) *tcpgatev1.AutoReply_Text { return &tcpgatev1.AutoReply_Text{Text: s} }
	arData := func(b []byte) *tcpgatev1.AutoReply_Data { return &tcpgatev1.AutoReply_Data{Data: b} }

	return []BadInput{
		// StartListener: port, id, host.
		{RPC: sl, Name: "proxy_protocol unknown", Req: &tcpgatev1.StartListenerRequest{Host: lp, ProxyProtocol: tcpgatev1.ProxyProtocol(99)}, Code: inv, Reason: rInvalid, Field: "proxy_protocol", Mention: "proxy_protocol"},
		{RPC: sl, Name: "port 65536", Req: &tcpgatev1.StartListenerRequest{Host: lp, Port: 65536}, Code: inv, Reason: rInvalid, Field: "port", Mention: "port"},
		{RPC: sl, Name: "port 4294967295", Req: &tcpgatev1.StartListenerRequest{Host: lp, Port: 4294967295}, Code: inv, Reason: rInvalid, Field: "port", Mention: "port"},
		{RPC: sl, Name: "listener_id empty is generated", Req: &tcpgatev1.StartListenerRequest{Host: lp}, Code: codes.OK},
		{RPC: sl, Name: "listener_id of 64 bytes is fine", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: strings.Repeat("x", 64)}, Code: codes.OK},
		{RPC: sl, Name: "listener_id with a slash", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "a/b"}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: sl, Name: "listener_id of 65 bytes", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: strings.Repeat("x", 65)}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: sl, Name: "listener_id blank", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: " "}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: sl, Name: "listener_id not ASCII", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "é"}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: sl, Name: "host of 256 bytes", Req: &tcpgatev1.StartListenerRequest{Host: strings.Repeat("h", 256)}, Code: inv, Reason: rInvalid, Field: "host", Mention: "host"},
		{RPC: sl, Name: "host with a port", Req: &tcpgatev1.StartListenerRequest{ListenerId: "hostport", Host: "127.0.0.1:80"}, Code: inv, Reason: rInvalid, Field: "host", Mention: "host"},
		{RPC: sl, Name: "host not owned here", Req: &tcpgatev1.StartListenerRequest{ListenerId: "unbindable", Host: b.Unbindable}, Code: codes.FailedPrecondition, Reason: rNotUsable, Mention: b.Unbindable},
		{RPC: sl, Name: "listener_id taken", Req: &tcpgatev1.StartListenerRequest{Host: lp, ListenerId: "keep"}, Code: codes.AlreadyExists, Reason: rExists, Mention: "keep"},
		{RPC: sl, Name: "address in use", Req: &tcpgatev1.StartListenerRequest{ListenerId: "inuse", Host: lp, Port: b.keepPort}, Code: codes.Unavailable, Reason: rInUse, Mention: b.KeepAddr},
		{RPC: sl, Name: "node_id with every_node", Req: &tcpgatev1.StartListenerRequest{Host: lp, NodeId: "a", EveryNode: true}, Code: inv, Reason: rInvalid, Field: "every_node", Mention: "every_node"},
		{RPC: sl, Name: "node_id with a slash", Req: &tcpgatev1.StartListenerRequest{Host: lp, NodeId: "a/b"}, Code: inv, Reason: rInvalid, Field: "node_id", Mention: "node_id"},
		{RPC: sl, Name: "node_id of no node", Req: &tcpgatev1.StartListenerRequest{Host: lp, NodeId: "elsewhere"}, Code: inv, Reason: rUnknownNode, Field: "node_id", Mention: "elsewhere"},
		{RPC: sl, Name: "every_node on a single gateway starts here", Req: &tcpgatev1.StartListenerRequest{Host: lp, EveryNode: true}, Code: codes.OK},
		{RPC: sl, Name: "max_listeners reached", Limits: true, Req: &tcpgatev1.StartListenerRequest{Host: lp}, Code: codes.ResourceExhausted, Reason: rLimit, Mention: "max_listeners"},

		// StartListener: framing.
		{RPC: sl, Name: "framing mode 99", Req: fr(&tcpgatev1.Framing{Mode: 99}), Code: inv, Reason: rInvalid, Field: "framing.mode", Mention: "framing.mode"},
		{RPC: sl, Name: "framing mode -1", Req: fr(&tcpgatev1.Framing{Mode: -1}), Code: inv, Reason: rInvalid, Field: "framing.mode", Mention: "framing.mode"},
		{RPC: sl, Name: "delimiter mode without delimiter", Req: fr(&tcpgatev1.Framing{Mode: fmDelim}), Code: inv, Reason: rInvalid, Field: "framing.delimiter", Mention: "framing.delimiter"},
		{RPC: sl, Name: "delimiter of 64 bytes is fine", Req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 64))}), Code: codes.OK},
		{RPC: sl, Name: "delimiter of 65 bytes", Req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 65))}), Code: inv, Reason: rInvalid, Field: "framing.delimiter", Mention: "framing.delimiter: 65 bytes, more than the limit of 64"},
		{RPC: sl, Name: "delimiter of 3 MiB", Req: fr(&tcpgatev1.Framing{Mode: fmDelim, Delimiter: make([]byte, 3<<20)}), Code: inv, Reason: rInvalid, Field: "framing.delimiter", Mention: "framing.delimiter"},
		{RPC: sl, Name: "delimiter of 65 bytes in raw mode", Req: fr(&tcpgatev1.Framing{Mode: fmRaw, Delimiter: []byte(strings.Repeat("d", 65))}), Code: inv, Reason: rInvalid, Field: "framing.delimiter", Mention: "framing.delimiter"},
		{RPC: send, Name: "await_reply.framing delimiter of 65 bytes", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte(strings.Repeat("d", 65))}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.delimiter", Mention: "await_reply.framing.delimiter"},
		{RPC: sl, Name: "prefix_bytes 3", Req: fr(&tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 3}), Code: inv, Reason: rInvalid, Field: "framing.prefix_bytes", Mention: "framing.prefix_bytes"},
		{RPC: sl, Name: "prefix_bytes 16", Req: fr(&tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 16}), Code: inv, Reason: rInvalid, Field: "framing.prefix_bytes", Mention: "framing.prefix_bytes"},
		{RPC: sl, Name: "prefix_bytes 3 in raw mode", Req: fr(&tcpgatev1.Framing{Mode: fmRaw, PrefixBytes: 3}), Code: inv, Reason: rInvalid, Field: "framing.prefix_bytes", Mention: "framing.prefix_bytes"},
		{RPC: sl, Name: "fixed_size 0", Req: fr(&tcpgatev1.Framing{Mode: fmFixed}), Code: inv, Reason: rInvalid, Field: "framing.fixed_size", Mention: "framing.fixed_size"},
		{RPC: sl, Name: "fixed_size above max_frame_bytes", Req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 2048, MaxFrameBytes: 1024}), Code: inv, Reason: rInvalid, Field: "framing.fixed_size", Mention: "framing.fixed_size"},
		{RPC: sl, Name: "fixed_size above the default max_frame_bytes", Req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 1<<20 + 1}), Code: inv, Reason: rInvalid, Field: "framing.fixed_size", Mention: "framing.fixed_size"},
		{RPC: sl, Name: "fixed_size over 3 MiB", Req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: maxFrame + 1, MaxFrameBytes: maxFrame}), Code: inv, Reason: rInvalid, Field: "framing.fixed_size", Mention: "framing.fixed_size"},
		{RPC: sl, Name: "fixed_size 4294967295", Req: fr(&tcpgatev1.Framing{Mode: fmFixed, FixedSize: 4294967295}), Code: inv, Reason: rInvalid, Field: "framing.fixed_size", Mention: "framing.fixed_size"},
		{RPC: sl, Name: "max_frame_bytes of 3 MiB is fine", Req: fr(&tcpgatev1.Framing{Mode: fmLine, MaxFrameBytes: maxFrame}), Code: codes.OK},
		{RPC: sl, Name: "max_frame_bytes over 3 MiB", Req: fr(&tcpgatev1.Framing{Mode: fmLine, MaxFrameBytes: maxFrame + 1}), Code: inv, Reason: rInvalid, Field: "framing.max_frame_bytes", Mention: "framing.max_frame_bytes"},
		{RPC: sl, Name: "max_frame_bytes 4294967295", Req: fr(&tcpgatev1.Framing{MaxFrameBytes: 4294967295}), Code: inv, Reason: rInvalid, Field: "framing.max_frame_bytes", Mention: "framing.max_frame_bytes"},

		// StartListener: auto_reply, including its oneof.
		{RPC: sl, Name: "auto_reply mode 99", Req: ar(&tcpgatev1.AutoReply{Mode: 99}), Code: inv, Reason: rInvalid, Field: "auto_reply.mode", Mention: "auto_reply.mode"},
		{RPC: sl, Name: "auto_reply FIXED without payload", Req: ar(&tcpgatev1.AutoReply{Mode: arFixed}), Code: inv, Reason: rInvalid, Field: "auto_reply", Mention: "auto_reply"},
		{RPC: sl, Name: "auto_reply ECHO with text", Req: ar(&tcpgatev1.AutoReply{Mode: arEcho, Payload: arText("hi")}), Code: inv, Reason: rInvalid, Field: "auto_reply.mode", Mention: "auto_reply.mode"},
		{RPC: sl, Name: "auto_reply NONE with data", Req: ar(&tcpgatev1.AutoReply{Mode: arNone, Payload: arData([]byte{1})}), Code: inv, Reason: rInvalid, Field: "auto_reply.mode", Mention: "auto_reply.mode"},
		{RPC: sl, Name: "auto_reply UNSPECIFIED with text", Req: ar(&tcpgatev1.AutoReply{Payload: arText("hi")}), Code: inv, Reason: rInvalid, Field: "auto_reply.mode", Mention: "auto_reply.mode"},
		{RPC: sl, Name: "auto_reply FIXED over 3 MiB", Req: ar(&tcpgatev1.AutoReply{Mode: arFixed, Payload: arData(make([]byte, maxFrame+1))}), Code: inv, Reason: rInvalid, Field: "auto_reply", Mention: "auto_reply"},

		// StartListener: forward.
		{RPC: sl, Name: "forward with auto_reply", Req: &tcpgatev1.StartListenerRequest{Host: lp, AutoReply: &tcpgatev1.AutoReply{Mode: arEcho}, Forward: fw("127.0.0.1:9")}, Code: inv, Reason: rInvalid, Field: "forward", Mention: "auto_reply"},
		{RPC: sl, Name: "forward without address", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw("")}, Code: inv, Reason: rInvalid, Field: "forward.address", Mention: "forward.address"},
		{RPC: sl, Name: "forward address without port", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw("127.0.0.1")}, Code: inv, Reason: rInvalid, Field: "forward.address", Mention: "forward.address"},
		{RPC: sl, Name: "forward address port 0", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw("127.0.0.1:0")}, Code: inv, Reason: rInvalid, Field: "forward.address", Mention: "forward.address"},
		{RPC: sl, Name: "forward address empty host", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw(":80")}, Code: inv, Reason: rInvalid, Field: "forward.address", Mention: "forward.address"},
		{RPC: sl, Name: "forward address host of 254 bytes", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw(strings.Repeat("h", 254) + ":80")}, Code: inv, Reason: rInvalid, Field: "forward.address", Mention: "forward.address"},
		{RPC: sl, Name: "forward tls with a cert and no key", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: &tcpgatev1.Forward{Address: "127.0.0.1:9", Tls: &tcpgatev1.DialTLS{CertPem: "x"}}}, Code: inv, Reason: rInvalid, Field: "forward.tls", Mention: "forward.tls"},
		{RPC: sl, Name: "forward to a refused port starts", Req: &tcpgatev1.StartListenerRequest{Host: lp, Forward: fw("127.0.0.1:9")}, Code: codes.OK},

		// StartListener: idle_timeout.
		{RPC: sl, Name: "idle_timeout negative", Req: idle(durationpb.New(-time.Second)), Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: sl, Name: "idle_timeout seconds and nanos of different signs", Req: idle(badDur(1, -1)), Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: sl, Name: "idle_timeout nanos 1e9", Req: idle(badDur(0, 1e9)), Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: sl, Name: "idle_timeout seconds above 10000 years", Req: idle(badDur(315576000001, 0)), Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: sl, Name: "idle_timeout of 10000 years is fine", Req: idle(badDur(315576000000, 0)), Code: codes.OK},

		// StopListener.
		{RPC: upd, Name: "listener_id empty", Req: &tcpgatev1.UpdateListenerRequest{Listener: &tcpgatev1.StartListenerRequest{}, UpdateMask: mask("max_connections")}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: upd, Name: "listener_id unknown", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "nope", Listener: &tcpgatev1.StartListenerRequest{MaxConnections: 3}, UpdateMask: mask("max_connections")}, Code: codes.NotFound, Reason: rNoListener, Mention: "nope"},
		{RPC: upd, Name: "update_mask empty", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{}}, Code: inv, Reason: rInvalid, Field: "update_mask", Mention: "update_mask"},
		{RPC: upd, Name: "update_mask port", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{Port: 1}, UpdateMask: mask("port")}, Code: inv, Reason: rNotUpd, Field: "port", Mention: "port"},
		{RPC: upd, Name: "update_mask proxy_protocol", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1}, UpdateMask: mask("proxy_protocol")}, Code: inv, Reason: rNotUpd, Field: "proxy_protocol", Mention: "proxy_protocol"},
		{RPC: upd, Name: "update_mask host", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{Host: "127.0.0.2"}, UpdateMask: mask("host")}, Code: inv, Reason: rNotUpd, Field: "host", Mention: "host"},
		{RPC: upd, Name: "update_mask framing", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}}, UpdateMask: mask("framing")}, Code: inv, Reason: rNotUpd, Field: "framing", Mention: "framing"},
		{RPC: upd, Name: "update_mask tls with max_connections", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{MaxConnections: 3}, UpdateMask: mask("max_connections", "tls")}, Code: inv, Reason: rNotUpd, Field: "tls", Mention: "tls"},
		{RPC: upd, Name: "update_mask forward.address", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{Forward: fw("127.0.0.1:9")}, UpdateMask: mask("forward.address")}, Code: inv, Reason: rNotUpd, Field: "forward", Mention: "forward"},
		{RPC: upd, Name: "update_mask not a field", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{}, UpdateMask: mask("colour")}, Code: inv, Reason: rNotUpd, Field: "colour", Mention: "colour"},
		{RPC: upd, Name: "listener.listener_id another", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{ListenerId: "other", MaxConnections: 3}, UpdateMask: mask("max_connections")}, Code: inv, Reason: rInvalid, Field: "listener.listener_id", Mention: "listener.listener_id"},
		{RPC: upd, Name: "auto_reply fixed without payload", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED}}, UpdateMask: mask("auto_reply")}, Code: inv, Reason: rInvalid, Field: "auto_reply", Mention: "auto_reply"},
		{RPC: upd, Name: "half_close_timeout over a minute", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{HalfCloseTimeout: durationpb.New(2 * time.Minute)}, UpdateMask: mask("half_close_timeout")}, Code: inv, Reason: rInvalid, Field: "half_close_timeout", Mention: "half_close_timeout"},
		{RPC: upd, Name: "idle_timeout negative", Req: &tcpgatev1.UpdateListenerRequest{ListenerId: "keep", Listener: &tcpgatev1.StartListenerRequest{IdleTimeout: durationpb.New(-time.Second)}, UpdateMask: mask("idle_timeout")}, Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: stop, Name: "listener_id empty", Req: &tcpgatev1.StopListenerRequest{}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: stop, Name: "listener_id malformed", Req: &tcpgatev1.StopListenerRequest{ListenerId: "a/b"}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: stop, Name: "listener_id unknown", Req: &tcpgatev1.StopListenerRequest{ListenerId: "nope"}, Code: codes.NotFound, Reason: rNoListener, Mention: "nope"},
		{RPC: stop, Name: "drain_timeout negative", Req: drain(durationpb.New(-time.Second)), Code: inv, Reason: rInvalid, Field: "drain_timeout", Mention: "drain_timeout"},
		{RPC: stop, Name: "drain_timeout nanos negative", Req: drain(badDur(0, -1)), Code: inv, Reason: rInvalid, Field: "drain_timeout", Mention: "drain_timeout"},
		{RPC: stop, Name: "drain_timeout nanos 1e9", Req: drain(badDur(1, 1e9)), Code: inv, Reason: rInvalid, Field: "drain_timeout", Mention: "drain_timeout"},
		{RPC: stop, Name: "drain_timeout seconds and nanos of different signs", Req: drain(badDur(1, -1)), Code: inv, Reason: rInvalid, Field: "drain_timeout", Mention: "drain_timeout"},
		{RPC: stop, Name: "drain_timeout seconds above 10000 years", Req: drain(badDur(315576000001, 0)), Code: inv, Reason: rInvalid, Field: "drain_timeout", Mention: "drain_timeout"},

		// GetListener.
		{RPC: get, Name: "listener_id empty", Req: &tcpgatev1.GetListenerRequest{}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: get, Name: "listener_id unknown", Req: &tcpgatev1.GetListenerRequest{ListenerId: "nope"}, Code: codes.NotFound, Reason: rNoListener, Mention: "nope"},
		{RPC: get, Name: "listener_id malformed", Req: &tcpgatev1.GetListenerRequest{ListenerId: "a/b"}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: `listener_id: must be 1 to 64 of A-Z a-z 0-9 . _ ~ -, got "a/b"`},
		{RPC: get, Name: "listener_id of 65 bytes", Req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 65)}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: get, Name: "listener_id of 3 MiB", Req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 3<<20)}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "(3145728 bytes)"},
		{RPC: get, Name: "listener_id of 64 bytes is not found", Req: &tcpgatev1.GetListenerRequest{ListenerId: strings.Repeat("x", 64)}, Code: codes.NotFound, Reason: rNoListener, Mention: strings.Repeat("x", 64)},

		// ListListeners has no input to get wrong.
		{RPC: list, Name: "empty request", Req: &tcpgatev1.ListListenersRequest{}, Code: codes.OK},
		{RPC: list, Name: "page_size negative", Req: &tcpgatev1.ListListenersRequest{PageSize: -1}, Code: inv, Reason: rInvalid, Field: "page_size", Mention: "page_size"},
		{RPC: list, Name: "page_size above 1000 is 1000", Req: &tcpgatev1.ListListenersRequest{PageSize: 1 << 30}, Code: codes.OK},
		{RPC: list, Name: "page_token garbage", Req: &tcpgatev1.ListListenersRequest{PageToken: "garbage"}, Code: inv, Reason: rToken, Field: "page_token", Mention: "page_token"},
		{RPC: list, Name: "page_token of 3 MiB", Req: &tcpgatev1.ListListenersRequest{PageToken: strings.Repeat("A", 3<<20)}, Code: inv, Reason: rToken, Field: "page_token", Mention: "page_token"},

		// ListConnections.
		{RPC: lc, Name: "listener_id malformed", Req: &tcpgatev1.ListConnectionsRequest{ListenerId: "a b"}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: lc, Name: "listener_id unknown", Req: &tcpgatev1.ListConnectionsRequest{ListenerId: "nope"}, Code: codes.NotFound, Reason: rNoListener, Mention: "nope"},
		{RPC: lc, Name: "listener_id empty lists all", Req: &tcpgatev1.ListConnectionsRequest{}, Code: codes.OK},
		{RPC: lc, Name: "page_size negative", Req: &tcpgatev1.ListConnectionsRequest{PageSize: -1}, Code: inv, Reason: rInvalid, Field: "page_size", Mention: "page_size"},
		{RPC: lc, Name: "page_token garbage", Req: &tcpgatev1.ListConnectionsRequest{PageToken: "%%%"}, Code: inv, Reason: rToken, Field: "page_token", Mention: "page_token"},
		{RPC: lc, Name: "state unknown", Req: &tcpgatev1.ListConnectionsRequest{State: 99}, Code: inv, Reason: rInvalid, Field: "state", Mention: "state"},
		{RPC: lc, Name: "state draining", Req: &tcpgatev1.ListConnectionsRequest{State: tcpgatev1.ConnectionState_CONNECTION_STATE_DRAINING}, Code: codes.OK},
		{RPC: lc, Name: "remote_address_prefix of 65 bytes", Req: &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: strings.Repeat("1", 65)}, Code: inv, Reason: rInvalid, Field: "remote_address_prefix", Mention: "remote_address_prefix"},
		{RPC: lc, Name: "remote_address_prefix of 64 bytes", Req: &tcpgatev1.ListConnectionsRequest{RemoteAddressPrefix: strings.Repeat("1", 64)}, Code: codes.OK},
		{RPC: lc, Name: "origins UNSPECIFIED", Req: &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{oUnspec}}, Code: inv, Reason: rInvalid, Field: "origins[0]", Mention: "origins[0]"},
		{RPC: lc, Name: "origins 99 after a good one", Req: &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{oAccepted, 99}}, Code: inv, Reason: rInvalid, Field: "origins[1]", Mention: "origins[1]"},
		{RPC: lc, Name: "origins -1", Req: &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{-1}}, Code: inv, Reason: rInvalid, Field: "origins[0]", Mention: "origins[0]"},
		{RPC: lc, Name: "origins both, repeated, are fine", Req: &tcpgatev1.ListConnectionsRequest{Origins: []tcpgatev1.Origin{oAccepted, oOutbound, oAccepted}}, Code: codes.OK},

		// GetConnection.
		{RPC: gc, Name: "connection_id empty", Req: &tcpgatev1.GetConnectionRequest{}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: gc, Name: "connection_id malformed", Req: &tcpgatev1.GetConnectionRequest{ConnectionId: "c/1"}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: gc, Name: "connection_id of 65 bytes", Req: &tcpgatev1.GetConnectionRequest{ConnectionId: strings.Repeat("c", 65)}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: gc, Name: "connection_id not ASCII", Req: &tcpgatev1.GetConnectionRequest{ConnectionId: "cé"}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: gc, Name: "connection_id unknown", Req: &tcpgatev1.GetConnectionRequest{ConnectionId: "c999"}, Code: codes.NotFound, Reason: rNoConn, Mention: "c999"},
		{RPC: gc, Name: "connection_id known", Req: &tcpgatev1.GetConnectionRequest{ConnectionId: b.ConnID}, Code: codes.OK},

		// ExportConfig takes nothing: there is no bad input, and the
		// empty request must be answered.
		{RPC: "ExportConfig", Name: "empty request", Req: &tcpgatev1.ExportConfigRequest{}, Code: codes.OK},

		// CloseConnection.
		{RPC: cc, Name: "connection_id empty", Req: &tcpgatev1.CloseConnectionRequest{}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: cc, Name: "connection_id malformed", Req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "c/1"}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: cc, Name: "connection_id of 65 bytes", Req: &tcpgatev1.CloseConnectionRequest{ConnectionId: strings.Repeat("c", 65)}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: cc, Name: "connection_id not ASCII", Req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "cé"}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: cc, Name: "connection_id unknown", Req: &tcpgatev1.CloseConnectionRequest{ConnectionId: "c999"}, Code: codes.NotFound, Reason: rNoConn, Mention: "c999"},

		// Send: the target and payload oneofs ("both" is only expressible
		// over REST; see gateway/badinput_test.go's REST-only rows).
		{RPC: send, Name: "no target", Req: &tcpgatev1.SendRequest{Payload: badText("x")}, Code: inv, Reason: rInvalid, Field: "target", Mention: "target"},
		{RPC: send, Name: "no payload", Req: &tcpgatev1.SendRequest{Target: badAddr(b.KeepAddr)}, Code: inv, Reason: rInvalid, Field: "payload", Mention: "payload"},
		{RPC: send, Name: "neither target nor payload", Req: &tcpgatev1.SendRequest{}, Code: inv, Reason: rInvalid, Field: "payload", Mention: "payload"},
		{RPC: send, Name: "empty text is a payload", Req: &tcpgatev1.SendRequest{Target: badAddr(b.Silent), Payload: badText("")}, Code: codes.OK},
		{RPC: send, Name: "address empty", Req: to(""), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address without port", Req: to("no-port"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address port 0", Req: to("127.0.0.1:0"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address port 70000", Req: to("127.0.0.1:70000"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address port not a number", Req: to("127.0.0.1:http"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address port negative", Req: to("127.0.0.1:-1"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address host empty", Req: to(":80"), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: send, Name: "address refused", Req: to(b.Refused), Code: codes.Unavailable, Reason: rRefused, Mention: b.Refused},
		{RPC: send, Name: "connection_id empty", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{}, Payload: badText("x")}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: send, Name: "connection_id malformed", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c 1"}, Payload: badText("x")}, Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: send, Name: "listener_id of 65 bytes", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: strings.Repeat("l", 65)}, Payload: badText("x")}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: send, Name: "address of 3 MiB", Req: to(strings.Repeat("h", 3<<20) + ":80"), Code: inv, Reason: rInvalid, Field: "address", Mention: "(3145731 bytes)"},
		{RPC: send, Name: "connection_id unknown", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c999"}, Payload: badText("x")}, Code: codes.NotFound, Reason: rNoConn, Mention: "c999"},
		{RPC: send, Name: "listener_id empty", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{}, Payload: badText("x")}, Code: inv, Reason: rInvalid, Field: "listener_id", Mention: "listener_id"},
		{RPC: send, Name: "listener_id unknown", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "nope"}, Payload: badText("x")}, Code: codes.NotFound, Reason: rNoListener, Mention: "nope"},

		// Send: await_reply.
		{RPC: send, Name: "await_reply with listener_id", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "keep"}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amFirst}}, Code: inv, Reason: rInvalid, Field: "await_reply", Mention: "await_reply"},
		{RPC: send, Name: "await_reply until close with listener_id", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: "keep"}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amUntil}}, Code: inv, Reason: rInvalid, Field: "await_reply", Mention: "await_reply"},
		{RPC: send, Name: "await_reply.framing with connection_id", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: b.ConnID}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmLine}}}, Code: inv, Reason: rInvalid, Field: "await_reply.framing", Mention: "await_reply.framing"},
		{RPC: send, Name: "await_reply.framing with FIRST_READ", Req: await(&tcpgatev1.AwaitReply{Mode: amFirst, Framing: &tcpgatev1.Framing{Mode: fmLine}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing", Mention: "await_reply.framing"},
		{RPC: send, Name: "await_reply.framing without a mode", Req: await(&tcpgatev1.AwaitReply{Framing: &tcpgatev1.Framing{Mode: fmLine}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing", Mention: "await_reply.framing"},
		{RPC: send, Name: "await_reply.mode 99", Req: await(&tcpgatev1.AwaitReply{Mode: 99}), Code: inv, Reason: rInvalid, Field: "await_reply.mode", Mention: "await_reply.mode"},
		{RPC: send, Name: "await_reply.mode 99 to a connection", Req: &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: b.ConnID}, Payload: badText("x"),
			AwaitReply: &tcpgatev1.AwaitReply{Mode: 99}}, Code: inv, Reason: rInvalid, Field: "await_reply.mode", Mention: "await_reply.mode"},
		{RPC: send, Name: "await_reply.max_bytes over 3 MiB", Req: await(&tcpgatev1.AwaitReply{Mode: amFirst, MaxBytes: maxFrame + 1}), Code: inv, Reason: rInvalid, Field: "await_reply.max_bytes", Mention: "await_reply.max_bytes"},
		{RPC: send, Name: "await_reply.framing delimiter mode without delimiter", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmDelim}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.delimiter", Mention: "await_reply.framing.delimiter"},
		{RPC: send, Name: "await_reply.framing mode 99", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: 99}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.mode", Mention: "await_reply.framing.mode"},
		{RPC: send, Name: "await_reply.framing prefix_bytes 3", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 3}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.prefix_bytes", Mention: "await_reply.framing.prefix_bytes"},
		{RPC: send, Name: "await_reply.framing fixed_size 0", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{Mode: fmFixed}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.fixed_size", Mention: "await_reply.framing.fixed_size"},
		{RPC: send, Name: "await_reply.framing max_frame_bytes over 3 MiB", Req: await(&tcpgatev1.AwaitReply{Mode: amFrame, Framing: &tcpgatev1.Framing{MaxFrameBytes: maxFrame + 1}}), Code: inv, Reason: rInvalid, Field: "await_reply.framing.max_frame_bytes", Mention: "await_reply.framing.max_frame_bytes"},
		{RPC: send, Name: "reply timeout", Req: &tcpgatev1.SendRequest{Target: badAddr(b.Silent), Payload: badText("x"), AwaitReply: &tcpgatev1.AwaitReply{Mode: amFirst},
			Timeout: durationpb.New(200 * time.Millisecond)}, Code: codes.DeadlineExceeded, Reason: rReplyTime, Mention: b.Silent},

		// Send: framed. To an address the payload is encoded with
		// await_reply.framing, whatever the mode; Silent reads whatever a
		// row that wrongly passed wrote.
		{RPC: send, Name: "framed to an address without await_reply.framing", Req: &tcpgatev1.SendRequest{Target: badAddr(b.Silent), Payload: badText("x"), Framed: true},
			Code: inv, Reason: rInvalid, Field: "framed", Mention: "await_reply.framing"},
		{RPC: send, Name: "framed line is fine", Req: framed(b.Silent, "x", nil, &tcpgatev1.Framing{Mode: fmLine}), Code: codes.OK},
		{RPC: send, Name: "framed line containing a newline", Req: framed(b.Silent, "a\nb", nil, &tcpgatev1.Framing{Mode: fmLine}),
			Code: inv, Reason: rInvalid, Field: "text", Mention: "newline"},
		{RPC: send, Name: "framed data containing the delimiter", Req: framed(b.Silent, "", []byte("a\r\nb"), &tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte("\r\n")}),
			Code: inv, Reason: rInvalid, Field: "data", Mention: "contains the delimiter"},
		{RPC: send, Name: "framed data ending with the start of the delimiter", Req: framed(b.Silent, "", []byte("a\r\n"), &tcpgatev1.Framing{Mode: fmDelim, Delimiter: []byte("\r\n\r\n")}),
			Code: inv, Reason: rInvalid, Field: "data", Mention: "start of the delimiter"},
		{RPC: send, Name: "framed line longer than max_frame_bytes", Req: framed(b.Silent, "hello", nil, &tcpgatev1.Framing{Mode: fmLine, MaxFrameBytes: 4}),
			Code: inv, Reason: rInvalid, Field: "text", Mention: "max_frame_bytes (4)"},
		{RPC: send, Name: "framed data of max_frame_bytes is fine", Req: framed(b.Silent, "", []byte("hell"), &tcpgatev1.Framing{Mode: fmLP, MaxFrameBytes: 4}), Code: codes.OK},
		{RPC: send, Name: "framed data longer than a 1-byte prefix says", Req: framed(b.Silent, "", make([]byte, 256), &tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 1}),
			Code: inv, Reason: rInvalid, Field: "data", Mention: "1-byte length prefix"},
		{RPC: send, Name: "framed data of 255 bytes fits a 1-byte prefix", Req: framed(b.Silent, "", make([]byte, 255), &tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 1}), Code: codes.OK},
		{RPC: send, Name: "framed data longer than a 2-byte prefix says", Req: framed(b.Silent, "", make([]byte, 1<<16), &tcpgatev1.Framing{Mode: fmLP, PrefixBytes: 2}),
			Code: inv, Reason: rInvalid, Field: "data", Mention: "2-byte length prefix"},
		{RPC: send, Name: "framed text not fixed_size long", Req: framed(b.Silent, "abc", nil, &tcpgatev1.Framing{Mode: fmFixed, FixedSize: 4}),
			Code: inv, Reason: rInvalid, Field: "text", Mention: "fixed_size"},

		// Send: timeout.
		{RPC: send, Name: "timeout negative", Req: timeout(durationpb.New(-time.Second)), Code: inv, Reason: rInvalid, Field: "timeout", Mention: "timeout"},
		{RPC: send, Name: "timeout nanos 1e9", Req: timeout(badDur(0, 1e9)), Code: inv, Reason: rInvalid, Field: "timeout", Mention: "timeout"},
		{RPC: send, Name: "timeout seconds and nanos of different signs", Req: timeout(badDur(1, -1)), Code: inv, Reason: rInvalid, Field: "timeout", Mention: "timeout"},
		{RPC: send, Name: "timeout seconds above 10000 years", Req: timeout(badDur(315576000001, 0)), Code: inv, Reason: rInvalid, Field: "timeout", Mention: "timeout"},

		// Send: payload size against server.Config.MaxSendBytes (1024 there).
		{RPC: send, Name: "payload of max_send_bytes is fine", Limits: true, Req: &tcpgatev1.SendRequest{Target: badAddr(b.FullAddr), Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 1024)}}, Code: codes.OK},
		{RPC: send, Name: "payload over max_send_bytes", Limits: true, Req: &tcpgatev1.SendRequest{Target: badAddr(b.FullAddr), Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 2000)}},
			Code: codes.ResourceExhausted, Reason: rLimit, Mention: "max_send_bytes"},
		{RPC: send, Name: "text over max_send_bytes", Limits: true, Req: &tcpgatev1.SendRequest{Target: badAddr(b.FullAddr), Payload: badText(strings.Repeat("é", 600))},
			Code: codes.ResourceExhausted, Reason: rLimit, Mention: "max_send_bytes"},

		// Connect: the wire's shape, then the engine's decisions, each
		// naming its field.
		{RPC: con, Name: "take_over without reconnect", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.TakeOver = true }), Code: inv, Reason: rInvalid, Field: "take_over", Mention: "take_over"},
		{RPC: con, Name: "node_id with a slash", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.NodeId = "a/b" }), Code: inv, Reason: rInvalid, Field: "node_id", Mention: "node_id"},
		{RPC: con, Name: "node_id of no node", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.NodeId = "elsewhere" }), Code: inv, Reason: rUnknownNode, Field: "node_id", Mention: "elsewhere"},
		{RPC: con, Name: "address without a port", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Address = "127.0.0.1" }), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: con, Name: "address port 0", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Address = "127.0.0.1:0" }), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: con, Name: "address empty", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Address = "" }), Code: inv, Reason: rInvalid, Field: "address", Mention: "address"},
		{RPC: con, Name: "connection_id with a slash", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.ConnectionId = "a/b" }), Code: inv, Reason: rInvalid, Field: "connection_id", Mention: "connection_id"},
		{RPC: con, Name: "connection_id taken by an accepted connection", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.ConnectionId = b.ConnID }),
			Code: codes.AlreadyExists, Reason: tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_EXISTS, Mention: b.ConnID},
		{RPC: con, Name: "framing delimiter mode without delimiter", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Framing = &tcpgatev1.Framing{Mode: fmDelim} }),
			Code: inv, Reason: rInvalid, Field: "framing.delimiter", Mention: "framing.delimiter"},
		{RPC: con, Name: "framing max_frame_bytes over 3 MiB", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Framing = &tcpgatev1.Framing{MaxFrameBytes: maxFrame + 1} }),
			Code: inv, Reason: rInvalid, Field: "framing.max_frame_bytes", Mention: "framing.max_frame_bytes"},
		{RPC: con, Name: "reconnect.initial_backoff 0", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Reconnect.InitialBackoff = durationpb.New(0) }),
			Code: inv, Reason: rInvalid, Field: "reconnect.initial_backoff", Mention: "reconnect.initial_backoff"},
		{RPC: con, Name: "reconnect.initial_backoff below 10ms", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Reconnect.InitialBackoff = durationpb.New(9 * time.Millisecond) }),
			Code: inv, Reason: rInvalid, Field: "reconnect.initial_backoff", Mention: "reconnect.initial_backoff"},
		{RPC: con, Name: "reconnect.initial_backoff negative", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Reconnect.InitialBackoff = durationpb.New(-time.Second) }),
			Code: inv, Reason: rInvalid, Field: "reconnect.initial_backoff", Mention: "reconnect.initial_backoff"},
		{RPC: con, Name: "reconnect.max_backoff below initial_backoff", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Reconnect.InitialBackoff, r.Reconnect.MaxBackoff = durationpb.New(time.Second), durationpb.New(500*time.Millisecond)
		}), Code: inv, Reason: rInvalid, Field: "reconnect.max_backoff", Mention: "reconnect.max_backoff"},
		{RPC: con, Name: "reconnect.max_backoff over an hour", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Reconnect.MaxBackoff = durationpb.New(2 * time.Hour) }),
			Code: inv, Reason: rInvalid, Field: "reconnect.max_backoff", Mention: "reconnect.max_backoff"},
		{RPC: con, Name: "heartbeat without an interval", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Heartbeat = hbText("ping", nil) }),
			Code: inv, Reason: rInvalid, Field: "heartbeat.interval", Mention: "heartbeat.interval"},
		{RPC: con, Name: "heartbeat interval below 10ms", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Heartbeat = hbText("ping", durationpb.New(time.Millisecond)) }),
			Code: inv, Reason: rInvalid, Field: "heartbeat.interval", Mention: "heartbeat.interval"},
		{RPC: con, Name: "heartbeat without a payload", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Heartbeat = &tcpgatev1.Heartbeat{Interval: durationpb.New(time.Second)}
		}),
			Code: inv, Reason: rInvalid, Field: "heartbeat.payload", Mention: "heartbeat"},
		{RPC: con, Name: "heartbeat timeout without expect", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Heartbeat = hbText("ping", durationpb.New(time.Second))
			r.Heartbeat.Timeout = durationpb.New(time.Second)
		}), Code: inv, Reason: rInvalid, Field: "heartbeat.timeout", Mention: "heartbeat.timeout"},
		{RPC: con, Name: "on_connect without a payload", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.OnConnect = &tcpgatev1.OnConnect{} }),
			Code: inv, Reason: rInvalid, Field: "on_connect.payload", Mention: "on_connect"},
		{RPC: con, Name: "on_connect text empty", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.OnConnect = ocText("") }),
			Code: inv, Reason: rInvalid, Field: "on_connect.text", Mention: "on_connect.text"},
		{RPC: con, Name: "on_connect timeout without expect", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.OnConnect = ocText("login")
			r.OnConnect.Timeout = durationpb.New(time.Second)
		}), Code: inv, Reason: rInvalid, Field: "on_connect.timeout", Mention: "on_connect.timeout"},
		{RPC: con, Name: "on_connect expect regex that does not compile", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.OnConnect = ocText("login")
			r.OnConnect.Expect = regex("(")
		}), Code: inv, Reason: rInvalid, Field: "on_connect.expect.regex", Mention: "on_connect.expect.regex"},
		{RPC: con, Name: "on_connect framed with a newline in a line framing", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Framing = &tcpgatev1.Framing{Mode: fmLine}
			r.OnConnect = ocText("a\nb")
			r.OnConnect.Framed = true
		}), Code: inv, Reason: rInvalid, Field: "on_connect.text", Mention: "on_connect.text"},
		{RPC: con, Name: "on_connect data over max_send_bytes", Limits: true, Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Address = b.FullAddr
			r.OnConnect = &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Data{Data: make([]byte, 1025)}}
		}), Code: inv, Reason: rInvalid, Field: "on_connect.data", Mention: "on_connect.data"},
		{RPC: con, Name: "tcp_user_timeout over an hour", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.TcpUserTimeout = durationpb.New(2 * time.Hour) }),
			Code: inv, Reason: rInvalid, Field: "tcp_user_timeout", Mention: "tcp_user_timeout"},
		{RPC: con, Name: "keep_alive.count over 127", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.KeepAlive = &tcpgatev1.TcpKeepAlive{Count: 128} }),
			Code: inv, Reason: rInvalid, Field: "keep_alive.count", Mention: "keep_alive.count"},
		{RPC: con, Name: "keep_alive.idle over 32767s", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.KeepAlive = &tcpgatev1.TcpKeepAlive{Idle: durationpb.New(32768 * time.Second)}
		}),
			Code: inv, Reason: rInvalid, Field: "keep_alive.idle", Mention: "keep_alive.idle"},
		{RPC: con, Name: "timeout negative", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Timeout = durationpb.New(-time.Second) }),
			Code: inv, Reason: rInvalid, Field: "timeout", Mention: "timeout"},
		{RPC: con, Name: "heartbeat expect with an empty prefix", Req: dial(func(r *tcpgatev1.ConnectRequest) {
			r.Heartbeat = hbText("ping", durationpb.New(time.Second))
			r.Heartbeat.Expect = &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: ""}}
		}), Code: inv, Reason: rInvalid, Field: "heartbeat.expect.prefix", Mention: "heartbeat.expect.prefix"},
		{RPC: con, Name: "idle_timeout negative", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.IdleTimeout = durationpb.New(-time.Second) }),
			Code: inv, Reason: rInvalid, Field: "idle_timeout", Mention: "idle_timeout"},
		{RPC: con, Name: "queue_while_down_bytes over the daemon's bound", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.QueueWhileDownBytes = 1 << 40 }),
			Code: inv, Reason: rInvalid, Field: "queue_while_down_bytes", Mention: "queue_while_down_bytes"},
		{RPC: con, Name: "tls with a CA that is no PEM", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Tls = &tcpgatev1.DialTLS{CaPem: "nonsense"} }),
			Code: inv, Reason: rInvalid, Field: "tls.ca_pem", Mention: "tls.ca_pem"},
		{RPC: con, Name: "refused with reconnect disabled", Req: dial(func(*tcpgatev1.ConnectRequest) {}),
			Code: codes.Unavailable, Reason: rRefused, Mention: b.Refused},
		{RPC: con, Name: "an IP the policy denies", Req: dial(func(r *tcpgatev1.ConnectRequest) { r.Address = "169.254.169.254:80"; r.Reconnect = nil }),
			Code: codes.PermissionDenied, Reason: tcpgatev1.ErrorReason_ERROR_REASON_POLICY_DENIED, Mention: "169.254.169.254"},

		// Reload: this gateway runs without --config.
		{RPC: "Reload", Name: "without a config file", Req: &tcpgatev1.ReloadRequest{},
			Code: codes.FailedPrecondition, Reason: tcpgatev1.ErrorReason_ERROR_REASON_NO_CONFIG, Mention: "serve --config"},

		// Subscribe: the error arrives on the first Recv.
		{RPC: sub, Name: "kinds UNSPECIFIED", Req: kinds(tcpgatev1.EventKind_EVENT_KIND_UNSPECIFIED), Code: inv, Reason: rInvalid, Field: "kinds[0]", Mention: "kinds[0]"},
		{RPC: sub, Name: "kinds EVENTS_DROPPED is allowed", Req: kinds(tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED), Code: codes.OK},
		{RPC: sub, Name: "kinds 99 after a good one", Req: kinds(ekData, 99), Code: inv, Reason: rInvalid, Field: "kinds[1]", Mention: "kinds[1]"},
		{RPC: sub, Name: "kinds -1", Req: kinds(-1), Code: inv, Reason: rInvalid, Field: "kinds[0]", Mention: "kinds[0]"},
		{RPC: sub, Name: "slow_consumer 9", Req: &tcpgatev1.SubscribeRequest{SlowConsumer: 9}, Code: inv, Reason: rInvalid, Field: "slow_consumer", Mention: "slow_consumer"},
		{RPC: sub, Name: "slow_consumer -1", Req: &tcpgatev1.SubscribeRequest{SlowConsumer: -1}, Code: inv, Reason: rInvalid, Field: "slow_consumer", Mention: "slow_consumer"},
		{RPC: sub, Name: "kinds DATA is fine", Req: kinds(ekData), Code: codes.OK},
		{RPC: sub, Name: "origins UNSPECIFIED", Req: &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oUnspec}}, Code: inv, Reason: rInvalid, Field: "origins[0]", Mention: "origins[0]"},
		{RPC: sub, Name: "origins 99 after a good one", Req: &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oOutbound, 99}}, Code: inv, Reason: rInvalid, Field: "origins[1]", Mention: "origins[1]"},
		{RPC: sub, Name: "origins -1", Req: &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{-1}}, Code: inv, Reason: rInvalid, Field: "origins[0]", Mention: "origins[0]"},
		{RPC: sub, Name: "origins both are fine", Req: &tcpgatev1.SubscribeRequest{Origins: []tcpgatev1.Origin{oAccepted, oOutbound}}, Code: codes.OK},
		{RPC: sub, Name: "since_sequence in the future", Req: &tcpgatev1.SubscribeRequest{SinceSequence: 1 << 63}, Code: codes.OutOfRange, Reason: rAhead, Field: "since_sequence", Mention: "since_sequence"},
		{RPC: sub, Name: "1025 listener_ids", Req: &tcpgatev1.SubscribeRequest{ListenerIds: ManyIDs(1025, 8)}, Code: inv, Reason: rFilter, Mention: "listener_ids has 1025 ids, at most 1024"},
		{RPC: sub, Name: "a connection_id of 65 bytes", Req: &tcpgatev1.SubscribeRequest{ConnectionIds: ManyIDs(2, 65)}, Code: inv, Reason: rInvalid, Field: "connection_ids[0]", Mention: "connection_ids[0]: must be 1 to 64"},
		{RPC: sub, Name: "a malformed listener_id after a good one", Req: &tcpgatev1.SubscribeRequest{ListenerIds: []string{"keep", "a/b"}}, Code: inv, Reason: rInvalid, Field: "listener_ids[1]", Mention: "listener_ids[1]"},
		{RPC: sub, Name: "an empty connection_id", Req: &tcpgatev1.SubscribeRequest{ConnectionIds: []string{""}}, Code: inv, Reason: rInvalid, Field: "connection_ids[0]", Mention: "connection_ids[0]"},
		{RPC: sub, Name: "1024 ids of 64 bytes are fine", Req: &tcpgatev1.SubscribeRequest{ListenerIds: ManyIDs(1024, 64), ConnectionIds: ManyIDs(1024, 64)}, Code: codes.OK},
		{RPC: sub, Name: "max_subscribers reached", Limits: true, Req: &tcpgatev1.SubscribeRequest{}, Code: codes.ResourceExhausted, Reason: rLimit, Mention: "max_subscribers"},

		// Handle: the first request's registration; the error ends the
		// stream. Only one row succeeds, so that no row meets another's
		// group.
		{RPC: hdl, Name: "no registration", Req: &tcpgatev1.HandleRequest{}, Code: inv, Reason: rInvalid, Field: "registration", Mention: "registration"},
		{RPC: hdl, Name: "nothing to handle", Req: hreg(&tcpgatev1.HandleRegistration{Group: "g"}), Code: inv, Reason: rInvalid, Field: "registration.listener_ids", Mention: "registration.listener_ids"},
		{RPC: hdl, Name: "a malformed listener id after a good one", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep", "a/b"}}), Code: inv, Reason: rInvalid, Field: "registration.listener_ids[1]", Mention: "registration.listener_ids[1]"},
		{RPC: hdl, Name: "a listener that does not run", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep", "nope"}}), Code: codes.NotFound, Reason: rNoListener, Field: "registration.listener_ids[1]", Mention: "nope"},
		{RPC: hdl, Name: "an accepted connection is no outbound one", Req: hreg(&tcpgatev1.HandleRegistration{ConnectionIds: []string{b.ConnID}}), Code: codes.NotFound, Reason: rNoConn, Field: "registration.connection_ids[0]", Mention: b.ConnID},
		{RPC: hdl, Name: "a group with a space", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep"}, Group: "a b"}), Code: inv, Reason: rInvalid, Field: "registration.group", Mention: "registration.group"},
		{RPC: hdl, Name: "max_in_flight 4097", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep"}, MaxInFlight: 4097}), Code: inv, Reason: rInvalid, Field: "registration.max_in_flight", Mention: "registration.max_in_flight"},
		{RPC: hdl, Name: "payload_format 9", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep"}, PayloadFormat: 9}), Code: inv, Reason: rInvalid, Field: "registration.payload_format", Mention: "registration.payload_format"},
		{RPC: hdl, Name: "max_in_flight 4096 is fine", Req: hreg(&tcpgatev1.HandleRegistration{ListenerIds: []string{"keep"}, Group: "bad-input", MaxInFlight: 4096}), Code: codes.OK},
	}
}

func hreg(r *tcpgatev1.HandleRegistration) *tcpgatev1.HandleRequest {
	return &tcpgatev1.HandleRequest{Registration: r}
}

// WantEveryMethod fails the test for every method of the GatewayService
// that seen lacks (by name, "StartListener"), as "no case for ...": a
// method added to the service needs its rows.
func WantEveryMethod(t testing.TB, seen map[string]bool) {
	t.Helper()
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
}

// CheckDetails returns what is wrong with the details of an error that
// answered r, or "": the ErrorInfo reason and its "field" must be r's, and
// the BadRequest field violations must name r.Field alone (an
// INVALID_ARGUMENT always carries one; other reasons may).
func (r BadInput) CheckDetails(reason tcpgatev1.ErrorReason, field string, violations []string) string {
	if r.Code == codes.OK {
		return ""
	}
	switch {
	case reason != r.Reason:
		return fmt.Sprintf("reason %v, want %v", reason, r.Reason)
	case field != r.Field:
		return fmt.Sprintf("ErrorInfo field %q, want %q", field, r.Field)
	case reason == tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT || len(violations) > 0:
		if len(violations) != 1 || violations[0] != r.Field {
			return fmt.Sprintf("field violations %q, want [%q]", violations, r.Field)
		}
	}
	return ""
}
