// Package conn serves one accepted TCP connection: a read loop that cuts the
// byte stream into frames and publishes them, serialized writes for sends and
// auto replies, and replies awaited by Send, answered in order.
package conn

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// readBufferSize is the most one read takes: large enough that a fast sender
// needs few reads, and the buffer is pooled so idle connections hold none.
const readBufferSize = 64 << 10

// DefaultWriteTimeout bounds a write when Config.WriteTimeout is 0: a peer
// that stops reading for this long is considered gone.
const DefaultWriteTimeout = 10 * time.Second

// handshakeTimeout bounds a TLS handshake: a client that connects and says
// nothing must not hold a connection slot for long.
const handshakeTimeout = 10 * time.Second

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

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
)

// Publisher receives the connection's events. The read loop uses PublishWait
// so a lossless subscriber can slow it down.
type Publisher interface {
	Publish(evs ...*event.Event)
	PublishWait(ctx context.Context, evs ...*event.Event) error
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
}

// ReplyMode says what reply Send waits for on a connection.
type ReplyMode int

const (
	// NoReply returns after the write.
	NoReply ReplyMode = iota
	// NextFrame waits for the next frame the connection receives.
	NextFrame
	// UntilClose collects every frame until the connection closes.
	UntilClose
)

// Conn is one accepted connection. Create it with New and run Serve.
type Conn struct {
	cfg      Config
	nc       net.Conn
	openedAt time.Time
	counters Counters
	ctx      context.Context // canceled by Close, so a waiting publish gives up
	cancel   context.CancelFunc
	done     chan struct{} // closed when Serve returns
	// stopWatch stops closing the connection when New's ctx ends.
	stopWatch func() bool

	// writeTurn serializes writes, and with them the order of awaiters: a
	// writer holds the turn while its value sits in the channel. A channel
	// rather than a mutex, so a Send waiting its turn gives up when its
	// context ends.
	writeTurn chan struct{}

	mu       sync.Mutex // guards the fields below
	awaiters []*awaiter
	// halfClosed is set once the peer has shut down its sending side and
	// the connection stays open for writes (Config.HalfCloseTimeout).
	halfClosed bool
	reason     event.CloseReason // the first reason given to Close
	subject    string            // the TLS peer's certificate subject, set before OPENED
}

type awaiter struct {
	mode  ReplyMode
	limit int
	buf   []byte
	err   error
	done  chan struct{}
}

// New wraps an accepted connection. ctx bounds its life: when it ends, the
// connection closes with reason SHUTDOWN.
func New(ctx context.Context, nc net.Conn, cfg Config) *Conn {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	c := &Conn{cfg: cfg, nc: nc, openedAt: time.Now(), done: make(chan struct{}), writeTurn: make(chan struct{}, 1)}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.stopWatch = context.AfterFunc(ctx, func() { c.Close(event.ReasonShutdown) })
	return c
}

// ID returns the connection's id.
func (c *Conn) ID() string { return c.cfg.ID }

// ListenerID returns the id of the listener that accepted it.
func (c *Conn) ListenerID() string { return c.cfg.ListenerID }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() string { return c.nc.RemoteAddr().String() }

// LocalAddr returns the local address.
func (c *Conn) LocalAddr() string { return c.nc.LocalAddr().String() }

// OpenedAt returns when the connection was accepted.
func (c *Conn) OpenedAt() time.Time { return c.openedAt }

// Counters returns the connection's live counters.
func (c *Conn) Counters() *Counters { return &c.counters }

// Reason returns why the connection closed, or ReasonUnspecified while open.
func (c *Conn) Reason() event.CloseReason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// Done is closed when Serve has returned and the socket is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close closes the connection with reason, unless it already closed for
// another. It does not wait for Serve to return; Done tells when it has.
func (c *Conn) Close(reason event.CloseReason) {
	c.mu.Lock()
	if c.reason == event.ReasonUnspecified {
		c.reason = reason
	}
	c.mu.Unlock()
	c.cancel()
	// Unblocks a read or write in progress.
	_ = c.nc.Close()
}

// Serve runs the read loop until the connection closes. It publishes
// CONNECTION_OPENED first, every frame as DATA in order, and
// CONNECTION_CLOSED last.
func (c *Conn) Serve() {
	defer close(c.done)
	defer c.cancel()
	defer c.stopWatch()

	pub := c.cfg.Publisher
	hsErr := c.handshake()
	pub.Publish(&event.Event{
		Kind:         event.ConnectionOpened,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		RemoteAddr:   c.RemoteAddr(),
		LocalAddr:    c.LocalAddr(),
		PeerSubject:  c.PeerSubject(),
	})

	splitter, err := framing.NewSplitter(c.cfg.Framing)
	var reason event.CloseReason
	if hsErr != nil {
		reason = event.ReasonTLSHandshake
		splitter = nil
	} else if err != nil {
		// Validated by the caller; reaching here is a bug, not a peer's doing.
		reason = event.ReasonReadError
	} else {
		reason = c.readLoop(splitter)
	}

	var partial []byte
	if splitter != nil {
		var final []byte
		final, partial = splitter.Close()
		if final != nil && reason != event.ReasonFrameTooLarge {
			c.frames([][]byte{final})
		}
	}
	if reason == event.ReasonPeerClosed && c.cfg.HalfCloseTimeout > 0 {
		c.lingerHalfClosed()
	}

	_ = c.nc.Close()
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
	awaiters := c.takeAwaitersLocked()
	c.mu.Unlock()
	settle(awaiters, ErrClosed)
	if c.cfg.Closed != nil {
		c.cfg.Closed(reason)
	}

	pub.Publish(&event.Event{
		Kind:         event.ConnectionClosed,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		RemoteAddr:   c.RemoteAddr(),
		LocalAddr:    c.LocalAddr(),
		Data:         partial,
		CloseReason:  reason,
	})
}

// lingerHalfClosed keeps the connection open for writes after its peer
// shut down its sending side, until HalfCloseTimeout passes or it is closed,
// then waits for a write in progress to finish. No frame will come any
// more: replies awaited now are settled at once (a next frame never comes;
// everything until close is what came), and Send refuses new waits.
func (c *Conn) lingerHalfClosed() {
	c.mu.Lock()
	c.halfClosed = true
	awaiters := c.takeAwaitersLocked()
	c.mu.Unlock()
	settle(awaiters, fmt.Errorf("awaiting reply on %s: %w", c.cfg.ID, ErrHalfClosed))

	t := time.NewTimer(c.cfg.HalfCloseTimeout)
	defer t.Stop()
	select {
	case <-t.C:
		// A write in progress finishes (within its own bounds) before the
		// socket closes under it; the turn is kept, so no write starts
		// after (Send gives up when the connection's context ends).
		select {
		case c.writeTurn <- struct{}{}:
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
	if err := tc.HandshakeContext(ctx); err != nil {
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

// readLoop reads until an error and returns the close reason it implies.
func (c *Conn) readLoop(splitter *framing.Splitter) event.CloseReason {
	maxRead := readBufferSize
	if c.cfg.Framing.Mode == framing.Raw && c.cfg.Framing.MaxFrameBytes < maxRead {
		maxRead = c.cfg.Framing.MaxFrameBytes
	}
	var frames [][]byte
	emit := func(f []byte) { frames = append(frames, f) }
	drained := true
	for {
		if c.cfg.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.cfg.IdleTimeout))
		}
		chunk, err := c.read(maxRead, drained)
		drained = len(chunk) < maxRead
		if len(chunk) > 0 {
			n := uint64(len(chunk))
			c.counters.BytesIn.Add(n)
			for _, a := range c.cfg.Aggregates {
				a.BytesIn.Add(n)
			}
			frames = frames[:0]
			ferr := splitter.Feed(chunk, emit)
			if len(frames) > 0 && !c.frames(frames) {
				return event.ReasonUnspecified // closed while waiting; Close set the reason
			}
			clear(frames)
			if ferr != nil {
				return event.ReasonFrameTooLarge
			}
		}
		if err != nil {
			return readReason(err, c.cfg.IdleTimeout > 0)
		}
	}
}

// read returns the next bytes in a slice of their own: frames cut from it
// are published and never change. When the previous read drained the socket
// it first waits for readability without a buffer, so an idle connection
// holds none; a busy one reads straight into a pooled buffer.
func (c *Conn) read(max int, wait bool) ([]byte, error) {
	if wait {
		if err := waitReadable(c.nc); err != nil {
			return nil, err
		}
	}
	bp := readBuffers.Get().(*[]byte)
	n, err := c.nc.Read((*bp)[:max])
	var chunk []byte
	if n > 0 {
		chunk = bytes.Clone((*bp)[:n]) // no zeroing, unlike make
	}
	readBuffers.Put(bp)
	return chunk, err
}

func readReason(err error, idle bool) event.CloseReason {
	switch {
	case errors.Is(err, io.EOF):
		return event.ReasonPeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return event.ReasonPeerReset
	case idle && errors.Is(err, os.ErrDeadlineExceeded):
		return event.ReasonIdleTimeout
	}
	return event.ReasonReadError
}

// frames publishes frames in order, answers awaiters and auto replies. It
// reports false when the connection closed while a publish was waiting.
func (c *Conn) frames(frames [][]byte) bool {
	n := uint64(len(frames))
	c.counters.FramesIn.Add(n)
	for _, a := range c.cfg.Aggregates {
		a.FramesIn.Add(n)
	}
	// One allocation for the events of a read, not one per frame.
	block := make([]event.Event, len(frames))
	evs := make([]*event.Event, len(frames))
	now := time.Now()
	for i, f := range frames {
		block[i] = event.Event{
			Time:         now,
			Kind:         event.Data,
			ListenerID:   c.cfg.ListenerID,
			ConnectionID: c.cfg.ID,
			Data:         f,
		}
		evs[i] = &block[i]
	}
	if err := c.cfg.Publisher.PublishWait(c.ctx, evs...); err != nil {
		return false
	}
	c.answer(frames)
	if reply := c.autoReply(frames); len(reply) > 0 {
		_ = c.write(reply)
	}
	return true
}

// takeAwaitersLocked hands over the awaiters no frame will answer now.
func (c *Conn) takeAwaitersLocked() []*awaiter {
	awaiters := c.awaiters
	c.awaiters = nil
	return awaiters
}

// settle ends the waits of awaiters that no more frames will come for: an
// UntilClose reply is complete with what came, any other fails with err
// (unless it failed already).
func settle(awaiters []*awaiter, err error) {
	for _, a := range awaiters {
		if a.mode != UntilClose && a.err == nil {
			a.err = err
		}
		close(a.done)
	}
}

// dropAwaiter forgets a, whose send failed to write: no reply is meant for
// it.
func (c *Conn) dropAwaiter(a *awaiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := slices.Index(c.awaiters, a); i >= 0 {
		c.awaiters = slices.Delete(c.awaiters, i, i+1)
	}
}

// answer hands frames to awaiting senders, oldest first.
func (c *Conn) answer(frames [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range frames {
		if len(c.awaiters) == 0 {
			return
		}
		a := c.awaiters[0]
		if len(a.buf)+len(f) > a.limit {
			a.err = fmt.Errorf("awaiting reply on %s: more than %d bytes (await_reply.max_bytes): %w", c.cfg.ID, a.limit, ErrReplyTooLarge)
		} else {
			a.buf = append(a.buf, f...)
		}
		if a.mode == NextFrame || a.err != nil {
			close(a.done)
			c.awaiters[0] = nil
			c.awaiters = c.awaiters[1:]
		}
	}
}

func (c *Conn) autoReply(frames [][]byte) []byte {
	switch c.cfg.AutoReply.Mode {
	case Echo:
		var out []byte
		for _, f := range frames {
			var err error
			if out, err = c.cfg.Framing.Encode(out, f); err != nil {
				// A frame the framing cannot encode back (none today) is skipped.
				continue
			}
		}
		return out
	case Fixed:
		out := make([]byte, 0, len(frames)*len(c.cfg.AutoReply.Payload))
		for range frames {
			out = append(out, c.cfg.AutoReply.Payload...)
		}
		return out
	}
	return nil
}

// write writes p in its turn with the write timeout. A failed write
// closes the connection: the peer is not reading.
func (c *Conn) write(p []byte) error {
	c.writeTurn <- struct{}{}
	defer func() { <-c.writeTurn }()
	return c.writeInTurn(p, time.Time{})
}

// writeInTurn writes p, the caller holding the write turn, within the write
// timeout and by deadline when that is sooner (zero: no deadline of its
// own). A write that fails or times out after writing part of p closes the
// connection, whose byte stream now holds a partial message; one that ran
// out of the caller's time before writing a byte leaves it open.
func (c *Conn) writeInTurn(p []byte, deadline time.Time) error {
	dl := time.Now().Add(c.cfg.WriteTimeout)
	callers := !deadline.IsZero() && deadline.Before(dl)
	if callers {
		dl = deadline
	}
	_ = c.nc.SetWriteDeadline(dl)
	n, err := c.nc.Write(p)
	c.counters.BytesOut.Add(uint64(n))
	if n > 0 {
		c.counters.FramesOut.Add(1)
	}
	for _, a := range c.cfg.Aggregates {
		a.BytesOut.Add(uint64(n))
		if n > 0 {
			a.FramesOut.Add(1)
		}
	}
	if err == nil {
		return nil
	}
	timedOut := errors.Is(err, os.ErrDeadlineExceeded)
	if callers && timedOut && n == 0 {
		return fmt.Errorf("writing to %s: peer took nothing before the send's timeout: %w", c.cfg.ID, context.DeadlineExceeded)
	}
	c.Close(event.ReasonWriteError)
	switch {
	case callers && timedOut:
		return fmt.Errorf("writing to %s: peer took %d of %d bytes before the send's timeout; the connection is closed: %w", c.cfg.ID, n, len(p), context.DeadlineExceeded)
	case timedOut:
		return fmt.Errorf("writing to %s: peer did not read for %s: %w", c.cfg.ID, c.cfg.WriteTimeout, ErrWriteTimeout)
	}
	return fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
}

// Send writes p and, with a reply mode, waits for the reply. Sends on one
// connection are written in call order and their replies are matched in the
// same order. maxReply bounds the reply. The context bounds the whole send:
// the wait for its turn to write, the write (which the write timeout bounds
// too) and the wait for the reply.
func (c *Conn) Send(ctx context.Context, p []byte, mode ReplyMode, maxReply int) ([]byte, error) {
	select {
	case c.writeTurn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("writing to %s: waiting for earlier sends to be written: %w", c.cfg.ID, ctx.Err())
	case <-c.ctx.Done():
		return nil, fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
	}
	var a *awaiter
	if mode != NoReply {
		a = &awaiter{mode: mode, limit: maxReply, done: make(chan struct{})}
		c.mu.Lock()
		closed, halfClosed := c.reason != event.ReasonUnspecified, c.halfClosed
		if !closed && !halfClosed {
			c.awaiters = append(c.awaiters, a)
		}
		c.mu.Unlock()
		switch {
		case closed:
			<-c.writeTurn
			return nil, fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
		case halfClosed:
			// Nothing written: the caller asked for a reply that cannot come.
			<-c.writeTurn
			return nil, fmt.Errorf("writing to %s: %w; send without await_reply", c.cfg.ID, ErrHalfClosed)
		}
	}
	deadline, _ := ctx.Deadline()
	err := c.writeInTurn(p, deadline)
	if err != nil && a != nil {
		c.dropAwaiter(a)
	}
	<-c.writeTurn
	if err != nil || a == nil {
		return nil, err
	}
	select {
	case <-a.done:
		c.mu.Lock()
		buf, err := a.buf, a.err
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return buf, nil
	case <-ctx.Done():
		// The awaiter keeps its place, so the reply meant for this send is
		// discarded when it comes instead of answering a later send.
		return nil, ctx.Err()
	}
}
