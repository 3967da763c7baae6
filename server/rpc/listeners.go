package rpc

import (
	"cmp"
	"context"
	"errors"
	"net"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/page"
)

// The listener RPCs: StartListener, StopListener, GetListener and
// ListListeners.

// Listeners is what the listener RPCs call of the listener registry
// (listener.Registry). Start owns the listen policy and the port choice.
type Listeners interface {
	Start(ctx context.Context, spec listener.Spec) (listener.Info, error)
	Stop(ctx context.Context, id string, drain time.Duration) (listener.Info, error)
	Get(id string) (listener.Info, error)
	ListListeners(size int, after uint64) (listener.ListenerPage, error)
	// Update changes a running listener's fields in place; by is who asks
	// (the API: SourceAPI).
	Update(ctx context.Context, id string, spec listener.Spec, fields []string, by listener.Source) (listener.Info, error)
	// BroadcastFrame writes a frame, encoded with the listener's framing,
	// to each of its connections.
	BroadcastFrame(ctx context.Context, listenerID string, frame []byte) (uint64, int, error)
}

// localStartListener is StartListener on this node (peers.go routes it). The listener is
// saved to the state file before the call returns.
func (s *Service) localStartListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.StartListenerResponse, error) {
	info, err := s.startListener(ctx, req)
	if err != nil {
		return nil, s.status(err)
	}
	l := listenerToProto(info)
	// A listener on every node is recorded once, by the node the call
	// came to: the others start it for that node (fromPeer).
	if s.cfg.State != nil && !(req.GetEveryNode() && fromPeer(ctx)) {
		v := s.recordListener(info, l, func() (*tcpgatev1.StartListenerRequest, bool) { return req, true })
		if err := s.save(ctx, "listener "+info.ID+" started", v); err != nil {
			return nil, err
		}
	}
	return &tcpgatev1.StartListenerResponse{Listener: l, Header: s.header()}, nil
}

// startListener checks and translates req and starts the listener, as
// StartListener, a restore from the state file and the config file all
// do; it records nothing.
func (s *Service) startListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (listener.Info, error) {
	spec, err := s.listenerSpec(ctx, req)
	if err != nil {
		return listener.Info{}, err
	}
	return s.cfg.Listeners.Start(ctx, spec)
}

// listenerSpec translates a StartListenerRequest, refusing what is not of
// the wire's shape. Its source is the config file's under a declaring
// context (see declared.go), the API's otherwise.
func (s *Service) listenerSpec(ctx context.Context, req *tcpgatev1.StartListenerRequest) (listener.Spec, error) {
	if id := req.GetListenerId(); id != "" {
		if err := checkID("listener_id", id); err != nil {
			return listener.Spec{}, err
		}
	}
	if req.GetPort() > 65535 {
		return listener.Spec{}, invalid("port", "must be 0 to 65535, got %d", req.GetPort())
	}
	if err := checkHost(req.GetHost()); err != nil {
		return listener.Spec{}, err
	}
	fc, err := framingFromProto("framing", req.GetFraming(), s.cfg.MaxFrameBytes)
	if err != nil {
		return listener.Spec{}, err
	}
	ar, err := repliesFromProto(req.GetAutoReply())
	if err != nil {
		return listener.Spec{}, err
	}
	banner, err := s.bannerFromProto(req.GetOnConnect())
	if err != nil {
		return listener.Spec{}, err
	}
	// An unset idle_timeout is 0: the listener registry's default.
	idle, err := durationFromProto("idle_timeout", req.GetIdleTimeout(), 0)
	if err != nil {
		return listener.Spec{}, err
	}
	halfClose, err := durationFromProto("half_close_timeout", req.GetHalfCloseTimeout(), 0)
	if err != nil {
		return listener.Spec{}, err
	}
	if halfClose > maxHalfClose {
		return listener.Spec{}, invalid("half_close_timeout", "must be at most %s, got %s", maxHalfClose, halfClose)
	}
	tlsCfg, err := s.listenerTLS(ctx, req.GetTls())
	if err != nil {
		return listener.Spec{}, err
	}
	fwd, err := s.forwardFromProto(ctx, req.GetForward())
	if err != nil {
		return listener.Spec{}, err
	}
	node, err := nodeField(req.GetNodeId())
	if err != nil {
		return listener.Spec{}, err
	}
	if node != "" && req.GetEveryNode() {
		return listener.Spec{}, invalid("every_node", "not with node_id %s: a listener runs on one node or on every node; unset one of them", Quote(node))
	}
	proxy, err := proxyFromProto(req.GetProxyProtocol())
	if err != nil {
		return listener.Spec{}, err
	}
	// An unset max_connections is 0 too: the registry fills in its
	// default and refuses one over its bound.
	spec := listener.Spec{
		Node:                node,
		EveryNode:           req.GetEveryNode(),
		Source:              listenerSource(ctx),
		ID:                  req.GetListenerId(),
		Host:                cmp.Or(req.GetHost(), s.cfg.NodeHost),
		Port:                int(req.GetPort()),
		Framing:             fc,
		AutoReply:           ar.fallback,
		Rules:               ar.rules,
		HandlerTimeout:      ar.handlerTimeout,
		HandlerTimeoutClose: ar.handlerTimeoutClose,
		Banner:              banner,
		MaxConnections:      int(req.GetMaxConnections()),
		IdleTimeout:         idle,
		HalfCloseTimeout:    halfClose,
		TLS:                 tlsCfg,
		Forward:             fwd,
		ProxyProtocol:       proxy,
	}
	return spec, nil
}

// forwardFromProto checks a forwarding listener's target as Send's
// address is checked; the listener registry decides whether it goes with
// the rest of the listener (auto_reply).
func (s *Service) forwardFromProto(ctx context.Context, f *tcpgatev1.Forward) (*listener.Forward, error) {
	if f == nil {
		return nil, nil
	}
	if err := checkAddressField("forward.address", f.GetAddress()); err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(f.GetAddress())
	tlsCfg, err := s.dialTLSAt(ctx, "forward.tls", f.GetTls(), host)
	if err != nil {
		return nil, err
	}
	return &listener.Forward{Address: f.GetAddress(), TLS: tlsCfg}, nil
}

// maxHalfClose bounds half_close_timeout: long enough for a handler to
// answer through the API, short enough that a half-closed connection is not
// a way to hold a slot indefinitely (the idle timeout does not apply then).
const maxHalfClose = time.Minute

func autoReplyFromProto(a *tcpgatev1.AutoReply) (conn.AutoReply, error) {
	var payload []byte
	hasPayload := false
	switch p := a.GetPayload().(type) {
	case *tcpgatev1.AutoReply_Text:
		payload, hasPayload = []byte(p.Text), true
	case *tcpgatev1.AutoReply_Data:
		payload, hasPayload = p.Data, true
	}
	switch a.GetMode() {
	case tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_UNSPECIFIED, tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE:
		if hasPayload {
			return conn.AutoReply{}, invalid("auto_reply.mode", "text or data needs AUTO_REPLY_MODE_FIXED")
		}
		return conn.AutoReply{Mode: conn.NoAutoReply}, nil
	case tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO:
		if hasPayload {
			return conn.AutoReply{}, invalid("auto_reply.mode", "text or data needs AUTO_REPLY_MODE_FIXED, not ECHO")
		}
		return conn.AutoReply{Mode: conn.Echo}, nil
	case tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED:
		if !hasPayload {
			return conn.AutoReply{}, invalid("auto_reply", "AUTO_REPLY_MODE_FIXED needs text or data")
		}
		if len(payload) > MaxFrameLimit {
			return conn.AutoReply{}, invalid("auto_reply", "reply longer than %d bytes", MaxFrameLimit)
		}
		return conn.AutoReply{Mode: conn.Fixed, Payload: payload}, nil
	}
	return conn.AutoReply{}, invalid("auto_reply.mode", "unknown value %d", int32(a.GetMode()))
}

// localStopListener is StopListener on this node (peers.go routes it).
func (s *Service) localStopListener(ctx context.Context, req *tcpgatev1.StopListenerRequest) (*tcpgatev1.StopListenerResponse, error) {
	if err := checkID("listener_id", req.GetListenerId()); err != nil {
		return nil, err
	}
	drain, err := durationFromProto("drain_timeout", req.GetDrainTimeout(), 0)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.Stop(ctx, req.GetListenerId(), drain)
	if errors.Is(err, listener.ErrDeclared) {
		return nil, s.declaredError(err)
	}
	if err != nil {
		return nil, s.status(err)
	}
	if s.cfg.State != nil {
		if err := s.save(ctx, "listener "+info.ID+" stopped", s.forgetListener(info.ID)); err != nil {
			return nil, err
		}
	}
	return &tcpgatev1.StopListenerResponse{Listener: listenerToProto(info), Header: s.header()}, nil
}

// localGetListener is GetListener on this node (peers.go routes it).
func (s *Service) localGetListener(_ context.Context, req *tcpgatev1.GetListenerRequest) (*tcpgatev1.GetListenerResponse, error) {
	if err := checkID("listener_id", req.GetListenerId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.Get(req.GetListenerId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.GetListenerResponse{Listener: listenerToProto(info), Header: s.header()}, nil
}

// localListListeners is ListListeners on this node (peers.go routes it).
func (s *Service) localListListeners(_ context.Context, req *tcpgatev1.ListListenersRequest) (*tcpgatev1.ListListenersResponse, error) {
	inc := s.cfg.Hub.Incarnation()
	after, err := page.Decode(req.GetPageToken(), inc, listener.ListenersFilter)
	if err != nil {
		return nil, s.status(err)
	}
	p, err := s.cfg.Listeners.ListListeners(int(req.GetPageSize()), after)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &tcpgatev1.ListListenersResponse{Listeners: make([]*tcpgatev1.Listener, 0, len(p.Listeners))}
	for _, i := range p.Listeners {
		resp.Listeners = append(resp.Listeners, listenerToProto(i))
	}
	if p.More {
		resp.NextPageToken = page.Token{After: p.Last, Incarnation: inc, Filter: listener.ListenersFilter}.Encode()
	}
	resp.Header = s.header()
	return resp, nil
}
