package hub

import (
	"slices"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// TestRingChunkAcrossJumps: a ring whose sequences jump (ingested from a
// cluster's stream), wrapped around its buffer, gives from every from on
// exactly the events it holds, in order, across chunks cut by count and
// by bytes, and counts as missed only what went before its oldest event.
func TestRingChunkAcrossJumps(t *testing.T) {
	e := &event.Event{Kind: event.Data, Data: make([]byte, 10)}
	size := e.Size()
	r := ring{limit: 500 * size}
	var held []uint64
	seq := uint64(0)
	for i := range 3000 {
		seq += uint64(1 + i%5*(i%3)) // runs of 1 and jumps of up to 8
		r.push(&event.Event{Sequence: seq, Kind: event.Data, Data: make([]byte, 10)})
		held = append(held, seq)
	}
	held = held[len(held)-r.n:]
	if r.n != 500 || r.head == 0 {
		t.Fatalf("ring holds %d events from index %d: want 500, wrapped around", r.n, r.head)
	}
	first, end := held[0], seq+1
	for from := first - 20; from <= end; from++ {
		for _, bound := range []struct{ n, bytes int }{{3, 1 << 20}, {4096, 2 * size}, {7, 5*size - 1}} {
			var got []uint64
			var missed uint64
			for next, chunks := from, 0; next < end; chunks++ {
				evs, after, m := r.chunk(next, end, bound.n, bound.bytes)
				if after <= next || chunks > 1000 {
					t.Fatalf("from %d: chunk(%d) returned next %d: no progress", from, next, after)
				}
				if len(evs) > bound.n || len(evs) > 1 && len(evs)*size > bound.bytes {
					t.Fatalf("from %d: chunk of %d events over the bounds %+v", from, len(evs), bound)
				}
				for _, e := range evs {
					got = append(got, e.Sequence)
				}
				missed += m
				next = after
			}
			i, _ := slices.BinarySearch(held, from)
			if want := held[i:]; !slices.Equal(got, want) {
				t.Fatalf("from %d, bounds %+v: got %v, want %v", from, bound, got, want)
			}
			if want := first - min(from, first); missed != want {
				t.Fatalf("from %d: missed %d, want %d", from, missed, want)
			}
		}
	}
}
