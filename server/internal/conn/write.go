package conn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// Writes meet in one outbound queue per connection: sends from the API,
// broadcasts, auto replies and a forwarding relay's chunks are queued in
// turn (writeTurn) and written by one write goroutine, which runs only
// while bytes are queued, so an idle connection costs no goroutine; it
// publishes each write once written (publishSent). The queue is bounded in bytes per
// connection (Config.MaxQueuedWriteBytes) and over all connections
// (Config.WriteBudget); a writer that finds no room waits for it, so a read
// loop whose auto replies a peer does not take stops reading and TCP pushes
// back on the peer, until the write timeout closes the connection.

// DefaultMaxQueuedWriteBytes bounds one connection's queued writes when
// Config.MaxQueuedWriteBytes is 0: 16 reads' worth of echo, enough to keep
// a fast peer's socket busy while the read loop goes on, small enough that
// thousands of peers that stop reading hold little. A single write larger
// than the bound (a Send or a fixed reply of several MiB) still goes, alone.
const DefaultMaxQueuedWriteBytes = 1 << 20

// maxIovecs is how many slices one writev takes: Linux's IOV_MAX.
const maxIovecs = 1024

// outItem is one queued write: p, repeat times (a fixed reply written for
// many frames shares one slice, never copied).
type outItem struct {
	p      []byte
	repeat int
	size   int    // len(p) * repeat: what the item holds of the bounds
	frames uint64 // counted into FramesOut once written
	send   *pendingSend
}

// pendingSend is a Send's part of its queued write.
type pendingSend struct {
	deadline time.Time // the Send's own, zero for none
	// await joins the awaiters when the write begins; nil for none. A
	// Send that awaits a reply waits on await.done alone, so that its
	// caller is woken once, by the reply: a write that fails, or is never
	// begun, closes await.done itself (failAwait) unless the awaiter was
	// answered or settled in line.
	await *awaiter
	done  chan struct{}
	err   error // set before done is closed
	// inLine is set, by the write goroutine, once await is in line.
	inLine bool
}

// failAwait ends the wait for a reply of a send whose write failed with
// err, or was never made, when no frame answered it: its awaiter is not
// in line (never put there, or taken out by writeItem).
func (s *pendingSend) failAwait(err error) {
	if s.await != nil {
		s.await.err = err
		close(s.await.done)
	}
}

// outbound is a connection's write queue.
type outbound struct {
	mu       sync.Mutex // guards the fields below
	queue    []*outItem
	queued   int           // bytes queued or being written
	flushing bool          // the write goroutine runs
	closed   bool          // the connection closed: nothing more is queued
	room     chan struct{} // made when someone waits; closed when bytes leave
	wg       sync.WaitGroup
}

// roomLocked returns a channel closed when bytes next leave the queue (or
// the write goroutine ends); made only when someone waits.
func (o *outbound) roomLocked() <-chan struct{} {
	if o.room == nil {
		o.room = make(chan struct{})
	}
	return o.room
}

func (o *outbound) signalLocked() {
	if o.room != nil {
		close(o.room)
		o.room = nil
	}
}

// WriteBudget bounds the bytes queued for writing over many connections
// (--max-write-buffer-bytes). Waiters are served in arrival order, so a
// large write is not starved by small ones. A nil *WriteBudget bounds
// nothing.
type WriteBudget struct {
	max int

	mu      sync.Mutex // guards the fields below
	used    int
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	n       int
	ready   chan struct{}
	granted bool
}

// NewWriteBudget returns a budget of max bytes; max must be positive.
func NewWriteBudget(max int) *WriteBudget { return &WriteBudget{max: max} }

// Used returns the bytes queued for writing now.
func (b *WriteBudget) Used() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// fitsLocked admits n when it fits, and a write larger than the whole
// budget when nothing else holds any, so that it goes alone.
func (b *WriteBudget) fitsLocked(n int) bool { return b.used+n <= b.max || b.used == 0 }

// acquire takes n bytes, waiting for them until ctx ends or closed is
// closed.
func (b *WriteBudget) acquire(ctx context.Context, closed <-chan struct{}, n int) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if len(b.waiters) == 0 && b.fitsLocked(n) {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	var err error
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-closed:
		err = ErrClosed
	}
	b.mu.Lock()
	if w.granted {
		b.used -= n
	} else if i := slices.Index(b.waiters, w); i >= 0 {
		b.waiters = slices.Delete(b.waiters, i, i+1)
	}
	b.grantLocked()
	b.mu.Unlock()
	return err
}

func (b *WriteBudget) release(n int) {
	if b == nil || n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

func (b *WriteBudget) grantLocked() {
	for len(b.waiters) > 0 && b.fitsLocked(b.waiters[0].n) {
		w := b.waiters[0]
		b.waiters[0] = nil
		b.waiters = b.waiters[1:]
		b.used += w.n
		w.granted = true
		close(w.ready)
	}
	if len(b.waiters) == 0 {
		b.waiters = nil
	}
}

// autoReply queues the AutoReply mode's answer to frames, in the write
// turn (reply.go's writeReply). It waits for room in the queue, and so
// holds up the read loop while the peer does not take what it was sent.
func (c *Conn) autoReply(frames [][]byte) {
	if s, ok := c.fallbackSlot(frames); ok {
		c.writeReply(&s)
	}
}

func (c *Conn) maxQueued() int {
	if c.cfg.MaxQueuedWriteBytes > 0 {
		return c.cfg.MaxQueuedWriteBytes
	}
	return DefaultMaxQueuedWriteBytes
}

// queue waits for room for it, the caller holding the write turn, and
// queues it. ctx bounds the wait.
func (c *Conn) queue(ctx context.Context, it *outItem) error {
	o := &c.out
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return ErrClosed
		}
		if o.queued == 0 || o.queued+it.size <= c.maxQueued() {
			o.queued += it.size
			o.mu.Unlock()
			break
		}
		room := o.roomLocked()
		o.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrClosed
		}
	}
	if err := c.cfg.WriteBudget.acquire(ctx, c.ctx.Done(), it.size); err != nil {
		o.mu.Lock()
		o.queued -= it.size
		o.mu.Unlock()
		return err
	}
	o.mu.Lock()
	if o.closed {
		o.queued -= it.size
		o.mu.Unlock()
		c.cfg.WriteBudget.release(it.size)
		return ErrClosed
	}
	o.queue = append(o.queue, it)
	if !o.flushing {
		o.flushing = true
		o.wg.Add(1)
		go c.flush()
	}
	o.mu.Unlock()
	return nil
}

// unqueue takes back a send whose caller gave up before its write began,
// and reports whether it did: once begun, a write runs to its end, and
// its done channel is closed when it has.
func (c *Conn) unqueue(it *outItem) bool {
	o := &c.out
	o.mu.Lock()
	i := slices.Index(o.queue, it)
	if i < 0 {
		// Begun, or failed by closeOutbound, which settles it.
		o.mu.Unlock()
		return false
	}
	o.queue = slices.Delete(o.queue, i, i+1)
	o.mu.Unlock()
	// The budget before the room shows, as in flush.
	c.cfg.WriteBudget.release(it.size)
	o.mu.Lock()
	o.queued -= it.size
	o.signalLocked()
	o.mu.Unlock()
	return true
}

// flush is the write goroutine: it writes the queue in order and ends when
// it is empty. Serve waits for it (closeOutbound).
func (c *Conn) flush() {
	o := &c.out
	defer o.wg.Done()
	var iov [][]byte // scratch of repeated writes
	for {
		o.mu.Lock()
		if len(o.queue) == 0 {
			o.queue = nil
			o.flushing = false
			o.signalLocked()
			o.mu.Unlock()
			return
		}
		it := o.queue[0]
		o.queue[0] = nil
		o.queue = o.queue[1:]
		o.mu.Unlock()

		// As the write begins, before a byte of it goes: a peer's answer
		// can only be read, and published, after it, so a subscriber sees
		// the conversation in its order (published after the write, the
		// answer's event raced it). And before the Send returns, so that
		// its response's header covers the event. A Send already past
		// its deadline is not written, and not published.
		if s := it.send; s == nil || s.deadline.IsZero() || time.Now().Before(s.deadline) {
			c.publishSent(it, it.size)
			if s != nil && !s.deadline.IsZero() && !time.Now().Before(s.deadline) {
				// A lossless subscriber held the event up past the
				// deadline, and was ended for it (publishSent): the wait
				// was the subscriber's, not the peer's, so the Send is
				// written still, within the write timeout.
				s.deadline = time.Time{}
			}
		}
		_, outOfLine, err := c.writeItem(it, &iov)

		// The budget first: once o.queued shows the room, a writer may
		// queue and take budget at once, and the budget must not hold
		// this item's bytes as well (it would count one item twice).
		c.cfg.WriteBudget.release(it.size)
		o.mu.Lock()
		o.queued -= it.size
		o.signalLocked()
		o.mu.Unlock()
		if it.send != nil {
			it.send.err = err
			close(it.send.done)
			if outOfLine {
				it.send.failAwait(err)
			}
		}
	}
}

// closeOutbound fails what is still queued and waits for the write
// goroutine, once the socket is closed.
func (c *Conn) closeOutbound() {
	o := &c.out
	o.mu.Lock()
	o.closed = true
	items := o.queue
	o.queue = nil
	for _, it := range items {
		o.queued -= it.size
	}
	o.mu.Unlock()
	for _, it := range items {
		c.cfg.WriteBudget.release(it.size)
		if it.send != nil {
			it.send.err = fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
			close(it.send.done)
			it.send.failAwait(it.send.err)
		}
	}
	o.wg.Wait()
}

// waitFlushed waits until the queue is written or the connection closes.
func (c *Conn) waitFlushed() {
	o := &c.out
	for {
		o.mu.Lock()
		if !o.flushing {
			o.mu.Unlock()
			return
		}
		room := o.roomLocked()
		o.mu.Unlock()
		select {
		case <-room:
		case <-c.ctx.Done():
			return
		}
	}
}

// writeItem writes it, each write call within the write timeout, and a
// send's by its deadline when that is sooner. A write that fails or times
// out after writing part of a message closes the connection, whose byte
// stream now holds a partial message; a send that ran out of its caller's
// time before writing a byte leaves it open.
// It returns the bytes written, all of them or the part that went before
// an error; and, with an error, whether a send's awaiter is out of line
// (never put in it, or taken out of it here), so that failAwait is the
// caller's to call.
func (c *Conn) writeItem(it *outItem, iov *[][]byte) (int, bool, error) {
	n, err := c.writeItemInLine(it, iov)
	if err == nil || it.send == nil || it.send.await == nil {
		return n, false, err
	}
	return n, !it.send.inLine || c.dropAwaiter(it.send.await), err
}

func (c *Conn) writeItemInLine(it *outItem, iov *[][]byte) (int, error) {
	var deadline time.Time
	if s := it.send; s != nil {
		deadline = s.deadline
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return 0, fmt.Errorf("writing to %s: waiting for earlier writes: %w", c.cfg.ID, context.DeadlineExceeded)
		}
		if s.await != nil {
			if err := c.addAwaiter(s.await); err != nil {
				return 0, err
			}
			s.inLine = true
		}
	}
	total := 0
	var err error
	callers := false
	for left := it.repeat; left > 0 && err == nil; {
		dl := time.Now().Add(c.cfg.WriteTimeout)
		callers = !deadline.IsZero() && deadline.Before(dl)
		if callers {
			dl = deadline
		}
		_ = c.nc.SetWriteDeadline(dl)
		var n int
		if left == 1 {
			n, err = c.nc.Write(it.p)
			left = 0
		} else {
			k := min(left, maxIovecs)
			bufs := (*iov)[:0]
			for range k {
				bufs = append(bufs, it.p)
			}
			*iov = bufs
			nb := net.Buffers(bufs)
			var n64 int64
			n64, err = nb.WriteTo(c.nc)
			n = int(n64)
			clear(bufs) // WriteTo consumed the headers; keep no payload alive
			left -= k
		}
		total += n
		c.countOut(n, 0)
	}
	if total > 0 {
		c.countOut(0, it.frames)
	}
	if err == nil {
		return total, nil
	}
	timedOut := errors.Is(err, os.ErrDeadlineExceeded)
	if callers && timedOut && total == 0 {
		return 0, fmt.Errorf("writing to %s: peer took nothing before the send's timeout: %w", c.cfg.ID, context.DeadlineExceeded)
	}
	c.Close(event.ReasonWriteError)
	switch {
	case callers && timedOut:
		return total, fmt.Errorf("writing to %s: peer took %d of %d bytes before the send's timeout; the connection is closed: %w", c.cfg.ID, total, it.size, context.DeadlineExceeded)
	case timedOut:
		return total, fmt.Errorf("writing to %s: peer did not read for %s: %w", c.cfg.ID, c.cfg.WriteTimeout, ErrWriteTimeout)
	}
	return total, fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
}

// publishSent publishes the n bytes of it as one DATA event of direction
// Sent, in write order, as their write begins (the write goroutine is the
// only caller). A write that then fails closes the connection
// (WRITE_ERROR) after the event, save a Send whose peer took none of it
// before the Send's deadline, which fails with DeadlineExceeded and leaves
// the connection open: its event shows bytes the peer never got. While a
// lossless subscriber holds the event up, the item keeps its bytes of the
// write budget, as any write waiting for a slow peer does.
// One event per write: a Send, a broadcast's share, the echo of a read's
// frames, a relayed chunk. A fixed reply written for k frames is one event
// of its k copies, the bytes the peer got, made only from its one slice
// here; every other payload is published as it was queued, which nobody
// changes once queued. Size counts the bytes, as for received data, so
// that the replay ring's byte bound holds for both. The event waits for a
// lossless subscriber that asks for sent data and lacks room, until the
// connection closes, or a Send's deadline passes (the Send waits for it:
// a stuck subscriber must not hold it past its timeout); lossy ones never
// hold it up.
func (c *Conn) publishSent(it *outItem, n int) {
	if n <= 0 {
		return
	}
	data := it.p
	if it.repeat > 1 {
		data = make([]byte, 0, n)
		for len(data)+len(it.p) <= n {
			data = append(data, it.p...)
		}
		data = append(data, it.p[:n-len(data)]...)
	} else {
		data = data[:n:n]
	}
	e := &event.Event{
		Kind:         event.Data,
		ListenerID:   c.cfg.ListenerID,
		ConnectionID: c.cfg.ID,
		Origin:       c.cfg.Origin,
		Direction:    event.Sent,
		Generation:   c.cfg.Generation,
		Data:         data,
	}
	// The context bounding the wait, made per Send, is made only when a
	// lossless subscriber lacks room: most writes wait for none.
	if tp, ok := c.cfg.Publisher.(TryPublisher); ok && tp.TryPublish(e) {
		return
	}
	ctx := c.ctx
	if s := it.send; s != nil && !s.deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, s.deadline)
		defer cancel()
	}
	_ = c.cfg.Publisher.Publish(ctx, e)
}

// TryPublisher is a Publisher that can also publish without waiting, when
// nobody it must wait for lacks room (hub.Hub.TryPublish): it returns
// false, having published nothing, when Publish would wait.
type TryPublisher interface {
	TryPublish(evs ...*event.Event) bool
}

func (c *Conn) countOut(bytes int, frames uint64) {
	if bytes > 0 {
		c.lastWrite.Store(time.Now().UnixNano())
	}
	c.counters.BytesOut.Add(uint64(bytes))
	c.counters.FramesOut.Add(frames)
	for _, a := range c.cfg.Aggregates {
		a.BytesOut.Add(uint64(bytes))
		a.FramesOut.Add(frames)
	}
}
