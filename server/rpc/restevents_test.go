package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

func nextJSON(t *testing.T, st *EventStream, n int) []JSONEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []JSONEvent
	for len(got) < n {
		evs, err := st.Next(ctx, nil)
		if err != nil {
			t.Fatalf("Next after %d events: %v", len(got), err)
		}
		for _, e := range evs {
			// Every stream opens with its own STREAM_STARTED
			// (resume_test.go); these tests count the hub's events.
			if !bytes.Contains(e.JSON, []byte(`"EVENT_KIND_STREAM_STARTED"`)) {
				got = append(got, e)
			}
		}
	}
	return got
}

// TestEventSourceSharesJSON: two REST streams of one format get the same
// JSON bytes for each event (made once); a stream alone caches nothing.
func TestEventSourceSharesJSON(t *testing.T) {
	h := hub.New(hub.Config{})
	defer h.Close()
	es := NewEventSource(New(Config{Hub: h}), nil)
	alone, err := es.Subscribe(&tcpgatev1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_ = h.Publish(context.Background(), &event.Event{Kind: event.Data, ListenerID: "l", Data: []byte("one")})
	nextJSON(t, alone, 1)
	es.cache.mu.Lock()
	cached := es.cache.bytes
	es.cache.mu.Unlock()
	if cached != 0 {
		t.Errorf("a stream alone cached %d bytes", cached)
	}
	alone.Close()

	a, _ := es.Subscribe(&tcpgatev1.SubscribeRequest{})
	b, _ := es.Subscribe(&tcpgatev1.SubscribeRequest{})
	other, _ := es.Subscribe(&tcpgatev1.SubscribeRequest{PayloadFormat: tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA})
	defer a.Close()
	defer b.Close()
	defer other.Close()
	for i := range 100 {
		_ = h.Publish(context.Background(), &event.Event{Kind: event.Data, ListenerID: "l", Data: []byte(fmt.Sprintf("line %d\n", i))})
	}
	ja, jb, jo := nextJSON(t, a, 100), nextJSON(t, b, 100), nextJSON(t, other, 100)
	for i := range ja {
		if unsafe.SliceData(ja[i].JSON) != unsafe.SliceData(jb[i].JSON) {
			t.Fatalf("event %d: two streams of one format got two encodings", i)
		}
		var ev map[string]any
		if err := json.Unmarshal(jo[i].JSON, &ev); err != nil || ev["data"] == nil || ev["text"] != nil {
			t.Fatalf("event %d as PAYLOAD_FORMAT_DATA: %s", i, jo[i].JSON)
		}
	}
}

// TestJSONCacheBound: whatever goes through it, the cache holds at most
// its limit of JSON.
func TestJSONCacheBound(t *testing.T) {
	c := jsonCache{limit: 64 << 10}
	var scratch []byte
	for seq := uint64(1); seq < 20_000; seq += 50 {
		var evs []*event.Event
		for i := range uint64(50) {
			evs = append(evs, sealed(&event.Event{Sequence: seq + i, Time: t0, Kind: event.Data, Data: make([]byte, int(seq+i)%3000)}))
		}
		if _, err := c.encode(evs, formatData, nil, true, &scratch); err != nil {
			t.Fatal(err)
		}
		if seq%1000 != 1 {
			continue
		}
		held := 0
		for _, sl := range c.slots[formatData] {
			held += len(sl.json)
		}
		if held != c.bytes || held > c.limit {
			t.Fatalf("after sequence %d: %d bytes held, %d counted, limit %d", seq, held, c.bytes, c.limit)
		}
	}
	if c.bytes < c.limit/2 {
		t.Errorf("the cache holds %d bytes of %d: it stopped taking entries", c.bytes, c.limit)
	}
}

// TestEventSourceValidates: a REST stream's request is refused exactly
// as Subscribe refuses it, and a closed hub ends streams with Unavailable.
func TestEventSourceValidates(t *testing.T) {
	h := hub.New(hub.Config{MaxSubscribers: 1})
	es := NewEventSource(New(Config{Hub: h}), nil)
	for _, c := range []struct {
		req  *tcpgatev1.SubscribeRequest
		code codes.Code
	}{
		{&tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{99}}, codes.InvalidArgument},
		{&tcpgatev1.SubscribeRequest{SlowConsumer: 9}, codes.InvalidArgument},
		{&tcpgatev1.SubscribeRequest{PayloadFormat: 9}, codes.InvalidArgument},
	} {
		if _, err := es.Subscribe(c.req); status.Code(err) != c.code {
			t.Errorf("%v: %v, want %v", c.req, err, c.code)
		}
	}
	st, err := es.Subscribe(&tcpgatev1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := es.Subscribe(&tcpgatev1.SubscribeRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("past max subscribers: %v, want ResourceExhausted", err)
	}
	h.CloseNow()
	select {
	case <-st.ShuttingDown():
	case <-time.After(10 * time.Second):
		t.Fatal("ShuttingDown not closed when the hub closed")
	}
	if evs, err := st.Next(context.Background(), nil); err != nil || len(evs) != 1 {
		t.Errorf("first Next = %d events, %v, want STREAM_STARTED", len(evs), err)
	}
	if _, err := st.Next(context.Background(), nil); status.Code(err) != codes.Unavailable {
		t.Errorf("Next after the hub closed: %v, want Unavailable", err)
	}
	if _, err := es.Subscribe(&tcpgatev1.SubscribeRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("Subscribe after the hub closed: %v, want Unavailable", err)
	}
}
