package rpc

import (
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// memoize gives each event of evs that has no memo yet its memo (see
// element), before elementOf reads them, so that a batch costs two
// allocations for its memos instead of two per event, and most of them
// are copies rather than encodings.
//
// A connection's read publishes its frames as a run of events that differ
// only in sequence and payload (one time, one kind, one connection): the
// memo of each after the first is the memo before it with its sequence
// field changed. Those are made by copying, into one buffer for the run,
// and the slice headers the memos are reached through are one allocation
// for the batch. Every other event is encoded by encodeEvent. The bytes
// are the same either way (TestCodecDerivedMemos).
//
// A shared buffer lives as long as the last of its events. A run is
// consecutive in sequence and leaves the replay ring in order, so that
// keeps at most one run's memos, a few dozen bytes per event, alive longer
// than they would be alone.
func memoize(evs []*event.Event) error {
	missing := 0
	for _, e := range evs {
		if !e.HasMemo() {
			missing++
		}
	}
	if missing == 0 {
		return nil
	}
	// Never grown: each memo is reached through its element.
	boxes := make([][]byte, 0, missing)
	var prev *event.Event
	var prevMemo []byte
	for i := 0; i < len(evs); {
		e := evs[i]
		if e.HasMemo() {
			// Another subscriber's: a template as good as any.
			prev, prevMemo = e, peekMemoOf(e)
			i++
			continue
		}
		if prev == nil || !sameButSequence(prev, e) {
			m, err := encodeEvent(e)
			if err != nil {
				return err
			}
			boxes = append(boxes, m)
			prev, prevMemo = e, e.SetMemo(&boxes[len(boxes)-1])
			i++
			continue
		}
		// A run of events like prev: their memos in one buffer.
		j := i + 1
		for j < len(evs) && !evs[j].HasMemo() && sameButSequence(prev, evs[j]) {
			j++
		}
		rest := prevMemo[sizeVarint(fSequence, prev.Sequence):]
		size := 0
		for _, e := range evs[i:j] {
			size += sizeVarint(fSequence, e.Sequence) + len(rest)
		}
		buf := make([]byte, 0, size)
		for _, e := range evs[i:j] {
			start := len(buf)
			buf = appendVarint(buf, fSequence, e.Sequence)
			buf = append(buf, rest...)
			boxes = append(boxes, buf[start:len(buf):len(buf)])
			prevMemo = e.SetMemo(&boxes[len(boxes)-1])
			eventsEncoded.Add(1)
		}
		prev = evs[j-1]
		i = j
	}
	return nil
}

// peekMemoOf returns e's memo, which it has.
func peekMemoOf(e *event.Event) []byte {
	return e.Memo(func() []byte { return nil })
}

// sameButSequence reports whether b's memo is a's with another sequence:
// every field that encodeEvent writes, other than the sequence, is equal.
// The payload is not in the memo, and neither is what the engine keeps for
// itself (TestSameButSequenceFields holds this list to event.Event's
// fields). Strings of one connection share their bytes, so comparing them
// mostly compares pointers.
func sameButSequence(a, b *event.Event) bool {
	return a.Kind == b.Kind && a.Time.Equal(b.Time) &&
		a.ConnectionID == b.ConnectionID && a.ListenerID == b.ListenerID &&
		a.RemoteAddr == b.RemoteAddr && a.LocalAddr == b.LocalAddr &&
		a.CloseReason == b.CloseReason && a.Dropped == b.Dropped &&
		a.PeerSubject == b.PeerSubject && a.Partial == b.Partial
}
