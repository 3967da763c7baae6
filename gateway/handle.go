package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// HandlePath is where the Handle stream is served over WebSocket.
const HandlePath = "/v1/handle"

// bearerProtocol is the prefix of the Sec-WebSocket-Protocol value that
// carries the token, for browsers, which cannot set Authorization on a
// WebSocket: "bearer.TOKEN".
const bearerProtocol = "bearer."

// Close codes of a Handle WebSocket beyond RFC 6455's: a stream that
// ended with a gRPC status closes with closeCodeBase plus its code (4003
// for InvalidArgument, 4014 for Unavailable), and a reason that is the
// status as JSON (closeReason). A clean end is 1000; a message over the
// read limit is 1009.
const closeCodeBase = 4000

// HandleSource serves Handle streams (an *rpc.HandleSource).
type HandleSource interface {
	Serve(st rpc.HandleStream) error
	MaxRequestBytes() int64
}

// handleSocket serves GET /v1/handle: the Handle stream over WebSocket,
// one protojson message per text message, HandleRequest in and
// HandleResponse out. The guard (Host, Origin) and the token (in
// Authorization, or as the subprotocol bearer.TOKEN) were checked in
// front of it; what fails before the upgrade is answered with the REST
// error JSON, what ends the stream after it closes the WebSocket with a
// code and a reason.
func (g *Gateway) handleSocket(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	m := &runtime.JSONPb{MarshalOptions: marshalOptions}
	fail := func(err error) { errorHandler(r.Context(), g.mux, m, w, r, err) }
	if g.cfg.Handle == nil {
		fail(rpc.Status(codes.Unimplemented, tcpgatev1.ErrorReason_ERROR_REASON_ROUTE_NOT_FOUND, "this gateway serves no Handle streams", nil))
		return
	}
	if !headerHasToken(r.Header, "Upgrade", "websocket") || !headerHasToken(r.Header, "Connection", "upgrade") {
		w.Header().Set("Upgrade", "websocket")
		fail(&runtime.HTTPStatusError{HTTPStatus: http.StatusUpgradeRequired, Err: rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST,
			HandlePath+" is a WebSocket: connect with a WebSocket client (Upgrade: websocket)", nil)})
		return
	}
	if g.ctx.Err() != nil {
		fail(rpc.Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down", nil))
		return
	}
	g.sockets.Add(1)
	defer g.sockets.Done()

	// The HTTP server's read and write deadlines would stay on the
	// connection once hijacked, and cut a stream that runs for hours.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	var protocols []string
	if p, ok := tokenProtocol(r.Header); ok {
		protocols = []string{p} // a browser fails a handshake that selects none
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: protocols,
		// The guard checked Origin as on every route, with --cors-origins;
		// a second check here could only contradict it.
		InsecureSkipVerify: true,
	})
	if err != nil {
		g.log.Warn("Handle WebSocket refused", "remote", r.RemoteAddr, "error", err)
		return // Accept answered
	}
	limit := g.cfg.Handle.MaxRequestBytes()
	c.SetReadLimit(limit)

	ctx, cancel := context.WithCancel(g.ctx)
	st := &socketStream{ctx: ctx, c: c, limit: limit}
	// At shutdown the gateway ends Serve, and the WebSocket closes with
	// its status below. A Serve that does not end within
	// rpc.FinalWriteTimeout (one waiting for a registration: reads do
	// not watch ctx, see Recv) has its WebSocket closed for it, which
	// ends that wait.
	var closeOnce sync.Once
	closeWith := func(err error) {
		closeOnce.Do(func() {
			code, reason := closeOf(err)
			closeBounded(c, code, reason)
		})
	}
	served := make(chan struct{})
	afterDone := make(chan struct{})
	stop := context.AfterFunc(g.ctx, func() {
		defer close(afterDone)
		t := time.NewTimer(rpc.FinalWriteTimeout)
		defer t.Stop()
		select {
		case <-served:
		case <-t.C:
			closeWith(rpc.Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down", nil))
		}
	})
	serr := g.cfg.Handle.Serve(st)
	close(served)
	cancel()
	// The close frame first: the Recv still waiting ends as the client
	// answers it, or when closeBounded gives up and drops the connection.
	closeWith(serr)
	if !stop() {
		<-afterDone
	}
	st.end()
}

// socketStream is a Handle stream over a WebSocket (rpc.HandleStream).
// serveHandle calls Send from one goroutine at a time and Recv from one.
// Recv returns once the WebSocket closes, which handleSocket does as
// soon as Serve returns.
type socketStream struct {
	ctx   context.Context
	c     *websocket.Conn
	limit int64 // the read limit, for its error

	mu     sync.Mutex     // guards ended and the Add of reading
	ended  bool           // Serve returned: no Recv may start
	recvWG sync.WaitGroup // the Recv in progress
}

func (s *socketStream) Context() context.Context { return s.ctx }

// Send writes one response as a text message, within
// rpc.StreamWriteTimeout (rpc.FinalWriteTimeout once the gateway shuts
// down): a client that reads nothing for that long is stuck, and its
// stream ends.
func (s *socketStream) Send(resp *tcpgatev1.HandleResponse) error {
	b, err := marshalOptions.Marshal(resp)
	if err != nil {
		return rpc.Status(codes.Internal, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "encoding a Handle response", nil)
	}
	// Not a child of s.ctx: the library drops the connection when a
	// write's context ends, and the close frame would be lost. Once the
	// stream's context ends (a shutdown), the write gets
	// rpc.FinalWriteTimeout instead.
	bound := rpc.StreamWriteTimeout
	if s.ctx.Err() != nil {
		bound = rpc.FinalWriteTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	stop := context.AfterFunc(s.ctx, func() { time.AfterFunc(rpc.FinalWriteTimeout, cancel) })
	defer stop()
	if err := s.c.Write(ctx, websocket.MessageText, b); err != nil {
		return rpc.Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_CANCELED, "writing to the WebSocket: "+err.Error(), nil)
	}
	return nil
}

// unmarshalRequest is strict, as the REST API is: a misspelt field is an
// error that names it, not a reply silently lost.
var unmarshalRequest = protojson.UnmarshalOptions{DiscardUnknown: false}

// Recv reads one request. A close by the client (1000 or 1001) is
// io.EOF: the client ended its side.
func (s *socketStream) Recv() (*tcpgatev1.HandleRequest, error) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, io.EOF
	}
	s.recvWG.Add(1)
	s.mu.Unlock()
	defer s.recvWG.Done()

	// Not s.ctx: the library drops the connection when a read's context
	// ends, and the close frame that says why the stream ended would be
	// lost. Serve's end closes the WebSocket, which ends the read.
	typ, b, err := s.c.Read(context.Background())
	if err != nil {
		switch {
		case s.ctx.Err() != nil:
			return nil, s.ctx.Err()
		case errors.Is(err, websocket.ErrMessageTooBig):
			return nil, rpc.Status(codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED,
				fmt.Sprintf("a message over %d bytes (twice --max-send-bytes and 64 KiB)", s.limit), nil)
		}
		switch websocket.CloseStatus(err) {
		case websocket.StatusNormalClosure, websocket.StatusGoingAway:
			return nil, io.EOF
		}
		return nil, rpc.Status(codes.Canceled, tcpgatev1.ErrorReason_ERROR_REASON_CANCELED, "the WebSocket broke: "+err.Error(), nil)
	}
	if typ != websocket.MessageText {
		return nil, rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST,
			"a binary message: send each HandleRequest as JSON in a text message", nil)
	}
	req := &tcpgatev1.HandleRequest{}
	if err := unmarshalRequest.Unmarshal(b, req); err != nil {
		return nil, rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST,
			"malformed JSON: "+protoMessage(err), nil)
	}
	return req, nil
}

// end stops Recv and waits for the one in progress, which the
// WebSocket's close ended, so that nothing reads it after the handler.
func (s *socketStream) end() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.recvWG.Wait()
}

// closeBounded closes c with a close handshake of at most
// rpc.FinalWriteTimeout: a client that does not answer it holds no
// shutdown.
func closeBounded(c *websocket.Conn, code websocket.StatusCode, reason string) {
	done := make(chan struct{})
	go func() {
		_ = c.Close(code, reason)
		close(done)
	}()
	t := time.NewTimer(rpc.FinalWriteTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		_ = c.CloseNow()
		<-done
	}
}

// maxCloseReason is the longest close reason: a close frame's payload is
// at most 125 bytes, 2 of them the code.
const maxCloseReason = 123

// closeOf is the close code and reason of a stream that ended with err.
func closeOf(err error) (websocket.StatusCode, string) {
	if err == nil {
		return websocket.StatusNormalClosure, ""
	}
	st := status.Convert(err)
	return websocket.StatusCode(closeCodeBase + int(st.Code())), closeReason(err)
}

// closeReason is the status of err as JSON, {"code":3,"reason":"...",
// "message":"..."}, its message cut (at a character) to fit
// maxCloseReason bytes.
func closeReason(err error) string {
	st := status.Convert(err)
	r, _ := rpc.ReasonOf(err)
	v := struct {
		Code    int    `json:"code"`
		Reason  string `json:"reason,omitempty"`
		Message string `json:"message"`
	}{int(st.Code()), rpc.Reason(r), st.Message()}
	if r == tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		v.Reason = ""
	}
	if b, _ := json.Marshal(v); len(b) <= maxCloseReason {
		return string(b)
	}
	// No more of the message than the reason's room can fit; then a
	// character less at a time, until the cut and its "…" fit.
	m := v.Message[:min(len(v.Message), maxCloseReason)]
	for !utf8.ValidString(m) {
		m = m[:len(m)-1] // a character cut in two
	}
	for {
		_, size := utf8.DecodeLastRuneInString(m)
		m = m[:len(m)-size]
		v.Message = m + "…"
		if b, _ := json.Marshal(v); len(b) <= maxCloseReason || m == "" {
			return string(b)
		}
	}
}

// tokenProtocol returns the Sec-WebSocket-Protocol value that carries a
// token (bearer.TOKEN), if the client offered one.
func tokenProtocol(h http.Header) (string, bool) {
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			p = strings.TrimSpace(p)
			if strings.HasPrefix(p, bearerProtocol) && len(p) > len(bearerProtocol) {
				return p, true
			}
		}
	}
	return "", false
}

// headerHasToken reports whether a comma-separated header lists token,
// in any case.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// protoMessage is a protojson error without its "proto:" prefix, which
// says nothing to a client and takes room in a close reason.
func protoMessage(err error) string {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "proto:"); ok {
		msg = strings.TrimLeft(rest, " \u00a0")
	}
	return msg
}
