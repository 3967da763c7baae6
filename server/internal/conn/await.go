package conn

import (
	"context"
	"fmt"
	"slices"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

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

type awaiter struct {
	mode  ReplyMode
	limit int
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
