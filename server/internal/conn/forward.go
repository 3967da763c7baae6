package conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// A forwarding listener's connection relays its bytes to a target it dials
// once it is open, as socat does. Each direction runs as fast as its
// reader and writer go, never through the hub:
//
//   - client to target: the read loop, which cuts what it reads into DATA
//     events for subscribers as on any connection, then writes the same
//     bytes, unframed, to the target;
//   - target to client: a pump goroutine owned by Serve, which reads the
//     target and queues what it read on the connection's write queue, so
//     that it takes turns with Sends; the write goroutine publishes it as
//     DATA of direction Sent once written (publishSent).
//
// A lossless (Backpressure) subscriber that watches the connection slows
// the relay as it slows any connection: the read loop waits to publish
// received data, and, when the subscriber asks for sent data, the write
// goroutine waits to publish what the target said, so the write queue
// fills and the pump stops reading the target. Lossy subscribers never
// slow it.
//
// An end of stream on one side is passed on as a half-close of the other;
// the connection closes once both sides have ended, or at once when a side
// fails. Its CONNECTION_CLOSED says why each side ended.

// ForwardDialTimeout bounds the dial of a target, TLS handshake included:
// a client waits that long at most for its relay to start.
const ForwardDialTimeout = 10 * time.Second

// Forward makes a connection relay its bytes to a target.
type Forward struct {
	// Dial connects to the target: resolving it, checking it against the
	// dial policy and completing its TLS handshake (dialer.Dialer.Dial).
	// Its context ends when the connection closes, or after
	// ForwardDialTimeout.
	Dial func(ctx context.Context) (net.Conn, error)
	// Stats, when set, counts what the relay moved, into the figures of
	// its listener or of the gateway.
	Stats *ForwardStats
}

// ForwardStats are what relays moved.
type ForwardStats struct {
	// ToTarget counts the bytes written to targets, FromTarget those read
	// from them (and queued for their clients).
	ToTarget, FromTarget atomic.Uint64
	// DialFailures counts the targets that could not be dialed: refused,
	// unreachable, denied by the policy, or their TLS failed.
	DialFailures atomic.Uint64
}

// relay is a forwarded connection's target side. It is set by Serve
// before the read loop, the pump and the idle timer start, which read it.
type relay struct {
	target net.Conn // nil when the dial failed
	stats  *ForwardStats
	idle   time.Duration // Config.IdleTimeout, counted over both directions
	last   atomic.Int64  // when a byte last went either way, in unix nanoseconds
	timer  *time.Timer   // the idle check; nil without an idle timeout
	ended  atomic.Bool   // the relay is over: the idle check does nothing
	done   chan struct{} // closed when the pump returns
	// stopClose stops closing the target when the connection closes.
	stopClose func() bool

	mu     sync.Mutex        // guards the fields below
	reason event.CloseReason // why the target's side ended, the first cause
	err    string            // what went wrong with the target, for the close event
}

// end records why the target's side ended, unless it ended already.
func (r *relay) end(reason event.CloseReason, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reason != event.ReasonUnspecified {
		return
	}
	r.reason = reason
	if err != nil {
		r.err = err.Error()
	}
}

func (r *relay) touch() {
	if r.idle > 0 {
		r.last.Store(time.Now().UnixNano())
	}
}

type closeWriter interface{ CloseWrite() error }

// startRelay dials the target of a forwarding connection and starts the
// pump. It returns ReasonUnspecified when the relay runs (or the
// connection is not forwarded), ReasonForwardFailed when the target could
// not be dialed: the connection then closes at once, without reading.
func (c *Conn) startRelay() event.CloseReason {
	f := c.cfg.Forward
	if f == nil {
		return event.ReasonUnspecified
	}
	stats := f.Stats
	if stats == nil {
		stats = &ForwardStats{}
	}
	r := &relay{stats: stats, idle: c.fwdIdle, done: make(chan struct{})}
	c.relay = r
	ctx, cancel := context.WithTimeout(c.ctx, ForwardDialTimeout)
	target, err := f.Dial(ctx)
	cancel()
	if err != nil {
		close(r.done)
		if c.ctx.Err() == nil { // else closed meanwhile: Close gave the reason
			stats.DialFailures.Add(1)
			r.end(event.ReasonForwardFailed, fmt.Errorf("forwarding %s: %w", c.cfg.ID, err))
		}
		return event.ReasonForwardFailed
	}
	r.target = target
	// A close of the connection (the API, the listener, shutdown, a failed
	// side) ends the target's reads and writes.
	r.stopClose = context.AfterFunc(c.ctx, func() { _ = target.Close() })
	if r.idle > 0 {
		r.touch()
		r.timer = time.AfterFunc(time.Hour, c.checkIdle)
		r.timer.Stop()
		r.timer.Reset(r.idle) // after r.timer is set, which checkIdle reads
	}
	go c.pump()
	return event.ReasonUnspecified
}

// checkIdle closes the connection when no byte went either way for the
// idle timeout, and checks again when it is due otherwise.
func (c *Conn) checkIdle() {
	r := c.relay
	if r.ended.Load() {
		return
	}
	if left := r.idle - time.Since(time.Unix(0, r.last.Load())); left > 0 {
		r.timer.Reset(left)
		return
	}
	c.Close(event.ReasonIdleTimeout)
}

// relayOut writes what the client sent to the target, from the read loop,
// within the write timeout. It reports false when the connection closed.
func (c *Conn) relayOut(p []byte) bool {
	r := c.relay
	r.touch()
	_ = r.target.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	n, err := r.target.Write(p)
	r.stats.ToTarget.Add(uint64(n))
	if err == nil {
		return true
	}
	if c.ctx.Err() != nil {
		return false // closed: Close gave the reason
	}
	reason := event.ReasonWriteError
	if rr := readReason(err, false); rr == event.ReasonPeerReset {
		reason = rr
	}
	r.end(reason, fmt.Errorf("forwarding %s: writing to the target: %w", c.cfg.ID, err))
	c.Close(event.ReasonForwardFailed)
	return false
}

// pump reads the target and queues what it says for the client, until the
// target ends its side (then it half-closes the client's) or fails (then
// it closes the connection).
func (c *Conn) pump() {
	r := c.relay
	defer close(r.done)
	read := rawReader(r.target)
	if read == nil {
		// Through crypto/tls: one read returns at most one record.
		read = func(int) ([]byte, error) { return readConn(r.target, maxTLSReadSize) }
	}
	for {
		chunk, err := read(readBufferSize)
		if len(chunk) > 0 {
			r.touch()
			r.stats.FromTarget.Add(uint64(len(chunk)))
			if !c.relayIn(chunk) {
				return
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			r.end(event.ReasonPeerClosed, nil)
			c.shutWrite()
			return
		case c.ctx.Err() != nil || errors.Is(err, net.ErrClosed):
			return // closed by the gateway, for the client side's reason
		default:
			r.end(readReason(err, false), fmt.Errorf("forwarding %s: reading from the target: %w", c.cfg.ID, err))
			c.Close(event.ReasonForwardFailed)
			return
		}
	}
}

// readConn reads up to size bytes from nc into a slice of their own.
func readConn(nc net.Conn, size int) ([]byte, error) {
	bp := getReadBuffer(size)
	n, err := nc.Read((*bp)[:size])
	var chunk []byte
	if n > 0 {
		chunk = append([]byte(nil), (*bp)[:n]...)
	}
	putReadBuffer(bp)
	return chunk, err
}

// relayIn queues what the target said for the client, taking its turn as
// a Send does, and waits for room in the write queue: a client that does
// not read stops the pump, and TCP pushes back on the target.
func (c *Conn) relayIn(p []byte) bool {
	select {
	case c.writeTurn <- struct{}{}:
	case <-c.ctx.Done():
		return false
	}
	err := c.queue(c.ctx, &outItem{p: p, repeat: 1, size: len(p)})
	<-c.writeTurn
	return err == nil
}

// shutWrite passes the target's end of stream on to the client: once what
// is queued is written, the gateway shuts down its writing side. Nothing
// is queued after: a Send fails with ErrClosed from then on.
func (c *Conn) shutWrite() {
	select {
	case c.writeTurn <- struct{}{}:
	case <-c.ctx.Done():
		return
	}
	defer func() { <-c.writeTurn }()
	c.waitFlushed()
	o := &c.out
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	if cw, ok := c.nc.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
}

// endRelay ends the relay once the read loop returned reason. A client's
// end of stream is passed on to the target as a half-close, and the
// connection stays open (HALF_CLOSED) while the target still talks, until
// it ends its side too or the connection is closed; any other reason
// closes the target at once. It returns the client side's reason.
func (c *Conn) endRelay(reason event.CloseReason) event.CloseReason {
	r := c.relay
	if r == nil || r.target == nil {
		return reason
	}
	if reason == event.ReasonPeerClosed {
		if cw, ok := r.target.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
		c.mu.Lock()
		c.halfClosed.Store(true)
		awaiters := c.takeAwaitersLocked()
		c.mu.Unlock()
		settle(awaiters, fmt.Errorf("awaiting reply on %s: %w", c.cfg.ID, ErrHalfClosed))
		select {
		case <-r.done:
		case <-c.ctx.Done():
		}
	}
	r.ended.Store(true)
	if r.timer != nil {
		r.timer.Stop()
	}
	_ = r.target.Close()
	r.stopClose()
	<-r.done
	return reason
}

// relayClosed adds the target's side to the connection's close event:
// why it ended (the client side's reason when the gateway ended it for
// that) and what went wrong with it.
func (c *Conn) relayClosed(e *event.Event) {
	r := c.relay
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e.TargetReason = r.reason
	if e.TargetReason == event.ReasonUnspecified {
		e.TargetReason = e.CloseReason
	}
	e.Error = r.err
}
