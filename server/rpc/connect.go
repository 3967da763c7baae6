package rpc

import (
	"context"
	"net"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// Connect: managed outbound connections. The engine (package outbound)
// decides their defaults, bounds and backoff floor; this file checks the
// wire shape and translates.

// Outbound is what the service calls of the managed outbound connections
// (outbound.Manager).
type Outbound interface {
	Connect(ctx context.Context, spec outbound.Spec) (registry.Info, error)
}

// localConnect is Connect on this node (peers.go routes it).
func (s *Service) localConnect(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.ConnectResponse, error) {
	spec, err := s.connectSpec(ctx, req)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Outbound.Connect(ctx, spec)
	if err != nil {
		return nil, s.status(err)
	}
	if s.cfg.State != nil {
		if err := s.save(ctx, "connection "+info.ID+" made", s.cfg.State.PutConnection(req, info.ID)); err != nil {
			return nil, err
		}
	}
	return &tcpgatev1.ConnectResponse{Connection: connToProto(info), Header: s.header()}, nil
}

// connectSpec translates a ConnectRequest, refusing what is not of the
// wire's shape: a malformed id or address, a framing or TLS that does
// not translate, a payload or match missing, a duration that is not one.
func (s *Service) connectSpec(ctx context.Context, req *tcpgatev1.ConnectRequest) (outbound.Spec, error) {
	var spec outbound.Spec
	if id := req.GetConnectionId(); id != "" {
		if err := checkID("connection_id", id); err != nil {
			return spec, err
		}
	}
	if err := checkAddress(req.GetAddress()); err != nil {
		return spec, err
	}
	fc, err := framingFromProto("framing", req.GetFraming(), s.cfg.MaxFrameBytes)
	if err != nil {
		return spec, err
	}
	host, _, _ := net.SplitHostPort(req.GetAddress())
	tlsCfg, err := s.dialTLS(ctx, req.GetTls(), host)
	if err != nil {
		return spec, err
	}
	spec = outbound.Spec{ID: req.GetConnectionId(), Address: req.GetAddress(), Framing: fc, TLS: tlsCfg, Declared: isDeclaring(ctx)}

	if r := req.GetReconnect(); r != nil {
		spec.Reconnect.Disabled = r.GetDisabled()
		if spec.Reconnect.Initial, err = setDuration("reconnect.initial_backoff", r.GetInitialBackoff()); err != nil {
			return spec, err
		}
		if spec.Reconnect.Max, err = setDuration("reconnect.max_backoff", r.GetMaxBackoff()); err != nil {
			return spec, err
		}
		spec.Reconnect.MaxAttempts = r.GetMaxAttempts()
	}
	ar, err := repliesFromProto(req.GetAutoReply())
	if err != nil {
		return spec, err
	}
	spec.AutoReply, spec.Rules, spec.HandlerTimeout, spec.HandlerTimeoutClose = ar.fallback, ar.rules, ar.handlerTimeout, ar.handlerTimeoutClose
	if oc := req.GetOnConnect(); oc != nil {
		x, err := exchangeFromProto("on_connect", oc.GetPayload(), oc.GetFramed(), oc.GetExpect(), oc.GetTimeout())
		if err != nil {
			return spec, err
		}
		spec.OnConnect = x
	}
	if hb := req.GetHeartbeat(); hb != nil {
		x, err := exchangeFromProto("heartbeat", hb.GetPayload(), hb.GetFramed(), hb.GetExpect(), hb.GetTimeout())
		if err != nil {
			return spec, err
		}
		interval, err := durationFromProto("heartbeat.interval", hb.GetInterval(), 0)
		if err != nil {
			return spec, err
		}
		spec.Heartbeat = &outbound.Heartbeat{Interval: interval, Exchange: *x}
	}
	if spec.IdleTimeout, err = durationFromProto("idle_timeout", req.GetIdleTimeout(), 0); err != nil {
		return spec, err
	}
	if ka := req.GetKeepAlive(); ka != nil {
		spec.NoKeepAlive = ka.GetDisabled()
		if spec.KeepAlive.Idle, err = durationFromProto("keep_alive.idle", ka.GetIdle(), 0); err != nil {
			return spec, err
		}
		if spec.KeepAlive.Interval, err = durationFromProto("keep_alive.interval", ka.GetInterval(), 0); err != nil {
			return spec, err
		}
		spec.KeepAlive.Count = int(ka.GetCount())
	}
	if spec.UserTimeout, err = durationFromProto("tcp_user_timeout", req.GetTcpUserTimeout(), 0); err != nil {
		return spec, err
	}
	q := req.GetQueueWhileDownBytes()
	if q > uint64(maxInt) {
		q = uint64(maxInt) // over any bound: the engine names the field and its limit
	}
	spec.QueueBytes = int(q)
	if spec.Timeout, err = durationFromProto("timeout", req.GetTimeout(), 0); err != nil {
		return spec, err
	}
	if spec.Node, err = nodeField(req.GetNodeId()); err != nil {
		return spec, err
	}
	if req.GetTakeOver() && spec.Reconnect.Disabled {
		return spec, invalid("take_over", "needs reconnect: a node taking the connection over dials it again; unset reconnect.disabled or take_over")
	}
	spec.TakeOver = req.GetTakeOver()
	return spec, nil
}

// nodeField checks a node_id of a placement request: empty (the node
// called) or an id of the API's pattern. Whether it names a node is the
// engine's to say (placement.Check, or the cluster).
func nodeField(id string) (string, error) {
	if id == "" {
		return "", nil
	}
	return id, checkID("node_id", id)
}

const maxInt = int(^uint(0) >> 1)

// setDuration is a duration whose explicit 0 is refused: unset means the
// engine's default, and 0 is no backoff at all.
func setDuration(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	v, err := durationFromProto(field, d, 0)
	if err != nil {
		return 0, err
	}
	if v == 0 {
		return 0, invalid(field, "must be positive; leave it unset for the default")
	}
	return v, nil
}

// exchangeFromProto translates on_connect's or heartbeat's payload and
// expected reply; field names it in errors.
func exchangeFromProto(field string, payload any, framed bool, expect *tcpgatev1.ReplyMatch, timeout *durationpb.Duration) (*outbound.Exchange, error) {
	x := &outbound.Exchange{Framed: framed}
	switch p := payload.(type) {
	case *tcpgatev1.OnConnect_Text:
		x.Payload, x.PayloadField = []byte(p.Text), "text"
	case *tcpgatev1.OnConnect_Data:
		x.Payload, x.PayloadField = p.Data, "data"
	case *tcpgatev1.Heartbeat_Text:
		x.Payload, x.PayloadField = []byte(p.Text), "text"
	case *tcpgatev1.Heartbeat_Data:
		x.Payload, x.PayloadField = p.Data, "data"
	default:
		return nil, invalid(field+".payload", "one of %s.text or %s.data is required", field, field)
	}
	var err error
	if x.Expect, err = replyMatch(field+".expect", expect); err != nil {
		return nil, err
	}
	if x.Timeout, err = durationFromProto(field+".timeout", timeout, 0); err != nil {
		return nil, err
	}
	return x, nil
}
