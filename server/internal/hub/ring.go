package hub

import "github.com/tcpgate/tcpgate/server/internal/event"

// ring holds the most recent events, bounded in bytes, for replay. Sequences
// in it are contiguous, so an event is found by arithmetic. It is guarded by
// the hub's mutex.
type ring struct {
	limit int // bytes; negative disables the ring
	buf   []*event.Event
	head  int // index of the oldest event
	n     int
	bytes int
}

func (r *ring) push(e *event.Event) {
	if r.limit < 0 {
		return
	}
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
	r.bytes += e.Size()
	// Keep the newest event even when it alone exceeds the limit.
	for r.bytes > r.limit && r.n > 1 {
		old := r.buf[r.head]
		r.buf[r.head] = nil
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		r.bytes -= old.Size()
	}
}

func (r *ring) grow() {
	size := 2 * len(r.buf)
	if size == 0 {
		size = 1024
	}
	buf := make([]*event.Event, size)
	for i := 0; i < r.n; i++ {
		buf[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = buf, 0
}

// firstSeq returns the oldest sequence held, 0 when empty.
func (r *ring) firstSeq() uint64 {
	if r.n == 0 {
		return 0
	}
	return r.buf[r.head].Sequence
}

// since returns a copy of the held events whose sequence is at least since,
// oldest first: a replay filters it without the hub's lock.
func (r *ring) since(since uint64) []*event.Event {
	first := r.firstSeq()
	if first == 0 {
		return nil
	}
	start := 0
	if since > first {
		start = int(since - first)
	}
	if start >= r.n {
		return nil
	}
	out := make([]*event.Event, 0, r.n-start)
	for i := start; i < r.n; i++ {
		out = append(out, r.buf[(r.head+i)%len(r.buf)])
	}
	return out
}
