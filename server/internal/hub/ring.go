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

// chunk returns the held events of sequences [from, end), oldest first:
// at most n of them, and no more bytes than a batch (one larger event goes
// alone). It returns the sequence after them, and how many sequences from
// from on the ring no longer holds.
func (r *ring) chunk(from, end uint64, n, maxBytes int) (evs []*event.Event, next, missed uint64) {
	first := r.firstSeq()
	if first == 0 || first >= end {
		return nil, end, end - from
	}
	if from < first {
		missed, from = first-from, first
	}
	start := int(from - first)
	size := 0
	for i := start; i < r.n && from < end && len(evs) < n; i++ {
		e := r.buf[(r.head+i)%len(r.buf)]
		if len(evs) > 0 && size+e.Size() > maxBytes {
			break
		}
		size += e.Size()
		evs = append(evs, e)
		from++
	}
	return evs, from, missed
}
