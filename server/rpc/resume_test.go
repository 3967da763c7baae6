package rpc

import (
	"context"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestCodecMarkerHeader: the opening markers' header reaches a client
// through both encoders exactly as protobuf and protojson make it, zero
// fields and all, next to the other fields of an event.
func TestCodecMarkerHeader(t *testing.T) {
	for _, c := range []eventCase{
		{"stream started", &event.Event{Time: t0, Kind: event.StreamStarted, Header: &event.Header{Incarnation: "abcdefghijklmnop", Node: "node-1", LastSequence: 1 << 40}}},
		{"stream started before any event", &event.Event{Time: t0, Kind: event.StreamStarted, Header: &event.Header{Incarnation: "abcdefghijklmnop", Node: "n"}}},
		{"incarnation changed", &event.Event{Time: t0, Kind: event.IncarnationChanged, Header: &event.Header{Incarnation: "x", Node: `q"\`, LastSequence: 3}}},
		{"empty header", &event.Event{Time: t0, Kind: event.StreamStarted, Header: &event.Header{}}},
		{"header and every field", &event.Event{Sequence: 9, Time: t0, Kind: event.Data, ListenerID: "l", ConnectionID: "c",
			Data: []byte("x"), Dropped: 2, PeerSubject: "CN=p", Partial: true, Header: &event.Header{Incarnation: "i", Node: "n", LastSequence: 1}}},
		{"invalid UTF-8 node", &event.Event{Time: t0, Kind: event.StreamStarted, Header: &event.Header{Incarnation: "i", Node: "\xff"}}},
	} {
		c.e.Seal()
		for _, f := range formats {
			checkJSON(t, c.name+" ("+f.name+")", c.e, f.f)
		}
		if c.name != "invalid UTF-8 node" {
			checkBatch(t, c.name, []*event.Event{c.e})
		}
	}
}

// TestStreamOpening: every stream opens with STREAM_STARTED, whose header
// is the hub's incarnation, the node and the sequence the subscription
// went live at; INCARNATION_CHANGED follows only when the hub says the
// position was not its own; then the hub's events.
func TestStreamOpening(t *testing.T) {
	h := hub.New(hub.Config{Incarnation: "incnow"})
	defer h.Close()
	svc := New(Config{Hub: h, NodeID: "n1"})
	_ = h.Publish(context.Background(), &event.Event{Kind: event.Data, Data: []byte("a")}, &event.Event{Kind: event.Data, Data: []byte("b")})
	for _, tt := range []struct {
		name  string
		opts  hub.SubscribeOptions
		kinds []event.Kind
		next  uint64
	}{
		{"live", hub.SubscribeOptions{}, []event.Kind{event.StreamStarted}, 3},
		{"resume", hub.SubscribeOptions{Since: 2, Incarnation: "incnow"}, []event.Kind{event.StreamStarted}, 2},
		{"another incarnation", hub.SubscribeOptions{Since: 2, Incarnation: "before"}, []event.Kind{event.StreamStarted, event.IncarnationChanged}, 1},
	} {
		last := h.LastSequence() // each case publishes one more
		st, err := svc.openStream(tt.opts)
		if err != nil {
			t.Fatal(err)
		}
		evs, err := st.Next(context.Background(), nil)
		if err != nil || len(evs) != len(tt.kinds) {
			t.Fatalf("%s: first Next = %d events, %v", tt.name, len(evs), err)
		}
		for i, e := range evs {
			if e.Kind != tt.kinds[i] || e.Sequence != 0 || *e.Header != (event.Header{Incarnation: "incnow", Node: "n1", LastSequence: last}) {
				t.Fatalf("%s: event %d = %+v (header %+v)", tt.name, i, e, e.Header)
			}
		}
		_ = h.Publish(context.Background(), &event.Event{Kind: event.Data, Data: []byte("live")})
		evs, err = st.Next(context.Background(), nil)
		if err != nil || len(evs) == 0 || evs[0].Sequence != tt.next {
			t.Fatalf("%s: then %v, %v, want sequence %d first", tt.name, evs, err, tt.next)
		}
		st.Close()
	}
}

// TestParseEventID: SSE ids round trip; anything else is not an id.
func TestParseEventID(t *testing.T) {
	id := string(AppendEventID(nil, "abcdefghijklmnop", 42))
	if inc, seq, ok := ParseEventID(id); id != "abcdefghijklmnop-42" || !ok || inc != "abcdefghijklmnop" || seq != 42 {
		t.Fatalf("%q parsed as %q %d %v", id, inc, seq, ok)
	}
	if _, _, ok := ParseEventID(" abc-0 "); !ok {
		t.Errorf("an id with spaces around is refused")
	}
	for _, bad := range []string{"", "42", "-42", "abc-", "abc-x", "a-b-1", "a/b-1", "abc--1", "abc-18446744073709551615"} {
		if inc, seq, ok := ParseEventID(bad); ok {
			t.Errorf("%q parsed as %q %d", bad, inc, seq)
		}
	}
}
