package rpc

import (
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// memoize gives each event of evs that has no memo yet its memo (see
// element), before elementOf reads them.
//
// A connection's read publishes its frames as a run of events that differ
// only in sequence and payload (one time, one kind, one connection), and
// neither is in the memo: the events of a run share the memo of its
// first, so that a read of 640 lines is encoded once, in one allocation,
// rather than 640 times. Every other event is encoded by encodeEvent. The
// bytes sent are the same either way (TestCodecSharedMemos).
func memoize(evs []*event.Event) error {
	var prev *event.Event
	for _, e := range evs {
		if !e.HasMemo() {
			if prev != nil && sameButSequence(prev, e) {
				e.ShareMemo(prev)
				eventsEncoded.Add(1)
			} else if _, err := memoOf(e); err != nil {
				return err
			}
		}
		prev = e
	}
	return nil
}

// sameButSequence reports whether a and b have the same memo: every field
// that encodeEvent writes is equal. The sequence and the payload are not
// in the memo, and neither is what the engine keeps for itself
// (TestSameButSequenceFields holds this list to event.Event's fields).
// Strings of one connection share their bytes, so comparing them mostly
// compares pointers.
func sameButSequence(a, b *event.Event) bool {
	return a.Kind == b.Kind && a.Time.Equal(b.Time) &&
		a.ConnectionID == b.ConnectionID && a.ListenerID == b.ListenerID &&
		a.RemoteAddr == b.RemoteAddr && a.LocalAddr == b.LocalAddr &&
		a.CloseReason == b.CloseReason && a.Dropped == b.Dropped &&
		a.PeerSubject == b.PeerSubject && a.Partial == b.Partial &&
		a.Origin == b.Origin && a.Direction == b.Direction &&
		a.Generation == b.Generation && a.Attempt == b.Attempt &&
		a.Delay == b.Delay && a.Error == b.Error && a.TargetReason == b.TargetReason &&
		a.Node == b.Node &&
		a.Header == b.Header // markers only, each its own; a pointer compare is enough
}
