package rpc

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// runOf returns n events as one read of a connection publishes them:
// copies of base with consecutive sequences from seq and payloads of
// their own (some text, some binary, some empty, some past refMin).
func runOf(r *rand.Rand, base *event.Event, seq uint64, n int) []*event.Event {
	evs := make([]*event.Event, n)
	for i := range evs {
		e := &event.Event{
			Sequence: seq + uint64(i), Time: base.Time, Kind: base.Kind,
			ListenerID: base.ListenerID, ConnectionID: base.ConnectionID,
			RemoteAddr: base.RemoteAddr, LocalAddr: base.LocalAddr,
			CloseReason: base.CloseReason, Dropped: base.Dropped,
			PeerSubject: base.PeerSubject, Partial: base.Partial,
		}
		if base.Sequence == 0 && r.IntN(2) == 0 {
			e.Sequence = 0 // markers have none
		}
		switch r.IntN(4) {
		case 0:
		case 1:
			e.Data = fmt.Appendf(nil, "line %d\n", i)
		case 2:
			e.Data = []byte{0xff, byte(i), 0}
		default:
			e.Data = make([]byte, refMin+r.IntN(refMin))
		}
		e.Seal()
		evs[i] = e
	}
	return evs
}

// TestCodecSharedMemos holds the encoding of runs of events alike but for
// sequence and payload, as one read publishes them and as they share one
// memo, to proto.Marshal of the messages eventToProto makes: the same
// bytes, and the same message decoded, under every payload format; then
// again from the memos, shuffled, as another subscriber sends them. The
// runs cross the sequence's varint lengths, mix with events of other
// connections, times and kinds, and follow events that had a memo.
func TestCodecSharedMemos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 5))
	starts := []uint64{1, 120, 16370, 2097140, 1<<56 - 3, 1<<63 - 2}
	for round := range 200 {
		var evs []*event.Event
		for range 1 + r.IntN(4) {
			base := randomEvent(r, starts[r.IntN(len(starts))])
			if r.IntN(3) == 0 {
				base.Kind, base.CloseReason, base.PeerSubject = event.Data, event.ReasonUnspecified, ""
			}
			run := runOf(r, base, base.Sequence+uint64(r.IntN(3)), 1+r.IntN(40))
			if r.IntN(4) == 0 {
				// A subscriber before this one made some memos already.
				k := r.IntN(len(run))
				if _, err := elements(nil, run[k:k+1+r.IntN(len(run)-k)], formatData); err != nil {
					t.Fatal(err)
				}
			}
			evs = append(evs, run...)
		}
		f := formats[round%len(formats)]
		checkBatchFormat(t, fmt.Sprintf("round %d (%s)", round, f.name), evs, f.f)
		r.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		f = formats[(round+1)%len(formats)]
		checkBatchFormat(t, fmt.Sprintf("round %d shuffled (%s)", round, f.name), evs, f.f)
	}
}

// TestCodecRunShares checks that the events of a run share one memo, and
// that making the run's memos allocates nothing per event.
func TestCodecRunShares(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	base := &event.Event{Sequence: 1000, Time: t0, Kind: event.Data, ListenerID: "l-abcdefghij", ConnectionID: "c-abcdefghij"}
	evs := runOf(r, base, base.Sequence, 640)
	if _, err := elements(nil, evs, formatTextOrData); err != nil {
		t.Fatal(err)
	}
	first := unsafe.SliceData(peekMemo(evs[0]))
	for i, e := range evs {
		if unsafe.SliceData(peekMemo(e)) != first {
			t.Fatalf("event %d of a run has a memo of its own", i)
		}
	}
	// Fresh runs, made before the count (a memo is kept on its events):
	// AllocsPerRun calls the function once more than it is asked to.
	// Counting only elements keeps runOf's own allocations, which vary
	// with the random payloads (and under -race), out of the figure.
	runs := make([][]*event.Event, 21)
	for i := range runs {
		runs[i] = runOf(r, base, base.Sequence, 640)
	}
	var els []element
	next := 0
	allocs := testing.AllocsPerRun(20, func() {
		evs := runs[next]
		next++
		var err error
		if els, err = elements(els[:0], evs, formatTextOrData); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 10 {
		t.Errorf("memos of a run of 640 events: %.0f allocations, want a few for the run, none per event", allocs)
	}
}

// TestSameButSequenceFields holds sameButSequence to event.Event: every
// field is either compared there or not part of the memo. A field added
// to Event must be placed in one of the two lists, and, when encodeEvent
// writes it, compared in sameButSequence.
func TestSameButSequenceFields(t *testing.T) {
	compared := []string{"Time", "Kind", "ListenerID", "ConnectionID", "RemoteAddr", "LocalAddr", "CloseReason", "Dropped", "PeerSubject", "Partial", "Origin", "Header",
		"Direction", "Generation", "Attempt", "Delay", "Error", "TargetReason", "Node"}
	notInMemo := []string{"Sequence", "Data", "Retained", "size", "utf8", "sealed", "memo"}
	typ := reflect.TypeFor[event.Event]()
	for i := range typ.NumField() {
		name := typ.Field(i).Name
		if !slices.Contains(compared, name) && !slices.Contains(notInMemo, name) {
			t.Errorf("event.Event.%s: is it in the memo? Then compare it in sameButSequence and list it here", name)
		}
	}
	// Each compared field, changed alone, makes the events differ.
	base := func() *event.Event {
		return &event.Event{Sequence: 1, Time: t0, Kind: event.Data, ListenerID: "l", ConnectionID: "c", RemoteAddr: "r", LocalAddr: "a", PeerSubject: "p"}
	}
	change := map[string]func(e *event.Event){
		"Time":         func(e *event.Event) { e.Time = e.Time.Add(time.Nanosecond) },
		"Kind":         func(e *event.Event) { e.Kind = event.ConnectionClosed },
		"ListenerID":   func(e *event.Event) { e.ListenerID = "m" },
		"ConnectionID": func(e *event.Event) { e.ConnectionID = "d" },
		"RemoteAddr":   func(e *event.Event) { e.RemoteAddr = "s" },
		"LocalAddr":    func(e *event.Event) { e.LocalAddr = "b" },
		"CloseReason":  func(e *event.Event) { e.CloseReason = event.ReasonPeerClosed },
		"Dropped":      func(e *event.Event) { e.Dropped = 1 },
		"PeerSubject":  func(e *event.Event) { e.PeerSubject = "q" },
		"Partial":      func(e *event.Event) { e.Partial = true },
		"Origin":       func(e *event.Event) { e.Origin = event.Outbound },
		"Header":       func(e *event.Event) { e.Header = &event.Header{Incarnation: "i"} },
		"Direction":    func(e *event.Event) { e.Direction = event.Sent },
		"Generation":   func(e *event.Event) { e.Generation = 2 },
		"Attempt":      func(e *event.Event) { e.Attempt = 1 },
		"Delay":        func(e *event.Event) { e.Delay = time.Second },
		"Error":        func(e *event.Event) { e.Error = "refused" },
		"TargetReason": func(e *event.Event) { e.TargetReason = event.ReasonPeerReset },
		"Node":         func(e *event.Event) { e.Node = "node-b" },
	}
	for _, name := range compared {
		b := base()
		change[name](b)
		if sameButSequence(base(), b) {
			t.Errorf("events that differ in %s count as alike", name)
		}
	}
	b := base()
	b.Sequence, b.Data = 2, []byte("other")
	if !sameButSequence(base(), b) {
		t.Error("events that differ in sequence and data only count as different")
	}
}
