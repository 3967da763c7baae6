package hub

import (
	"sort"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// ring holds the most recent events, bounded in bytes, for replay, oldest
// first. Their sequences increase but may jump: events ingested from a
// cluster's stream skip the sequences it holds nothing for. An event is
// found by arithmetic where the sequences are contiguous, as they always
// are in a hub that numbers its own, and by binary search where they are
// not. It is guarded by the hub's mutex.
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

// at returns the i-th oldest event held.
func (r *ring) at(i int) *event.Event { return r.buf[(r.head+i)%len(r.buf)] }

// index returns the position of the oldest event held of sequence seq or
// later, r.n when there is none; first is r.firstSeq().
func (r *ring) index(seq, first uint64) int {
	if seq <= first {
		return 0
	}
	if d := seq - first; d < uint64(r.n) && r.at(int(d)).Sequence == seq {
		return int(d) // contiguous up to seq
	}
	return sort.Search(r.n, func(i int) bool { return r.at(i).Sequence >= seq })
}

// chunk returns the held events of sequences [from, end), oldest first:
// at most n of them, and no more bytes than a batch (one larger event goes
// alone). It returns the sequence after them (end when none is left before
// it), and how many sequences from from on the ring no longer holds: those
// before its oldest event. A jump of the sequences inside the ring is no
// loss: nothing was ever held there.
func (r *ring) chunk(from, end uint64, n, maxBytes int) (evs []*event.Event, next, missed uint64) {
	first := r.firstSeq()
	if first == 0 || first >= end {
		return nil, end, end - from
	}
	if from < first {
		missed, from = first-from, first
	}
	size := 0
	for i := r.index(from, first); i < r.n; i++ {
		e := r.at(i)
		if e.Sequence >= end {
			break
		}
		if len(evs) == n || len(evs) > 0 && size+e.Size() > maxBytes {
			return evs, e.Sequence, missed
		}
		size += e.Size()
		evs = append(evs, e)
	}
	return evs, end, missed
}
