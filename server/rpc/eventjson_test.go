package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/servertest/seed"
)

// checkJSON holds appendEventJSON to protojson under format f: both
// decoded as JSON must be equal, or both must fail.
func checkJSON(t *testing.T, name string, e *event.Event, f payloadFormat) {
	t.Helper()
	pe := new(tcpgatev1.Event)
	eventToProto(pe, e, f)
	want, werr := protojson.Marshal(pe)
	got, gerr := appendEventJSON(nil, e, f)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%s: protojson error %v, ours %v", name, werr, gerr)
	}
	if werr != nil {
		return
	}
	var w, g any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: protojson's JSON: %v", name, err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: our JSON %s does not parse: %v", name, trim(got), err)
	}
	if !reflect.DeepEqual(w, g) {
		t.Errorf("%s:\n got %s\nwant %s", name, trim(got), trim(want))
	}
	// And what protojson reads back is the same message.
	back := new(tcpgatev1.Event)
	if err := protojson.Unmarshal(got, back); err != nil {
		t.Fatalf("%s: protojson cannot read our JSON: %v", name, err)
	}
	if !proto.Equal(back, pe) {
		t.Errorf("%s: protojson read %v, want %v", name, back, pe)
	}
}

// TestEventJSON compares the REST stream's JSON with protojson's over
// every kind, field and edge, random events, and every payload format.
func TestEventJSON(t *testing.T) {
	for _, c := range eventCases() {
		if c.e.Kind != event.EventsDropped {
			c.e.Seal()
		}
		for _, f := range formats {
			checkJSON(t, c.name+" ("+f.name+")", c.e, f.f)
		}
	}
	more := []eventCase{
		{"escapes", &event.Event{Sequence: 1, Time: t0, Kind: event.Data, ListenerID: `a"b\c`, Data: []byte("q\"b\\s/\n\r\t\b\f\x00\x1f\x7f<>&\u2028\u2029é")}},
		{"every control byte", &event.Event{Sequence: 2, Time: t0, Kind: event.Data, Data: func() []byte {
			b := make([]byte, 0x20)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}()}},
		{"millisecond", &event.Event{Sequence: 3, Time: time.Unix(1700000000, 5e6), Kind: event.Data}},
		{"microsecond", &event.Event{Sequence: 4, Time: time.Unix(1700000000, 5000), Kind: event.Data}},
		{"nanosecond", &event.Event{Sequence: 5, Time: time.Unix(1700000000, 5), Kind: event.Data}},
		{"non-UTC zone", &event.Event{Sequence: 6, Time: t0.In(time.FixedZone("X", -7*3600)), Kind: event.Data}},
		{"year 9999", &event.Event{Sequence: 7, Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), Kind: event.Data}},
		{"year 10000", &event.Event{Sequence: 8, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Kind: event.Data}},
		{"before year 1", &event.Event{Sequence: 9, Time: time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC), Kind: event.Data}},
		{"invalid UTF-8 id", &event.Event{Sequence: 10, Time: t0, Kind: event.Data, ConnectionID: "\xff"}},
		{"every field", &event.Event{Sequence: 11, Time: t0, Kind: event.ConnectionClosed, ListenerID: "l", ConnectionID: "c",
			RemoteAddr: "1.2.3.4:5", LocalAddr: "6.7.8.9:10", Data: []byte("x"), CloseReason: event.ReasonReplyTimeout,
			Dropped: 3, PeerSubject: "CN=p", Partial: true}},
		{"bothTextMax", &event.Event{Sequence: 12, Time: t0, Kind: event.Data, Data: bytes.Repeat([]byte{'t'}, bothTextMax+1)}},
	}
	for _, c := range more {
		c.e.Seal()
		for _, f := range formats {
			checkJSON(t, c.name+" ("+f.name+")", c.e, f.f)
		}
	}
	for _, d := range []time.Duration{time.Nanosecond, time.Microsecond, 10 * time.Millisecond, time.Second, 1500 * time.Millisecond, 30 * time.Second, time.Hour + time.Nanosecond} {
		e := sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.ReconnectScheduled, ConnectionID: "c", Generation: 2, Attempt: 3, Delay: d, Error: "connection refused"})
		checkJSON(t, fmt.Sprintf("delay %s", d), e, formatTextOrData)
	}
	for _, dir := range []event.Direction{event.Received, event.Sent} {
		checkJSON(t, "direction "+dir.String(), sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.Data, Direction: dir, Data: []byte("x")}), formatTextOrData)
	}
	for i := range event.CloseReason(event.NumReasons) + 1 {
		e := sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.ConnectionClosed, TargetReason: i})
		checkJSON(t, fmt.Sprintf("target close reason %d", i), e, formatTextOrData)
	}
	for i := range event.CloseReason(event.NumReasons) + 1 {
		e := sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.ConnectionClosed, CloseReason: i})
		checkJSON(t, fmt.Sprintf("close reason %d", i), e, formatTextOrData)
	}
	for k := range event.ReconnectScheduled + 2 {
		checkJSON(t, fmt.Sprintf("kind %d", k), &event.Event{Sequence: 1, Time: t0, Kind: k}, formatTextOrData)
	}
	r := seed.Rand(t)
	for i := range randomRounds(300) {
		e := randomEvent(r, uint64(i+1))
		checkJSON(t, fmt.Sprintf("random %d", i), e, formats[i%len(formats)].f)
	}
}

// eventSetters set each tcpgatev1.Event field, by proto name, on an engine
// event to a value that is not the field's zero value. TestEventFieldsCovered
// fails when the proto has a field that is not here, so a field added to
// Event must be added here and to both encoders (codec.go, eventjson.go).
var eventSetters = map[protoreflect.Name]func(e *event.Event){
	"sequence":       func(e *event.Event) { e.Sequence = 7 },
	"time":           func(e *event.Event) { e.Time = t0 },
	"kind":           func(e *event.Event) { e.Kind = event.ConnectionClosed },
	"listener_id":    func(e *event.Event) { e.ListenerID = "l" },
	"connection_id":  func(e *event.Event) { e.ConnectionID = "c" },
	"remote_address": func(e *event.Event) { e.RemoteAddr = "1.2.3.4:5" },
	"local_address":  func(e *event.Event) { e.LocalAddr = "5.6.7.8:9" },
	"data":           func(e *event.Event) { e.Data = []byte{0xff, 1} },
	"text":           func(e *event.Event) { e.Data = []byte("text") },
	"close_reason":   func(e *event.Event) { e.CloseReason = event.ReasonPeerReset },
	"dropped":        func(e *event.Event) { e.Dropped = 9 },
	"peer_subject":   func(e *event.Event) { e.PeerSubject = "CN=x" },
	"partial":        func(e *event.Event) { e.Partial = true },
	"header":         func(e *event.Event) { e.Header = &event.Header{Incarnation: "i", Node: "n", LastSequence: 3} },
	"origin":         func(e *event.Event) { e.Origin = event.Accepted },
	"direction": func(e *event.Event) {
		e.Kind = event.Data
		e.Direction = event.Sent
	},
	"generation":          func(e *event.Event) { e.Generation = 3 },
	"attempt":             func(e *event.Event) { e.Attempt = 2 },
	"delay":               func(e *event.Event) { e.Delay = 1500 * time.Millisecond },
	"error":               func(e *event.Event) { e.Error = "connection refused" },
	"target_close_reason": func(e *event.Event) { e.TargetReason = event.ReasonPeerClosed },
	"node_id":             func(e *event.Event) { e.Node = "node-b" },
}

// TestEventFieldsCovered walks the Event descriptor: every field must
// reach a client through both encoders, the protobuf codec and the JSON of
// the REST stream, once set on the engine's event.
func TestEventFieldsCovered(t *testing.T) {
	fields := (&tcpgatev1.Event{}).ProtoReflect().Descriptor().Fields()
	if len(eventSetters) != fields.Len() {
		t.Errorf("eventSetters has %d fields, tcpgate.v1.Event %d", len(eventSetters), fields.Len())
	}
	for i := range fields.Len() {
		fd := fields.Get(i)
		set, ok := eventSetters[fd.Name()]
		if !ok {
			t.Errorf("tcpgate.v1.Event.%s (field %d) is not encoded: add it to eventToProto, encodeEvent (codec.go), appendEventJSON (eventjson.go) and eventSetters", fd.Name(), fd.Number())
			continue
		}
		e := &event.Event{}
		set(e)
		e.Seal()
		for _, f := range formats {
			if fd.Name() == "data" && f.f == formatTextOrData || fd.Name() == "text" && f.f == formatData {
				continue // the format leaves it out
			}
			var resp tcpgatev1.SubscribeResponse
			if err := proto.Unmarshal(marshalCodec(t, []*event.Event{e}, f.f), &resp); err != nil {
				t.Fatal(err)
			}
			if !resp.GetEvents()[0].ProtoReflect().Has(fd) {
				t.Errorf("%s (%s): the codec does not send it", fd.Name(), f.name)
			}
			j, err := appendEventJSON(nil, e, f.f)
			if err != nil {
				t.Fatal(err)
			}
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(j, &obj); err != nil {
				t.Fatal(err)
			}
			if _, ok := obj[fd.JSONName()]; !ok {
				t.Errorf("%s (%s): the JSON %s has no %q", fd.Name(), f.name, j, fd.JSONName())
			}
		}
	}
}

func BenchmarkEventJSON(b *testing.B) {
	e := sealed(&event.Event{Sequence: 1e6, Time: t0, Kind: event.Data, ListenerID: "lst-4f9c2a", ConnectionID: "conn-8d1e07b3",
		Data: []byte(strings.Repeat("x", 99) + "\n")})
	b.Run("ours", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf, _ = appendEventJSON(buf[:0], e, formatTextOrData)
		}
	})
	b.Run("protojson", func(b *testing.B) {
		pe := new(tcpgatev1.Event)
		for b.Loop() {
			eventToProto(pe, e, formatTextOrData)
			_, _ = protojson.Marshal(pe)
		}
	})
}
