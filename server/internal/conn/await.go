package conn

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// Await says what reply a Send waits for. The zero value waits for none.
//
// Which frame answers which Send: a frame completes when the read that
// brought its last byte returns. It answers the oldest awaiting Send whose
// write began before that and whose Match it satisfies (an await.UntilClose
// Send keeps every such frame; no later Send gets one). A frame that
// answers no Send goes to subscribers only, as every frame does. A Send
// whose caller gave up leaves the line at once: without Match, a reply that
// comes late then answers the next Send.
type Await struct {
	// Mode is what reply to wait for: await.FirstRead and await.Frame
	// both wait for the next frame, cut by the connection's framing;
	// await.UntilClose collects every frame until the connection closes.
	Mode await.Mode
	// MaxBytes bounds the reply.
	MaxBytes int
	// Match, when set, says which frames may answer: for protocols whose
	// replies carry a correlation id. Nil means every frame.
	Match func(frame []byte) bool
	// CloseOnTimeout closes the connection with reason REPLY_TIMEOUT when
	// the Send gives up waiting for its reply, for in-order protocols that
	// cannot resynchronize after a lost reply.
	CloseOnTimeout bool
}

type awaiter struct {
	mode  await.Mode
	limit int
	match func([]byte) bool
	// after is how many frames had completed when its write began: only
	// later ones answer it.
	after uint64
	buf   []byte
	err   error
	done  chan struct{}
}

// takeAwaitersLocked hands over the awaiters no frame will answer now.
func (c *Conn) takeAwaitersLocked() []*awaiter {
	awaiters := c.awaiters
	c.awaiters = nil
	return awaiters
}

// settle ends the waits of awaiters that no more frames will come for: an
// await.UntilClose reply is complete with what came, any other fails with err
// (unless it failed already).
func settle(awaiters []*awaiter, err error) {
	for _, a := range awaiters {
		if a.mode != await.UntilClose && a.err == nil {
			a.err = err
		}
		close(a.done)
	}
}

// addAwaiter puts a in line as its write begins, in the write goroutine, so
// the line is in write order.
func (c *Conn) addAwaiter(a *awaiter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.reason != event.ReasonUnspecified:
		return fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
	case c.halfClosed.Load():
		return fmt.Errorf("writing to %s: %w; send without await_reply", c.cfg.ID, ErrHalfClosed)
	}
	a.after = c.counters.FramesIn.Load()
	c.awaiters = append(c.awaiters, a)
	return nil
}

// dropAwaiter takes a out of line and reports whether it was still in it
// (not answered nor settled).
func (c *Conn) dropAwaiter(a *awaiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := slices.Index(c.awaiters, a); i >= 0 {
		c.awaiters = slices.Delete(c.awaiters, i, i+1)
		return true
	}
	return false
}

// answer hands frames to awaiting senders (see Await). The last of frames
// is the connection's frame number last, counted in FramesIn.
func (c *Conn) answer(frames [][]byte, last uint64, ruled []*replySlot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	first := last - uint64(len(frames)) + 1
	for i, f := range frames {
		if len(c.awaiters) == 0 {
			return
		}
		if ruled != nil && ruled[i] != nil {
			continue // a rule answered it: it answers no Send
		}
		seq := first + uint64(i)
		for j, a := range c.awaiters {
			if a.after >= seq {
				break // this and every later write began after the frame came
			}
			if a.match != nil && !a.match(f) {
				continue
			}
			if len(a.buf)+len(f) > a.limit {
				a.err = fmt.Errorf("awaiting reply on %s: more than %d bytes (await_reply.max_bytes): %w", c.cfg.ID, a.limit, ErrReplyTooLarge)
			} else {
				a.buf = append(a.buf, f...)
			}
			if a.mode != await.UntilClose || a.err != nil {
				close(a.done)
				c.awaiters = slices.Delete(c.awaiters, j, j+1)
				if len(c.awaiters) == 0 {
					c.awaiters = nil
				}
			}
			break
		}
	}
}

// SendFrame is Send of frame encoded with the connection's framing, as an
// echo auto reply encodes it: a line gets its "\n", a length-prefixed frame
// its prefix, a raw frame stays as it is. It returns the reply and the
// bytes written, the encoding included. A frame the framing cannot encode
// is written nowhere: the error is a *framing.EncodeError saying why.
func (c *Conn) SendFrame(ctx context.Context, frame []byte, aw Await) ([]byte, int, error) {
	p, err := c.cfg.Framing.Encode(nil, frame)
	if err != nil {
		return nil, 0, fmt.Errorf("writing to %s: %w", c.cfg.ID, err)
	}
	reply, err := c.Send(ctx, p, aw)
	return reply, len(p), err
}

// Send writes p and, as aw says, waits for the reply (see Await for which
// frame answers): Begin, then Wait. Sends on one connection are written in
// call order. The context bounds the whole send: the wait for its turn and
// for room in the write queue, the write (which the write timeout bounds
// too) and the wait for the reply. A send that times out before a byte of
// it is written leaves the connection open; one that times out partway
// closes it.
func (c *Conn) Send(ctx context.Context, p []byte, aw Await) ([]byte, error) {
	pend, err := c.Begin(ctx, p, aw)
	if err != nil {
		return nil, err
	}
	return pend.Wait(ctx)
}

// Pending is a send whose write is queued: Wait waits for the write and
// its reply.
type Pending struct {
	c  *Conn
	it *outItem
	aw Await
}

// Begin takes the write turn, queues p (and the wait for its reply, as aw
// says) and returns: a Begin that returned is ordered before every later
// one, so a caller that hands queued sends to a connection in order (a
// managed outbound connection flushing what it held while down) gets them
// written in that order while each sender waits for its own reply with
// Wait. ctx bounds the wait for the turn and for room in the queue, and is
// the write's deadline.
func (c *Conn) Begin(ctx context.Context, p []byte, aw Await) (*Pending, error) {
	select {
	case c.writeTurn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("writing to %s: waiting for earlier sends to be written: %w", c.cfg.ID, ctx.Err())
	case <-c.ctx.Done():
		return nil, fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
	}
	op := &sendOp{}
	s := &op.send
	s.done = make(chan struct{})
	s.deadline, _ = ctx.Deadline()
	if aw.Mode != await.None {
		c.mu.Lock()
		closed, halfClosed := c.reason != event.ReasonUnspecified, c.halfClosed.Load()
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
		op.await = awaiter{mode: aw.Mode, limit: aw.MaxBytes, match: aw.Match, done: make(chan struct{})}
		s.await = &op.await
	}
	op.it = outItem{p: p, repeat: 1, size: len(p), frames: 1, send: s}
	it := &op.it
	err := c.queue(ctx, it)
	<-c.writeTurn
	switch {
	case errors.Is(err, ErrClosed):
		return nil, fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
	case err != nil:
		return nil, fmt.Errorf("writing to %s: waiting for earlier sends to be written (the write queue is full): %w", c.cfg.ID, err)
	}
	op.pend = Pending{c: c, it: it, aw: aw}
	return &op.pend, nil
}

// sendOp is what Begin makes for one send, in one allocation instead of
// four: its queued write, the wait for the write and for its reply, and
// the Pending it returns.
type sendOp struct {
	it    outItem
	send  pendingSend
	await awaiter
	pend  Pending
}

// Wait waits for the write Begin queued and, as its Await says, for the
// reply. ctx bounds the wait: a write not begun when it ends leaves the
// queue; a reply not come leaves the line of awaiters (and, with
// CloseOnTimeout, closes the connection).
func (p *Pending) Wait(ctx context.Context) ([]byte, error) {
	c, it, aw := p.c, p.it, p.aw
	s := it.send
	// A send awaiting a reply waits for the reply alone, which comes after
	// the write (a write that fails ends it too: failAwait), so that the
	// write's end does not wake it first.
	written := s.done
	if s.await != nil {
		written = s.await.done
	}
	select {
	case <-written:
		<-s.done // at once but for a write still ending after its reply came
	case <-ctx.Done():
		if c.unqueue(it) {
			return nil, fmt.Errorf("writing to %s: waiting for earlier sends to be written: %w", c.cfg.ID, ctx.Err())
		}
		<-s.done // begun: bounded by the write timeout and the deadline
	}
	if s.err != nil || s.await == nil {
		return nil, s.err
	}
	a := s.await
	select {
	case <-a.done:
	case <-ctx.Done():
		if c.dropAwaiter(a) {
			if aw.CloseOnTimeout {
				c.Close(event.ReasonReplyTimeout)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("awaiting reply on %s: %w: %w", c.cfg.ID, ErrReplyTimeout, ctx.Err())
			}
			return nil, fmt.Errorf("awaiting reply on %s: %w", c.cfg.ID, ctx.Err())
		}
		<-a.done // answered or settled just now
	}
	c.mu.Lock()
	buf, err := a.buf, a.err
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return buf, nil
}
