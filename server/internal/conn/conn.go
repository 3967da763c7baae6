// Package conn serves one accepted TCP connection: a read loop that cuts the
// byte stream into frames and publishes them, serialized writes for sends and
// auto replies, and replies awaited by Send, answered in order.
package conn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// DefaultWriteTimeout bounds a write when Config.WriteTimeout is 0: a peer
// that stops reading for this long is considered gone.
const DefaultWriteTimeout = 10 * time.Second

// handshakeTimeout bounds a TLS handshake: a client that connects and says
// nothing must not hold a connection slot for long.
const handshakeTimeout = 10 * time.Second

// Errors returned by Send.
var (
	// ErrClosed means the connection closed before the write or the reply.
	ErrClosed = errors.New("connection closed")
	// ErrReplyTooLarge means the awaited reply exceeded its byte limit.
	ErrReplyTooLarge = errors.New("reply too large")
	// ErrHalfClosed means the peer has shut down its sending side: the
	// connection still takes writes (Config.HalfCloseTimeout), but no reply
	// can come.
	ErrHalfClosed = errors.New("peer closed its sending side: no reply can come")
	// ErrWriteTimeout means the peer did not take the bytes within the write
	// timeout; the connection is closed with reason WRITE_ERROR.
	ErrWriteTimeout = errors.New("write timed out")
	// ErrReplyTimeout is returned, with context.DeadlineExceeded, when a
	// Send's payload was written but its reply did not come before the
	// deadline.
	ErrReplyTimeout = errors.New("no reply in time")
)

// Publisher receives the connection's events, in order. Publish may wait
// for a lossless subscriber to have room, so that it slows the read loop
// (and TCP the sender) down; once ctx is done it waits no more, publishes
// anyway, and returns ctx's error.
type Publisher interface {
	Publish(ctx context.Context, evs ...*event.Event) error
}

// AutoReplyMode says what the connection writes back for every frame.
type AutoReplyMode int

const (
	// NoAutoReply writes nothing back.
	NoAutoReply AutoReplyMode = iota
	// Echo writes each frame back, encoded with the connection's framing.
	Echo
	// Fixed writes AutoReply.Payload back for each frame.
	Fixed
)

// AutoReply is what a listener answers to every frame.
type AutoReply struct {
	Mode    AutoReplyMode
	Payload []byte // for Fixed, written as is
}

// Counters are a connection's (or a listener's) traffic figures.
type Counters struct {
	BytesIn, BytesOut, FramesIn, FramesOut atomic.Uint64
}

// Config describes one connection.
type Config struct {
	ID         string
	ListenerID string
	// Origin is who opened the connection, stamped on each of its events.
	// The registry sets it from its entry; conn only carries it.
	Origin event.Origin
	// Generation numbers the socket of a managed outbound connection (1
	// for its first), stamped on each of its events; 0 for an accepted
	// connection.
	Generation uint64
	// Framing must be normalized.
	Framing   framing.Config
	AutoReply AutoReply
	// IdleTimeout closes a connection silent for that long; 0 means never.
	IdleTimeout time.Duration
	// HalfCloseTimeout keeps a connection whose peer half-closed open for
	// writes this long, so a Send can still answer its last request; 0
	// closes it at once.
	HalfCloseTimeout time.Duration
	// WriteTimeout bounds each write; 0 means DefaultWriteTimeout.
	WriteTimeout time.Duration
	Publisher    Publisher
	// Aggregates are also counted into: the listener's and the gateway's totals.
	Aggregates []*Counters
	// Closed, when set, is called once the socket is closed, before the
	// CONNECTION_CLOSED event is published: a registry forgets the
	// connection there, so that nobody who saw the event still finds it.
	Closed func(reason event.CloseReason)

	// MaxQueuedWriteBytes bounds the bytes queued for writing to this
	// connection; 0 means DefaultMaxQueuedWriteBytes.
	MaxQueuedWriteBytes int
	// WriteBudget, when set, bounds the bytes queued for writing over every
	// connection that shares it; nil means no bound but the connection's own.
	WriteBudget *WriteBudget

	// Forward, when set, relays the connection to a target it dials once
	// open (see forward.go). AutoReply must be NoAutoReply with it; its
	// IdleTimeout counts bytes either way, and HalfCloseTimeout does not
	// apply: a half-closed side lasts until the other side ends too.
	Forward *Forward

	// Rules answer frames first (reply.go); nil means none. One compiled
	// Set serves every connection of a listener.
	Rules *rules.Set
	// Handler takes the frames that no rule answers (handoff.go); nil
	// means none: the AutoReply mode answers them.
	Handler Handler
	// HandlerTimeout bounds the handler's answer to a frame, from when it
	// was first offered; 0 means DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// HandlerTimeoutClose closes the connection with ReasonHandlerTimeout
	// when a frame's answer did not come in time; otherwise the AutoReply
	// mode answers the frame.
	HandlerTimeoutClose bool
	// Banner, when set, returns what is written to the connection first,
	// once it is open (after a TLS handshake), before any reply; nil or
	// empty writes nothing.
	Banner func(c *Conn) []byte

	// Shared, when set, holds the settings above that the connection's
	// listener may change while it is open (AutoReply, Rules, Banner,
	// IdleTimeout, HalfCloseTimeout, HandlerTimeout, HandlerTimeoutClose):
	// its Live replaces those fields, and the connection reads it anew for
	// every frame. Nil means the fields as given, for the connection's
	// whole life.
	Shared *Shared
}

// Live is the part of a connection's Config that its listener may change
// while the connection is open (UpdateListener): what answers its frames
// and how long its silences may last.
type Live struct {
	AutoReply           AutoReply
	Rules               *rules.Set
	Banner              func(c *Conn) []byte
	IdleTimeout         time.Duration
	HalfCloseTimeout    time.Duration
	HandlerTimeout      time.Duration
	HandlerTimeoutClose bool
}

// Shared holds the Live settings of every connection of a listener behind
// one atomic pointer: a Store is seen by each of them at its next frame
// (or its next read, for the idle timeout), without a lock on the read
// path and without a copy per connection.
type Shared struct{ p atomic.Pointer[Live] }

// NewShared returns a Shared holding l.
func NewShared(l Live) *Shared {
	s := &Shared{}
	s.p.Store(&l)
	return s
}

// Load returns the settings held now; they never change once returned.
func (s *Shared) Load() *Live { return s.p.Load() }

// Store replaces the settings for every connection that reads them next.
func (s *Shared) Store(l Live) { s.p.Store(&l) }

// live returns the connection's settings of now.
func (c *Conn) live() *Live { return c.cfg.Shared.Load() }

// idle returns the idle timeout the read loop applies: 0 for a forwarded
// connection, whose relay counts it over both directions.
func (c *Conn) idle() time.Duration {
	if c.cfg.Forward != nil {
		return 0
	}
	return c.live().IdleTimeout
}

// halfCloseTimeout returns how long the connection stays writable after
// its peer half-closed: 0 for a forwarded connection.
func (c *Conn) halfCloseTimeout() time.Duration {
	if c.cfg.Forward != nil {
		return 0
	}
	return c.live().HalfCloseTimeout
}

// Conn is one accepted connection. Create it with New and run Serve.
type Conn struct {
	cfg      Config
	nc       net.Conn
	remote   string // nc's remote address, formatted once: lists filter on it
	openedAt time.Time
	counters Counters
	ctx      context.Context // canceled by Close, so a waiting publish gives up
	cancel   context.CancelFunc
	done     chan struct{} // closed when Serve returns
	opened   chan struct{} // closed once CONNECTION_OPENED is published
	// stopWatch stops closing the connection when New's ctx ends.
	stopWatch func() bool

	// writeTurn serializes the queueing of writes, and with it their
	// order: a writer holds the turn while its value sits in the channel. A
	// channel rather than a mutex, so a Send waiting its turn gives up when
	// its context ends.
	writeTurn chan struct{}
	out       outbound // the write queue (write.go)
	// lastWrite is when bytes were last written (Unix nanoseconds), or
	// when the connection opened: a heartbeat is due only after an
	// interval without a write. An atomic, so the write goroutine records
	// it without a lock and a heartbeat timer reads it without one.
	lastWrite atomic.Int64

	mu       sync.Mutex // guards the fields below
	awaiters []*awaiter
	// halfClosed is set once the peer has shut down its sending side and
	// the connection stays open for writes (Config.HalfCloseTimeout). It
	// is set with awaiters under mu, which Send reads it under; an atomic
	// so that HalfClosed reads it without mu, from under the registry's
	// lock (a leaf).
	halfClosed atomic.Bool
	reason     event.CloseReason // the first reason given to Close
	why        string            // what went wrong, given with reason to CloseWith
	subject    string            // the TLS peer's certificate subject, set before OPENED

	// relay is the target side of a forwarded connection (forward.go),
	// set by Serve before anything that reads it starts; nil otherwise.
	relay *relay
	// fwdIdle is a forwarded connection's idle timeout, which its relay
	// counts over both directions instead of the read loop.
	fwdIdle time.Duration

	replies  replyQueue // replies waiting for their turn (reply.go)
	spare    *Handoff   // one the handler did not take, for the next frame (read loop only)
	varsOnce sync.Once
	tvars    rules.Vars // the template variables (vars)
}

// New wraps an accepted connection. ctx bounds its life: when it ends, the
// connection closes with reason SHUTDOWN.
func New(ctx context.Context, nc net.Conn, cfg Config) *Conn {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Shared == nil {
		cfg.Shared = NewShared(Live{
			AutoReply: cfg.AutoReply, Rules: cfg.Rules, Banner: cfg.Banner,
			IdleTimeout: cfg.IdleTimeout, HalfCloseTimeout: cfg.HalfCloseTimeout,
			HandlerTimeout: cfg.HandlerTimeout, HandlerTimeoutClose: cfg.HandlerTimeoutClose,
		})
	}
	var fwdIdle time.Duration
	if cfg.Forward != nil {
		fwdIdle = cfg.Shared.Load().IdleTimeout
	}
	c := &Conn{cfg: cfg, nc: nc, remote: nc.RemoteAddr().String(), openedAt: time.Now(), done: make(chan struct{}), opened: make(chan struct{}), writeTurn: make(chan struct{}, 1), fwdIdle: fwdIdle}
	c.lastWrite.Store(c.openedAt.UnixNano())
	if tc, ok := nc.(*tls.Conn); ok {
		// An outbound socket's handshake is the dialer's, done by now:
		// its subject is known before Serve, for the caller's snapshot.
		if st := tc.ConnectionState(); st.HandshakeComplete && len(st.PeerCertificates) > 0 {
			c.subject = st.PeerCertificates[0].Subject.String()
		}
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.stopWatch = context.AfterFunc(ctx, func() { c.Close(event.ReasonShutdown) })
	return c
}

// ID returns the connection's id.
func (c *Conn) ID() string { return c.cfg.ID }

// ListenerID returns the id of the listener that accepted it.
func (c *Conn) ListenerID() string { return c.cfg.ListenerID }

// Origin returns who opened the connection.
func (c *Conn) Origin() event.Origin { return c.cfg.Origin }

// Generation returns the socket's number of a managed outbound
// connection, 0 for an accepted one.
func (c *Conn) Generation() uint64 { return c.cfg.Generation }

// Framing returns the connection's framing.
func (c *Conn) Framing() framing.Config { return c.cfg.Framing }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() string { return c.remote }

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() string { return c.nc.LocalAddr().String() }

// OpenedAt returns when the connection was accepted.
func (c *Conn) OpenedAt() time.Time { return c.openedAt }

// LastWrite returns when bytes were last written to the connection, or
// when it opened if none were. It takes no lock.
func (c *Conn) LastWrite() time.Time { return time.Unix(0, c.lastWrite.Load()) }

// Counters returns the connection's live counters.
func (c *Conn) Counters() *Counters { return &c.counters }

// Reason returns why the connection closed, or ReasonUnspecified while open.
func (c *Conn) Reason() event.CloseReason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// HalfClosed reports whether the peer has shut down its sending side while
// the connection stays open for writes (Config.HalfCloseTimeout). It takes
// no lock.
func (c *Conn) HalfClosed() bool { return c.halfClosed.Load() }

// Opened is closed once Serve has published CONNECTION_OPENED (or
// returned without): a writer of its own accord (an outbound connection's
// on_connect) waits for it, so that nothing of the connection precedes
// its opening in the event stream.
func (c *Conn) Opened() <-chan struct{} { return c.opened }

// Done is closed when Serve has returned and the socket is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close closes the connection with reason, unless it already closed for
// another. It does not wait for Serve to return; Done tells when it has.
func (c *Conn) Close(reason event.CloseReason) { c.CloseWith(reason, "") }

// CloseWith is Close saying what went wrong, in words that the
// CONNECTION_CLOSED event carries as its error (a heartbeat's missing
// reply, a failed on_connect).
func (c *Conn) CloseWith(reason event.CloseReason, why string) {
	c.mu.Lock()
	if c.reason == event.ReasonUnspecified {
		c.reason, c.why = reason, why
	}
	c.mu.Unlock()
	c.cancel()
	// Unblocks a read or write in progress.
	_ = c.nc.Close()
}

// Serve runs the read loop until the connection closes. It publishes
// CONNECTION_OPENED first, every frame as DATA in order, the bytes of an
// unfinished frame as a partial DATA, and CONNECTION_CLOSED last.
func (c *Conn) Serve() {
	defer close(c.done)
	openedOnce := sync.OnceFunc(func() { close(c.opened) })
	defer openedOnce()
	defer c.cancel()
	defer c.stopWatch()

	pub := c.cfg.Publisher
	hsErr := c.handshake()
	// Waits for room while the connection holds its slot: a stuck
	// lossless subscriber stops new connections from being read.
	_ = pub.Publish(c.ctx, &event.Event{
		Kind:         event.ConnectionOpened,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		Origin:       c.cfg.Origin,
		Generation:   c.cfg.Generation,
		RemoteAddr:   c.RemoteAddr(),
		LocalAddr:    c.LocalAddr(),
		PeerSubject:  c.PeerSubject(),
	})
	openedOnce()

	splitter, err := framing.NewSplitter(c.cfg.Framing)
	var reason event.CloseReason
	handled := false // the handler was told the connection opened
	if hsErr != nil {
		reason = event.ReasonTLSHandshake
		splitter = nil
	} else if err != nil {
		// Validated by the caller; reaching here is a bug, not a peer's doing.
		reason = event.ReasonReadError
	} else if reason = c.startRelay(); reason == event.ReasonUnspecified {
		handled = c.begin()
		reason = c.endRelay(c.readLoop(splitter))
	}

	var partial []byte
	if splitter != nil {
		var final []byte
		final, partial = splitter.Close()
		final, partial = ownBytes(final), ownBytes(partial)
		if final != nil && reason != event.ReasonFrameTooLarge {
			c.frames([][]byte{final}, 0)
		}
	}
	if reason == event.ReasonPeerClosed && c.halfCloseTimeout() > 0 {
		c.lingerHalfClosed()
	}
	// Replies queued to the last frames go out before the close, as when
	// the read loop wrote them itself (within the write timeout; at once
	// when the connection was closed).
	c.waitFlushed()

	_ = c.nc.Close()
	// A closed connection has no sender to push back on and gives up its
	// slot: its last events wait for no subscriber, or closed connections
	// would pile up, each holding its partial frame. A lossless subscriber
	// without room for them is ended with its resume sequence instead.
	c.cancel()
	c.mu.Lock()
	switch {
	case c.reason != event.ReasonUnspecified:
		reason = c.reason
	case reason == event.ReasonUnspecified:
		// The gateway's context ended without a Close: it is shutting down.
		reason = event.ReasonShutdown
		c.reason = reason
	default:
		c.reason = reason
	}
	why := c.why
	awaiters := c.takeAwaitersLocked()
	c.mu.Unlock()
	settle(awaiters, ErrClosed)
	c.closeOutbound()
	c.stopReplies()
	if c.cfg.Closed != nil {
		c.cfg.Closed(reason)
	}
	if handled {
		c.cfg.Handler.Closed(c, reason)
	}

	closed := &event.Event{
		Kind:         event.ConnectionClosed,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		Origin:       c.cfg.Origin,
		Generation:   c.cfg.Generation,
		RemoteAddr:   c.RemoteAddr(),
		LocalAddr:    c.LocalAddr(),
		CloseReason:  reason,
		Error:        why,
	}
	c.relayClosed(closed)
	if partial == nil {
		_ = pub.Publish(c.ctx, closed)
		return
	}
	// The bytes of an unfinished frame are data, not part of the close:
	// a DATA event of their own, right before it.
	_ = pub.Publish(c.ctx, &event.Event{
		Kind:         event.Data,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		Origin:       c.cfg.Origin,
		Generation:   c.cfg.Generation,
		Data:         partial,
		Partial:      true,
	}, closed)
}

// begin writes the banner and tells the handler that the connection is
// open, before the first read. It reports whether it told the handler.
func (c *Conn) begin() bool {
	if banner := c.live().Banner; banner != nil {
		if p := banner(c); len(p) > 0 {
			c.writeReply(&replySlot{p: p, repeat: 1})
		}
	}
	h := c.handler()
	if h == nil {
		return false
	}
	h.Opened(c)
	return true
}

// ownBytes copies what is left in the splitter at close when it may be the
// tail of the last read, so that it does not keep that whole read alive: a
// tail of a read is shorter than a read, while bytes the splitter gathered
// over many reads are in a buffer of their own already.
func ownBytes(b []byte) []byte {
	if b != nil && len(b) < readBufferSize {
		return append(make([]byte, 0, len(b)), b...)
	}
	return b
}

// lingerHalfClosed keeps the connection open for writes after its peer
// shut down its sending side, until HalfCloseTimeout passes or it is closed,
// then waits for a write in progress to finish. No frame will come any
// more: replies awaited now are settled at once (a next frame never comes;
// everything until close is what came), and Send refuses new waits.
func (c *Conn) lingerHalfClosed() {
	c.mu.Lock()
	c.halfClosed.Store(true)
	awaiters := c.takeAwaitersLocked()
	c.mu.Unlock()
	settle(awaiters, fmt.Errorf("awaiting reply on %s: %w", c.cfg.ID, ErrHalfClosed))

	t := time.NewTimer(c.halfCloseTimeout())
	defer t.Stop()
	select {
	case <-t.C:
		// What is queued is written (within the write timeout) before the
		// socket closes under it; the turn is kept, so nothing is queued
		// after (Send gives up when the connection's context ends).
		select {
		case c.writeTurn <- struct{}{}:
			c.waitFlushed()
		case <-c.ctx.Done():
		}
	case <-c.ctx.Done(): // closed by the API, the listener or shutdown
	}
}

// handshake completes a TLS handshake first, so the opened event can name
// the peer's certificate; plain connections have none to do.
func (c *Conn) handshake() error {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, handshakeTimeout)
	defer cancel()
	// On a goroutine of its own, waited for here: the handshake's deep
	// calls (key exchange, signatures) grow a stack to tens of KiB, which
	// is freed when that goroutine exits, where the connection's goroutine
	// would keep it for as long as the connection stays open.
	done := make(chan error, 1)
	go func() { done <- tc.HandshakeContext(ctx) }()
	if err := <-done; err != nil {
		return err
	}
	if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
		c.mu.Lock()
		c.subject = certs[0].Subject.String()
		c.mu.Unlock()
	}
	return nil
}

// PeerSubject returns the subject of the peer's TLS client certificate, or
// "" when it gave none.
func (c *Conn) PeerSubject() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subject
}
