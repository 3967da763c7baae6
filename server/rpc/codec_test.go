package rpc

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/servertest/seed"
)

// formats are every payload format, for tests that go over all of them.
var formats = []struct {
	name string
	f    payloadFormat
}{{"text-or-data", formatTextOrData}, {"data", formatData}, {"both", formatBoth}}

// wantResponse is what the standard path made of evs under format f:
// eventToProto, then proto.Marshal.
func wantResponse(t testing.TB, evs []*event.Event, f payloadFormat) (*tcpgatev1.SubscribeResponse, []byte) {
	t.Helper()
	resp := &tcpgatev1.SubscribeResponse{}
	for _, e := range evs {
		pe := new(tcpgatev1.Event)
		eventToProto(pe, e, f)
		resp.Events = append(resp.Events, pe)
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// marshalCodec encodes evs with Codec, as gRPC would, and returns the bytes
// after freeing the buffers, as gRPC does once they are written.
func marshalCodec(t testing.TB, evs []*event.Event, f payloadFormat) []byte {
	t.Helper()
	out, err := Codec{}.Marshal(eventBatch{events: evs, format: f})
	if err != nil {
		t.Fatal(err)
	}
	b := out.Materialize()
	out.Free()
	return b
}

// checkBatch holds Codec's encoding of evs to the standard one, under
// every payload format: the same bytes, and a message equal to
// eventToProto's once decoded.
func checkBatch(t *testing.T, name string, evs []*event.Event) {
	t.Helper()
	for _, f := range formats {
		checkBatchFormat(t, name+" ("+f.name+")", evs, f.f)
	}
}

func checkBatchFormat(t *testing.T, name string, evs []*event.Event, f payloadFormat) {
	t.Helper()
	want, wantBytes := wantResponse(t, evs, f)
	got := marshalCodec(t, evs, f)
	if !bytes.Equal(got, wantBytes) {
		t.Errorf("%s: codec bytes differ from proto.Marshal:\n got %x\nwant %x", name, trim(got), trim(wantBytes))
	}
	var dec tcpgatev1.SubscribeResponse
	if err := proto.Unmarshal(got, &dec); err != nil {
		t.Fatalf("%s: proto.Unmarshal: %v", name, err)
	}
	if !proto.Equal(&dec, want) {
		t.Errorf("%s: decoded\n%v\nwant\n%v", name, trim(dec.String()), trim(want.String()))
	}
}

func trim[T ~string | ~[]byte](s T) T {
	if len(s) > 600 {
		return s[:600]
	}
	return s
}

func sealed(e *event.Event) *event.Event {
	e.Seal()
	return e
}

var t0 = time.Date(2025, 5, 6, 7, 8, 9, 123456789, time.UTC)

// eventCase is one event of every kind and edge the encoders must get right.
type eventCase struct {
	name string
	e    *event.Event
}

// eventCases returns fresh, unsealed events of every kind and edge.
func eventCases() []eventCase {
	utf8Big := []byte(strings.Repeat("héllo wörld ✓ ", 5000)) // > refMin, text
	binBig := make([]byte, 64<<10)
	for i := range binBig {
		binBig[i] = byte(i*7 + i>>8)
	}
	atRef := bytes.Repeat([]byte{'a'}, refMin)
	belowRef := bytes.Repeat([]byte{'b'}, refMin-1)
	huge := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // the largest frame

	return []eventCase{
		{"listener started", &event.Event{Sequence: 1, Time: t0, Kind: event.ListenerStarted, ListenerID: "l1", LocalAddr: "127.0.0.1:9000"}},
		{"listener stopped", &event.Event{Sequence: 2, Time: t0, Kind: event.ListenerStopped, ListenerID: "l1", LocalAddr: "[::1]:9000"}},
		{"opened", &event.Event{Sequence: 3, Time: t0, Kind: event.ConnectionOpened, ListenerID: "l1", ConnectionID: "c1", RemoteAddr: "10.0.0.1:5555", LocalAddr: "10.0.0.2:9000"}},
		{"opened with peer subject", &event.Event{Sequence: 4, Time: t0, Kind: event.ConnectionOpened, ListenerID: "l1", ConnectionID: "c2", PeerSubject: "CN=client,O=Ünïcode Örg"}},
		{"text", &event.Event{Sequence: 5, Time: t0, Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: []byte("hello\n")}},
		{"binary", &event.Event{Sequence: 6, Time: t0, Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: []byte{0xff, 0xfe, 0, 1}}},
		{"nul only", &event.Event{Sequence: 7, Time: t0, Kind: event.Data, Data: []byte{0}}},
		{"empty data", &event.Event{Sequence: 8, Time: t0, Kind: event.Data, Data: []byte{}}},
		{"nil data", &event.Event{Sequence: 9, Time: t0, Kind: event.Data}},
		{"utf-8 cut mid rune", &event.Event{Sequence: 10, Time: t0, Kind: event.Data, Data: []byte("h\xc3")}},
		{"large text", &event.Event{Sequence: 11, Time: t0, Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: utf8Big}},
		{"large binary", &event.Event{Sequence: 12, Time: t0, Kind: event.Data, Data: binBig}},
		{"exactly refMin", &event.Event{Sequence: 13, Time: t0, Kind: event.Data, Data: atRef}},
		{"below refMin", &event.Event{Sequence: 14, Time: t0, Kind: event.Data, Data: belowRef}},
		{"largest frame", &event.Event{Sequence: 15, Time: t0, Kind: event.Data, Data: huge}},
		{"closed", &event.Event{Sequence: 16, Time: t0, Kind: event.ConnectionClosed, ListenerID: "l1", ConnectionID: "c1", CloseReason: event.ReasonFrameTooLarge}},
		{"closed with partial frame", &event.Event{Sequence: 17, Time: t0, Kind: event.ConnectionClosed, ConnectionID: "c1", CloseReason: event.ReasonPeerClosed, Data: []byte("partial")}},
		{"partial frame", &event.Event{Sequence: 17, Time: t0, Kind: event.Data, ConnectionID: "c1", Data: []byte("partial"), Partial: true}},
		{"partial binary frame", &event.Event{Sequence: 17, Time: t0, Kind: event.Data, Data: binBig, Partial: true}},
		{"closed tls", &event.Event{Sequence: 18, Time: t0, Kind: event.ConnectionClosed, CloseReason: event.ReasonTLSHandshake}},
		{"dropped marker", &event.Event{Time: t0, Kind: event.EventsDropped, Dropped: 17}},
		{"dropped marker, huge count", &event.Event{Time: t0, Kind: event.EventsDropped, Dropped: math.MaxUint64}},
		{"zero event", &event.Event{}},
		{"zero time", &event.Event{Sequence: 19, Kind: event.Data, Data: []byte("x")}},
		{"unix epoch", &event.Event{Sequence: 20, Time: time.Unix(0, 0), Kind: event.Data}},
		{"before 1970", &event.Event{Sequence: 21, Time: time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC), Kind: event.Data}},
		{"whole second", &event.Event{Sequence: 22, Time: time.Unix(1700000000, 0), Kind: event.Data}},
		{"max sequence", &event.Event{Sequence: math.MaxUint64, Time: t0, Kind: event.Data}},
		{"unicode ids", &event.Event{Sequence: 23, Time: t0, Kind: event.Data, ListenerID: "écoute-✓", ConnectionID: "連接-1", RemoteAddr: "[fe80::1%eth0]:1", Data: []byte("日本語")}},
		{"long ids", &event.Event{Sequence: 24, Time: t0, Kind: event.Data, ListenerID: strings.Repeat("l", 300), ConnectionID: strings.Repeat("c", 200)}},
		{"unknown kind and reason", &event.Event{Sequence: 25, Time: t0, Kind: event.Kind(99), CloseReason: event.CloseReason(99)}},
	}
}

func TestCodecEvents(t *testing.T) {
	utf8Big := []byte(strings.Repeat("héllo wörld ✓ ", 5000)) // > refMin, text
	cases := eventCases()
	var all []*event.Event
	for _, c := range cases {
		// Markers are not sealed by the hub; events are.
		if c.e.Kind != event.EventsDropped {
			c.e.Seal()
		}
		all = append(all, c.e)
		checkBatch(t, c.name, []*event.Event{c.e})
		checkBatch(t, c.name+" (memo)", []*event.Event{c.e})
	}
	checkBatch(t, "all", all)
	// Unsealed events find out for themselves whether Data is text.
	checkBatch(t, "unsealed", []*event.Event{
		{Sequence: 1, Time: t0, Kind: event.Data, Data: []byte("text")},
		{Sequence: 2, Time: t0, Kind: event.Data, Data: []byte{0xff}},
		{Sequence: 3, Time: t0, Kind: event.Data, Data: utf8Big},
	})
}

// randomEvent makes an event of any kind with fields drawn at random,
// payloads from empty to beyond refMin, text or not.
func randomEvent(r *rand.Rand, seq uint64) *event.Event {
	str := func() string {
		const alphabet = "abc-_.:019ÿé✓日本\U0001F600"
		if r.IntN(4) == 0 {
			return ""
		}
		runes := []rune(alphabet)
		var b strings.Builder
		for range r.IntN(40) {
			b.WriteRune(runes[r.IntN(len(runes))])
		}
		return b.String()
	}
	e := &event.Event{
		Sequence:     seq,
		Time:         time.Unix(r.Int64N(4e9)-1e9, r.Int64N(1e9)),
		Kind:         event.Kind(r.IntN(int(event.ReconnectScheduled) + 1)),
		ListenerID:   str(),
		ConnectionID: str(),
		RemoteAddr:   str(),
		LocalAddr:    str(),
		CloseReason:  event.CloseReason(r.IntN(event.NumReasons)),
		PeerSubject:  str(),
		Direction:    event.Direction(r.IntN(2)),
		Error:        str(),
		TargetReason: event.CloseReason(r.IntN(event.NumReasons)),
	}
	if r.IntN(2) == 0 {
		// An outbound connection's: its socket, and a retry's attempt and
		// delay (to the nanosecond, up to an hour).
		e.Generation = r.Uint64() >> r.IntN(64)
		e.Attempt = r.Uint32() >> r.IntN(32)
		e.Delay = time.Duration(r.Int64N(int64(time.Hour))) / time.Duration([]int64{1, 1e3, 1e6, 1e9}[r.IntN(4)]) * time.Duration([]int64{1, 1e3, 1e6, 1e9}[r.IntN(4)])
	}
	if r.IntN(5) == 0 {
		e.Sequence = 0
		e.Dropped = r.Uint64() >> r.IntN(64)
	}
	var n int
	switch r.IntN(4) {
	case 0:
		n = 0
	case 1:
		n = r.IntN(200)
	case 2:
		n = r.IntN(2 * refMin)
	default:
		n = refMin + r.IntN(70<<10)
	}
	if n > 0 || r.IntN(2) == 0 {
		e.Data = make([]byte, n)
		if r.IntN(2) == 0 {
			for i := range e.Data {
				e.Data[i] = byte(r.Uint32())
			}
		} else {
			for i := range e.Data {
				e.Data[i] = "hello ✓\n"[i%len("hello ✓\n")] // may cut the rune at the end
			}
		}
	}
	if r.IntN(8) != 0 {
		e.Seal()
	}
	return e
}

// randomRounds is how many rounds of random inputs a test draws: n, and a
// tenth of it under -short (make test-short), whose loop is for speed;
// make test draws them all, and a failure logs its seed to replay.
func randomRounds(n int) int {
	if testing.Short() {
		return max(1, n/10)
	}
	return n
}

func TestCodecRandom(t *testing.T) {
	r := seed.Rand(t)
	seq := uint64(0)
	for i := range randomRounds(300) {
		var evs []*event.Event
		for range 1 + r.IntN(20) {
			seq++
			evs = append(evs, randomEvent(r, seq))
		}
		// Each batch under one format, in turn: every format sees 100.
		f := formats[i%len(formats)]
		checkBatchFormat(t, fmt.Sprintf("batch %d (%s)", i, f.name), evs, f.f)
		// The same events again, from their memos, in another order and
		// another format: as another subscriber would get them.
		r.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		f = formats[(i+1)%len(formats)]
		checkBatchFormat(t, fmt.Sprintf("batch %d shuffled (%s)", i, f.name), evs, f.f)
	}
}

// TestCodecMemo checks that an event is encoded once, however many
// subscribers send it.
func TestCodecMemo(t *testing.T) {
	evs := make([]*event.Event, 50)
	for i := range evs {
		evs[i] = sealed(&event.Event{Sequence: uint64(i + 1), Time: t0, Kind: event.Data, ListenerID: "l", ConnectionID: "c", Data: []byte(fmt.Sprintf("line %d\n", i))})
	}
	before := eventsEncoded.Load()
	first := marshalCodec(t, evs, formatTextOrData)
	if n := eventsEncoded.Load() - before; n != uint64(len(evs)) {
		t.Fatalf("first subscriber encoded %d events, want %d", n, len(evs))
	}
	memos := make([]*byte, len(evs))
	for i, e := range evs {
		memos[i] = unsafe.SliceData(peekMemo(e))
		if memos[i] == nil {
			t.Fatalf("event %d has no memo after encoding", i)
		}
	}
	for sub := range 9 {
		if got := marshalCodec(t, evs, formatTextOrData); !bytes.Equal(got, first) {
			t.Fatalf("subscriber %d got other bytes than the first", sub+2)
		}
	}
	// Subscribers of the other formats share the memo too.
	for _, f := range formats {
		_ = marshalCodec(t, evs, f.f)
	}
	if n := eventsEncoded.Load() - before; n != uint64(len(evs)) {
		t.Errorf("13 subscribers of 3 formats encoded %d events, want %d (once each)", n, len(evs))
	}
	for i, e := range evs {
		if unsafe.SliceData(peekMemo(e)) != memos[i] {
			t.Errorf("event %d: memo replaced", i)
		}
	}
}

// peekMemo returns the memo of e, or nil when it has none.
func peekMemo(e *event.Event) []byte {
	return e.Memo(func() []byte { return nil })
}

// TestCodecConcurrent encodes the same fresh events from 8 goroutines at
// once, as concurrent subscribers do (run it with -race).
func TestCodecConcurrent(t *testing.T) {
	r := seed.Rand(t)
	for round := range randomRounds(20) {
		var evs []*event.Event
		for i := range 40 {
			e := randomEvent(r, uint64(i+1))
			e.Seal() // published events are sealed before any subscriber sees them
			evs = append(evs, e)
		}
		var want [numFormats][]byte
		for _, f := range formats {
			_, want[f.f] = wantResponse(t, evs, f.f)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			f := formats[g%len(formats)].f
			wg.Go(func() {
				for range 5 {
					out, err := Codec{}.Marshal(eventBatch{events: evs, format: f})
					if err != nil {
						errs <- err
						return
					}
					got := out.Materialize()
					out.Free()
					if !bytes.Equal(got, want[f]) {
						errs <- fmt.Errorf("round %d, format %d: bytes differ from proto.Marshal", round, f)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		memo := unsafe.SliceData(peekMemo(evs[0]))
		for range 3 {
			if _, err := (Codec{}).Marshal(eventBatch{events: evs[:1]}); err != nil {
				t.Fatal(err)
			}
		}
		if unsafe.SliceData(peekMemo(evs[0])) != memo {
			t.Fatal("memo changed after concurrent first use")
		}
	}
}

// TestCodecPayloadByReference checks that a large payload goes out as the
// event's own memory, as often as the payload format sends it, and that
// freeing the response leaves it alone.
func TestCodecPayloadByReference(t *testing.T) {
	text := bytes.Repeat([]byte("abcdefgh"), 8<<10)
	bin := append(bytes.Repeat([]byte{0xff}, 10<<10), 'x')
	saved := [][]byte{bytes.Clone(text), bytes.Clone(bin)}
	evs := []*event.Event{
		sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.Data, Data: text}),
		sealed(&event.Event{Sequence: 2, Time: t0, Kind: event.Data, Data: []byte("small")}),
		sealed(&event.Event{Sequence: 3, Time: t0, Kind: event.Data, Data: bin}),
	}
	for _, c := range []struct {
		f       payloadFormat
		textRef int
		buffers int
	}{
		// header, text, rest and header, data, and the tail after the
		// payload (a DATA event's direction)
		{formatTextOrData, 1, 5},
		{formatData, 1, 5},
		// header, data, text header, text, rest and header, data, tail
		{formatBoth, 2, 7},
	} {
		for range 3 {
			out, err := Codec{}.Marshal(eventBatch{events: evs, format: c.f})
			if err != nil {
				t.Fatal(err)
			}
			refs := map[*byte]int{}
			for _, b := range out {
				p := unsafe.SliceData(b.ReadOnlyData())
				refs[p]++
				if p == unsafe.SliceData(text) || p == unsafe.SliceData(bin) {
					// Never gRPC's pooled kind: Free must leave it alone.
					if _, ok := b.(mem.SliceBuffer); !ok || b.Len() != len(text) && b.Len() != len(bin) {
						t.Errorf("payload sent as %T of %d bytes, want a whole mem.SliceBuffer", b, b.Len())
					}
				}
			}
			if refs[unsafe.SliceData(text)] != c.textRef {
				t.Errorf("format %d: text payload referenced %d times, want %d", c.f, refs[unsafe.SliceData(text)], c.textRef)
			}
			if refs[unsafe.SliceData(bin)] != 1 {
				t.Errorf("format %d: binary payload referenced %d times, want 1", c.f, refs[unsafe.SliceData(bin)])
			}
			if len(out) != c.buffers {
				t.Errorf("format %d: response in %d buffers, want %d", c.f, len(out), c.buffers)
			}
			out.Free()
			// Other batches reuse the pooled buffer; the payloads stay as they were.
			_ = marshalCodec(t, []*event.Event{evs[1], evs[1], evs[1]}, c.f)
		}
	}
	if !bytes.Equal(text, saved[0]) || !bytes.Equal(bin, saved[1]) {
		t.Fatal("a payload changed")
	}
	checkBatch(t, "after reuse", evs)
}

// TestCodecMessageSize checks that every message stays within gRPC's
// default 4 MiB limit: the largest frame under BOTH goes as data only, a
// hub batch is cut by what is sent, and marshalBatch refuses a batch over
// the limit rather than make a message no default client can read.
func TestCodecMessageSize(t *testing.T) {
	huge := sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.Data, ListenerID: "l", ConnectionID: "c",
		Data: bytes.Repeat([]byte("0123456789abcdef"), MaxFrameLimit/16)})
	for _, f := range formats {
		b := marshalCodec(t, []*event.Event{huge}, f.f)
		if len(b) > maxMessageBytes {
			t.Errorf("%s: a %d-byte frame became a %d-byte message, over %d", f.name, len(huge.Data), len(b), maxMessageBytes)
		}
		var resp tcpgatev1.SubscribeResponse
		if err := proto.Unmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
		ev := resp.GetEvents()[0]
		got := ev.GetData()
		if f.f == formatTextOrData {
			got = []byte(ev.GetText())
		}
		if !bytes.Equal(got, huge.Data) {
			t.Errorf("%s: the frame did not arrive whole", f.name)
		}
	}
	// At bothTextMax, text goes too; one byte more, data only.
	for _, c := range []struct {
		n    int
		text bool
	}{{bothTextMax, true}, {bothTextMax + 1, false}} {
		e := sealed(&event.Event{Sequence: 2, Time: t0, Kind: event.Data, Data: bytes.Repeat([]byte{'t'}, c.n)})
		var resp tcpgatev1.SubscribeResponse
		if err := proto.Unmarshal(marshalCodec(t, []*event.Event{e}, formatBoth), &resp); err != nil {
			t.Fatal(err)
		}
		if got := resp.GetEvents()[0].GetText() != ""; got != c.text {
			t.Errorf("BOTH with %d bytes: text sent %v, want %v", c.n, got, c.text)
		}
	}

	// A batch of 2 MiB frames: one per message under BOTH would be 4 MiB
	// each, two per message 8 MiB; fitBatch cuts it.
	var evs []*event.Event
	for i := range 5 {
		evs = append(evs, sealed(&event.Event{Sequence: uint64(10 + i), Time: t0, Kind: event.Data, Data: bytes.Repeat([]byte{'x'}, 1536<<10)}))
	}
	for _, f := range formats {
		sent := 0
		for rest := evs; len(rest) > 0; {
			els, err := elements(nil, rest, f.f)
			if err != nil {
				t.Fatal(err)
			}
			n := fitBatch(els, maxMessageBytes)
			if n < 1 {
				t.Fatalf("%s: fitBatch took %d events", f.name, n)
			}
			b := marshalCodec(t, rest[:n], f.f)
			if len(b) > maxMessageBytes {
				t.Errorf("%s: message of %d events is %d bytes", f.name, n, len(b))
			}
			sent += n
			rest = rest[n:]
		}
		if sent != len(evs) {
			t.Errorf("%s: sent %d events of %d", f.name, sent, len(evs))
		}
	}
	if _, err := (Codec{}).Marshal(eventBatch{events: evs, format: formatBoth}); !errors.Is(err, errMessageTooLarge) {
		t.Errorf("marshaling %d events of 1.5 MiB under BOTH: %v, want errMessageTooLarge", len(evs), err)
	}
}

// TestCodecPoolReuse checks that a buffer reused without zeroing carries
// nothing of the batch before it.
func TestCodecPoolReuse(t *testing.T) {
	big := make([]*event.Event, 200)
	for i := range big {
		big[i] = sealed(&event.Event{Sequence: uint64(i + 1), Time: t0, Kind: event.Data, ListenerID: "listener", Data: bytes.Repeat([]byte{'z'}, 500)})
	}
	small := []*event.Event{sealed(&event.Event{Sequence: 1000, Time: t0, Kind: event.Data, Data: []byte("tiny")})}
	for range 20 {
		checkBatch(t, "big", big)
		checkBatch(t, "small", small)
	}
	if out, err := (Codec{}).Marshal(eventBatch{}); err != nil || out.Len() != 0 {
		t.Errorf("empty batch: %d bytes, %v", out.Len(), err)
	}
}

func TestCodecInvalidUTF8(t *testing.T) {
	e := sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.ConnectionOpened, PeerSubject: "CN=\xff"})
	if _, err := proto.Marshal(&tcpgatev1.Event{PeerSubject: e.PeerSubject}); err == nil {
		t.Fatal("proto.Marshal accepted invalid UTF-8; the codec must follow it")
	}
	if _, err := (Codec{}).Marshal(eventBatch{events: []*event.Event{e}}); err == nil || !strings.Contains(err.Error(), "peer_subject") {
		t.Fatalf("codec error = %v, want one naming peer_subject", err)
	}
}

// TestCodecFallback checks that every other message goes through the
// standard codec both ways.
func TestCodecFallback(t *testing.T) {
	if (Codec{}).Name() != "proto" {
		t.Fatalf("name %q, want proto", Codec{}.Name())
	}
	std := encoding.GetCodecV2(grpcproto.Name)
	msgs := []proto.Message{
		&tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:1"},
			Payload:    &tcpgatev1.SendRequest_Data{Data: bytes.Repeat([]byte{1, 2, 3}, 1000)},
			AwaitReply: &tcpgatev1.AwaitReply{MaxBytes: 4096},
			Timeout:    durationpb.New(time.Second),
		},
		&tcpgatev1.StartListenerRequest{ListenerId: "ü", Host: "127.0.0.1", Port: 9000, Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}},
		&tcpgatev1.SubscribeResponse{Events: []*tcpgatev1.Event{{Sequence: 1, Data: []byte("x"), Text: "x"}}},
		&tcpgatev1.ListListenersResponse{},
	}
	for _, m := range msgs {
		out, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := out.Materialize(); !bytes.Equal(got, want) {
			t.Errorf("%T: bytes differ from proto.Marshal", m)
		}
		for _, c := range []encoding.CodecV2{Codec{}, std} {
			dec := m.ProtoReflect().New().Interface()
			if err := c.Unmarshal(out, dec); err != nil {
				t.Fatalf("%T: %v", m, err)
			}
			if !proto.Equal(dec, m) {
				t.Errorf("%T: round trip gave %v, want %v", m, dec, m)
			}
		}
		out.Free()
	}
	if _, err := (Codec{}).Marshal(struct{}{}); err == nil {
		t.Error("marshaling a non-message succeeded")
	}
}

// BenchmarkEncodeBatch encodes a batch of 256 lines of 100 bytes, as one
// subscriber's Subscribe does: the codec with the events' encodings cached
// (every subscriber but the first), the codec encoding them first, the
// standard path (eventToProto and gRPC's proto codec) it replaces, and
// proto.Marshal alone. raw64k is one 64 KiB binary read.
func BenchmarkEncodeBatch(b *testing.B) {
	lines := func() []*event.Event {
		evs := make([]*event.Event, 256)
		for i := range evs {
			line := fmt.Sprintf("line %07d ", i)
			evs[i] = sealed(&event.Event{
				Sequence: uint64(1e6 + i), Time: t0, Kind: event.Data,
				ListenerID: "lst-4f9c2a", ConnectionID: "conn-8d1e07b3",
				Data: []byte(line + strings.Repeat("x", 99-len(line)) + "\n"),
			})
		}
		return evs
	}
	raw := func() []*event.Event {
		d := make([]byte, 64<<10)
		for i := range d {
			d[i] = byte(i*7 + i>>8)
		}
		return []*event.Event{sealed(&event.Event{Sequence: 1, Time: t0, Kind: event.Data, ListenerID: "lst-4f9c2a", ConnectionID: "conn-8d1e07b3", Data: d})}
	}
	for _, in := range []struct {
		name string
		make func() []*event.Event
	}{{"lines256", lines}, {"raw64k", raw}} {
		evs := in.make()
		var size int64
		for _, e := range evs {
			size += int64(len(e.Data))
		}
		b.Run(in.name+"/codec-cached", func(b *testing.B) {
			_ = marshalCodec(b, evs, formatTextOrData)
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				out, err := Codec{}.Marshal(eventBatch{events: evs})
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
		})
		// Fresh events, each encoded once: as the first subscriber does, or
		// a sole one. The events are made outside the timer, a few batches
		// at a time, and are as cold as the old path's below.
		freshRun := func(b *testing.B, marshal func([]*event.Event) (mem.BufferSlice, error)) {
			var fresh [][]*event.Event
			b.SetBytes(size)
			b.ReportAllocs()
			for range b.N {
				if len(fresh) == 0 {
					b.StopTimer()
					fresh = make([][]*event.Event, 32)
					for i := range fresh {
						fresh[i] = in.make()
					}
					b.StartTimer()
				}
				out, err := marshal(fresh[0])
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
				fresh = fresh[1:]
			}
		}
		b.Run(in.name+"/codec-first", func(b *testing.B) {
			freshRun(b, func(evs []*event.Event) (mem.BufferSlice, error) {
				return Codec{}.Marshal(eventBatch{events: evs})
			})
		})
		b.Run(in.name+"/std-codec-first", func(b *testing.B) {
			std := encoding.GetCodecV2(grpcproto.Name)
			var pbs []*tcpgatev1.Event
			resp := &tcpgatev1.SubscribeResponse{}
			freshRun(b, func(evs []*event.Event) (mem.BufferSlice, error) {
				for len(pbs) < len(evs) {
					pbs = append(pbs, new(tcpgatev1.Event))
				}
				for i, e := range evs {
					eventToProto(pbs[i], e, formatTextOrData)
				}
				resp.Events = pbs[:len(evs)]
				return std.Marshal(resp)
			})
		})
		b.Run(in.name+"/std-codec", func(b *testing.B) {
			std := encoding.GetCodecV2(grpcproto.Name)
			pbs := make([]*tcpgatev1.Event, len(evs))
			for i := range pbs {
				pbs[i] = new(tcpgatev1.Event)
			}
			resp := &tcpgatev1.SubscribeResponse{Events: pbs}
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				for i, e := range evs {
					eventToProto(pbs[i], e, formatTextOrData)
				}
				out, err := std.Marshal(resp)
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
		})
		b.Run(in.name+"/proto.Marshal", func(b *testing.B) {
			resp, _ := wantResponse(b, evs, formatTextOrData)
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := proto.Marshal(resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
