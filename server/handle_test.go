package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// handleClient is a Handle stream as a handler program drives it.
type handleClient struct {
	t      testing.TB
	st     tcpgatev1.GatewayService_HandleClient
	cancel context.CancelFunc
	reg    *tcpgatev1.HandleRegistered
	events []*tcpgatev1.HandleEvent
	rejs   []*tcpgatev1.HandleRejection
}

// openHandle opens a Handle stream and sends reg; it returns once the
// gateway confirmed the registration.
func openHandle(t testing.TB, g *servertest.Gateway, reg *tcpgatev1.HandleRegistration) *handleClient {
	t.Helper()
	h, err := tryHandle(t, g, reg)
	if err != nil {
		t.Fatalf("Handle registration: %v", err)
	}
	return h
}

// tryHandle is openHandle returning the stream's error instead.
func tryHandle(t testing.TB, g *servertest.Gateway, reg *tcpgatev1.HandleRegistration) (*handleClient, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(servertest.Context(t))
	t.Cleanup(cancel)
	st, err := g.Client.Handle(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := st.Send(&tcpgatev1.HandleRequest{Registration: reg}); err != nil {
		cancel()
		return nil, err
	}
	resp, err := st.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.GetRegistered() == nil {
		cancel()
		t.Fatalf("first response %v carries no registered", resp)
	}
	return &handleClient{t: t, st: st, cancel: cancel, reg: resp.GetRegistered()}, nil
}

func (h *handleClient) recv() {
	h.t.Helper()
	resp, err := h.st.Recv()
	if err != nil {
		h.t.Fatalf("Handle stream: %v", err)
	}
	h.events = append(h.events, resp.GetEvents()...)
	h.rejs = append(h.rejs, resp.GetRejections()...)
}

// next returns the stream's next event.
func (h *handleClient) next() *tcpgatev1.HandleEvent {
	h.t.Helper()
	for len(h.events) == 0 {
		h.recv()
	}
	e := h.events[0]
	h.events = h.events[1:]
	return e
}

// nextOf returns the next event of kind, failing on any other kind.
func (h *handleClient) nextOf(kind tcpgatev1.HandleEventKind) *tcpgatev1.HandleEvent {
	h.t.Helper()
	e := h.next()
	if e.GetKind() != kind {
		h.t.Fatalf("got event %v, want %v", e, kind)
	}
	return e
}

// rejection returns the next rejection.
func (h *handleClient) rejection() *tcpgatev1.HandleRejection {
	h.t.Helper()
	for len(h.rejs) == 0 {
		h.recv()
	}
	r := h.rejs[0]
	h.rejs = h.rejs[1:]
	return r
}

func (h *handleClient) reply(rs ...*tcpgatev1.HandleReply) {
	h.t.Helper()
	if err := h.st.Send(&tcpgatev1.HandleRequest{Replies: rs}); err != nil {
		h.t.Fatalf("sending replies: %v", err)
	}
}

func textReply(frame uint64, text string) *tcpgatev1.HandleReply {
	return &tcpgatev1.HandleReply{FrameId: frame, Payload: &tcpgatev1.HandleReply_Text{Text: text}}
}

var (
	handleOpened = tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_OPENED
	handleFrame  = tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME
	handleClosed = tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_CLOSED
)

func lineListener(t testing.TB, g *servertest.Gateway, ar *tcpgatev1.AutoReply) *tcpgatev1.Listener {
	t.Helper()
	return g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Host:      "127.0.0.1",
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: ar,
	})
}

func readLine(t testing.TB, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading a line: %v (got %q)", err, s)
	}
	return s
}

// kn-sock's example server as a Handle client: the client sends, the
// handler answers each message, the client reads the answer with the
// listener's framing; a reply with close closes with CLOSED_BY_HANDLER.
// What the handler wrote is DATA DIRECTION_SENT, only for include_sent
// subscribers.
func TestHandleKnSockFlow(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := lineListener(t, g, nil)
	both := g.Subscribe(t, &tcpgatev1.SubscribeRequest{IncludeSent: true})
	plain := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}})
	if h.reg.GetMaxInFlight() != 64 || h.reg.GetStreamId() == "" || h.reg.GetGroup() == "" || h.reg.GetHeader().GetIncarnation() == "" {
		t.Fatalf("registered %v: want max_in_flight 64, a stream id, a group and a header", h.reg)
	}

	c := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(c)
	opened := h.nextOf(handleOpened)
	if opened.GetListenerId() != l.GetListenerId() || opened.GetRemoteAddress() != c.LocalAddr().String() || opened.GetOrigin() != tcpgatev1.Origin_ORIGIN_ACCEPTED {
		t.Fatalf("opened %v: want listener %s, remote %s, accepted", opened, l.GetListenerId(), c.LocalAddr())
	}
	for _, msg := range []string{"hello", "world"} {
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			t.Fatal(err)
		}
		f := h.nextOf(handleFrame)
		if f.GetText() != msg || f.GetConnectionId() != opened.GetConnectionId() || f.GetFrameId() == 0 || f.GetRedelivered() {
			t.Fatalf("frame %v: want %q of %s", f, msg, opened.GetConnectionId())
		}
		h.reply(textReply(f.GetFrameId(), "Message received"))
		if got := readLine(t, r); got != "Message received\n" {
			t.Fatalf("client read %q", got)
		}
	}
	if _, err := c.Write([]byte("bye\n")); err != nil {
		t.Fatal(err)
	}
	f := h.nextOf(handleFrame)
	h.reply(&tcpgatev1.HandleReply{FrameId: f.GetFrameId(), Payload: &tcpgatev1.HandleReply_Text{Text: "bye!"}, Raw: true, Close: true})
	// A raw reply has no "\n"; the connection closes after it.
	if rest, err := io.ReadAll(r); err != nil || string(rest) != "bye!" {
		t.Fatalf("client read %q (%v), want the raw bye! then EOF", rest, err)
	}
	closed := h.nextOf(handleClosed)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_HANDLER {
		t.Fatalf("closed %v: want CLOSED_BY_HANDLER", closed)
	}

	var sent, plainData []string
	for {
		e := both.Next()
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA && e.GetDirection() == tcpgatev1.Direction_DIRECTION_SENT {
			sent = append(sent, string(payloadOf(e)))
		}
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
			break
		}
	}
	if want := []string{"Message received\n", "Message received\n", "bye!"}; strings.Join(sent, "|") != strings.Join(want, "|") {
		t.Fatalf("include_sent subscriber saw sent %q, want %q", sent, want)
	}
	for {
		e := plain.Next()
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA {
			if e.GetDirection() == tcpgatev1.Direction_DIRECTION_SENT {
				t.Fatalf("a default subscriber saw sent data %v", e)
			}
			plainData = append(plainData, string(payloadOf(e)))
		}
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
			break
		}
	}
	if strings.Join(plainData, "|") != "hello|world|bye" {
		t.Fatalf("default subscriber saw %q", plainData)
	}
}

// 100 connections at once, each sending its numbered lines: every client
// reads the answers to its own lines, in its order.
func TestHandleOrderPerConnection(t *testing.T) {
	const conns, lines = 100, 20
	g := servertest.Start(t, server.Config{})
	l := lineListener(t, g, nil)
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, MaxInFlight: 256})

	checkHandleOrder(t, h, l.GetAddress(), conns, lines)
}

// checkHandleOrder has h answer every frame with "ack " and its text, and
// conns clients of the line listener at addr send lines numbered lines at
// once: every client reads the answers to its own lines, in its order.
func checkHandleOrder(t *testing.T, h *handleClient, addr string, conns, lines int) {
	t.Helper()
	// The handler answers every frame with its text; it stops after the
	// expected number of frames.
	handlerErr := make(chan error, 1)
	go func() {
		answered := 0
		for answered < conns*lines {
			resp, err := h.st.Recv()
			if err != nil {
				handlerErr <- err
				return
			}
			var rs []*tcpgatev1.HandleReply
			for _, e := range resp.GetEvents() {
				if e.GetKind() == handleFrame {
					rs = append(rs, textReply(e.GetFrameId(), "ack "+e.GetText()))
				}
			}
			answered += len(rs)
			if len(rs) > 0 {
				if err := h.st.Send(&tcpgatev1.HandleRequest{Replies: rs}); err != nil {
					handlerErr <- err
					return
				}
			}
		}
		handlerErr <- nil
	}()

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		c := servertest.Dial(t, addr)
		wg.Go(func() {
			w := bufio.NewWriter(c)
			for j := range lines {
				fmt.Fprintf(w, "%d-%d\n", i, j)
			}
			if err := w.Flush(); err != nil {
				errs <- err
				return
			}
			r := bufio.NewReader(c)
			for j := range lines {
				got, err := r.ReadString('\n')
				if want := fmt.Sprintf("ack %d-%d\n", i, j); err != nil || got != want {
					errs <- fmt.Errorf("connection %d read %q (%v), want %q", i, got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := <-handlerErr; err != nil {
		t.Fatalf("handler: %v", err)
	}
}

// A group of three handlers shares the connections; one is killed with
// frames unanswered, and its connections move to the other two: OPENED
// there, then the same frames marked redelivered, which they answer.
func TestHandleGroupFailover(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	l := lineListener(t, g, nil)
	reg := &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, Group: "workers"}
	hs := []*handleClient{openHandle(t, g, reg), openHandle(t, g, reg), openHandle(t, g, reg)}
	for _, h := range hs {
		if h.reg.GetGroup() != "workers" {
			t.Fatalf("registered in %q", h.reg.GetGroup())
		}
	}

	// Six connections, least loaded first: two for each handler.
	type client struct {
		c *net.TCPConn
		r *bufio.Reader
	}
	clients := map[string]client{}
	owner := map[string]int{}
	for range 6 {
		c := servertest.Dial(t, l.GetAddress())
		clients[c.LocalAddr().String()] = client{c, bufio.NewReader(c)}
	}
	for i, h := range hs {
		for range 2 {
			o := h.nextOf(handleOpened)
			owner[o.GetConnectionId()] = i
		}
	}
	// Every client sends a line; handler 0 answers nothing, then dies.
	byConn := map[string]client{}
	for _, cl := range clients {
		if _, err := cl.c.Write([]byte("job " + cl.c.LocalAddr().String() + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	frames := map[string]*tcpgatev1.HandleEvent{}
	for _, h := range hs {
		for range 2 {
			f := h.nextOf(handleFrame)
			frames[f.GetConnectionId()] = f
		}
	}
	for id, f := range frames {
		for _, cl := range clients {
			if f.GetText() == "job "+cl.c.LocalAddr().String() {
				byConn[id] = cl
			}
		}
	}
	hs[0].cancel()

	// The survivors answer their own frames, then get handler 0's two
	// connections (one each, the least loaded) with their frames again.
	moved := 0
	for i, h := range hs[1:] {
		var rs []*tcpgatev1.HandleReply
		for id, f := range frames {
			if owner[id] == i+1 {
				rs = append(rs, textReply(f.GetFrameId(), "done "+f.GetText()))
			}
		}
		h.reply(rs...)
	}
	for _, h := range hs[1:] {
		o := h.nextOf(handleOpened)
		if owner[o.GetConnectionId()] != 0 {
			t.Fatalf("connection %s moved, but was handler %d's", o.GetConnectionId(), owner[o.GetConnectionId()])
		}
		f := h.nextOf(handleFrame)
		want := frames[o.GetConnectionId()]
		if !f.GetRedelivered() || f.GetFrameId() != want.GetFrameId() || f.GetText() != want.GetText() {
			t.Fatalf("redelivered %v, want frame %d %q marked redelivered", f, want.GetFrameId(), want.GetText())
		}
		h.reply(textReply(f.GetFrameId(), "done "+f.GetText()))
		moved++
	}
	if moved != 2 {
		t.Fatalf("%d connections moved, want 2", moved)
	}
	for id, cl := range byConn {
		if got, want := readLine(t, cl.r), "done "+frames[id].GetText()+"\n"; got != want {
			t.Fatalf("client of %s read %q, want %q", id, got, want)
		}
	}
	for series, want := range map[string]float64{
		"tcpgate_handler_streams":             2,
		"tcpgate_handler_frames_total":        6,
		"tcpgate_handler_replies_total":       6,
		"tcpgate_handler_redeliveries_total":  2,
		"tcpgate_handler_reply_seconds_count": 6,
		"tcpgate_handler_rejections_total":    0,
	} {
		if got := metric(t, g, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// A frame the handler does not answer within handler_timeout gets the
// listener's fallback reply, or closes the connection, as configured.
func TestHandleTimeout(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	timeout := durationpb.New(100e6) // 100 ms
	fallback := lineListener(t, g, &tcpgatev1.AutoReply{
		Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: "fallback\n"},
		HandlerTimeout: timeout,
	})
	closing := lineListener(t, g, &tcpgatev1.AutoReply{
		HandlerTimeout: timeout, OnHandlerTimeout: tcpgatev1.HandlerTimeoutAction_HANDLER_TIMEOUT_ACTION_CLOSE,
	})
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{fallback.GetListenerId(), closing.GetListenerId()}})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{closing.GetListenerId()}})

	c := servertest.Dial(t, fallback.GetAddress())
	if _, err := c.Write([]byte("anyone?\n")); err != nil {
		t.Fatal(err)
	}
	h.nextOf(handleOpened)
	late := h.nextOf(handleFrame)
	if got := readLine(t, bufio.NewReader(c)); got != "fallback\n" {
		t.Fatalf("client read %q, want the fallback", got)
	}
	// The answer after the timeout is refused: the frame is settled.
	h.reply(textReply(late.GetFrameId(), "too late"))
	if rej := h.rejection(); rej.GetReason() != tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED || rej.GetField() != "replies[0].frame_id" {
		t.Fatalf("late reply: rejection %v, want NOT_HANDLED on replies[0].frame_id", rej)
	}

	c2 := servertest.Dial(t, closing.GetAddress())
	if _, err := c2.Write([]byte("anyone?\n")); err != nil {
		t.Fatal(err)
	}
	if n, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes, want the connection closed", n)
	}
	closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_HANDLER_TIMEOUT {
		t.Fatalf("closed %v, want HANDLER_TIMEOUT", closed)
	}
	if got := metric(t, g, "tcpgate_handler_timeouts_total"); got != 2 {
		t.Errorf("tcpgate_handler_timeouts_total = %v, want 2", got)
	}
	if got := metric(t, g, "tcpgate_handler_rejections_total"); got != 1 {
		t.Errorf("tcpgate_handler_rejections_total = %v, want 1", got)
	}
}

// A handler that goes away without answering: its frames get the
// fallback reply, and later frames too.
func TestHandleDisconnectWithoutAnswer(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := lineListener(t, g, &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO})
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	h.nextOf(handleOpened)
	h.nextOf(handleFrame)
	h.cancel()
	if got := readLine(t, r); got != "one\n" {
		t.Fatalf("client read %q, want the echo fallback", got)
	}
	if _, err := c.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, r); got != "two\n" {
		t.Fatalf("client read %q, want the echo fallback", got)
	}
	// The group is gone with its stream: another one may take the listener.
	openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, Group: "other"})
}

// A managed outbound connection is handled like an accepted one: the
// device's ping is answered by the handler.
func TestHandleOutbound(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	got := make(chan string, 1)
	start := make(chan struct{})
	addr := servertest.Peer(t, func(c net.Conn) {
		<-start
		if _, err := c.Write([]byte("ping\n")); err != nil {
			got <- err.Error()
			return
		}
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			line = err.Error()
		}
		select {
		case got <- line:
		default: // a later socket, after the handler closed the first
		}
		_, _ = io.Copy(io.Discard, br) // until the gateway closes
	})
	oc := g.Connect(t, &tcpgatev1.ConnectRequest{Address: addr, Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ConnectionIds: []string{oc.GetConnectionId()}})
	close(start)
	// Open before the registration: taken on its first frame, OPENED first.
	o := h.nextOf(handleOpened)
	if o.GetConnectionId() != oc.GetConnectionId() || o.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND || o.GetGeneration() != 1 {
		t.Fatalf("opened %v: want %s, outbound, generation 1", o, oc.GetConnectionId())
	}
	f := h.nextOf(handleFrame)
	if f.GetText() != "ping" {
		t.Fatalf("frame %v, want ping", f)
	}
	h.reply(textReply(f.GetFrameId(), "pong"))
	if line := <-got; line != "pong\n" {
		t.Fatalf("device read %q, want pong", line)
	}
	// An unprompted write to the connection it handles.
	h.reply(&tcpgatev1.HandleReply{ConnectionId: oc.GetConnectionId(), Close: true})
	if c := h.nextOf(handleClosed); c.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_HANDLER {
		t.Fatalf("closed %v, want CLOSED_BY_HANDLER", c)
	}
}

// Every bad registration ends the stream with its status naming the
// field; every bad reply is a rejection naming its field, and the stream
// goes on.
func TestHandleBadInput(t *testing.T) {
	g := servertest.Start(t, server.Config{MaxHandlers: 2, MaxSendBytes: 16})
	l := lineListener(t, g, nil)
	other := lineListener(t, g, nil)
	lid := l.GetListenerId()
	openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{other.GetListenerId()}, Group: "taken"})

	for _, tc := range []struct {
		name   string
		reg    *tcpgatev1.HandleRegistration
		code   codes.Code
		reason string
		field  string
	}{
		{"none", &tcpgatev1.HandleRegistration{}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.listener_ids"},
		{"bad id", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid, "a b"}}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.listener_ids[1]"},
		{"not running", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid, "l-nothere"}}, codes.NotFound, "LISTENER_NOT_FOUND", "registration.listener_ids[1]"},
		{"no connection", &tcpgatev1.HandleRegistration{ConnectionIds: []string{"c-nothere"}}, codes.NotFound, "CONNECTION_NOT_FOUND", "registration.connection_ids[0]"},
		{"twice", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid, lid}}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.listener_ids[1]"},
		{"group", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}, Group: "no spaces"}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.group"},
		{"in flight", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}, MaxInFlight: 4097}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.max_in_flight"},
		{"format", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}, PayloadFormat: 99}, codes.InvalidArgument, "INVALID_ARGUMENT", "registration.payload_format"},
		{"conflict", &tcpgatev1.HandleRegistration{ListenerIds: []string{lid, other.GetListenerId()}}, codes.FailedPrecondition, "HANDLER_GROUP_CONFLICT", "registration.listener_ids[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tryHandle(t, g, tc.reg)
			e := servertest.ErrorOf(err)
			if e.Code != tc.code || e.Reason != tc.reason || e.Meta["field"] != tc.field {
				t.Fatalf("got %v %s field %q (%s), want %v %s field %q", e.Code, e.Reason, e.Meta["field"], e.Message, tc.code, tc.reason, tc.field)
			}
			if tc.reason == "HANDLER_GROUP_CONFLICT" && e.Meta["group"] != "taken" {
				t.Fatalf("conflict names group %q, want taken", e.Meta["group"])
			}
		})
	}
	t.Run("no registration", func(t *testing.T) {
		st, err := g.Client.Handle(servertest.Context(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&tcpgatev1.HandleRequest{Reply: textReply(1, "x")}); err != nil {
			t.Fatal(err)
		}
		_, err = st.Recv()
		if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Meta["field"] != "registration" {
			t.Fatalf("got %v field %q, want InvalidArgument on registration", e.Code, e.Meta["field"])
		}
	})

	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}})
	t.Run("max handlers", func(t *testing.T) {
		_, err := tryHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}})
		if e := servertest.ErrorOf(err); e.Code != codes.ResourceExhausted || e.Reason != "LIMIT_REACHED" || e.Meta["flag"] != "max-handlers" {
			t.Fatalf("got %v %s %v, want ResourceExhausted LIMIT_REACHED naming max-handlers", e.Code, e.Reason, e.Meta)
		}
	})

	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("q\n")); err != nil {
		t.Fatal(err)
	}
	o := h.nextOf(handleOpened)
	f := h.nextOf(handleFrame)
	oc := servertest.Dial(t, other.GetAddress())
	if _, err := oc.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	// The other listener's connection id, from a subscriber's view.
	var otherID string
	servertest.Eventually(t, "the other listener's connection", func() bool {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: other.GetListenerId()})
		if err != nil || len(resp.GetConnections()) == 0 {
			return false
		}
		otherID = resp.GetConnections()[0].GetConnectionId()
		return true
	})

	if err := h.st.Send(&tcpgatev1.HandleRequest{Reply: textReply(f.GetFrameId()+1000, "nobody's")}); err != nil {
		t.Fatal(err)
	}
	if rej := h.rejection(); rej.GetField() != "reply.frame_id" || rej.GetReason() != tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED {
		t.Fatalf("rejection %v, want NOT_HANDLED on reply.frame_id", rej)
	}
	for _, tc := range []struct {
		reply  *tcpgatev1.HandleReply
		reason tcpgatev1.ErrorReason
		field  string
	}{
		{&tcpgatev1.HandleReply{Payload: &tcpgatev1.HandleReply_Text{Text: "x"}}, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "replies[2].connection_id"},
		{&tcpgatev1.HandleReply{ConnectionId: "c-nothere", Payload: &tcpgatev1.HandleReply_Text{Text: "x"}}, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_NOT_FOUND, "replies[2].connection_id"},
		{&tcpgatev1.HandleReply{ConnectionId: otherID, Payload: &tcpgatev1.HandleReply_Text{Text: "x"}}, tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED, "replies[2].connection_id"},
		{&tcpgatev1.HandleReply{ConnectionId: o.GetConnectionId()}, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "replies[2]"},
		{&tcpgatev1.HandleReply{FrameId: f.GetFrameId(), Payload: &tcpgatev1.HandleReply_Text{Text: strings.Repeat("x", 17)}}, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "replies[2].text"},
		{&tcpgatev1.HandleReply{FrameId: f.GetFrameId(), Payload: &tcpgatev1.HandleReply_Data{Data: make([]byte, 17)}}, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "replies[2].data"},
		{&tcpgatev1.HandleReply{FrameId: f.GetFrameId(), ConnectionId: otherID}, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "replies[2].connection_id"},
	} {
		// Two good writes first: only the third is refused, by its index.
		h.reply(&tcpgatev1.HandleReply{ConnectionId: o.GetConnectionId(), Payload: &tcpgatev1.HandleReply_Text{Text: "a"}},
			&tcpgatev1.HandleReply{ConnectionId: o.GetConnectionId(), Payload: &tcpgatev1.HandleReply_Text{Text: "b"}}, tc.reply)
		rej := h.rejection()
		if rej.GetField() != tc.field || rej.GetReason() != tc.reason || rej.GetMessage() == "" {
			t.Errorf("reply %v: rejection %v, want %v on %s", tc.reply, rej, tc.reason, tc.field)
		}
	}
	// The stream went on: the frame is still answerable, after the writes.
	h.reply(textReply(f.GetFrameId(), "answer"))
	r := bufio.NewReader(c)
	for range 7 {
		if got := readLine(t, r); got != "a\n" {
			t.Fatalf("read %q, want a", got)
		}
		if got := readLine(t, r); got != "b\n" {
			t.Fatalf("read %q, want b", got)
		}
	}
	if got := readLine(t, r); got != "answer\n" {
		t.Fatalf("read %q, want answer", got)
	}
	// A second registration on the stream ends it.
	if err := h.st.Send(&tcpgatev1.HandleRequest{Registration: &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}}}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := h.st.Recv()
		if err != nil {
			if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Meta["field"] != "registration" {
				t.Fatalf("second registration: %v, want InvalidArgument on registration", err)
			}
			break
		}
	}
}

// A handler that never answers, and a client that writes a lot: once
// max_in_flight frames wait, the gateway stops reading the connection, so
// the client's writes block and the gateway's heap stays bounded.
func TestHandleBackpressure(t *testing.T) {
	const (
		chunk   = 256 << 10
		most    = 256 << 20 // what the client would write if nothing pushed back
		heapMax = 48 << 20  // the growth the gateway may show: frames, buffers, rings
	)
	g := servertest.Start(t, server.Config{ReplayBytes: 1 << 20})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	h := openHandle(t, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, MaxInFlight: 4})

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	c := servertest.Dial(t, l.GetAddress())
	written := make(chan int, 1)
	go func() {
		p := make([]byte, chunk)
		n := 0
		for n < most {
			// A write that cannot finish within the deadline is a blocked
			// one: the gateway no longer reads.
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			k, err := c.Write(p)
			n += k
			if err != nil {
				break
			}
		}
		written <- n
	}()
	h.nextOf(handleOpened)
	var frames []*tcpgatev1.HandleEvent
	for range 4 {
		frames = append(frames, h.nextOf(handleFrame))
	}
	n := <-written
	if n >= most {
		t.Fatalf("the client wrote all %d bytes: nothing pushed back", n)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("client wrote %d MiB before blocking; heap grew %d KiB", n>>20, growth>>10)
	if growth > heapMax {
		t.Fatalf("heap grew %d MiB with 4 frames in flight, want at most %d MiB", growth>>20, heapMax>>20)
	}
	got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil {
		t.Fatal(err)
	}
	if in := got.GetListener().GetBytesIn(); in > heapMax {
		t.Fatalf("the gateway read %d MiB from a connection whose handler answers nothing", in>>20)
	}
	// Answering one frame (with silence) lets one more in.
	if len(h.events) != 0 {
		t.Fatalf("events beyond max_in_flight: %v", h.events)
	}
	h.reply(&tcpgatev1.HandleReply{FrameId: frames[0].GetFrameId()})
	if f := h.nextOf(handleFrame); f.GetFrameId() <= frames[3].GetFrameId() {
		t.Fatalf("frame %d after an answer, want one after %d", f.GetFrameId(), frames[3].GetFrameId())
	}
}
