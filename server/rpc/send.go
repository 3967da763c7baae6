package rpc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"regexp"
	"strconv"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// Send: its validation, its targets and the reply it awaits.

// DefaultSendTimeout bounds a Send whose timeout is unset: long enough for a
// slow peer's reply, short enough that a dead one does not pin a caller.
const DefaultSendTimeout = 30 * time.Second

// DefaultMaxSendBytes bounds a Send payload when Config.MaxSendBytes is 0:
// gRPC's own default message limit, so the bound a client meets is the same
// whether it comes from gRPC or from tcpgate.
const DefaultMaxSendBytes = 4 << 20

var awaitModes = map[tcpgatev1.AwaitMode]await.Mode{
	tcpgatev1.AwaitMode_AWAIT_MODE_UNSPECIFIED: await.None,
	tcpgatev1.AwaitMode_AWAIT_MODE_NONE:        await.None,
	tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ:  await.FirstRead,
	tcpgatev1.AwaitMode_AWAIT_MODE_FRAME:       await.Frame,
	tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE: await.UntilClose,
}

// localSend is Send on this node (peers.go routes it).
func (s *Service) localSend(ctx context.Context, req *tcpgatev1.SendRequest) (*tcpgatev1.SendResponse, error) {
	var payload []byte
	// payloadField names the payload in errors about its encoding.
	var payloadField string
	switch p := req.GetPayload().(type) {
	case *tcpgatev1.SendRequest_Text:
		payload, payloadField = []byte(p.Text), "text"
	case *tcpgatev1.SendRequest_Data:
		payload, payloadField = p.Data, "data"
	default:
		return nil, invalid("payload", "one of text or data is required")
	}
	if len(payload) > s.cfg.MaxSendBytes {
		return nil, LimitReached("--max-send-bytes", int64(s.cfg.MaxSendBytes), "payload: %d bytes exceed max_send_bytes (%d, --max-send-bytes)", len(payload), s.cfg.MaxSendBytes)
	}
	timeout, err := durationFromProto("timeout", req.GetTimeout(), DefaultSendTimeout)
	if err != nil {
		return nil, err
	}
	aw := req.GetAwaitReply()
	mode, ok := awaitModes[aw.GetMode()]
	if !ok {
		return nil, invalid("await_reply.mode", "unknown value %d", int32(aw.GetMode()))
	}
	maxReply := int(aw.GetMaxBytes())
	if maxReply > s.cfg.MaxReplyBytes {
		return nil, invalidLimit("await_reply.max_bytes", "--max-reply-bytes", int64(s.cfg.MaxReplyBytes), "must be at most %d (--max-reply-bytes), got %d", s.cfg.MaxReplyBytes, maxReply)
	}
	if maxReply == 0 {
		maxReply = min(defaultReplyBytes, s.cfg.MaxReplyBytes)
	}
	match, err := replyMatch("await_reply.match", aw.GetMatch())
	if err != nil {
		return nil, err
	}
	closeOnTimeout := false
	switch aw.GetOnTimeout() {
	case tcpgatev1.OnTimeout_ON_TIMEOUT_UNSPECIFIED, tcpgatev1.OnTimeout_ON_TIMEOUT_KEEP_OPEN:
	case tcpgatev1.OnTimeout_ON_TIMEOUT_CLOSE:
		closeOnTimeout = true
	default:
		return nil, invalid("await_reply.on_timeout", "unknown value %d", int32(aw.GetOnTimeout()))
	}
	if mode == await.None {
		switch {
		case match != nil:
			return nil, invalid("await_reply.match", "only with an await_reply.mode that waits for a reply")
		case closeOnTimeout:
			return nil, invalid("await_reply.on_timeout", "only with an await_reply.mode that waits for a reply")
		}
	}
	replyFormat, err := formatFromProto("await_reply.payload_format", aw.GetPayloadFormat())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	switch t := req.GetTarget().(type) {
	case *tcpgatev1.SendRequest_Address:
		if err := checkAddress(t.Address); err != nil {
			return nil, err
		}
		fc, err := framingFromProto("await_reply.framing", aw.GetFraming(), s.cfg.MaxReplyBytes)
		if err != nil {
			return nil, err
		}
		if req.GetFramed() && aw.GetFraming() == nil {
			return nil, invalid("framed", "with address, await_reply.framing is required: it is the framing the payload is encoded with")
		}
		if aw.GetFraming() != nil && mode != await.Frame && !req.GetFramed() {
			return nil, invalid("await_reply.framing", "only used with AWAIT_MODE_FRAME or framed")
		}
		if match != nil && mode != await.Frame {
			return nil, invalid("await_reply.match", "with address, only used with AWAIT_MODE_FRAME: other modes return bytes as they come, not frames")
		}
		if closeOnTimeout {
			return nil, invalid("await_reply.on_timeout", "only with connection_id: a send to an address closes its connection anyway")
		}
		host, _, _ := net.SplitHostPort(t.Address)
		tlsCfg, err := s.dialTLS(ctx, req.GetTls(), host)
		if err != nil {
			return nil, err
		}
		// The dialer resolves, checks the policy and dials in this one call.
		res, err := s.cfg.Dialer.Send(ctx, dialer.Request{
			Address: t.Address, Payload: payload, Framed: req.GetFramed(), Await: mode, Framing: fc, Match: match, MaxReply: maxReply, TLS: tlsCfg,
		})
		if err != nil {
			return nil, s.sendStatus(err, payloadField)
		}
		resp := &tcpgatev1.SendResponse{BytesWritten: uint64(res.BytesWritten), ConnectionsReached: 1}
		if mode != await.None {
			resp.Reply = replyToProto(res.Reply, replyFormat)
		}
		return resp, nil

	case *tcpgatev1.SendRequest_ConnectionId:
		if err := checkID("connection_id", t.ConnectionId); err != nil {
			return nil, err
		}
		if req.GetTls() != nil {
			return nil, invalid("tls", "only with address: a connection already is what its listener or Connect made it")
		}
		if aw.GetFraming() != nil {
			return nil, invalid("await_reply.framing", "not used with connection_id: replies are cut by the connection's framing (its listener's, or its Connect's)")
		}
		cAw := conn.Await{Mode: mode, MaxBytes: maxReply, Match: match, CloseOnTimeout: closeOnTimeout}
		// The registry finds the connection whatever its origin; a managed
		// outbound one that is down queues the send or refuses it.
		reply, written, err := s.cfg.Connections.Send(ctx, t.ConnectionId, payload, req.GetFramed(), cAw)
		if err != nil {
			return nil, s.sendStatus(err, payloadField)
		}
		resp := &tcpgatev1.SendResponse{BytesWritten: uint64(written), ConnectionsReached: 1}
		if mode != await.None {
			resp.Reply = replyToProto(reply, replyFormat)
		}
		return resp, nil

	case *tcpgatev1.SendRequest_ListenerId:
		if err := checkID("listener_id", t.ListenerId); err != nil {
			return nil, err
		}
		if req.GetTls() != nil {
			return nil, invalid("tls", "only with address")
		}
		if mode != await.None {
			return nil, invalid("await_reply", "not allowed with listener_id: a broadcast has no single reply")
		}
		broadcast := s.cfg.Connections.Broadcast
		if req.GetFramed() {
			broadcast = s.cfg.Listeners.BroadcastFrame
		}
		n, reached, err := broadcast(ctx, t.ListenerId, payload)
		if err != nil {
			return nil, s.sendStatus(err, payloadField)
		}
		return &tcpgatev1.SendResponse{BytesWritten: n, ConnectionsReached: uint32(reached)}, nil
	}
	return nil, invalid("target", "one of address, connection_id or listener_id is required")
}

// sendStatus is status for a Send's errors: a payload its framing cannot
// encode (the engine's *framing.EncodeError) names the payload's field,
// text or data, with the engine's reason.
func (s *Service) sendStatus(err error, payloadField string) error {
	var enc *framing.EncodeError
	if errors.As(err, &enc) {
		return invalid(payloadField, "cannot be sent framed (%d bytes, %s framing): %s", enc.Size, enc.Mode, enc.Reason)
	}
	return s.status(err)
}

// maxMatchRegex bounds await_reply.match.regex: RE2 compiles in time and
// memory linear in the pattern, and a correlation pattern is short.
const maxMatchRegex = 1024

// replyMatch translates a ReplyMatch (field names it in errors:
// "await_reply.match", "on_connect.expect") into the test a frame must
// pass to answer; nil when unset.
func replyMatch(field string, m *tcpgatev1.ReplyMatch) (func([]byte) bool, error) {
	if m == nil {
		return nil, nil
	}
	switch r := m.GetRule().(type) {
	case *tcpgatev1.ReplyMatch_Prefix:
		if r.Prefix == "" {
			return nil, invalid(field+".prefix", "empty: it would match every frame; leave match unset for that")
		}
		p := []byte(r.Prefix)
		return func(f []byte) bool { return bytes.HasPrefix(f, p) }, nil
	case *tcpgatev1.ReplyMatch_PrefixData:
		if len(r.PrefixData) == 0 {
			return nil, invalid(field+".prefix_data", "empty: it would match every frame; leave match unset for that")
		}
		p := bytes.Clone(r.PrefixData)
		return func(f []byte) bool { return bytes.HasPrefix(f, p) }, nil
	case *tcpgatev1.ReplyMatch_Regex:
		switch {
		case r.Regex == "":
			return nil, invalid(field+".regex", "empty: it would match every frame; leave match unset for that")
		case len(r.Regex) > maxMatchRegex:
			return nil, invalid(field+".regex", "%d bytes, more than %d", len(r.Regex), maxMatchRegex)
		}
		re, err := regexp.Compile(r.Regex)
		if err != nil {
			return nil, invalid(field+".regex", "%v", err)
		}
		return re.Match, nil
	}
	return nil, invalid(field, "one of prefix, prefix_data or regex is required")
}

func checkAddress(addr string) error { return checkAddressField("address", addr) }

// checkAddressField checks addr, the field named field, as a host:port to
// dial.
func checkAddressField(field, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return invalid(field, "must be host:port, got %s", Quote(addr))
	}
	if host == "" {
		return invalid(field, "host is empty in %s", Quote(addr))
	}
	if len(host) > 253 {
		// The engine names the address in its errors; a longer host is no
		// host name anyway.
		return invalid(field, "host longer than 253 bytes in %s", Quote(addr))
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return invalid(field, "port must be 1 to 65535 in %s", Quote(addr))
	}
	return nil
}
