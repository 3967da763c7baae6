// Package handler serves Handle streams: remote reply logic for
// connections. A Manager is the conn.Handler of every connection of the
// daemon; it gives each frame that no rule answered to a stream of the
// connection's handler group and settles the frame's Handoff with the
// stream's answer.
//
// Groups work as NATS queue groups: the first registration for a
// listener ("l:" target) or an outbound connection ("c:" target) binds
// that target to its group, until no stream of the group registered for
// it is left. Each connection is handled by one stream of the group
// (sticky, the least loaded on first sight), so that its frames are
// answered in order; when that stream ends the connection moves to
// another stream of the group with its unanswered frames, redelivered.
//
// The connection runs the handler timeout itself; this package keeps no
// timer per frame.
package handler

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/ids"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

const (
	// DefaultMaxInFlight is a stream's max_in_flight when it asks for 0:
	// enough to keep a handler across a WAN link busy, small enough that
	// a stuck one holds little.
	DefaultMaxInFlight = 64
	// MaxInFlightLimit bounds max_in_flight: each unanswered frame holds
	// its bytes (at most a frame's maximum) in memory.
	MaxInFlightLimit = 4096
	// DefaultMaxStreams is Config.MaxStreams when it is 0.
	DefaultMaxStreams = 256
)

var (
	// ErrInvalid wraps a registration that breaks a rule of its fields.
	ErrInvalid = errors.New("invalid handler registration")
	// ErrListenerNotFound is a registration naming a listener that does
	// not run.
	ErrListenerNotFound = registry.ErrListenerNotFound
	// ErrConnectionNotFound is a registration naming an outbound
	// connection that does not exist, or a write to a connection that
	// does not exist.
	ErrConnectionNotFound = registry.ErrNotFound
	// ErrGroupConflict is a registration for a target another group
	// handles; see *ConflictError.
	ErrGroupConflict = errors.New("handled by another group")
	// ErrLimit is a registration over Config.MaxStreams.
	ErrLimit = errors.New("handler stream limit reached")
	// ErrNotHandled is a reply to a frame that is not this stream's
	// unanswered frame, or a write to a connection it does not handle.
	ErrNotHandled = errors.New("not handled by this stream")
	// ErrClosed is a registration after Close, or a call on a stream that
	// ended.
	ErrClosed = errors.New("handler streams are shut down")
)

// ConflictError is ErrGroupConflict naming the field and the group that
// holds the target.
type ConflictError struct {
	Field string // "listener_ids[1]"
	Group string // the group that handles the target now
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s: handled by handler group %q", e.Field, e.Group)
}

func (e *ConflictError) Unwrap() error { return ErrGroupConflict }

// LimitError is ErrLimit with the limit and the flag that sets it.
type LimitError struct{ Limit int }

func (e *LimitError) Error() string {
	return fmt.Sprintf("at most %d handler streams (--max-handlers)", e.Limit)
}

func (e *LimitError) Unwrap() error { return ErrLimit }

// Listeners says which listeners run (listener.Registry).
type Listeners interface {
	Running(id string) bool
}

// Conns is what a stream's writes and closes go through, and how a
// registration's outbound connections are looked up (registry.Registry).
type Conns interface {
	// ManagedExists reports whether id is a managed outbound connection.
	ManagedExists(id string) bool
	// Send writes p to connection id, framed with its framing when framed.
	Send(ctx context.Context, id string, p []byte, framed bool, aw conn.Await) ([]byte, int, error)
	// Conn returns a live connection's current socket.
	Conn(id string) (*conn.Conn, error)
}

// Metrics receives the Manager's figures as they happen; every field may
// be nil.
type Metrics struct {
	// Latency is called with the time from a frame's first delivery to a
	// stream to its answer.
	Latency func(time.Duration)
}

// Config configures a Manager.
type Config struct {
	Listeners Listeners
	Conns     Conns
	// MaxStreams bounds the live streams; 0 means DefaultMaxStreams.
	MaxStreams int
	Metrics    Metrics
}

// Stats are a Manager's figures.
type Stats struct {
	Streams     int
	Frames      uint64 // frames given to a stream
	Replies     uint64 // answers and writes carried out
	Redelivered uint64 // frames given again to another stream
	Rejections  uint64 // replies refused
	TimedOut    uint64 // frames the connection's handler timeout settled
	Unhandled   uint64 // frames settled to the fallback for want of a stream
}

// Manager is the conn.Handler of the daemon. Its zero value is not
// usable; call New.
type Manager struct {
	cfg Config

	// streams counts the live streams: Frame, Opened and Closed return at
	// once while it is 0, as they are on every connection's path.
	streams  atomic.Int64
	frameIDs atomic.Uint64

	frames, replies, redelivered, rejections, timedOut, unhandled atomic.Uint64

	mu sync.Mutex // guards the fields below; a leaf: no I/O, no settling under it
	// targets binds "l:"+listener id and "c:"+connection id to a group.
	targets map[string]*binding
	// groups are the named groups; a stream's own group is in no map.
	groups map[string]*group
	// conns are the connections given to a stream.
	conns map[*conn.Conn]*connState
	// pending are the frames given to a stream and not settled, by id.
	pending map[uint64]*frame
	live    map[*Stream]struct{}
	closed  bool
}

var _ conn.Handler = (*Manager)(nil)

// binding is a target's group and the streams that registered for it.
type binding struct {
	group   *group
	streams []*Stream
}

// group is a handler group: its name and its live streams.
type group struct {
	name    string
	named   bool
	streams int
}

// connState is a connection given to a stream.
type connState struct {
	c      *conn.Conn
	target string
	stream *Stream
	// frames are its unsettled frames, in order.
	frames []*frame
	// opened is its OPENED item while it waits in the stream's queue.
	opened *item
}

// frame is a frame given to a stream and not settled yet.
type frame struct {
	id        uint64
	h         *conn.Handoff
	cs        *connState
	stream    *Stream
	delivered time.Time // when a stream first took it; zero before
	queued    *item     // its item while it waits in the stream's queue
}

// EventKind says what an Event reports.
type EventKind int

const (
	// Opened: the stream handles the connection from now on.
	Opened EventKind = iota + 1
	// Frame: a frame to answer.
	Frame
	// Closed: the connection closed.
	Closed
)

// Event is what a stream tells its client.
type Event struct {
	Kind EventKind
	// Conn is the connection, for its ids and addresses; nil when Peer
	// describes it instead.
	Conn *conn.Conn
	// Peer describes a connection of another node of a cluster, whose
	// event a cluster stream relays; nil for this node's connections.
	Peer        *ConnInfo
	FrameID     uint64
	Data        []byte
	Redelivered bool
	Reason      event.CloseReason
}

// ConnInfo is what a stream's client is told of a connection: its ids
// and addresses.
type ConnInfo struct {
	ID          string       `json:"id"`
	ListenerID  string       `json:"listener,omitempty"`
	Origin      event.Origin `json:"origin"`
	Generation  uint64       `json:"generation,omitempty"`
	RemoteAddr  string       `json:"remote,omitempty"`
	LocalAddr   string       `json:"local,omitempty"`
	PeerSubject string       `json:"subject,omitempty"`
}

// Info describes e's connection, whichever node holds it.
func (e Event) Info() ConnInfo {
	if e.Conn == nil {
		if e.Peer != nil {
			return *e.Peer
		}
		return ConnInfo{}
	}
	c := e.Conn
	return ConnInfo{ID: c.ID(), ListenerID: c.ListenerID(), Origin: c.Origin(), Generation: c.Generation(),
		RemoteAddr: c.RemoteAddr(), LocalAddr: c.LocalAddr(), PeerSubject: c.PeerSubject()}
}

// item is an Event waiting in a stream's queue.
type item struct {
	ev Event
	f  *frame // for a Frame
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	return &Manager{
		cfg:     cfg,
		targets: map[string]*binding{},
		groups:  map[string]*group{},
		conns:   map[*conn.Conn]*connState{},
		pending: map[uint64]*frame{},
		live:    map[*Stream]struct{}{},
	}
}

// Stats returns the Manager's figures.
func (m *Manager) Stats() Stats {
	return Stats{
		Streams:     int(m.streams.Load()),
		Frames:      m.frames.Load(),
		Replies:     m.replies.Load(),
		Redelivered: m.redelivered.Load(),
		Rejections:  m.rejections.Load(),
		TimedOut:    m.timedOut.Load(),
		Unhandled:   m.unhandled.Load(),
	}
}

// targetOf is the target c belongs to.
func targetOf(c *conn.Conn) string {
	if c.Origin() == event.Outbound {
		return "c:" + c.ID()
	}
	return "l:" + c.ListenerID()
}

// groupPattern is a group name, as the API documents it.
var groupPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

// Registration is what a stream handles.
type Registration struct {
	ListenerIDs   []string
	ConnectionIDs []string
	// Group is the handler group; empty means a group of the stream alone.
	Group string
	// MaxInFlight bounds the stream's unanswered frames; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
}

func invalid(field, format string, args ...any) error {
	return &page.FieldError{Field: "registration." + field, Reason: fmt.Sprintf(format, args...), Err: ErrInvalid}
}

// validate checks r's shape and defaults it.
func (r *Registration) validate() error {
	if len(r.ListenerIDs) == 0 && len(r.ConnectionIDs) == 0 {
		return invalid("listener_ids", "name at least one listener or connection (connection_ids)")
	}
	if r.Group != "" && !groupPattern.MatchString(r.Group) {
		return invalid("group", "must be 1 to 64 of A-Z a-z 0-9 . _ ~ -, got %q", r.Group)
	}
	switch {
	case r.MaxInFlight < 0 || r.MaxInFlight > MaxInFlightLimit:
		return invalid("max_in_flight", "at most %d, got %d", MaxInFlightLimit, r.MaxInFlight)
	case r.MaxInFlight == 0:
		r.MaxInFlight = DefaultMaxInFlight
	}
	seen := map[string]string{}
	for i, id := range r.ListenerIDs {
		field := "listener_ids[" + strconv.Itoa(i) + "]"
		if prev, dup := seen["l:"+id]; dup {
			return invalid(field, "%q is named twice (%s)", id, prev)
		}
		seen["l:"+id] = "registration." + field
	}
	for i, id := range r.ConnectionIDs {
		field := "connection_ids[" + strconv.Itoa(i) + "]"
		if prev, dup := seen["c:"+id]; dup {
			return invalid(field, "%q is named twice (%s)", id, prev)
		}
		seen["c:"+id] = "registration." + field
	}
	return nil
}

// Validate checks r's shape and fills in its defaults, as Register does.
func Validate(r *Registration) error { return r.validate() }

// Has reports which of r's listeners run here and which of its outbound
// connections exist here, index by index: in a cluster a registration
// names targets of every node, and each node handles its own.
func (m *Manager) Has(r Registration) (listeners, conns []bool) {
	listeners = make([]bool, len(r.ListenerIDs))
	for i, id := range r.ListenerIDs {
		listeners[i] = m.cfg.Listeners != nil && m.cfg.Listeners.Running(id)
	}
	conns = make([]bool, len(r.ConnectionIDs))
	for i, id := range r.ConnectionIDs {
		conns[i] = m.cfg.Conns != nil && m.cfg.Conns.ManagedExists(id)
	}
	return listeners, conns
}

// Register starts a stream handling r's targets. It ends when ctx ends
// or Close is called; the caller must call Close.
func (m *Manager) Register(ctx context.Context, r Registration) (*Stream, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	for i, id := range r.ListenerIDs {
		if m.cfg.Listeners == nil || !m.cfg.Listeners.Running(id) {
			return nil, &page.FieldError{Field: "registration.listener_ids[" + strconv.Itoa(i) + "]", Reason: fmt.Sprintf("no listener %q runs", id), Err: ErrListenerNotFound}
		}
	}
	for i, id := range r.ConnectionIDs {
		if m.cfg.Conns == nil || !m.cfg.Conns.ManagedExists(id) {
			return nil, &page.FieldError{Field: "registration.connection_ids[" + strconv.Itoa(i) + "]", Reason: fmt.Sprintf("no outbound connection %q (Connect) exists", id), Err: ErrConnectionNotFound}
		}
	}
	keys := make([]string, 0, len(r.ListenerIDs)+len(r.ConnectionIDs))
	fields := make([]string, 0, cap(keys))
	for i, id := range r.ListenerIDs {
		keys = append(keys, "l:"+id)
		fields = append(fields, "registration.listener_ids["+strconv.Itoa(i)+"]")
	}
	for i, id := range r.ConnectionIDs {
		keys = append(keys, "c:"+id)
		fields = append(fields, "registration.connection_ids["+strconv.Itoa(i)+"]")
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if len(m.live) >= m.cfg.MaxStreams {
		return nil, &LimitError{Limit: m.cfg.MaxStreams}
	}
	id := ids.New(ids.Handler)
	g := m.groups[r.Group]
	if g == nil {
		g = &group{name: r.Group, named: r.Group != ""}
		if !g.named {
			g.name = "own-" + id
		}
	}
	for i, k := range keys {
		if b := m.targets[k]; b != nil && b.group != g {
			return nil, &ConflictError{Field: fields[i], Group: b.group.name}
		}
	}
	s := &Stream{
		m:      m,
		id:     id,
		group:  g,
		max:    r.MaxInFlight,
		keys:   keys,
		conns:  map[string]*connState{},
		wake:   make(chan struct{}, 1),
		room:   make(chan struct{}),
		ended:  make(chan struct{}),
		stopCh: make(chan struct{}),
	}
	if g.named {
		m.groups[g.name] = g
	}
	g.streams++
	for _, k := range keys {
		b := m.targets[k]
		if b == nil {
			b = &binding{group: g}
			m.targets[k] = b
		}
		b.streams = append(b.streams, s)
	}
	m.live[s] = struct{}{}
	m.streams.Add(1)
	s.stopWatch = context.AfterFunc(ctx, s.Close)
	return s, nil
}

// Close ends every stream; later registrations fail with ErrClosed.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	streams := make([]*Stream, 0, len(m.live))
	for s := range m.live {
		streams = append(streams, s)
	}
	m.mu.Unlock()
	for _, s := range streams {
		s.Close()
	}
}

// Opened gives c to a stream at once when its target has a group, so
// that the stream hears of it before its first frame.
func (m *Manager) Opened(c *conn.Conn) {
	if m.streams.Load() == 0 {
		return
	}
	m.mu.Lock()
	m.connLocked(c)
	m.mu.Unlock()
}

// Handles reports whether any stream is registered: a connection's read
// then offers its frames one by one.
func (m *Manager) Handles(*conn.Conn) bool { return m.streams.Load() > 0 }

// connLocked returns c's state, giving c to the least loaded stream of
// its target's group on first sight; nil when no group handles it.
func (m *Manager) connLocked(c *conn.Conn) *connState {
	if cs := m.conns[c]; cs != nil {
		return cs
	}
	key := targetOf(c)
	b := m.targets[key]
	if b == nil {
		return nil
	}
	s := leastLoaded(b.streams)
	cs := &connState{c: c, target: key}
	m.conns[c] = cs
	s.takeLocked(cs)
	return cs
}

// leastLoaded is the stream with the fewest connections.
func leastLoaded(streams []*Stream) *Stream {
	best := streams[0]
	for _, s := range streams[1:] {
		if len(s.conns) < len(best.conns) {
			best = s
		}
	}
	return best
}

// Frame gives h to the stream that handles c, waiting while that stream
// has its max_in_flight unanswered.
func (m *Manager) Frame(ctx context.Context, c *conn.Conn, h *conn.Handoff) bool {
	if m.streams.Load() == 0 {
		return false
	}
	f := &frame{h: h}
	h.OnDone = func(o conn.Outcome) { m.settled(f, o) }
	for {
		m.mu.Lock()
		cs := m.connLocked(c)
		if cs == nil {
			m.mu.Unlock()
			return false
		}
		s := cs.stream
		if s.inflight < s.max {
			f.id = m.frameIDs.Add(1)
			f.cs, f.stream = cs, s
			cs.frames = append(cs.frames, f)
			m.pending[f.id] = f
			s.inflight++
			s.queueFrameLocked(f, false)
			m.mu.Unlock()
			m.frames.Add(1)
			return true
		}
		room := s.room
		m.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return false
		}
	}
}

// settled forgets f once its handoff is settled, whoever settled it.
func (m *Manager) settled(f *frame, o conn.Outcome) {
	switch o {
	case conn.TimedOut:
		m.timedOut.Add(1)
	case conn.Unhandled:
		m.unhandled.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[f.id] != f {
		return
	}
	delete(m.pending, f.id)
	if o == conn.Answered && !f.delivered.IsZero() && m.cfg.Metrics.Latency != nil {
		m.cfg.Metrics.Latency(time.Since(f.delivered))
	}
	cs := f.cs
	for i, g := range cs.frames {
		if g == f {
			cs.frames = append(cs.frames[:i], cs.frames[i+1:]...)
			break
		}
	}
	s := f.stream
	if f.queued != nil {
		s.unqueueLocked(f.queued)
		f.queued = nil
	}
	if s.inflight == s.max && !s.gone {
		close(s.room)
		s.room = make(chan struct{})
	}
	s.inflight--
}

// Closed tells c's stream that c closed, and forgets c.
func (m *Manager) Closed(c *conn.Conn, reason event.CloseReason) {
	if m.streams.Load() == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cs := m.conns[c]
	if cs == nil {
		return
	}
	delete(m.conns, c)
	s := cs.stream
	delete(s.conns, c.ID())
	if cs.opened != nil {
		// The stream never heard of c: it need not hear of its end.
		s.unqueueLocked(cs.opened)
		cs.opened = nil
		return
	}
	s.queueLocked(&item{ev: Event{Kind: Closed, Conn: c, Reason: reason}})
}

// Stream is one Handle stream.
type Stream struct {
	m         *Manager
	id        string
	group     *group
	max       int
	keys      []string
	stopWatch func() bool

	// Guarded by m.mu:
	conns    map[string]*connState // by connection id
	inflight int                   // frames given and not settled
	queue    []*item               // what Next has to send
	room     chan struct{}         // closed when inflight drops below max
	gone     bool

	wake   chan struct{} // a token when queue turned non-empty
	ended  chan struct{} // closed once Close has moved everything away
	stopCh chan struct{} // closed when Close starts
	once   sync.Once
}

// ID is the stream's id, unique in the gateway.
func (s *Stream) ID() string { return s.id }

// Group is the stream's group name (generated for a group of its own).
func (s *Stream) Group() string { return s.group.name }

// MaxInFlight is the max_in_flight in force.
func (s *Stream) MaxInFlight() int { return s.max }

// Done is closed once the stream ended.
func (s *Stream) Done() <-chan struct{} { return s.ended }

// takeLocked makes s handle cs, starting with an OPENED event.
func (s *Stream) takeLocked(cs *connState) {
	cs.stream = s
	s.conns[cs.c.ID()] = cs
	cs.opened = &item{ev: Event{Kind: Opened, Conn: cs.c}}
	s.queueLocked(cs.opened)
}

func (s *Stream) queueFrameLocked(f *frame, redelivered bool) {
	it := &item{ev: Event{Kind: Frame, Conn: f.cs.c, FrameID: f.id, Data: f.h.Frame, Redelivered: redelivered}, f: f}
	f.queued = it
	s.queueLocked(it)
}

func (s *Stream) queueLocked(it *item) {
	s.queue = append(s.queue, it)
	if len(s.queue) == 1 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *Stream) unqueueLocked(it *item) {
	for i, q := range s.queue {
		if q == it {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return
		}
	}
}

// Next waits for the stream's events and returns every one ready, in
// order per connection. It returns ErrClosed once the stream ended, and
// ctx's error when ctx ends first.
func (s *Stream) Next(ctx context.Context, buf []Event) ([]Event, error) {
	for {
		s.m.mu.Lock()
		if s.gone {
			s.m.mu.Unlock()
			return buf, ErrClosed
		}
		if len(s.queue) > 0 {
			now := time.Now()
			for _, it := range s.queue {
				if f := it.f; f != nil {
					f.queued = nil
					if f.delivered.IsZero() {
						f.delivered = now
					}
				}
				if it.ev.Kind == Opened {
					if cs := s.conns[it.ev.Conn.ID()]; cs != nil && cs.opened == it {
						cs.opened = nil
					}
				}
				buf = append(buf, it.ev)
			}
			clear(s.queue)
			s.queue = s.queue[:0]
			s.m.mu.Unlock()
			return buf, nil
		}
		s.m.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.stopCh:
		case <-ctx.Done():
			return buf, ctx.Err()
		}
	}
}

// Reply is a stream's answer to a frame, or its write to a connection.
type Reply struct {
	// FrameID is the frame answered; 0 writes to ConnectionID instead.
	FrameID uint64
	// ConnectionID is the connection written to or closed when FrameID is
	// 0; with a FrameID it is empty or the frame's connection.
	ConnectionID string
	// Payload is written with the connection's framing unless Raw; nil
	// writes nothing.
	Payload []byte
	Raw     bool
	// Close closes the connection after the write.
	Close bool
}

// ReplyError is a refused reply: the field at fault (empty when the
// reply as a whole is), and why.
type ReplyError struct {
	Field string
	Err   error // ErrNotHandled, ErrConnectionNotFound, or the write's error
	Msg   string
}

func (e *ReplyError) Error() string { return e.Msg }

func (e *ReplyError) Unwrap() error { return e.Err }

// Reply carries r out. A refusal is a *ReplyError; the stream goes on.
func (s *Stream) Reply(ctx context.Context, r Reply) error {
	err := s.reply(ctx, r)
	if err != nil {
		s.m.rejections.Add(1)
	} else {
		s.m.replies.Add(1)
	}
	return err
}

func (s *Stream) reply(ctx context.Context, r Reply) error {
	if r.FrameID != 0 {
		s.m.mu.Lock()
		f := s.m.pending[r.FrameID]
		if f == nil || f.stream != s {
			s.m.mu.Unlock()
			return &ReplyError{Field: "frame_id", Err: ErrNotHandled, Msg: fmt.Sprintf("frame %d is not unanswered on this stream (answered, timed out, its connection closed or moved)", r.FrameID)}
		}
		cid := f.cs.c.ID()
		s.m.mu.Unlock()
		if r.ConnectionID != "" && r.ConnectionID != cid {
			return &ReplyError{Field: "connection_id", Err: ErrInvalid, Msg: fmt.Sprintf("frame %d is of connection %q, not %q", r.FrameID, cid, r.ConnectionID)}
		}
		if !f.h.Answer(conn.HandlerReply{Payload: r.Payload, Raw: r.Raw, Close: r.Close}) {
			return &ReplyError{Field: "frame_id", Err: ErrNotHandled, Msg: fmt.Sprintf("frame %d was settled already (timed out, or its connection closed)", r.FrameID)}
		}
		return nil
	}
	s.m.mu.Lock()
	cs := s.conns[r.ConnectionID]
	s.m.mu.Unlock()
	if cs == nil {
		if _, err := s.m.cfg.Conns.Conn(r.ConnectionID); err != nil {
			return &ReplyError{Field: "connection_id", Err: ErrConnectionNotFound, Msg: fmt.Sprintf("no connection %q", r.ConnectionID)}
		}
		return &ReplyError{Field: "connection_id", Err: ErrNotHandled, Msg: fmt.Sprintf("connection %q is not handled by this stream", r.ConnectionID)}
	}
	if r.Payload != nil {
		if _, _, err := s.m.cfg.Conns.Send(ctx, r.ConnectionID, r.Payload, !r.Raw, conn.Await{}); err != nil {
			return &ReplyError{Err: err, Msg: fmt.Sprintf("writing to %s: %v", r.ConnectionID, err)}
		}
	}
	if r.Close {
		cs.c.Close(event.ReasonClosedByHandler)
	}
	return nil
}

// Close ends the stream: its connections move to other streams of their
// group with their unanswered frames, or, when none is left, those frames
// get the fallback reply. Idempotent.
func (s *Stream) Close() {
	s.once.Do(s.close)
	<-s.ended
}

func (s *Stream) close() {
	defer close(s.ended)
	close(s.stopCh)
	s.stopWatch()
	m := s.m
	var fallback []*conn.Handoff
	m.mu.Lock()
	s.gone = true
	delete(m.live, s)
	m.streams.Add(-1)
	s.group.streams--
	if s.group.streams == 0 && s.group.named {
		delete(m.groups, s.group.name)
	}
	for _, k := range s.keys {
		b := m.targets[k]
		for i, o := range b.streams {
			if o == s {
				b.streams = append(b.streams[:i], b.streams[i+1:]...)
				break
			}
		}
		if len(b.streams) == 0 {
			delete(m.targets, k)
		}
	}
	for _, cs := range s.conns {
		b := m.targets[cs.target]
		if b == nil {
			delete(m.conns, cs.c)
			for _, f := range cs.frames {
				fallback = append(fallback, f.h)
			}
			continue
		}
		n := leastLoaded(b.streams)
		n.takeLocked(cs)
		for _, f := range cs.frames {
			f.stream = n
			f.queued = nil
			n.inflight++
			n.queueFrameLocked(f, !f.delivered.IsZero())
			if !f.delivered.IsZero() {
				m.redelivered.Add(1)
			}
		}
	}
	clear(s.conns)
	s.queue = nil
	// Wake the read loops waiting for room here: they find their
	// connection's new stream, or none.
	close(s.room)
	m.mu.Unlock()
	for _, h := range fallback {
		h.Unhandled()
	}
}
