package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/internal/ids"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// Handle streams in a cluster. The node a client registers with (the
// holder) keeps the client's stream; every node that runs a listener or
// holds an outbound connection the registration names registers a relay
// with its own handler.Manager: an ordinary handler stream, of the same
// group and max_in_flight, whose events go to the holder instead of to a
// client. So the node where a connection lives keeps every decision
// about it, as alone: which stream of the group handles it, the
// max_in_flight pushback, the handler timeout, the failover when a
// stream ends. The holder numbers the frames of every relay in one space
// for its client, and carries each answer to the frame's node.
//
// Subjects (NAME the cluster, ID a node):
//   - tcpgate.NAME.node.ID.handle: requests to a node's relays: register,
//     reply (an answer, a write or a close), close; JSON handleOp.
//   - tcpgate.NAME.node.ID.hev: a relay's events for a stream the node
//     holds, and its pings while idle; JSON relayBatch, acked.
//
// A relay ends when its holder says so, when its holder answers that the
// stream is gone or does not answer at all (no responders: the holder's
// connection to NATS is gone), and when the holder is no longer a live
// node; its connections then go to another stream of the group on their
// node, or to the fallback.
const (
	handleVersion = 1
	// eventSlack is what an event's JSON takes in a batch beyond its
	// own: the comma, its length field.
	eventSlack = 32
	// batchSlack is what a batch keeps free of NATS's max_payload for its
	// own fields and NATS's: the gateway's frames leave 16 KiB
	// (server.natsOverhead), of which this is part.
	batchSlack = 4 << 10
	// relayRetries is how many times a relay resends a batch its holder
	// did not ack before it ends.
	relayRetries = 3
)

// errHandleDecode is the cause of every handle message that does not
// decode.
var errHandleDecode = errors.New("cluster handle message does not decode")

// handleOp is a request to a node's relays.
type handleOp struct {
	V      int        `json:"v"`
	Op     string     `json:"op"` // "register", "reply", "close"
	Stream string     `json:"stream"`
	Holder string     `json:"holder,omitempty"`
	Reg    *wireReg   `json:"reg,omitempty"`
	Reply  *wireReply `json:"reply,omitempty"`
}

// wireReg is a handler.Registration.
type wireReg struct {
	Listeners []string `json:"listeners,omitempty"`
	Conns     []string `json:"conns,omitempty"`
	Group     string   `json:"group,omitempty"`
	Max       int      `json:"max"`
}

// wireReply is a handler.Reply, its frame id the relay's.
type wireReply struct {
	Frame      uint64 `json:"frame,omitempty"`
	Conn       string `json:"conn,omitempty"`
	Payload    []byte `json:"-"` // carried after the JSON
	HasPayload bool   `json:"has_payload,omitempty"`
	Raw        bool   `json:"raw,omitempty"`
	Close      bool   `json:"close,omitempty"`
}

// handleAnswer answers a handleOp: an error, or for a registration which
// targets the node has.
type handleAnswer struct {
	Err       *wireErr `json:"err,omitempty"`
	Listeners []bool   `json:"listeners,omitempty"`
	Conns     []bool   `json:"conns,omitempty"`
}

// wireErr is a handler error that crosses the cluster with what the API
// needs of it.
type wireErr struct {
	Kind  string `json:"kind"` // "invalid", "conflict", "limit", "not_handled", "not_found", "closed", "other"
	Field string `json:"field,omitempty"`
	Group string `json:"group,omitempty"`
	Limit int    `json:"limit,omitempty"`
	Msg   string `json:"msg"`
}

// relayEvent is a handler.Event of a relay.
type relayEvent struct {
	Kind        handler.EventKind `json:"kind"`
	Conn        handler.ConnInfo  `json:"conn"`
	Frame       uint64            `json:"frame,omitempty"`
	Data        []byte            `json:"-"` // carried after the JSON
	Len         int               `json:"len,omitempty"`
	Redelivered bool              `json:"redelivered,omitempty"`
	Reason      event.CloseReason `json:"reason,omitempty"`
}

// relayBatch is what a relay sends its holder: events, a ping, or its
// end.
type relayBatch struct {
	V      int          `json:"v"`
	Stream string       `json:"stream"`
	Node   string       `json:"node"`
	Seq    uint64       `json:"seq"` // of the batch, from 1; a resent batch keeps it
	Events []relayEvent `json:"events,omitempty"`
	Ended  bool         `json:"ended,omitempty"`
}

// batchAck answers a relayBatch; Gone says the holder has no such stream.
type batchAck struct {
	Gone bool `json:"gone,omitempty"`
}

// A handleOp or a relayBatch crosses NATS as its JSON's length (a
// uvarint), its JSON, then the bytes of its payloads, as they are: a
// frame or a reply as large as NATS's max_payload allows would not fit
// in base64.

// pack encodes head and the payloads after it.
func pack(head any, payloads ...[]byte) []byte {
	j, _ := json.Marshal(head)
	n := len(j) + binary.MaxVarintLen64
	for _, p := range payloads {
		n += len(p)
	}
	b := binary.AppendUvarint(make([]byte, 0, n), uint64(len(j)))
	b = append(b, j...)
	for _, p := range payloads {
		b = append(b, p...)
	}
	return b
}

// unpack decodes the head of b into head, and returns the payloads' bytes.
func unpack(b []byte, head any) ([]byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, fmt.Errorf("%w: no head", errHandleDecode)
	}
	if err := json.Unmarshal(b[k:k+int(n)], head); err != nil {
		return nil, fmt.Errorf("%w: %v", errHandleDecode, err)
	}
	return b[k+int(n):], nil
}

func encodeHandleOp(op *handleOp) []byte {
	if op.Reply != nil && op.Reply.HasPayload {
		return pack(op, op.Reply.Payload)
	}
	return pack(op)
}

func decodeHandleOp(b []byte) (*handleOp, error) {
	var op handleOp
	rest, err := unpack(b, &op)
	if err != nil {
		return nil, err
	}
	switch {
	case op.Reply != nil && op.Reply.HasPayload:
		op.Reply.Payload = rest
	case len(rest) > 0:
		return nil, fmt.Errorf("%w: %d bytes of payload without a reply's", errHandleDecode, len(rest))
	}
	if op.V != handleVersion || op.Stream == "" {
		return nil, fmt.Errorf("%w: version %d, stream %q", errHandleDecode, op.V, op.Stream)
	}
	switch {
	case op.Op == "register" && op.Reg != nil && tokenPattern.MatchString(op.Holder):
	case op.Op == "reply" && op.Reply != nil:
	case op.Op == "close":
	default:
		return nil, fmt.Errorf("%w: op %q", errHandleDecode, op.Op)
	}
	return &op, nil
}

func encodeRelayBatch(rb *relayBatch) []byte {
	data := make([][]byte, len(rb.Events))
	for i := range rb.Events {
		rb.Events[i].Len = len(rb.Events[i].Data)
		data[i] = rb.Events[i].Data
	}
	return pack(rb, data...)
}

func decodeRelayBatch(b []byte) (*relayBatch, error) {
	var rb relayBatch
	rest, err := unpack(b, &rb)
	if err != nil {
		return nil, err
	}
	if rb.V != handleVersion || rb.Stream == "" || rb.Node == "" {
		return nil, fmt.Errorf("%w: version %d, stream %q, node %q", errHandleDecode, rb.V, rb.Stream, rb.Node)
	}
	for i := range rb.Events {
		e := &rb.Events[i]
		if e.Kind < handler.Opened || e.Kind > handler.Closed || e.Conn.ID == "" {
			return nil, fmt.Errorf("%w: event kind %d of connection %q", errHandleDecode, e.Kind, e.Conn.ID)
		}
		if e.Len < 0 || e.Len > len(rest) || (e.Len > 0 && e.Kind != handler.Frame) {
			return nil, fmt.Errorf("%w: event %d: %d bytes of data, %d left", errHandleDecode, i, e.Len, len(rest))
		}
		if e.Kind == handler.Frame {
			e.Data, rest = rest[:e.Len:e.Len], rest[e.Len:]
		}
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: %d bytes after the events' data", errHandleDecode, len(rest))
	}
	return &rb, nil
}

// Handlers serves Handle streams across the cluster: it registers
// streams for this node's clients (rpc.Handlers), and runs this node's
// relays for streams of every node. Its goroutines end with the
// Cluster.
type Handlers struct {
	c   *Cluster
	m   *handler.Manager
	max int // the streams this node may hold (--max-handlers)

	mu      sync.Mutex         // guards the fields below
	streams map[string]*Stream // held here, by id
	relays  map[string]*relay  // run here, by the holder's stream id
	closed  bool
}

// Handlers starts serving Handle streams across the cluster with m, this
// node's handler manager. maxStreams bounds the streams this node holds
// for its clients, as m bounds the relays it runs; 0 means
// handler.DefaultMaxStreams.
func (c *Cluster) Handlers(m *handler.Manager, maxStreams int) (*Handlers, error) {
	if maxStreams <= 0 {
		maxStreams = handler.DefaultMaxStreams
	}
	h := &Handlers{c: c, m: m, max: maxStreams, streams: map[string]*Stream{}, relays: map[string]*relay{}}
	ops, err := c.nc.Subscribe(c.subject("node", c.cfg.Node, "handle"), h.serveOp)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: serving handler streams: %w", c.cfg.Name, err)
	}
	evs, err := c.nc.Subscribe(c.subject("node", c.cfg.Node, "hev"), h.serveBatch)
	if err != nil {
		_ = ops.Unsubscribe()
		return nil, fmt.Errorf("cluster %q: serving handler streams: %w", c.cfg.Name, err)
	}
	// Once Handlers returns, the subscriptions are known to the server:
	// a registration right after finds this node.
	if err := c.nc.Flush(); err != nil {
		_ = ops.Unsubscribe()
		_ = evs.Unsubscribe()
		return nil, fmt.Errorf("cluster %q: serving handler streams: %w", c.cfg.Name, err)
	}
	c.wg.Add(2)
	go h.sweep()
	go func() {
		defer c.wg.Done()
		<-c.closed
		_ = ops.Unsubscribe()
		_ = evs.Unsubscribe()
		h.Close()
	}()
	return h, nil
}

// Close ends every stream held here (their clients are told the gateway
// shuts down) and every relay run here. Idempotent.
func (h *Handlers) Close() {
	h.mu.Lock()
	h.closed = true
	streams := make([]*Stream, 0, len(h.streams))
	for _, s := range h.streams {
		streams = append(streams, s)
	}
	relays := make([]*relay, 0, len(h.relays))
	for _, r := range h.relays {
		relays = append(relays, r)
	}
	h.mu.Unlock()
	// At once: each stream's close waits on its nodes' answers.
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Go(s.Close)
	}
	wg.Wait()
	for _, r := range relays {
		r.st.Close()
	}
}

// request sends v to subject and decodes the answer into out.
func (h *Handlers) request(ctx context.Context, subject string, b []byte, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRequestTimeout)
		defer cancel()
	}
	m, err := h.c.nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, out); err != nil {
		return fmt.Errorf("%w: %v", errHandleDecode, err)
	}
	return nil
}

// alive reports whether node is a live node of the cluster.
func (h *Handlers) alive(node string) bool {
	return slices.Contains(h.c.Nodes(), node)
}

// Register registers a stream for this node's client: a relay on every
// node that has one of r's targets. It fails as a registration on one
// node does (a target of another group, the stream limit of a node, a
// target no node has), and with placement.ErrNodeUnavailable when a
// target is found nowhere while a node did not answer.
func (h *Handlers) Register(ctx context.Context, r handler.Registration) (*Stream, error) {
	if err := handler.Validate(&r); err != nil {
		return nil, err
	}
	id := ids.New(ids.Handler)
	group := r.Group
	if group == "" {
		group = "own-" + id
	}
	s := &Stream{h: h, id: id, group: group, max: r.MaxInFlight,
		frames: map[uint64]remoteFrame{}, conns: map[string]remoteConn{}, seqs: map[string]uint64{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, handler.ErrClosed
	}
	if len(h.streams) >= h.max {
		h.mu.Unlock()
		return nil, &handler.LimitError{Limit: h.max}
	}
	h.streams[id] = s
	h.mu.Unlock()

	op := &handleOp{V: handleVersion, Op: "register", Stream: id, Holder: h.c.cfg.Node,
		Reg: &wireReg{Listeners: r.ListenerIDs, Conns: r.ConnectionIDs, Group: r.Group, Max: r.MaxInFlight}}
	nodes := h.c.Nodes()
	answers := make([]handleAnswer, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = h.request(ctx, h.c.subject("node", n, "handle"), encodeHandleOp(op), &answers[i]) })
	}
	wg.Wait()
	foundL, foundC := make([]bool, len(r.ListenerIDs)), make([]bool, len(r.ConnectionIDs))
	var fail error
	var silent string
	for i, n := range nodes {
		switch {
		case errs[i] != nil:
			h.c.cfg.Log.Warn("cluster: a node did not take a handler registration", "node", n, "stream", id, "error", errs[i])
			if silent == "" {
				silent = n
			}
			continue
		case answers[i].Err != nil:
			if fail == nil {
				fail = answers[i].Err.toError()
			}
			continue
		}
		// An answer longer than the registration (a peer's bug) names
		// nothing more.
		for j, ok := range answers[i].Listeners {
			if ok && j < len(foundL) {
				foundL[j] = true
			}
		}
		for j, ok := range answers[i].Conns {
			if ok && j < len(foundC) {
				foundC[j] = true
			}
		}
	}
	if fail == nil {
		fail = missing(r, foundL, foundC, silent)
	}
	if fail != nil {
		s.Close()
		return nil, fail
	}
	s.mu.Lock()
	if !s.gone {
		s.stopWatch = context.AfterFunc(ctx, s.Close)
	}
	s.mu.Unlock()
	return s, nil
}

// missing is the error of the first target no node has; with a node that
// did not answer, that node may have it.
func missing(r handler.Registration, foundL, foundC []bool, silent string) error {
	field, what, sentinel := "", "", error(nil)
	for i, ok := range foundL {
		if !ok {
			field, what, sentinel = "registration.listener_ids["+strconv.Itoa(i)+"]", fmt.Sprintf("no listener %q runs on any node", r.ListenerIDs[i]), handler.ErrListenerNotFound
			break
		}
	}
	if field == "" {
		for i, ok := range foundC {
			if !ok {
				field, what, sentinel = "registration.connection_ids["+strconv.Itoa(i)+"]", fmt.Sprintf("no outbound connection %q (Connect) exists on any node", r.ConnectionIDs[i]), handler.ErrConnectionNotFound
				break
			}
		}
	}
	switch {
	case field == "":
		return nil
	case silent != "":
		return &placement.NodeError{Node: silent, Err: placement.ErrNodeUnavailable, Detail: field + ": " + what + " that answered, and node " + silent + " did not answer the registration: retry once it is back or lost"}
	}
	return &page.FieldError{Field: field, Reason: what, Err: sentinel}
}

func (e *wireErr) toError() error {
	switch e.Kind {
	case "invalid":
		return &page.FieldError{Field: e.Field, Reason: e.Msg, Err: handler.ErrInvalid}
	case "conflict":
		return &handler.ConflictError{Field: e.Field, Group: e.Group}
	case "limit":
		return &handler.LimitError{Limit: e.Limit}
	case "closed":
		return handler.ErrClosed
	}
	return errors.New(e.Msg)
}

// toWireErr describes a handler error for the holder.
func toWireErr(err error) *wireErr {
	var ce *handler.ConflictError
	var le *handler.LimitError
	var fe *page.FieldError
	var re *handler.ReplyError
	switch {
	case errors.As(err, &ce):
		return &wireErr{Kind: "conflict", Field: ce.Field, Group: ce.Group, Msg: err.Error()}
	case errors.As(err, &le):
		return &wireErr{Kind: "limit", Limit: le.Limit, Msg: err.Error()}
	case errors.As(err, &re):
		k := "other"
		switch {
		case errors.Is(err, handler.ErrNotHandled):
			k = "not_handled"
		case errors.Is(err, handler.ErrConnectionNotFound):
			k = "not_found"
		case errors.Is(err, handler.ErrInvalid):
			k = "invalid"
		}
		return &wireErr{Kind: k, Field: re.Field, Msg: re.Msg}
	case errors.As(err, &fe) && errors.Is(err, handler.ErrInvalid):
		return &wireErr{Kind: "invalid", Field: fe.Field, Msg: fe.Reason}
	case errors.Is(err, handler.ErrClosed):
		return &wireErr{Kind: "closed", Msg: err.Error()}
	}
	return &wireErr{Kind: "other", Msg: err.Error()}
}

// replyError rebuilds a refused reply.
func (e *wireErr) replyError() error {
	re := &handler.ReplyError{Field: e.Field, Msg: e.Msg}
	switch e.Kind {
	case "not_handled":
		re.Err = handler.ErrNotHandled
	case "not_found":
		re.Err = handler.ErrConnectionNotFound
	case "invalid":
		re.Err = handler.ErrInvalid
	case "closed":
		re.Err = handler.ErrNotHandled
	default:
		re.Err = errors.New(e.Msg)
	}
	return re
}

// serveOp answers a request to this node's relays, on a goroutine of its
// own: a reply may wait on a connection's write.
func (h *Handlers) serveOp(m *nats.Msg) {
	h.c.wg.Add(1)
	go func() {
		defer h.c.wg.Done()
		ans := h.op(m.Data)
		b, _ := json.Marshal(ans)
		if err := m.Respond(b); err != nil {
			h.c.cfg.Log.Warn("cluster: a handler request's answer was not sent", "error", err)
		}
	}()
}

func (h *Handlers) op(data []byte) handleAnswer {
	op, err := decodeHandleOp(data)
	if err != nil {
		return handleAnswer{Err: &wireErr{Kind: "other", Msg: err.Error()}}
	}
	switch op.Op {
	case "register":
		return h.register(op)
	case "close":
		h.mu.Lock()
		r := h.relays[op.Stream]
		h.mu.Unlock()
		if r != nil {
			r.st.Close()
		}
		return handleAnswer{}
	}
	h.mu.Lock()
	r := h.relays[op.Stream]
	h.mu.Unlock()
	if r == nil {
		return handleAnswer{Err: &wireErr{Kind: "not_handled", Msg: fmt.Sprintf("the stream has no relay on node %s (it ended)", h.c.cfg.Node)}}
	}
	w := op.Reply
	rep := handler.Reply{FrameID: w.Frame, ConnectionID: w.Conn, Raw: w.Raw, Close: w.Close}
	if w.HasPayload {
		rep.Payload = w.Payload
		if rep.Payload == nil {
			rep.Payload = []byte{}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultRequestTimeout)
	defer cancel()
	if err := r.st.Reply(ctx, rep); err != nil {
		return handleAnswer{Err: toWireErr(err)}
	}
	return handleAnswer{}
}

// register starts a relay for the targets of op this node has.
func (h *Handlers) register(op *handleOp) handleAnswer {
	reg := handler.Registration{ListenerIDs: op.Reg.Listeners, ConnectionIDs: op.Reg.Conns, Group: op.Reg.Group, MaxInFlight: op.Reg.Max}
	if err := handler.Validate(&reg); err != nil {
		return handleAnswer{Err: toWireErr(err)}
	}
	hasL, hasC := h.m.Has(reg)
	ans := handleAnswer{Listeners: hasL, Conns: hasC}
	mine := handler.Registration{Group: reg.Group, MaxInFlight: reg.MaxInFlight}
	var fields []string // the holder's field of each of mine's, in order
	for i, ok := range hasL {
		if ok {
			mine.ListenerIDs = append(mine.ListenerIDs, reg.ListenerIDs[i])
			fields = append(fields, "registration.listener_ids["+strconv.Itoa(i)+"]")
		}
	}
	for i, ok := range hasC {
		if ok {
			mine.ConnectionIDs = append(mine.ConnectionIDs, reg.ConnectionIDs[i])
			fields = append(fields, "registration.connection_ids["+strconv.Itoa(i)+"]")
		}
	}
	if len(fields) == 0 {
		return ans
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return handleAnswer{Err: toWireErr(handler.ErrClosed)}
	}
	if h.relays[op.Stream] != nil {
		return handleAnswer{Err: &wireErr{Kind: "other", Msg: fmt.Sprintf("stream %s has a relay on node %s already", op.Stream, h.c.cfg.Node)}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.m.Register(ctx, mine)
	if err != nil {
		cancel()
		we := toWireErr(err)
		if we.Field != "" {
			we.Field = holderField(we.Field, mine, fields)
		}
		return handleAnswer{Err: we}
	}
	r := &relay{h: h, stream: op.Stream, holder: op.Holder, st: st, cancel: cancel}
	h.relays[op.Stream] = r
	h.c.wg.Add(1)
	go r.run(ctx)
	return ans
}

// holderField names the field of the holder's registration that field of
// mine (the node's part of it) is.
func holderField(field string, mine handler.Registration, fields []string) string {
	for i := range mine.ListenerIDs {
		if field == "registration.listener_ids["+strconv.Itoa(i)+"]" {
			return fields[i]
		}
	}
	for i := range mine.ConnectionIDs {
		if field == "registration.connection_ids["+strconv.Itoa(i)+"]" {
			return fields[len(mine.ListenerIDs)+i]
		}
	}
	return field
}

// relay is this node's stream for a stream another node (or this one)
// holds.
type relay struct {
	h      *Handlers
	stream string
	holder string
	st     *handler.Stream
	cancel context.CancelFunc
	seq    uint64
}

// run carries the relay's events to the holder until the relay ends, and
// pings the holder while there are none, to find out when it is gone.
func (r *relay) run(ctx context.Context) {
	c := r.h.c
	defer c.wg.Done()
	defer func() {
		r.cancel()
		r.st.Close()
		r.h.mu.Lock()
		if r.h.relays[r.stream] == r {
			delete(r.h.relays, r.stream)
		}
		r.h.mu.Unlock()
	}()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-c.closed:
			r.st.Close()
		case <-r.st.Done():
		}
	}()
	ping := c.cfg.Detection / 3
	var buf []handler.Event
	for {
		wctx, cancel := context.WithTimeout(ctx, ping)
		evs, err := r.st.Next(wctx, buf[:0])
		cancel()
		if errors.Is(err, handler.ErrClosed) || ctx.Err() != nil {
			r.send(&relayBatch{Ended: true}, 1)
			return
		}
		if !r.h.alive(r.holder) {
			c.cfg.Log.Warn("cluster: a handler stream's node is gone; its connections here go to another stream of its group or the fallback", "stream", r.stream, "node", r.holder)
			return
		}
		for _, rb := range r.batches(evs) {
			if !r.send(rb, relayRetries) {
				return
			}
		}
		if len(evs) == 0 && !r.send(&relayBatch{}, relayRetries) { // a ping
			return
		}
		clear(evs)
		buf = evs
	}
}

// batches cuts evs into batches that each fit NATS's max_payload: a
// frame is at most what fits with natsOverhead to spare.
func (r *relay) batches(evs []handler.Event) []*relayBatch {
	budget := int(r.h.c.nc.MaxPayload()) - batchSlack
	var out []*relayBatch
	var rb *relayBatch
	size := 0
	for _, e := range evs {
		re := relayEvent{Kind: e.Kind, Conn: e.Info(), Frame: e.FrameID, Data: e.Data, Redelivered: e.Redelivered, Reason: e.Reason}
		head, _ := json.Marshal(re) // without its data
		n := len(head) + eventSlack + len(e.Data)
		if rb == nil || (len(rb.Events) > 0 && size+n > budget) {
			rb, size = &relayBatch{}, 0
			out = append(out, rb)
		}
		rb.Events = append(rb.Events, re)
		size += n
	}
	return out
}

// send sends rb (events, or a ping when it has none) to the holder, up to
// tries times, and reports whether the holder still has the stream.
func (r *relay) send(rb *relayBatch, tries int) bool {
	c := r.h.c
	r.seq++
	rb.V, rb.Stream, rb.Node, rb.Seq = handleVersion, r.stream, c.cfg.Node, r.seq
	for range tries {
		var ack batchAck
		ctx, cancel := context.WithTimeout(context.Background(), DefaultRequestTimeout)
		err := r.h.request(ctx, c.subject("node", r.holder, "hev"), encodeRelayBatch(rb), &ack)
		cancel()
		switch {
		case err == nil:
			return !ack.Gone
		case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrConnectionClosed):
			return false
		}
		select {
		case <-c.closed:
			return false
		default:
		}
		if !r.h.alive(r.holder) {
			return false
		}
	}
	c.cfg.Log.Warn("cluster: a handler stream's node does not take its events; ending the relay", "stream", r.stream, "node", r.holder)
	return false
}

// serveBatch takes a relay's batch for a stream held here.
func (h *Handlers) serveBatch(m *nats.Msg) {
	ack := batchAck{}
	rb, err := decodeRelayBatch(m.Data)
	if err != nil {
		h.c.cfg.Log.Warn("cluster: a handler relay's batch does not decode", "error", err)
		ack.Gone = true
	} else {
		h.mu.Lock()
		s := h.streams[rb.Stream]
		h.mu.Unlock()
		ack.Gone = s == nil || !s.ingest(rb)
	}
	b, _ := json.Marshal(ack)
	_ = m.Respond(b)
}

// remoteFrame is where a frame the holder numbered lives.
type remoteFrame struct {
	node string
	id   uint64 // the relay's
	conn string
}

// remoteConn is a connection a stream handles, and its node.
type remoteConn struct {
	node string
	info handler.ConnInfo
}

// Stream is a Handle stream held by this node, for connections of every
// node (rpc.HandlerStream).
type Stream struct {
	h         *Handlers
	id, group string
	max       int

	mu        sync.Mutex  // guards the fields below
	stopWatch func() bool // ends the watch of Register's context
	queue     []handler.Event
	frames    map[uint64]remoteFrame // unanswered, by the holder's frame id
	conns     map[string]remoteConn  // the connections handled, by id
	seqs      map[string]uint64      // the last batch taken from each node
	nextID    uint64
	gone      bool

	wake chan struct{} // a token when queue turned non-empty
	done chan struct{}
	once sync.Once
}

// ID is the stream's id, unique in the cluster.
func (s *Stream) ID() string { return s.id }

// Group is the stream's group name (generated for a group of its own).
func (s *Stream) Group() string { return s.group }

// MaxInFlight is the max_in_flight in force, on each node.
func (s *Stream) MaxInFlight() int { return s.max }

// ingest queues a relay's batch for the client, numbering its frames; it
// reports false once the stream ended.
func (s *Stream) ingest(rb *relayBatch) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return false
	}
	if rb.Seq <= s.seqs[rb.Node] {
		return true // a batch resent after a lost ack
	}
	s.seqs[rb.Node] = rb.Seq
	if rb.Ended {
		s.forgetNodeLocked(rb.Node)
		return true
	}
	was := len(s.queue)
	for _, e := range rb.Events {
		info := e.Conn
		ev := handler.Event{Kind: e.Kind, Peer: &info, Redelivered: e.Redelivered, Reason: e.Reason}
		switch e.Kind {
		case handler.Opened:
			s.conns[info.ID] = remoteConn{node: rb.Node, info: info}
		case handler.Frame:
			s.nextID++
			ev.FrameID, ev.Data = s.nextID, e.Data
			s.frames[s.nextID] = remoteFrame{node: rb.Node, id: e.Frame, conn: info.ID}
		case handler.Closed:
			delete(s.conns, info.ID)
			for id, f := range s.frames {
				if f.conn == info.ID && f.node == rb.Node {
					delete(s.frames, id)
				}
			}
		}
		s.queue = append(s.queue, ev)
	}
	if was == 0 && len(s.queue) > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// forgetNodeLocked drops the connections and frames of node's relay,
// which ended: its node gave them to another stream or the fallback.
func (s *Stream) forgetNodeLocked(node string) {
	for id, rc := range s.conns {
		if rc.node == node {
			delete(s.conns, id)
		}
	}
	for id, f := range s.frames {
		if f.node == node {
			delete(s.frames, id)
		}
	}
}

// dropLost reports closed, with reason NODE_LOST, the connections of
// nodes that are no longer live: their relays could not say so.
func (s *Stream) dropLost(live []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := len(s.queue)
	for id, rc := range s.conns {
		if slices.Contains(live, rc.node) {
			continue
		}
		info := rc.info
		s.queue = append(s.queue, handler.Event{Kind: handler.Closed, Peer: &info, Reason: event.ReasonNodeLost})
		delete(s.conns, id)
	}
	for id, f := range s.frames {
		if !slices.Contains(live, f.node) {
			delete(s.frames, id)
		}
	}
	if was == 0 && len(s.queue) > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// sweep tells the streams held here of the nodes lost, every
// Detection/3, until the cluster closes.
func (h *Handlers) sweep() {
	defer h.c.wg.Done()
	t := time.NewTicker(h.c.cfg.Detection / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-h.c.closed:
			return
		}
		live := h.c.Nodes()
		h.mu.Lock()
		streams := make([]*Stream, 0, len(h.streams))
		for _, s := range h.streams {
			streams = append(streams, s)
		}
		h.mu.Unlock()
		for _, s := range streams {
			s.dropLost(live)
		}
	}
}

// Next waits for the stream's events and returns every one ready, in
// order per connection, as handler.Stream.Next does.
func (s *Stream) Next(ctx context.Context, buf []handler.Event) ([]handler.Event, error) {
	for {
		s.mu.Lock()
		if s.gone {
			s.mu.Unlock()
			return buf, handler.ErrClosed
		}
		if len(s.queue) > 0 {
			buf = append(buf, s.queue...)
			clear(s.queue)
			s.queue = s.queue[:0]
			s.mu.Unlock()
			return buf, nil
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.done:
		case <-ctx.Done():
			return buf, ctx.Err()
		}
	}
}

// Reply carries r out on the node of its frame or connection. A refusal
// is a *handler.ReplyError.
func (s *Stream) Reply(ctx context.Context, r handler.Reply) error {
	w := &wireReply{Conn: r.ConnectionID, Payload: r.Payload, HasPayload: r.Payload != nil, Raw: r.Raw, Close: r.Close}
	s.mu.Lock()
	var node string
	if r.FrameID != 0 {
		f, ok := s.frames[r.FrameID]
		if !ok {
			s.mu.Unlock()
			return &handler.ReplyError{Field: "frame_id", Err: handler.ErrNotHandled, Msg: fmt.Sprintf("frame %d is not unanswered on this stream (answered, timed out, its connection closed or moved)", r.FrameID)}
		}
		if r.ConnectionID != "" && r.ConnectionID != f.conn {
			s.mu.Unlock()
			return &handler.ReplyError{Field: "connection_id", Err: handler.ErrInvalid, Msg: fmt.Sprintf("frame %d is of connection %q, not %q", r.FrameID, f.conn, r.ConnectionID)}
		}
		node, w.Frame = f.node, f.id
		delete(s.frames, r.FrameID)
	} else {
		rc, ok := s.conns[r.ConnectionID]
		if !ok {
			s.mu.Unlock()
			return &handler.ReplyError{Field: "connection_id", Err: handler.ErrNotHandled, Msg: fmt.Sprintf("connection %q is not handled by this stream", r.ConnectionID)}
		}
		node = rc.node
	}
	s.mu.Unlock()
	var ans handleAnswer
	op := &handleOp{V: handleVersion, Op: "reply", Stream: s.id, Reply: w}
	if err := s.h.request(ctx, s.h.c.subject("node", node, "handle"), encodeHandleOp(op), &ans); err != nil {
		return &handler.ReplyError{Err: &placement.NodeError{Node: node, Err: placement.ErrNodeUnavailable, Detail: err.Error()},
			Msg: fmt.Sprintf("carrying the reply to node %s: %v", node, err)}
	}
	if ans.Err != nil {
		return ans.Err.replyError()
	}
	return nil
}

// Done is closed once the stream ended.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Close ends the stream and its relays: on each node, the connections it
// handled go to another stream of the group, or to the fallback.
// Idempotent.
func (s *Stream) Close() {
	s.once.Do(s.close)
}

func (s *Stream) close() {
	s.mu.Lock()
	if s.stopWatch != nil {
		s.stopWatch()
	}
	s.gone = true
	s.queue = nil
	s.mu.Unlock()
	close(s.done)
	s.h.mu.Lock()
	delete(s.h.streams, s.id)
	s.h.mu.Unlock()
	op := &handleOp{V: handleVersion, Op: "close", Stream: s.id}
	var wg sync.WaitGroup
	// Every live node: a registration that failed part
	// way may have relays where no answer came back.
	for _, n := range s.h.c.Nodes() {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			var ans handleAnswer
			_ = s.h.request(ctx, s.h.c.subject("node", n, "handle"), encodeHandleOp(op), &ans)
		})
	}
	wg.Wait()
}
