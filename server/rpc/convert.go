package rpc

import (
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// MaxFrameLimit is the ceiling of --max-frame-bytes and --max-reply-bytes
// (and so of max_frame_bytes and await_reply.max_bytes): a frame travels in
// one event and a reply in one response, and both must fit the 4 MiB
// message limit that gRPC clients apply by default.
const MaxFrameLimit = 3 << 20

// defaultReplyBytes is await_reply.max_bytes when 0 (at most the limit).
const defaultReplyBytes = 1 << 20

var framingModes = map[tcpgatev1.FramingMode]framing.Mode{
	tcpgatev1.FramingMode_FRAMING_MODE_UNSPECIFIED:   framing.Raw,
	tcpgatev1.FramingMode_FRAMING_MODE_RAW:           framing.Raw,
	tcpgatev1.FramingMode_FRAMING_MODE_LINE:          framing.Line,
	tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER:     framing.Delimiter,
	tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX: framing.LengthPrefix,
	tcpgatev1.FramingMode_FRAMING_MODE_FIXED:         framing.Fixed,
}

// framingFromProto validates and normalizes a Framing, whose frames may be
// at most limit bytes (--max-frame-bytes); an unset max_frame_bytes is the
// framing package's default or limit, whichever is smaller. field prefixes the
// names in errors ("framing", "await_reply.framing").
func framingFromProto(field string, f *tcpgatev1.Framing, limit int) (framing.Config, error) {
	maxFrame := int(f.GetMaxFrameBytes())
	if maxFrame == 0 {
		maxFrame = min(framing.DefaultMaxFrameBytes, limit)
	}
	if f == nil {
		return framing.Config{MaxFrameBytes: maxFrame}.Normalize()
	}
	mode, ok := framingModes[f.GetMode()]
	if !ok {
		return framing.Config{}, invalid(field+".mode", "unknown value %d", int32(f.GetMode()))
	}
	if f.GetMaxFrameBytes() > uint32(limit) {
		return framing.Config{}, invalidLimit(field+".max_frame_bytes", "--max-frame-bytes", int64(limit), "must be at most %d (--max-frame-bytes), got %d", limit, f.GetMaxFrameBytes())
	}
	if f.GetFixedSize() > uint32(limit) {
		return framing.Config{}, invalidLimit(field+".fixed_size", "--max-frame-bytes", int64(limit), "must be at most %d (--max-frame-bytes), got %d", limit, f.GetFixedSize())
	}
	c, err := framing.Config{
		Mode:          mode,
		Delimiter:     f.GetDelimiter(),
		PrefixBytes:   int(f.GetPrefixBytes()),
		LittleEndian:  f.GetLittleEndian(),
		FixedSize:     int(f.GetFixedSize()),
		MaxFrameBytes: maxFrame,
	}.Normalize()
	if err != nil {
		// Normalize's error names the framing's field; say where the
		// framing sits.
		var ce *framing.ConfigError
		if errors.As(err, &ce) {
			return framing.Config{}, invalid(ce.Under(field).Path(), "%s", ce.Reason)
		}
		return framing.Config{}, invalid(field, "%v", err)
	}
	return c, nil
}

func framingToProto(c framing.Config) *tcpgatev1.Framing {
	var mode tcpgatev1.FramingMode
	for k, v := range framingModes {
		if v == c.Mode && k != tcpgatev1.FramingMode_FRAMING_MODE_UNSPECIFIED {
			mode = k
		}
	}
	f := &tcpgatev1.Framing{Mode: mode, MaxFrameBytes: uint32(c.MaxFrameBytes)}
	switch c.Mode {
	case framing.Delimiter:
		f.Delimiter = c.Delimiter
	case framing.LengthPrefix:
		f.PrefixBytes = uint32(c.PrefixBytes)
		f.LittleEndian = c.LittleEndian
	case framing.Fixed:
		f.FixedSize = uint32(c.FixedSize)
	}
	return f
}

func autoReplyToProto(a conn.AutoReply) *tcpgatev1.AutoReply {
	switch a.Mode {
	case conn.Echo:
		return &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}
	case conn.Fixed:
		r := &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED}
		if utf8.Valid(a.Payload) {
			r.Payload = &tcpgatev1.AutoReply_Text{Text: string(a.Payload)}
		} else {
			r.Payload = &tcpgatev1.AutoReply_Data{Data: a.Payload}
		}
		return r
	}
	return &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE}
}

var listenerStates = map[listener.State]tcpgatev1.ListenerState{
	listener.Listening: tcpgatev1.ListenerState_LISTENER_STATE_LISTENING,
	listener.Draining:  tcpgatev1.ListenerState_LISTENER_STATE_DRAINING,
	listener.Stopped:   tcpgatev1.ListenerState_LISTENER_STATE_STOPPED,
}

func listenerToProto(i listener.Info) *tcpgatev1.Listener {
	l := &tcpgatev1.Listener{
		ListenerId:        i.ID,
		Address:           i.Address,
		State:             listenerStates[i.State],
		Source:            sources[i.Source],
		Framing:           framingToProto(i.Framing),
		AutoReply:         repliesToProto(replies{fallback: i.AutoReply, rules: i.Rules, handlerTimeout: i.HandlerTimeout, handlerTimeoutClose: i.HandlerTimeoutClose}),
		OnConnect:         bannerToProto(i.Banner),
		ConnectionsActive: uint32(i.ConnectionsActive),
		ConnectionsTotal:  i.ConnectionsTotal,
		BytesIn:           i.BytesIn,
		BytesOut:          i.BytesOut,
		FramesIn:          i.FramesIn,
		FramesOut:         i.FramesOut,
		CreatedAt:         timestamppb.New(i.CreatedAt),
		MaxConnections:    uint32(i.MaxConnections),
		Tls:               i.TLS != nil,
		MutualTls:         i.TLS != nil && i.TLS.ClientAuth == tls.RequireAndVerifyClientCert,
		NodeId:            i.Node,
		EveryNode:         i.EveryNode,
	}
	if i.IdleTimeout > 0 {
		l.IdleTimeout = durationpb.New(i.IdleTimeout)
	}
	if i.HalfCloseTimeout > 0 {
		l.HalfCloseTimeout = durationpb.New(i.HalfCloseTimeout)
	}
	l.Forward = forwardToProto(i.Forward)
	l.ProxyProtocol = proxyModes[i.ProxyProtocol]
	return l
}

// proxyModes are the listener's PROXY protocol modes on the wire.
var proxyModes = map[proxyproto.Mode]tcpgatev1.ProxyProtocol{
	proxyproto.None: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_UNSPECIFIED,
	proxyproto.V1:   tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1,
	proxyproto.V2:   tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2,
	proxyproto.Any:  tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_ANY,
}

// proxyFromProto translates a StartListenerRequest's proxy_protocol.
func proxyFromProto(p tcpgatev1.ProxyProtocol) (proxyproto.Mode, error) {
	for m, w := range proxyModes {
		if w == p {
			return m, nil
		}
	}
	return proxyproto.None, invalid("proxy_protocol", "unknown value %d: use PROXY_PROTOCOL_V1, PROXY_PROTOCOL_V2 or PROXY_PROTOCOL_ANY, or leave it unset for none", int32(p))
}

// forwardToProto reports a forwarding listener's target: its address and,
// with TLS, the server name it verifies and whether it skips verifying;
// never certificates or keys.
func forwardToProto(f *listener.Forward) *tcpgatev1.Forward {
	if f == nil {
		return nil
	}
	out := &tcpgatev1.Forward{Address: f.Address}
	if f.TLS != nil {
		out.Tls = &tcpgatev1.DialTLS{ServerName: f.TLS.ServerName, InsecureSkipVerify: f.TLS.InsecureSkipVerify}
	}
	return out
}

func connToProto(c registry.Info) *tcpgatev1.Connection {
	return &tcpgatev1.Connection{
		ConnectionId:  c.ID,
		ListenerId:    c.ListenerID,
		State:         connStates[c.State],
		Origin:        origins[c.Origin],
		RemoteAddress: c.RemoteAddr,
		LocalAddress:  c.LocalAddr,
		PeerSubject:   c.PeerSubject,
		OpenedAt:      timestamppb.New(c.OpenedAt),
		BytesIn:       c.BytesIn,
		BytesOut:      c.BytesOut,
		FramesIn:      c.FramesIn,
		FramesOut:     c.FramesOut,
		Address:       c.Address,
		Generation:    c.Generation,
		LastError:     c.LastError,
		Attempts:      c.Attempts,
		NextAttemptAt: timestampOrNil(c.NextAttemptAt),
		Source:        connSource(c.Declared),
		NodeId:        c.Node,
	}
}

// connSource is a connection's source: SOURCE_CONFIG for an outbound
// connection the config file declares, SOURCE_API for every other.
func connSource(declared bool) tcpgatev1.Source {
	if declared {
		return tcpgatev1.Source_SOURCE_CONFIG
	}
	return tcpgatev1.Source_SOURCE_API
}

// timestampOrNil leaves a zero time unset.
func timestampOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var sources = map[listener.Source]tcpgatev1.Source{
	listener.SourceAPI:    tcpgatev1.Source_SOURCE_API,
	listener.SourceConfig: tcpgatev1.Source_SOURCE_CONFIG,
}

// origins translates a connection's origin; OriginNone, on events that
// concern no connection, is left unset.
var origins = map[event.Origin]tcpgatev1.Origin{
	event.Accepted: tcpgatev1.Origin_ORIGIN_ACCEPTED,
	event.Outbound: tcpgatev1.Origin_ORIGIN_OUTBOUND,
}

// originsFromProto is the origins a filter names, field being the list's
// name: UNSPECIFIED or a value the API does not define is InvalidArgument
// naming the element.
func originsFromProto(field string, list []tcpgatev1.Origin) ([]event.Origin, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]event.Origin, 0, min(len(list), len(origins)))
	for i, o := range list {
		var eo event.Origin
		for k, v := range origins {
			if v == o {
				eo = k
			}
		}
		if eo == event.OriginNone {
			return nil, invalid(fmt.Sprintf("%s[%d]", field, i), "%s is not an origin to filter on: ORIGIN_ACCEPTED or ORIGIN_OUTBOUND", o)
		}
		if !slices.Contains(out, eo) {
			out = append(out, eo)
		}
	}
	return out, nil
}

var eventKinds = map[event.Kind]tcpgatev1.EventKind{
	event.ListenerStarted:  tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED,
	event.ListenerStopped:  tcpgatev1.EventKind_EVENT_KIND_LISTENER_STOPPED,
	event.ConnectionOpened: tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED,
	event.Data:             tcpgatev1.EventKind_EVENT_KIND_DATA,
	event.ConnectionClosed: tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	event.EventsDropped:    tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED,
	event.StreamStarted:    tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED,
	// The markers are never published: the hub's filter takes their kinds
	// and matches nothing with them.
	event.IncarnationChanged: tcpgatev1.EventKind_EVENT_KIND_INCARNATION_CHANGED,
	event.ReconnectScheduled: tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED,
	event.ListenerUpdated:    tcpgatev1.EventKind_EVENT_KIND_LISTENER_UPDATED,
	event.EventsLost:         tcpgatev1.EventKind_EVENT_KIND_EVENTS_LOST,
}

func kindFromProto(k tcpgatev1.EventKind) (event.Kind, bool) {
	for ek, pk := range eventKinds {
		if pk == k {
			return ek, true
		}
	}
	return event.KindUnspecified, false
}

var closeReasons = map[event.CloseReason]tcpgatev1.CloseReason{
	event.ReasonPeerClosed:         tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED,
	event.ReasonPeerReset:          tcpgatev1.CloseReason_CLOSE_REASON_PEER_RESET,
	event.ReasonFrameTooLarge:      tcpgatev1.CloseReason_CLOSE_REASON_FRAME_TOO_LARGE,
	event.ReasonIdleTimeout:        tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT,
	event.ReasonListenerStopped:    tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED,
	event.ReasonClosedByAPI:        tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API,
	event.ReasonReadError:          tcpgatev1.CloseReason_CLOSE_REASON_READ_ERROR,
	event.ReasonWriteError:         tcpgatev1.CloseReason_CLOSE_REASON_WRITE_ERROR,
	event.ReasonLimitReached:       tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED,
	event.ReasonShutdown:           tcpgatev1.CloseReason_CLOSE_REASON_SHUTDOWN,
	event.ReasonTLSHandshake:       tcpgatev1.CloseReason_CLOSE_REASON_TLS_HANDSHAKE_FAILED,
	event.ReasonReplyTimeout:       tcpgatev1.CloseReason_CLOSE_REASON_REPLY_TIMEOUT,
	event.ReasonHeartbeatFailed:    tcpgatev1.CloseReason_CLOSE_REASON_HEARTBEAT_FAILED,
	event.ReasonOnConnectFailed:    tcpgatev1.CloseReason_CLOSE_REASON_ON_CONNECT_FAILED,
	event.ReasonReconnectGaveUp:    tcpgatev1.CloseReason_CLOSE_REASON_RECONNECT_GAVE_UP,
	event.ReasonForwardFailed:      tcpgatev1.CloseReason_CLOSE_REASON_FORWARD_FAILED,
	event.ReasonClosedByRule:       tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_RULE,
	event.ReasonHandlerTimeout:     tcpgatev1.CloseReason_CLOSE_REASON_HANDLER_TIMEOUT,
	event.ReasonClosedByHandler:    tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_HANDLER,
	event.ReasonNodeLost:           tcpgatev1.CloseReason_CLOSE_REASON_NODE_LOST,
	event.ReasonProxyHeaderInvalid: tcpgatev1.CloseReason_CLOSE_REASON_PROXY_HEADER_INVALID,
}

var policies = map[tcpgatev1.SlowConsumerPolicy]hub.Policy{
	tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_UNSPECIFIED:  hub.DropOldest,
	tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST:  hub.DropOldest,
	tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT:   hub.Disconnect,
	tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE: hub.Backpressure,
}

// eventToProto fills dst from e with its payload as f says, overwriting
// every field, so a batch's messages can be reused across batches.
// Subscribe does not call it: Codec writes the same bytes straight from
// the event (codec.go), and codec_test.go holds it to this function's
// result; the REST stream's JSON (eventjson.go) is held to protojson's of
// it.
func eventToProto(dst *tcpgatev1.Event, e *event.Event, f payloadFormat) {
	ts := dst.Time
	if ts == nil {
		ts = new(timestamppb.Timestamp)
	}
	ts.Seconds, ts.Nanos = e.Time.Unix(), int32(e.Time.Nanosecond())
	dst.Sequence = e.Sequence
	dst.Time = ts
	dst.Kind = eventKinds[e.Kind]
	dst.ListenerId = e.ListenerID
	dst.ConnectionId = e.ConnectionID
	dst.RemoteAddress = e.RemoteAddr
	dst.LocalAddress = e.LocalAddr
	data, text := eventFields(f, e)
	dst.Data, dst.Text = nil, ""
	if data {
		dst.Data = e.Data
	}
	if text {
		dst.Text, _ = e.Text()
	}
	dst.CloseReason = closeReasons[e.CloseReason]
	dst.Dropped = e.Dropped
	dst.PeerSubject = e.PeerSubject
	dst.Partial = e.Partial
	dst.Origin = origins[e.Origin]
	dst.Header = headerToProto(e.Header)
	dst.Direction = tcpgatev1.Direction(direction(e))
	dst.Generation = e.Generation
	dst.Attempt = e.Attempt
	dst.Delay = nil
	if e.Delay != 0 {
		dst.Delay = durationpb.New(e.Delay)
	}
	dst.Error = e.Error
	dst.TargetCloseReason = closeReasons[e.TargetReason]
	dst.NodeId = e.Node
}

var directions = map[event.Direction]tcpgatev1.Direction{
	event.Received: tcpgatev1.Direction_DIRECTION_RECEIVED,
	event.Sent:     tcpgatev1.Direction_DIRECTION_SENT,
}

// headerToProto translates a stream's header; nil stays nil.
func headerToProto(h *event.Header) *tcpgatev1.ResponseHeader {
	if h == nil {
		return nil
	}
	return &tcpgatev1.ResponseHeader{Incarnation: h.Incarnation, NodeId: h.Node, LastSequence: h.LastSequence}
}

func durationFromProto(field string, d *durationpb.Duration, def time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, "%v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, invalid(field, "must not be negative, got %s", v)
	}
	if v == 0 {
		return def, nil
	}
	return v, nil
}
