// Package rpc implements tcpgate.v1.GatewayService over the engine: each
// method validates its request, calls the engine, and translates the result
// and errors. It is the only place that speaks both protobuf and the
// engine's types.
package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// DefaultSendTimeout bounds a Send whose timeout is unset: long enough for a
// slow peer's reply, short enough that a dead one does not pin a caller.
const DefaultSendTimeout = 30 * time.Second

// DefaultMaxSendBytes bounds a Send payload when Config.MaxSendBytes is 0:
// gRPC's own default message limit, so the bound a client meets is the same
// whether it comes from gRPC or from tcpgate.
const DefaultMaxSendBytes = 4 << 20

// HeaderLastSequence is the response header of Subscribe, sent as soon as
// the subscription is live: the newest sequence at that moment. A client
// that waits for the headers knows that nothing after it will be missed.
const HeaderLastSequence = "tcpgate-last-sequence"

// ids are used in REST paths, so they stay URL-safe, and short, so that
// what an error or a log line quotes of them stays short. Every id a
// request names is held to it (listener ids, connection ids, the ids of a
// Subscribe filter), so that an id no listener or connection can have is
// an InvalidArgument naming the field rather than a NotFound echoing it.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

// checkID refuses an empty id, and one that idPattern does not match.
func checkID(field, id string) error {
	if id == "" {
		return invalid(field, "required")
	}
	if !idPattern.MatchString(id) {
		return invalid(field, "must be 1 to 64 of A-Z a-z 0-9 . _ ~ -, got %s", Quote(id))
	}
	return nil
}

// Config configures a Service.
type Config struct {
	Listeners *listener.Registry
	Hub       *hub.Hub
	Dialer    *dialer.Dialer
	// Policy decides what may be bound and dialed; nil means the default
	// policy (see policy.Policy), never "anything goes".
	Policy *policy.Policy
	// SubscriberQueueBytes bounds each subscriber's queue; 0 means hub.DefaultQueueBytes.
	SubscriberQueueBytes int
	// MaxSendBytes bounds a Send payload; 0 means DefaultMaxSendBytes.
	MaxSendBytes int
	// MaxFrameBytes bounds framing.max_frame_bytes and fixed_size; 0 (or
	// more than MaxFrameLimit) means MaxFrameLimit. An unset max_frame_bytes
	// is 1 MiB or this, whichever is smaller.
	MaxFrameBytes int
	// MaxReplyBytes bounds await_reply.max_bytes; 0 (or more than
	// MaxFrameLimit) means MaxFrameLimit. An unset max_bytes is 1 MiB or
	// this, whichever is smaller.
	MaxReplyBytes int
	// ListenerMaxConnections is the max_connections of a listener that sets
	// none, and the most one may set; 0 means no bound of its own (the
	// listener registry's total bound still holds).
	ListenerMaxConnections int
	// IdleTimeout is the idle_timeout of a listener that sets none; 0 means
	// never.
	IdleTimeout time.Duration
	// TLSFiles reads the cert_file, key_file, ca_file and client_ca_file
	// of a request, as paths the caller chose; nil refuses every path.
	TLSFiles *pemfile.Reader
	// Conns records the gRPC server's connections (see ConnTracker), so
	// that a Subscribe stream whose client does not read can be ended; nil
	// means such a stream waits for its client.
	Conns *ConnTracker
	// NodeID names this gateway in every ResponseHeader; empty means the
	// host name.
	NodeID string
	// Logger logs internal errors; nil means slog.Default().
	Logger *slog.Logger
}

// Service implements tcpgatev1.GatewayServiceServer.
type Service struct {
	tcpgatev1.UnimplementedGatewayServiceServer
	cfg Config
	log *slog.Logger
}

var _ tcpgatev1.GatewayServiceServer = (*Service)(nil)

// New returns a Service over the engine in cfg.
func New(cfg Config) *Service {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = DefaultMaxSendBytes
	}
	if cfg.MaxFrameBytes <= 0 || cfg.MaxFrameBytes > MaxFrameLimit {
		cfg.MaxFrameBytes = MaxFrameLimit
	}
	if cfg.MaxReplyBytes <= 0 || cfg.MaxReplyBytes > MaxFrameLimit {
		cfg.MaxReplyBytes = MaxFrameLimit
	}
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID()
	}
	return &Service{cfg: cfg, log: log}
}

// DefaultNodeID is the node id of a gateway that sets none: the host name
// when it is a valid id, "tcpgate" otherwise.
func DefaultNodeID() string {
	if h, err := os.Hostname(); err == nil && idPattern.MatchString(h) {
		return h
	}
	return "tcpgate"
}

// header returns the ResponseHeader of a response made now: the hub's
// incarnation, this node, and the newest sequence, read after whatever the
// call published so that it is at or past the call's own events.
func (s *Service) header() *tcpgatev1.ResponseHeader {
	return &tcpgatev1.ResponseHeader{
		Incarnation:  s.cfg.Hub.Incarnation(),
		NodeId:       s.cfg.NodeID,
		LastSequence: s.cfg.Hub.LastSequence(),
	}
}

func (s *Service) status(err error) error { return toStatus(s.log, err) }

// StartListener implements GatewayService.StartListener.
func (s *Service) StartListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.StartListenerResponse, error) {
	if id := req.GetListenerId(); id != "" {
		if err := checkID("listener_id", id); err != nil {
			return nil, err
		}
	}
	if req.GetPort() > 65535 {
		return nil, invalid("port", "must be 0 to 65535, got %d", req.GetPort())
	}
	if err := checkHost(req.GetHost()); err != nil {
		return nil, err
	}
	fc, err := framingFromProto("framing", req.GetFraming(), s.cfg.MaxFrameBytes)
	if err != nil {
		return nil, err
	}
	ar, err := autoReplyFromProto(req.GetAutoReply())
	if err != nil {
		return nil, err
	}
	idle, err := durationFromProto("idle_timeout", req.GetIdleTimeout(), s.cfg.IdleTimeout)
	if err != nil {
		return nil, err
	}
	halfClose, err := durationFromProto("half_close_timeout", req.GetHalfCloseTimeout(), 0)
	if err != nil {
		return nil, err
	}
	if halfClose > maxHalfClose {
		return nil, invalid("half_close_timeout", "must be at most %s, got %s", maxHalfClose, halfClose)
	}
	maxConns := int(req.GetMaxConnections())
	if limit := s.cfg.ListenerMaxConnections; limit > 0 {
		if maxConns > limit {
			return nil, invalidLimit("max_connections", "--listener-max-connections", int64(limit), "must be at most %d (--listener-max-connections), got %d", limit, maxConns)
		}
		if maxConns == 0 {
			maxConns = limit
		}
	}
	tlsCfg, err := s.listenerTLS(ctx, req.GetTls())
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Policy.CheckListen(req.GetHost(), int(req.GetPort())); err != nil {
		return nil, s.status(err)
	}
	spec := listener.Spec{
		ID:               req.GetListenerId(),
		Host:             req.GetHost(),
		Port:             int(req.GetPort()),
		Framing:          fc,
		AutoReply:        ar,
		MaxConnections:   maxConns,
		IdleTimeout:      idle,
		HalfCloseTimeout: halfClose,
		TLS:              tlsCfg,
	}
	info, err := s.startListener(ctx, spec)
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.StartListenerResponse{Listener: listenerToProto(info), Header: s.header()}, nil
}

// maxHalfClose bounds half_close_timeout: long enough for a handler to
// answer through the API, short enough that a half-closed connection is not
// a way to hold a slot indefinitely (the idle timeout does not apply then).
const maxHalfClose = time.Minute

// portTries bounds the ports a listener asking for port 0 tries when the
// policy narrows its ports: enough that a range with a few ports in use
// still yields one, few enough that a full range fails fast.
const portTries = 64

// startListener starts spec. Port 0 under a policy that narrows the ports
// takes a free port of the allowed ranges, not the kernel's pick, which
// could lie outside them.
func (s *Service) startListener(ctx context.Context, spec listener.Spec) (listener.Info, error) {
	if spec.Port != 0 {
		return s.cfg.Listeners.Start(ctx, spec)
	}
	ports := s.cfg.Policy.ListenPorts(spec.Host, portTries)
	if ports == nil {
		return s.cfg.Listeners.Start(ctx, spec)
	}
	for _, port := range ports {
		spec.Port = port
		info, err := s.cfg.Listeners.Start(ctx, spec)
		if !errors.Is(err, listener.ErrAddressInUse) {
			return info, err
		}
	}
	return listener.Info{}, fmt.Errorf("binding %s: no free port among %d tried from --allow-listen: %w",
		net.JoinHostPort(spec.Host, "0"), len(ports), listener.ErrAddressInUse)
}

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

// StopListener implements GatewayService.StopListener.
func (s *Service) StopListener(ctx context.Context, req *tcpgatev1.StopListenerRequest) (*tcpgatev1.StopListenerResponse, error) {
	if err := checkID("listener_id", req.GetListenerId()); err != nil {
		return nil, err
	}
	drain, err := durationFromProto("drain_timeout", req.GetDrainTimeout(), 0)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.Stop(ctx, req.GetListenerId(), drain)
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.StopListenerResponse{Listener: listenerToProto(info), Header: s.header()}, nil
}

// GetListener implements GatewayService.GetListener.
func (s *Service) GetListener(_ context.Context, req *tcpgatev1.GetListenerRequest) (*tcpgatev1.GetListenerResponse, error) {
	if err := checkID("listener_id", req.GetListenerId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.Get(req.GetListenerId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.GetListenerResponse{Listener: listenerToProto(info), Header: s.header()}, nil
}

// CloseConnection implements GatewayService.CloseConnection.
func (s *Service) CloseConnection(ctx context.Context, req *tcpgatev1.CloseConnectionRequest) (*tcpgatev1.CloseConnectionResponse, error) {
	if err := checkID("connection_id", req.GetConnectionId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.CloseConn(ctx, req.GetConnectionId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.CloseConnectionResponse{Connection: connToProto(info), Header: s.header()}, nil
}

var awaitModes = map[tcpgatev1.AwaitMode]dialer.AwaitMode{
	tcpgatev1.AwaitMode_AWAIT_MODE_UNSPECIFIED: dialer.NoAwait,
	tcpgatev1.AwaitMode_AWAIT_MODE_NONE:        dialer.NoAwait,
	tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ:  dialer.FirstRead,
	tcpgatev1.AwaitMode_AWAIT_MODE_FRAME:       dialer.Frame,
	tcpgatev1.AwaitMode_AWAIT_MODE_UNTIL_CLOSE: dialer.UntilClose,
}

// Send implements GatewayService.Send.
func (s *Service) Send(ctx context.Context, req *tcpgatev1.SendRequest) (*tcpgatev1.SendResponse, error) {
	var payload []byte
	switch p := req.GetPayload().(type) {
	case *tcpgatev1.SendRequest_Text:
		payload = []byte(p.Text)
	case *tcpgatev1.SendRequest_Data:
		payload = p.Data
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
	match, err := replyMatch(aw.GetMatch())
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
	if mode == dialer.NoAwait {
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
		if aw.GetFraming() != nil && mode != dialer.Frame {
			return nil, invalid("await_reply.framing", "only used with AWAIT_MODE_FRAME")
		}
		if match != nil && mode != dialer.Frame {
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
		// Resolved once and checked; the dialer dials exactly these.
		resolved, err := s.cfg.Policy.ResolveDial(ctx, t.Address)
		if err != nil {
			return nil, s.status(err)
		}
		res, err := s.cfg.Dialer.Send(ctx, dialer.Request{
			Address: t.Address, Resolved: resolved, Payload: payload, Await: mode, Framing: fc, Match: match, MaxReply: maxReply, TLS: tlsCfg,
		})
		if err != nil {
			return nil, s.status(err)
		}
		resp := &tcpgatev1.SendResponse{BytesWritten: uint64(res.BytesWritten), ConnectionsReached: 1}
		if mode != dialer.NoAwait {
			resp.Reply = replyToProto(res.Reply, replyFormat)
		}
		return resp, nil

	case *tcpgatev1.SendRequest_ConnectionId:
		if err := checkID("connection_id", t.ConnectionId); err != nil {
			return nil, err
		}
		if req.GetTls() != nil {
			return nil, invalid("tls", "only with address: an accepted connection already is what its listener made it")
		}
		if aw.GetFraming() != nil {
			return nil, invalid("await_reply.framing", "not used with connection_id: replies are cut by the listener's framing")
		}
		c, err := s.cfg.Listeners.Conn(t.ConnectionId)
		if err != nil {
			return nil, s.status(err)
		}
		rm := conn.NoReply
		switch mode {
		case dialer.FirstRead, dialer.Frame:
			rm = conn.NextFrame
		case dialer.UntilClose:
			rm = conn.UntilClose
		}
		reply, err := c.Send(ctx, payload, conn.Await{Mode: rm, MaxBytes: maxReply, Match: match, CloseOnTimeout: closeOnTimeout})
		if err != nil {
			return nil, s.status(err)
		}
		resp := &tcpgatev1.SendResponse{BytesWritten: uint64(len(payload)), ConnectionsReached: 1}
		if rm != conn.NoReply {
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
		if mode != dialer.NoAwait {
			return nil, invalid("await_reply", "not allowed with listener_id: a broadcast has no single reply")
		}
		n, reached, err := s.cfg.Listeners.Broadcast(ctx, t.ListenerId, payload)
		if err != nil {
			return nil, s.status(err)
		}
		return &tcpgatev1.SendResponse{BytesWritten: n, ConnectionsReached: uint32(reached)}, nil
	}
	return nil, invalid("target", "one of address, connection_id or listener_id is required")
}

// maxMatchRegex bounds await_reply.match.regex: RE2 compiles in time and
// memory linear in the pattern, and a correlation pattern is short.
const maxMatchRegex = 1024

// replyMatch translates await_reply.match into the test a frame must pass
// to answer a Send; nil when unset.
func replyMatch(m *tcpgatev1.ReplyMatch) (func([]byte) bool, error) {
	if m == nil {
		return nil, nil
	}
	switch r := m.GetRule().(type) {
	case *tcpgatev1.ReplyMatch_Prefix:
		if r.Prefix == "" {
			return nil, invalid("await_reply.match.prefix", "empty: it would match every frame; leave match unset for that")
		}
		p := []byte(r.Prefix)
		return func(f []byte) bool { return bytes.HasPrefix(f, p) }, nil
	case *tcpgatev1.ReplyMatch_PrefixData:
		if len(r.PrefixData) == 0 {
			return nil, invalid("await_reply.match.prefix_data", "empty: it would match every frame; leave match unset for that")
		}
		p := bytes.Clone(r.PrefixData)
		return func(f []byte) bool { return bytes.HasPrefix(f, p) }, nil
	case *tcpgatev1.ReplyMatch_Regex:
		switch {
		case r.Regex == "":
			return nil, invalid("await_reply.match.regex", "empty: it would match every frame; leave match unset for that")
		case len(r.Regex) > maxMatchRegex:
			return nil, invalid("await_reply.match.regex", "%d bytes, more than %d", len(r.Regex), maxMatchRegex)
		}
		re, err := regexp.Compile(r.Regex)
		if err != nil {
			return nil, invalid("await_reply.match.regex", "%v", err)
		}
		return re.Match, nil
	}
	return nil, invalid("await_reply.match", "one of prefix, prefix_data or regex is required")
}

// hostPattern is a DNS name: letters, digits, '-' and '.'.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// checkHost accepts an empty host (the default), an IP literal or a DNS
// name, so that "127.0.0.1:80" is refused here rather than by the resolver.
func checkHost(host string) error {
	switch {
	case host == "":
		return nil
	case len(host) > 253:
		return invalid("host", "longer than 253 bytes")
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !hostPattern.MatchString(host) {
		return invalid("host", "%s is not an IP address or host name (no port: that goes in port)", Quote(host))
	}
	return nil
}

func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return invalid("address", "must be host:port, got %s", Quote(addr))
	}
	if host == "" {
		return invalid("address", "host is empty in %s", Quote(addr))
	}
	if len(host) > 253 {
		// The engine names the address in its errors; a longer host is no
		// host name anyway.
		return invalid("address", "host longer than 253 bytes in %s", Quote(addr))
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return invalid("address", "port must be 1 to 65535 in %s", Quote(addr))
	}
	return nil
}

// subscription validates req, exactly as Subscribe and the REST event
// stream both need it, and returns the hub options and payload format it
// asks for.
func (s *Service) subscription(req *tcpgatev1.SubscribeRequest) (hub.SubscribeOptions, payloadFormat, error) {
	opts := hub.SubscribeOptions{
		Filter: hub.Filter{
			ListenerIDs:   req.GetListenerIds(),
			ConnectionIDs: req.GetConnectionIds(),
		},
		Since:      req.GetSinceSequence(),
		QueueBytes: s.cfg.SubscriberQueueBytes,
	}
	// The hub bounds how many ids a filter holds (its own decision, as for
	// every subscriber); each id is held to the rule of the ids it names.
	if err := checkFilterIDs("listener_ids", req.GetListenerIds()); err != nil {
		return opts, 0, err
	}
	if err := checkFilterIDs("connection_ids", req.GetConnectionIds()); err != nil {
		return opts, 0, err
	}
	for i, k := range req.GetKinds() {
		ek, ok := kindFromProto(k)
		if !ok {
			return opts, 0, invalid(fmt.Sprintf("kinds[%d]", i), "%s cannot be filtered on", k)
		}
		// The markers (EVENTS_DROPPED, STREAM_STARTED,
		// INCARNATION_CHANGED) are always sent, whatever the filter: the
		// hub never publishes them, so naming them matches nothing more.
		opts.Filter.Kinds = append(opts.Filter.Kinds, ek)
	}
	if inc := req.GetSinceIncarnation(); inc != "" {
		if err := checkID("since_incarnation", inc); err != nil {
			return opts, 0, err
		}
		opts.Incarnation = inc
	}
	policy, ok := policies[req.GetSlowConsumer()]
	if !ok {
		return opts, 0, invalid("slow_consumer", "unknown value %d", int32(req.GetSlowConsumer()))
	}
	opts.Policy = policy
	format, err := formatFromProto("payload_format", req.GetPayloadFormat())
	if err != nil {
		return opts, 0, err
	}
	return opts, format, nil
}

// checkFilterIDs checks each id of a Subscribe filter, up to one more than
// the hub allows: a longer list is the hub's refusal, not a reason to
// check a million ids first.
func checkFilterIDs(field string, ids []string) error {
	for i, id := range ids[:min(len(ids), hub.MaxFilterIDs+1)] {
		if err := checkID(fmt.Sprintf("%s[%d]", field, i), id); err != nil {
			return err
		}
	}
	return nil
}

// streamError is the status that ends an event stream whose Next returned
// err, with ctx the stream's context.
func (s *Service) streamError(ctx context.Context, err error) error {
	if errors.Is(err, hub.ErrClosed) {
		return Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down; resubscribe with since_incarnation and since_sequence (the last sequence seen + 1) to resume", nil)
	}
	if ctx.Err() != nil {
		return s.status(ctx.Err())
	}
	return s.status(err)
}

// Subscribe implements GatewayService.Subscribe.
func (s *Service) Subscribe(req *tcpgatev1.SubscribeRequest, stream grpc.ServerStreamingServer[tcpgatev1.SubscribeResponse]) error {
	opts, format, err := s.subscription(req)
	if err != nil {
		return err
	}
	sub, err := s.openStream(opts)
	if err != nil {
		return err
	}
	defer sub.Close()
	// The newest sequence as the subscription went live, not read again:
	// an event published since is one the stream carries.
	if err := stream.SendHeader(metadata.Pairs(
		HeaderLastSequence, strconv.FormatUint(sub.header.LastSequence, 10),
		HeaderIncarnation, sub.header.Incarnation,
		HeaderNodeID, sub.header.Node,
	)); err != nil {
		return err
	}

	// A send that cannot complete within its bound (the client does not
	// read) ends the stream, by closing its connection (see ConnTracker);
	// once the gateway shuts down, the bound is FinalWriteTimeout.
	ctx := stream.Context()
	var remote net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr
	}
	watch := newSendWatch(func() {
		closed := s.cfg.Conns.close(remote)
		s.log.Warn("subscriber accepts nothing; ending its stream", "remote_addr", fmt.Sprint(remote), "connection_closed", closed)
	})
	defer watch.stop()
	stopEnding := AfterClose(s.cfg.Hub.Closed(), watch.shorten)
	defer stopEnding()

	var batch []*event.Event
	var els []element
	for {
		batch, err = sub.Next(ctx, batch[:0])
		// Not stream.Send(*SubscribeResponse): the server's Codec
		// (codec.go) encodes an eventBatch, the engine's events as they
		// are, into the same bytes, caching each event's encoding for
		// every other subscriber and sending large payloads without
		// copying them. SendMsg takes any message the codec knows. A hub
		// batch is cut by what is sent, so that each message stays
		// within what a client reads by default.
		var eerr error
		if els, eerr = elements(els[:0], batch, format); eerr != nil {
			return s.status(eerr)
		}
		for rest, restEls := batch, els; len(rest) > 0; {
			n := fitBatch(restEls, maxMessageBytes)
			watch.begin()
			serr := stream.SendMsg(eventBatch{events: rest[:n], format: format, els: restEls[:n]})
			watch.end()
			if serr != nil {
				return serr
			}
			rest, restEls = rest[n:], restEls[n:]
		}
		clear(batch)
		clear(els)
		if err != nil {
			return s.streamError(ctx, err)
		}
	}
}
