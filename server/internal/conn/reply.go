package conn

import (
	"sync"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// Replies to frames are written in the order of the frames they answer,
// whoever makes them: a rule (which may ask for a delay), the handler
// (whose answer comes later) or the fallback mode. A reply that is ready
// when nothing waits before it is queued for writing at once, by the read
// loop, as auto replies always were. One that is not (a delay, a handler's
// answer) waits in the connection's reply queue, and so does every reply
// after it, until the reply goroutine (replier, running only while the
// queue holds replies) writes them in turn. The read loop goes on reading
// and publishing meanwhile; it waits only when the queue holds
// maxPendingReplies replies, as it waits for room in the write queue.

// maxPendingReplies bounds the replies that wait behind a delayed reply or
// a handler's answer on one connection.
const maxPendingReplies = 1024

// replySlot is one reply in the order of frames.
type replySlot struct {
	p      []byte // written repeat times; nil writes nothing
	repeat int
	frames uint64 // the frames it answers, counted into FramesOut once written
	// closeBy, when set, closes the connection with it once p is written.
	closeBy event.CloseReason
	// at, when set, is when the reply may be written (a rule's delay).
	at time.Time
	// h, when set, is a handler's answer to wait for, until deadline;
	// frame is its frame, for the fallback mode.
	h        *Handoff
	frame    []byte
	deadline time.Time
}

// ready reports whether s can be written now.
func (s *replySlot) ready() bool { return s.h == nil && s.at.IsZero() }

// replyQueue holds the replies waiting for their turn.
type replyQueue struct {
	mu      sync.Mutex // guards the fields below
	slots   []*replySlot
	running bool          // the replier runs
	room    chan struct{} // made when the read loop waits; closed when a slot leaves
	wg      sync.WaitGroup
}

// handlerTimeout is how long the handler has to answer a frame.
func (c *Conn) handlerTimeout() time.Duration {
	if t := c.live().HandlerTimeout; t > 0 {
		return t
	}
	return DefaultHandlerTimeout
}

// handler returns the connection's Handler, or nil when none takes its
// frames (a forwarded connection's bytes are relayed, never handled).
func (c *Conn) handler() Handler {
	if c.cfg.Forward != nil {
		return nil
	}
	return c.cfg.Handler
}

// respond answers frames in order: each by the first rule that matches it
// (rule[i], when the connection has rules), else by the handler when it
// takes the frame, else by the fallback mode. It waits while the handler's
// stream is full, or while the reply queue is.
func (c *Conn) respond(frames [][]byte, rule []*replySlot) {
	h := c.handler()
	if h != nil && !h.Handles(c) {
		h = nil
	}
	if rule == nil && h == nil {
		c.autoReply(frames) // the reply queue is never used: nothing waits in it
		return
	}
	start := 0 // the first frame of the run left to the fallback mode
	fallback := func(end int) bool {
		if end > start {
			ok := c.fallback(frames[start:end])
			start = end
			return ok
		}
		return true
	}
	for i, f := range frames {
		var s *replySlot
		switch {
		case rule != nil && rule[i] != nil:
			s = rule[i]
		case h != nil:
			// Earlier frames' replies go first: the handler may keep the
			// read loop waiting.
			if !fallback(i) {
				return
			}
			// A handoff the handler did not take serves the next frame: a
			// frame nobody handles allocates nothing.
			ho := c.spare
			if ho == nil {
				ho = NewHandoff(nil)
			}
			ho.Frame, ho.At = f, time.Now()
			if !h.Frame(c.ctx, c, ho) {
				ho.Frame = nil
				c.spare = ho
				continue // the fallback mode answers it, with its run
			}
			c.spare = nil
			s = &replySlot{h: ho, frame: f, frames: 1, deadline: time.Now().Add(c.handlerTimeout())}
		default:
			continue
		}
		// s is the replier's once queued. A reply that closes the
		// connection makes putReply report false: later frames get none.
		if !fallback(i) || !c.putReply(s) {
			return
		}
		start = i + 1
	}
	fallback(len(frames))
}

// fallback answers frames with the AutoReply mode: at once when no reply
// waits before them, or else in the reply queue. It reports false when the
// connection closed.
func (c *Conn) fallback(frames [][]byte) bool {
	q := &c.replies
	q.mu.Lock()
	waiting := len(q.slots) > 0
	q.mu.Unlock()
	if !waiting {
		c.autoReply(frames)
		return c.ctx.Err() == nil
	}
	s, ok := c.fallbackSlot(frames)
	if !ok {
		return true
	}
	return c.putReply(&s)
}

// fallbackSlot returns the AutoReply mode's reply to frames, and false for
// none. A value, so that the read loop's own write of it allocates
// nothing but the echo's bytes.
func (c *Conn) fallbackSlot(frames [][]byte) (replySlot, bool) {
	ar := c.live().AutoReply
	switch ar.Mode {
	case Echo:
		// At most about one read's worth: framing adds a few bytes a frame.
		var out []byte
		for _, f := range frames {
			var err error
			if out, err = c.cfg.Framing.Encode(out, f); err != nil {
				continue // a frame the framing cannot encode back (none today) is skipped
			}
		}
		if len(out) > 0 {
			return replySlot{p: out, repeat: 1, frames: uint64(len(frames))}, true
		}
	case Fixed:
		if p := ar.Payload; len(p) > 0 && len(frames) > 0 {
			return replySlot{p: p, repeat: len(frames), frames: uint64(len(frames))}, true
		}
	}
	return replySlot{}, false
}

// putReply writes s at once when it is ready and no reply waits before it;
// otherwise it queues s, waiting for room, and starts the replier. It
// reports false when the connection closed.
func (c *Conn) putReply(s *replySlot) bool {
	q := &c.replies
	for {
		q.mu.Lock()
		if len(q.slots) == 0 && s.ready() {
			q.mu.Unlock()
			return c.writeReply(s)
		}
		if len(q.slots) < maxPendingReplies {
			break
		}
		if q.room == nil {
			q.room = make(chan struct{})
		}
		room := q.room
		q.mu.Unlock()
		select {
		case <-room:
		case <-c.ctx.Done():
			c.abandon(s)
			return false
		}
	}
	q.slots = append(q.slots, s)
	if !q.running {
		q.running = true
		q.wg.Add(1)
		go c.replier()
	}
	q.mu.Unlock()
	return true
}

// replier writes the queued replies in order, each once it is ready, and
// ends when the queue is empty. A slot leaves the queue only once written,
// so that a reply the read loop finds ready with an empty queue cannot
// overtake one being written.
func (c *Conn) replier() {
	q := &c.replies
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if len(q.slots) == 0 {
			q.slots = nil
			q.running = false
			q.mu.Unlock()
			return
		}
		s := q.slots[0]
		q.mu.Unlock()

		ok := c.settleReply(s) && c.writeReply(s)

		q.mu.Lock()
		q.slots[0] = nil
		q.slots = q.slots[1:]
		if q.room != nil {
			close(q.room)
			q.room = nil
		}
		var rest []*replySlot
		if !ok {
			// Closed: what waits will never be written.
			rest, q.slots = q.slots, nil
			q.running = false
		}
		q.mu.Unlock()
		if !ok {
			for _, r := range rest {
				c.abandon(r)
			}
			return
		}
	}
}

// settleReply waits until s can be written: its delay passed, its
// handler's answer came (or did not in time). It turns a handler's answer
// into the bytes to write. It reports false when the connection closed
// first.
func (c *Conn) settleReply(s *replySlot) bool {
	if !s.at.IsZero() {
		if d := time.Until(s.at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				c.abandon(s)
				return false
			}
		}
		s.at = time.Time{}
	}
	if s.h == nil {
		return true
	}
	ho := s.h
	select {
	case <-ho.Done():
	default:
		t := time.NewTimer(time.Until(s.deadline))
		select {
		case <-ho.Done():
		case <-t.C:
			ho.settle(TimedOut, HandlerReply{})
		case <-c.ctx.Done():
			t.Stop()
			c.abandon(s)
			return false
		}
		t.Stop()
	}
	s.h = nil
	switch o, r := ho.Result(); o {
	case Answered:
		if r.Payload != nil {
			p := r.Payload
			if !r.Raw {
				var err error
				if p, err = c.cfg.Framing.Encode(nil, r.Payload); err != nil {
					p = nil // a frame the framing cannot encode is not written
				}
			}
			s.p, s.repeat = p, 1
		}
		if r.Close {
			s.closeBy = event.ReasonClosedByHandler
		}
	case TimedOut:
		if c.live().HandlerTimeoutClose {
			s.closeBy = event.ReasonHandlerTimeout
			break
		}
		fallthrough
	case Unhandled:
		if fb, ok := c.fallbackSlot([][]byte{s.frame}); ok {
			s.p, s.repeat = fb.p, fb.repeat
		}
	case Abandoned:
		return false
	}
	s.frame = nil
	return true
}

// writeReply queues s's bytes for writing, in its turn, and closes the
// connection after them when s says so. It reports false when the
// connection closed.
func (c *Conn) writeReply(s *replySlot) bool {
	if s.p == nil && s.closeBy == event.ReasonUnspecified {
		return true
	}
	select {
	case c.writeTurn <- struct{}{}:
	case <-c.ctx.Done():
		return false
	}
	defer func() { <-c.writeTurn }()
	if s.p != nil {
		// In items that fit the connection's bound, so that the read loop
		// waits for the peer between them. An item counts a frame for each
		// repeat, and the last one the rest: an echo of many frames is one
		// item of one repeat.
		per := max(1, c.maxQueued()/max(1, len(s.p)))
		frames := s.frames
		for left := s.repeat; left > 0; {
			k := min(left, per)
			n := min(frames, uint64(k))
			if k == left {
				n = frames
			}
			if c.queue(c.ctx, &outItem{p: s.p, repeat: k, size: k * len(s.p), frames: n}) != nil {
				return false
			}
			frames -= n
			left -= k
		}
	}
	if s.closeBy != event.ReasonUnspecified {
		// Holding the turn, so nothing is queued after the reply.
		c.waitFlushed()
		c.Close(s.closeBy)
		return false
	}
	return true
}

// abandon settles s's handoff, if it has one, as its connection's: it
// closed before the answer could be written.
func (c *Conn) abandon(s *replySlot) {
	if s.h != nil {
		s.h.settle(Abandoned, HandlerReply{})
		s.h = nil
	}
}

// stopReplies waits for the replier, once the connection's context has
// ended: every handoff still waiting is abandoned by then.
func (c *Conn) stopReplies() {
	c.replies.wg.Wait()
}

// matchRules returns, for each frame, the reply of the first rule that
// matches it (nil for a frame none matches), or nil when no rule matches
// any.
func (c *Conn) matchRules(frames [][]byte) []*replySlot {
	rs := c.live().Rules
	if rs == nil || c.cfg.Forward != nil {
		return nil
	}
	var out []*replySlot
	var now time.Time
	for i, f := range frames {
		hit, ok := rs.Match(f)
		if !ok {
			continue
		}
		if out == nil {
			out = make([]*replySlot, len(frames))
		}
		if now.IsZero() {
			now = time.Now()
		}
		s := &replySlot{frames: 1}
		if hit.HasReply() {
			p := hit.AppendReply(nil, f, c.vars(), now)
			if !hit.Raw() {
				var err error
				if p, err = c.cfg.Framing.Encode(nil, p); err != nil {
					p = nil // a reply the framing cannot encode is not written
				}
			}
			s.p, s.repeat = p, 1
		}
		if hit.CloseAfter() {
			s.closeBy = event.ReasonClosedByRule
		}
		if d := hit.Delay(); d > 0 {
			s.at = now.Add(d)
		}
		out[i] = s
	}
	return out
}

// vars returns the connection's template variables, made once.
func (c *Conn) vars() *rules.Vars {
	c.varsOnce.Do(func() {
		c.tvars = rules.Vars{ConnectionID: c.cfg.ID, RemoteAddress: c.remote, ListenerID: c.cfg.ListenerID}
	})
	return &c.tvars
}

// Vars returns the connection's template variables, for a banner.
func (c *Conn) Vars() *rules.Vars { return c.vars() }
