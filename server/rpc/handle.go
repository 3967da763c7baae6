package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/handler"
)

// Handlers is what Handle calls: the node's handler.Manager (through
// LocalHandlers), or in a cluster the cluster's streams, which handle the
// connections of every node.
type Handlers interface {
	Register(ctx context.Context, r handler.Registration) (HandlerStream, error)
}

// HandlerStream is one registered Handle stream (*handler.Stream).
type HandlerStream interface {
	ID() string
	Group() string
	MaxInFlight() int
	Next(ctx context.Context, buf []handler.Event) ([]handler.Event, error)
	Reply(ctx context.Context, r handler.Reply) error
	Close()
}

// LocalHandlers serves Handle streams from one node's handler.Manager.
type LocalHandlers struct{ M *handler.Manager }

// Register registers r with the Manager.
func (l LocalHandlers) Register(ctx context.Context, r handler.Registration) (HandlerStream, error) {
	hs, err := l.M.Register(ctx, r)
	if err != nil {
		return nil, err
	}
	return hs, nil
}

// handleStream is a Handle stream whatever carries it: gRPC, or the
// WebSocket at /v1/handle. Recv must return once Context ends.
type handleStream interface {
	Context() context.Context
	Send(*tcpgatev1.HandleResponse) error
	Recv() (*tcpgatev1.HandleRequest, error)
}

// Handle implements GatewayService.Handle.
func (s *Service) Handle(stream grpc.BidiStreamingServer[tcpgatev1.HandleRequest, tcpgatev1.HandleResponse]) error {
	return s.serveHandle(stream)
}

// handleBatchBytes bounds the encoded events of one HandleResponse, so
// that it stays within what a client reads by default with room for the
// rest of the message.
const handleBatchBytes = maxMessageBytes - 64<<10

// serveHandle serves one Handle stream: the registration, then events
// out and replies in, until the client ends its side, the stream's
// context ends or the gateway shuts down.
func (s *Service) serveHandle(st handleStream) error {
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	first, err := st.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return invalid("registration", "the first request must carry a registration")
		}
		return err
	}
	reg, format, err := registrationFromProto(first.GetRegistration())
	if err != nil {
		return err
	}
	if s.cfg.Handlers == nil {
		return Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "no handler streams on this gateway", nil)
	}
	hs, err := s.cfg.Handlers.Register(ctx, reg)
	if err != nil {
		return s.status(err)
	}
	defer hs.Close()

	// Sends come from the event loop and from the replies' rejections.
	// A send that cannot complete within its bound (the client reads
	// nothing) ends the stream by closing its gRPC connection, as
	// Subscribe's do; once the gateway shuts down the bound is
	// FinalWriteTimeout.
	var remote net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr
	}
	watch := newSendWatch(func() {
		closed := s.cfg.Conns.close(remote)
		s.log.Warn("handler accepts nothing; ending its stream", "remote_addr", fmt.Sprint(remote), "connection_closed", closed)
	})
	defer watch.stop()
	if s.cfg.Hub != nil {
		defer AfterClose(s.cfg.Hub.Closed(), watch.shorten)()
	}
	// Once serveHandle returns, nothing may send: a rejection the reply
	// goroutine finds late is dropped.
	var sendMu sync.Mutex
	returned := false
	send := func(r *tcpgatev1.HandleResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		if returned {
			return context.Canceled
		}
		watch.begin()
		defer watch.end()
		return st.Send(r)
	}
	defer func() {
		sendMu.Lock()
		returned = true
		sendMu.Unlock()
	}()
	if err := send(&tcpgatev1.HandleResponse{Registered: &tcpgatev1.HandleRegistered{
		StreamId:    hs.ID(),
		Group:       hs.Group(),
		MaxInFlight: uint32(hs.MaxInFlight()),
		Header:      s.header(),
	}}); err != nil {
		return err
	}

	// The replies are read on a goroutine of their own, so that the
	// stream ends when the gateway ends it even while the client sends
	// nothing; Recv returns once ctx is canceled on return.
	recvErr := make(chan error, 1)
	go func() {
		err := s.handleReplies(ctx, st, hs, first, send)
		recvErr <- err
		hs.Close()
	}()

	var evs []handler.Event
	for {
		evs, err = hs.Next(ctx, evs[:0])
		if len(evs) > 0 {
			if serr := s.sendEvents(evs, format, send); serr != nil {
				return serr
			}
			clear(evs)
		}
		if err != nil {
			break
		}
	}
	select {
	case rerr := <-recvErr:
		return rerr
	default:
	}
	if errors.Is(err, handler.ErrClosed) {
		return Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down; register again once it is back", nil)
	}
	return s.status(err)
}

// handleReplies carries out the client's replies, first's and those of
// later requests, until the client ends its side (nil) or the stream
// breaks.
func (s *Service) handleReplies(ctx context.Context, st handleStream, hs HandlerStream, req *tcpgatev1.HandleRequest, send func(*tcpgatev1.HandleResponse) error) error {
	for {
		var rejections []*tcpgatev1.HandleRejection
		if r := req.GetReply(); r != nil {
			rejections = s.carryOut(ctx, hs, "reply", r, rejections)
		}
		for i, r := range req.GetReplies() {
			rejections = s.carryOut(ctx, hs, "replies["+strconv.Itoa(i)+"]", r, rejections)
		}
		if len(rejections) > 0 {
			if err := send(&tcpgatev1.HandleResponse{Rejections: rejections}); err != nil {
				return err
			}
		}
		var err error
		if req, err = st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if req.GetRegistration() != nil {
			return invalid("registration", "only the first request carries a registration")
		}
	}
}

// carryOut validates one reply and hands it to the stream, adding its
// rejection, if any, to rejections.
func (s *Service) carryOut(ctx context.Context, hs HandlerStream, field string, r *tcpgatev1.HandleReply, rejections []*tcpgatev1.HandleRejection) []*tcpgatev1.HandleRejection {
	reject := func(reason tcpgatev1.ErrorReason, f, msg string) []*tcpgatev1.HandleRejection {
		return append(rejections, &tcpgatev1.HandleRejection{FrameId: r.GetFrameId(), ConnectionId: r.GetConnectionId(), Reason: reason, Field: f, Message: msg})
	}
	invalidArg := tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT
	var p []byte
	switch v := r.GetPayload().(type) {
	case *tcpgatev1.HandleReply_Text:
		if !utf8.ValidString(v.Text) {
			return reject(invalidArg, field+".text", "not valid UTF-8; send bytes as data")
		}
		p = []byte(v.Text)
	case *tcpgatev1.HandleReply_Data:
		p = v.Data
		if p == nil {
			p = []byte{}
		}
	}
	if len(p) > s.cfg.MaxSendBytes {
		f := field + ".text"
		if _, ok := r.GetPayload().(*tcpgatev1.HandleReply_Data); ok {
			f = field + ".data"
		}
		return reject(invalidArg, f, "longer than --max-send-bytes ("+strconv.Itoa(s.cfg.MaxSendBytes)+")")
	}
	if cid := r.GetConnectionId(); cid != "" || r.GetFrameId() == 0 {
		if err := checkID(field+".connection_id", cid); err != nil {
			msg := field + ".connection_id: required when frame_id is 0"
			if cid != "" {
				msg = field + ".connection_id: must be 1 to 64 of A-Z a-z 0-9 . _ ~ -"
			}
			return reject(invalidArg, field+".connection_id", msg)
		}
	}
	if r.GetFrameId() == 0 && p == nil && !r.GetClose() {
		return reject(invalidArg, field, "a write (frame_id 0) needs text, data or close")
	}
	err := hs.Reply(ctx, handler.Reply{FrameID: r.GetFrameId(), ConnectionID: r.GetConnectionId(), Payload: p, Raw: r.GetRaw(), Close: r.GetClose()})
	if err == nil {
		return rejections
	}
	var re *handler.ReplyError
	f := field
	if errors.As(err, &re) && re.Field != "" {
		f = field + "." + re.Field
	}
	switch {
	case errors.Is(err, handler.ErrNotHandled):
		return reject(tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED, f, err.Error())
	case errors.Is(err, handler.ErrConnectionNotFound):
		return reject(tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_NOT_FOUND, f, err.Error())
	case errors.Is(err, handler.ErrInvalid):
		return reject(invalidArg, f, err.Error())
	}
	reason, _ := ReasonOf(s.status(err))
	return reject(reason, f, err.Error())
}

// registrationFromProto checks a registration's shape; the engine checks
// the rest (the listeners run, the group is free, the bounds).
func registrationFromProto(r *tcpgatev1.HandleRegistration) (handler.Registration, payloadFormat, error) {
	if r == nil {
		return handler.Registration{}, 0, invalid("registration", "the first request must carry a registration")
	}
	for i, id := range r.GetListenerIds() {
		if err := checkID("registration.listener_ids["+strconv.Itoa(i)+"]", id); err != nil {
			return handler.Registration{}, 0, err
		}
	}
	for i, id := range r.GetConnectionIds() {
		if err := checkID("registration.connection_ids["+strconv.Itoa(i)+"]", id); err != nil {
			return handler.Registration{}, 0, err
		}
	}
	format, err := formatFromProto("registration.payload_format", r.GetPayloadFormat())
	if err != nil {
		return handler.Registration{}, 0, err
	}
	if r.GetMaxInFlight() > handler.MaxInFlightLimit {
		return handler.Registration{}, 0, invalid("registration.max_in_flight", "at most %d, got %d", handler.MaxInFlightLimit, r.GetMaxInFlight())
	}
	return handler.Registration{
		ListenerIDs:   r.GetListenerIds(),
		ConnectionIDs: r.GetConnectionIds(),
		Group:         r.GetGroup(),
		MaxInFlight:   int(r.GetMaxInFlight()),
	}, format, nil
}

// sendEvents sends evs in as few responses as fit within
// handleBatchBytes each.
func (s *Service) sendEvents(evs []handler.Event, f payloadFormat, send func(*tcpgatev1.HandleResponse) error) error {
	resp := &tcpgatev1.HandleResponse{}
	size := 0
	for _, e := range evs {
		pe := handleEventToProto(e, f)
		n := proto.Size(pe) + 8
		if size > 0 && size+n > handleBatchBytes {
			if err := send(resp); err != nil {
				return err
			}
			resp, size = &tcpgatev1.HandleResponse{}, 0
		}
		resp.Events = append(resp.Events, pe)
		size += n
	}
	return send(resp)
}

var handleKinds = map[handler.EventKind]tcpgatev1.HandleEventKind{
	handler.Opened: tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_OPENED,
	handler.Frame:  tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME,
	handler.Closed: tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_CLOSED,
}

func handleEventToProto(e handler.Event, f payloadFormat) *tcpgatev1.HandleEvent {
	c := e.Info()
	pe := &tcpgatev1.HandleEvent{
		Kind:         handleKinds[e.Kind],
		ConnectionId: c.ID,
		ListenerId:   c.ListenerID,
		Origin:       origins[c.Origin],
		Generation:   c.Generation,
	}
	switch e.Kind {
	case handler.Opened:
		pe.RemoteAddress = c.RemoteAddr
		pe.LocalAddress = c.LocalAddr
		pe.PeerSubject = c.PeerSubject
	case handler.Frame:
		pe.FrameId = e.FrameID
		pe.Redelivered = e.Redelivered
		data, text := payloadFields(f, len(e.Data), utf8.Valid(e.Data))
		if data {
			pe.Data = e.Data
		}
		if text {
			pe.Text = string(e.Data)
		}
	case handler.Closed:
		pe.CloseReason = closeReasons[e.Reason]
	}
	return pe
}
