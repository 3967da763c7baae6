package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// fallbackListener starts a line listener on g whose fallback reply, for
// frames no handler answers, is "fallback".
func fallbackListener(t *testing.T, g *servertest.Gateway) *tcpgatev1.Listener {
	t.Helper()
	return g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: "fallback\n"}},
	})
}

// A Handle stream on node a handles a listener of node b: a client of b
// gets the stream's answers in the order of its lines, whatever the order
// of the answers; b gives the stream no more than its max_in_flight; a
// reply that writes to the connection reaches it; a late answer is
// refused as on one node.
func TestClusterHandleRemoteListener(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	a, b := gs["a"], gs["b"]
	l := fallbackListener(t, b)
	h := openHandle(t, a, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, MaxInFlight: 2})
	if h.reg.GetMaxInFlight() != 2 || h.reg.GetStreamId() == "" {
		t.Fatalf("registered %v", h.reg)
	}

	c := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(c)
	opened := h.nextOf(handleOpened)
	if opened.GetListenerId() != l.GetListenerId() || opened.GetRemoteAddress() != c.LocalAddr().String() {
		t.Fatalf("opened on a: %v, want listener %s of b, remote %s", opened, l.GetListenerId(), c.LocalAddr())
	}
	if _, err := io.WriteString(c, "0\n1\n2\n3\n4\n"); err != nil {
		t.Fatal(err)
	}
	f0, f1 := h.nextOf(handleFrame), h.nextOf(handleFrame)
	if f0.GetText() != "0" || f1.GetText() != "1" || f0.GetConnectionId() != opened.GetConnectionId() {
		t.Fatalf("frames %v, %v; want 0 and 1 of %s", f0, f1, opened.GetConnectionId())
	}
	// b gave two frames, its max_in_flight, and holds the rest back.
	if got := metric(t, b, "tcpgate_handler_frames_total"); got != 2 {
		t.Fatalf("b gave %v frames to the stream with 2 unanswered, want 2 (max_in_flight)", got)
	}
	if len(h.events) != 0 {
		t.Fatalf("events beyond max_in_flight: %v", h.events)
	}
	// Answered out of order, read in order.
	h.reply(textReply(f1.GetFrameId(), "re 1"))
	h.reply(textReply(f0.GetFrameId(), "re 0"))
	for _, want := range []string{"re 0\n", "re 1\n"} {
		if got := readLine(t, r); got != want {
			t.Fatalf("client of b read %q, want %q", got, want)
		}
	}
	for _, want := range []string{"2", "3", "4"} {
		f := h.nextOf(handleFrame)
		if f.GetText() != want {
			t.Fatalf("frame %v, want %q", f, want)
		}
		h.reply(textReply(f.GetFrameId(), "re "+want))
		if got := readLine(t, r); got != "re "+want+"\n" {
			t.Fatalf("client of b read %q", got)
		}
	}
	// A write to the connection, then an answer to a frame answered
	// already: refused as NOT_HANDLED.
	h.reply(&tcpgatev1.HandleReply{ConnectionId: opened.GetConnectionId(), Payload: &tcpgatev1.HandleReply_Text{Text: "pushed"}})
	if got := readLine(t, r); got != "pushed\n" {
		t.Fatalf("client of b read %q, want the stream's write", got)
	}
	h.reply(textReply(f0.GetFrameId(), "again"))
	if rej := h.rejection(); rej.GetReason() != tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED || rej.GetField() != "replies[0].frame_id" {
		t.Fatalf("answer to an answered frame: %v, want NOT_HANDLED on replies[0].frame_id", rej)
	}
	// Close by the handler: the client sees EOF, the stream CLOSED.
	h.reply(&tcpgatev1.HandleReply{ConnectionId: opened.GetConnectionId(), Close: true})
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("after close: %q, %v", rest, err)
	}
	if cl := h.nextOf(handleClosed); cl.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_HANDLER {
		t.Fatalf("closed %v, want CLOSED_BY_HANDLER", cl)
	}
}

// A group with a stream on a and one on c handles b's listener: each
// takes one of b's two connections; when a's stream ends with a frame
// unanswered, its connection moves to c's stream with that frame marked
// redelivered; once c's ends too, b's fallback answers.
func TestClusterHandleFailover(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b", "c")
	a, b, c := gs["a"], gs["b"], gs["c"]
	l := fallbackListener(t, b)
	reg := &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, Group: "workers"}
	ha := openHandle(t, a, reg)
	hc := openHandle(t, c, reg)

	type client struct {
		c *net.TCPConn
		r *bufio.Reader
	}
	clients := []client{}
	for range 2 {
		tc := servertest.Dial(t, l.GetAddress())
		clients = append(clients, client{tc, bufio.NewReader(tc)})
	}
	// Least loaded first: one connection for each stream.
	oa, oc := ha.nextOf(handleOpened), hc.nextOf(handleOpened)
	if oa.GetConnectionId() == oc.GetConnectionId() {
		t.Fatalf("both streams handle %s", oa.GetConnectionId())
	}
	byRemote := map[string]client{}
	for _, cl := range clients {
		byRemote[cl.c.LocalAddr().String()] = cl
		if _, err := io.WriteString(cl.c, "job "+cl.c.LocalAddr().String()+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	fa, fc := ha.nextOf(handleFrame), hc.nextOf(handleFrame)
	hc.reply(textReply(fc.GetFrameId(), "done by c"))
	if got := readLine(t, byRemote[oc.GetRemoteAddress()].r); got != "done by c\n" {
		t.Fatalf("client of c's connection read %q", got)
	}
	ha.cancel() // a's stream ends with fa unanswered

	moved := hc.nextOf(handleOpened)
	if moved.GetConnectionId() != oa.GetConnectionId() {
		t.Fatalf("moved %v, want a's connection %s", moved, oa.GetConnectionId())
	}
	again := hc.nextOf(handleFrame)
	if !again.GetRedelivered() || again.GetText() != fa.GetText() || again.GetConnectionId() != oa.GetConnectionId() {
		t.Fatalf("redelivered %v, want %q of %s marked redelivered", again, fa.GetText(), oa.GetConnectionId())
	}
	hc.reply(textReply(again.GetFrameId(), "done by c after a"))
	moverClient := byRemote[oa.GetRemoteAddress()]
	if got := readLine(t, moverClient.r); got != "done by c after a\n" {
		t.Fatalf("client of a's connection read %q", got)
	}

	// The last stream ends: the fallback answers.
	hc.cancel()
	servertest.Eventually(t, "b's relays to end", func() bool { return metric(t, b, "tcpgate_handler_streams") == 0 })
	if _, err := io.WriteString(moverClient.c, "anyone?\n"); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, moverClient.r); got != "fallback\n" {
		t.Fatalf("with no stream left, client read %q, want the fallback", got)
	}
}

// A stream on a for a listener on every node handles the clients of
// every node's listener.
func TestClusterHandleEveryNode(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b", "c")
	ctx := servertest.Context(t)
	resp, err := gs["b"].Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{EveryNode: true,
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	if err != nil {
		t.Fatal(err)
	}
	lid := resp.GetListener().GetListenerId()
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{lid}})
	go func() {
		for {
			rsp, err := h.st.Recv()
			if err != nil {
				return
			}
			var rs []*tcpgatev1.HandleReply
			for _, e := range rsp.GetEvents() {
				if e.GetKind() == handleFrame {
					rs = append(rs, textReply(e.GetFrameId(), "handled "+e.GetText()))
				}
			}
			if len(rs) > 0 && h.st.Send(&tcpgatev1.HandleRequest{Replies: rs}) != nil {
				return
			}
		}
	}()
	_, port, _ := net.SplitHostPort(resp.GetListener().GetAddress())
	var wg sync.WaitGroup
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.%d:%s", 11+i, port)
		wg.Go(func() {
			tc := servertest.Dial(t, addr)
			r := bufio.NewReader(tc)
			for j := range 3 {
				msg := fmt.Sprintf("%s #%d", addr, j)
				if got := exchange(t, tc, r, msg); got != "handled "+msg {
					t.Errorf("client of %s read %q, want %q", addr, got, "handled "+msg)
				}
			}
		})
	}
	wg.Wait()
}

// A registration fails as on one node: for a listener no node runs
// (NotFound), and for a listener of b that a group on b handles
// (HANDLER_GROUP_CONFLICT naming the field and the group).
func TestClusterHandleRegistrationErrors(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	a, b := gs["a"], gs["b"]
	l := fallbackListener(t, b)
	mine := fallbackListener(t, a)
	openHandle(t, b, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, Group: "taken"})

	_, err := tryHandle(t, a, &tcpgatev1.HandleRegistration{ListenerIds: []string{mine.GetListenerId(), "l-nowhere"}})
	if e := servertest.ErrorOf(err); e.Code != codes.NotFound || e.Meta["field"] != "registration.listener_ids[1]" {
		t.Fatalf("a listener no node runs: %v, want NotFound on registration.listener_ids[1]", err)
	}
	_, err = tryHandle(t, a, &tcpgatev1.HandleRegistration{ListenerIds: []string{mine.GetListenerId(), l.GetListenerId()}, Group: "other"})
	if e := servertest.ErrorOf(err); e.Code != codes.FailedPrecondition || e.Reason != "HANDLER_GROUP_CONFLICT" ||
		e.Meta["field"] != "registration.listener_ids[1]" || e.Meta["group"] != "taken" {
		t.Fatalf("a listener of b another group handles: %v, want HANDLER_GROUP_CONFLICT on registration.listener_ids[1], group taken", err)
	}
	// The failed registration left nothing behind: a's listener is free
	// for a stream of any group.
	servertest.Eventually(t, "a's relay of the failed registration to end", func() bool { return metric(t, a, "tcpgate_handler_streams") == 0 })
	h := openHandle(t, a, &tcpgatev1.HandleRegistration{ListenerIds: []string{mine.GetListenerId()}, Group: "third"})
	tc := servertest.Dial(t, mine.GetAddress())
	h.nextOf(handleOpened)
	io.WriteString(tc, "x\n")
	f := h.nextOf(handleFrame)
	h.reply(textReply(f.GetFrameId(), "y"))
	if got := readLine(t, bufio.NewReader(tc)); got != "y\n" {
		t.Fatalf("read %q", got)
	}
}

// A stream on a handles an outbound connection of b: the device's line
// reaches the stream, its answer reaches the device.
func TestClusterHandleRemoteOutbound(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	got := make(chan string, 1)
	start := make(chan struct{})
	addr := servertest.Peer(t, func(c net.Conn) {
		<-start
		if _, err := io.WriteString(c, "ping\n"); err != nil {
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
		default:
		}
		_, _ = io.Copy(io.Discard, br)
	})
	oc := gs["b"].Connect(t, &tcpgatev1.ConnectRequest{Address: addr, Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ConnectionIds: []string{oc.GetConnectionId()}})
	close(start)
	o := h.nextOf(handleOpened)
	if o.GetConnectionId() != oc.GetConnectionId() || o.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND || o.GetGeneration() != 1 {
		t.Fatalf("opened %v: want b's %s, outbound, generation 1", o, oc.GetConnectionId())
	}
	f := h.nextOf(handleFrame)
	if f.GetText() != "ping" {
		t.Fatalf("frame %v, want ping", f)
	}
	h.reply(textReply(f.GetFrameId(), "pong"))
	if line := <-got; line != "pong\n" {
		t.Fatalf("device read %q, want pong", line)
	}
}

// b, where the connection lives, runs the handler timeout: a frame the
// stream on a does not answer in time gets b's fallback, and the late
// answer is refused.
func TestClusterHandleTimeout(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	l := gs["b"].StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: "fallback\n"}, HandlerTimeout: durationpb.New(100e6)},
	})
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	io.WriteString(c, "anyone?\n")
	h.nextOf(handleOpened)
	late := h.nextOf(handleFrame)
	if got := readLine(t, bufio.NewReader(c)); got != "fallback\n" {
		t.Fatalf("client read %q, want b's fallback", got)
	}
	h.reply(textReply(late.GetFrameId(), "too late"))
	if rej := h.rejection(); rej.GetReason() != tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED || rej.GetField() != "replies[0].frame_id" {
		t.Fatalf("late reply: %v, want NOT_HANDLED on replies[0].frame_id", rej)
	}
	if got := metric(t, gs["b"], "tcpgate_handler_timeouts_total"); got != 1 {
		t.Fatalf("b's tcpgate_handler_timeouts_total = %v, want 1", got)
	}
}

// The node holding a stream shuts down: the nodes whose connections it
// handled take them back, and their fallback answers.
func TestClusterHandleHolderLeaves(t *testing.T) {
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	l := fallbackListener(t, gs["b"])
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}})
	c := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(c)
	io.WriteString(c, "first\n")
	h.nextOf(handleOpened)
	h.nextOf(handleFrame) // unanswered when a goes
	if err := gs["a"].Stop(); err != nil {
		t.Fatalf("stopping a: %v", err)
	}
	if got := readLine(t, r); got != "fallback\n" {
		t.Fatalf("client read %q, want b's fallback for the frame a left unanswered", got)
	}
	if got := exchange(t, c, r, "second"); got != "fallback" {
		t.Fatalf("client read %q, want b's fallback", got)
	}
}

// --max-handlers bounds the streams a node holds, wherever their
// connections are.
func TestClusterHandleLimit(t *testing.T) {
	ns := natstest.Start(t)
	gs := map[string]*servertest.Gateway{
		"a": servertest.Start(t, server.Config{NodeID: "a", NodeHost: "127.0.0.11", HTTPAddr: "127.0.0.1:0", MaxHandlers: 1,
			Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test"}}),
		"b": servertest.Start(t, server.Config{NodeID: "b", NodeHost: "127.0.0.12", HTTPAddr: "127.0.0.1:0",
			Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "test"}}),
	}
	servertest.Eventually(t, "a to see b", func() bool { return len(gs["a"].Server.ClusterNodes()) == 2 })
	l1, l2 := fallbackListener(t, gs["b"]), fallbackListener(t, gs["b"])
	openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l1.GetListenerId()}})
	_, err := tryHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l2.GetListenerId()}})
	if e := servertest.ErrorOf(err); e.Code != codes.ResourceExhausted {
		t.Fatalf("a second stream on a with --max-handlers 1: %v, want ResourceExhausted", err)
	}
}

// Many connections of b at once, each sending its numbered lines, handled
// by a stream on a: every client reads the answers to its own lines, in
// its order.
func TestClusterHandleOrderUnderLoad(t *testing.T) {
	const conns, lines = 30, 30
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	l := fallbackListener(t, gs["b"])
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, MaxInFlight: 256})
	checkHandleOrder(t, h, l.GetAddress(), conns, lines)
}

// A frame and an answer near the cluster's limits (NATS's max_payload,
// 1 MB by default, less the gateway's overhead) cross between nodes
// whole.
func TestClusterHandleLargeFrames(t *testing.T) {
	const size = 1000 << 10 // within the limits fitted to max_payload
	ns := natstest.Start(t)
	gs := clusterOf(t, ns, "a", "b")
	l := fallbackListener(t, gs["b"])
	h := openHandle(t, gs["a"], &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, MaxInFlight: 4,
		PayloadFormat: tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA})
	c := servertest.Dial(t, l.GetAddress())
	line := make([]byte, size)
	for i := range line {
		line[i] = 'a' + byte(i%26)
	}
	go func() {
		for range 2 {
			if _, err := c.Write(append(line, '\n')); err != nil {
				return
			}
		}
	}()
	h.nextOf(handleOpened)
	r := bufio.NewReaderSize(c, 2*size)
	for i := range 2 {
		f := h.nextOf(handleFrame)
		if string(f.GetData()) != string(line) {
			t.Fatalf("frame %d: %d bytes, want the %d sent", i, len(f.GetData()), size)
		}
		h.reply(&tcpgatev1.HandleReply{FrameId: f.GetFrameId(), Payload: &tcpgatev1.HandleReply_Data{Data: f.GetData()}})
		if got := readLine(t, r); len(got) != size+1 || got[:size] != string(line) {
			t.Fatalf("answer %d: %d bytes, want the frame back", i, len(got))
		}
	}
}
