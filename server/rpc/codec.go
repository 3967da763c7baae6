package rpc

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// Codec is the gRPC server's codec, installed with grpc.ForceServerCodecV2.
// It is the standard protobuf codec ("proto", so clients see nothing new)
// with one addition: it encodes an eventBatch, what Subscribe sends, straight
// into the wire format of a tcpgatev1.SubscribeResponse, byte for byte what
// proto.Marshal makes of the response eventToProto would build.
//
// Doing it here saves what the standard codec repeats for every subscriber
// of the same event: converting it to a message, sizing and marshaling it,
// validating its text as UTF-8 again, copying its payload into a buffer that
// the pool has just zeroed. Instead:
//
//   - the fields of an event around its payload are encoded once, on first
//     use, and cached on the event (event.Event.Memo): every other
//     subscriber copies those few bytes;
//   - a payload of refMin bytes or more is not copied at all: the response
//     refers to the event's Data, which is immutable once published, as a
//     mem.SliceBuffer (whose Free does nothing, so gRPC never recycles or
//     writes to it), once as data and once more as text when it is UTF-8,
//     which the hub found out when it sealed the event;
//   - the rest of a batch goes in one buffer from a pool that does not zero
//     what it hands out, since every byte sent is written first.
//
// Every other message, and every Unmarshal, goes to the standard codec.
type Codec struct{}

// stdCodec is grpc-go's protobuf codec. Codec is never registered globally
// (only forced on the server), so this lookup finds the standard one.
var stdCodec = encoding.GetCodecV2(grpcproto.Name)

var _ encoding.CodecV2 = Codec{}

// Name returns "proto": Codec speaks standard protobuf.
func (Codec) Name() string { return grpcproto.Name }

// Marshal encodes an eventBatch as a SubscribeResponse, and anything else as
// the standard codec does.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(eventBatch); ok {
		return marshalBatch(b)
	}
	return stdCodec.Marshal(v)
}

// Unmarshal is the standard codec's.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	return stdCodec.Unmarshal(data, v)
}

// eventBatch is the message Subscribe sends: the engine's events, which only
// Codec knows how to encode (as a tcpgatev1.SubscribeResponse).
type eventBatch []*event.Event

// refMin is the smallest payload sent by reference rather than copied into
// the batch's buffer: below it, copying a few bytes costs less than another
// buffer in the response.
const refMin = 2 << 10

// An event goes into a response as its memo (event.Event.Memo) and its
// payload: the memo is the event's wire format as one element of
// SubscribeResponse.events (field 1) with the payload left out, and split
// tells where the payload goes. enc[:mid] runs from the element's tag to the
// length of field 8 (data), and the payload follows it; when the payload is
// text, enc[mid:tail] is the tag and length of field 9, and the payload
// follows again; enc[tail:] holds fields 10 to 12. The memo holds bytes
// only, to keep small what every event in the replay ring carries.

// eventsEncoded counts the events encoded (not taken from their memo), for
// tests.
var eventsEncoded atomic.Uint64

// memoOf returns e's memo, encoding it on first use.
func memoOf(e *event.Event) ([]byte, error) {
	var err error
	enc := e.Memo(func() []byte {
		var b []byte
		b, err = encodeEvent(e)
		return b
	})
	return enc, err
}

// isText reports whether e's payload goes as text too. A sealed event knows
// without checking its payload again.
func isText(e *event.Event) bool {
	_, ok := e.Text()
	return ok
}

// split returns where the payload goes in enc, e's memo (see above).
func split(e *event.Event, enc []byte, text bool) (mid, tail int) {
	tail = len(enc)
	if e.CloseReason != event.ReasonUnspecified || e.Dropped != 0 || e.PeerSubject != "" || e.Partial {
		tail -= sizeVarint(fCloseReason, closeReason(e.CloseReason)) +
			sizeVarint(fDropped, e.Dropped) + sizeString(fPeerSubject, len(e.PeerSubject)) +
			sizeVarint(fPartial, btou(e.Partial))
	}
	mid = tail
	if text {
		mid -= protowire.SizeTag(fText) + protowire.SizeVarint(uint64(len(e.Data)))
	}
	return mid, tail
}

func closeReason(r event.CloseReason) uint64 {
	if r == event.ReasonUnspecified {
		return 0
	}
	return uint64(closeReasons[r])
}

// Field numbers of tcpgatev1.Event and of google.protobuf.Timestamp.
const (
	fEvents        protowire.Number = 1 // SubscribeResponse.events
	fSequence      protowire.Number = 1
	fTime          protowire.Number = 2
	fKind          protowire.Number = 3
	fListenerID    protowire.Number = 4
	fConnectionID  protowire.Number = 5
	fRemoteAddress protowire.Number = 6
	fLocalAddress  protowire.Number = 7
	fData          protowire.Number = 8
	fText          protowire.Number = 9
	fCloseReason   protowire.Number = 10
	fDropped       protowire.Number = 11
	fPeerSubject   protowire.Number = 12
	fPartial       protowire.Number = 13
	fSeconds       protowire.Number = 1 // Timestamp.seconds
	fNanos         protowire.Number = 2 // Timestamp.nanos
)

// encodeEvent encodes e as proto.Marshal encodes the tcpgatev1.Event that
// eventToProto makes of it, as an element of SubscribeResponse.events and
// with the payload left out (see parts): fields in number order, zero values
// left out, Time always present, strings checked for UTF-8 as proto3
// requires.
func encodeEvent(e *event.Event) ([]byte, error) {
	eventsEncoded.Add(1)
	strs := [...]struct {
		num  protowire.Number
		name string
		s    string
	}{
		{fListenerID, "listener_id", e.ListenerID},
		{fConnectionID, "connection_id", e.ConnectionID},
		{fRemoteAddress, "remote_address", e.RemoteAddr},
		{fLocalAddress, "local_address", e.LocalAddr},
		{fPeerSubject, "peer_subject", e.PeerSubject},
	}
	for _, f := range strs {
		if !utf8.ValidString(f.s) {
			return nil, fmt.Errorf("proto: field tcpgate.v1.Event.%s contains invalid UTF-8", f.name)
		}
	}
	secs, nanos := e.Time.Unix(), int64(int32(e.Time.Nanosecond()))
	kind := uint64(eventKinds[e.Kind])
	reason := closeReason(e.CloseReason)
	isText := isText(e)

	tsLen := sizeVarint(fSeconds, uint64(secs)) + sizeVarint(fNanos, uint64(nanos))
	n := sizeVarint(fSequence, e.Sequence) +
		protowire.SizeTag(fTime) + protowire.SizeBytes(tsLen) +
		sizeVarint(fKind, kind) +
		sizeString(fListenerID, len(e.ListenerID)) +
		sizeString(fConnectionID, len(e.ConnectionID)) +
		sizeString(fRemoteAddress, len(e.RemoteAddr)) +
		sizeString(fLocalAddress, len(e.LocalAddr)) +
		sizeString(fData, len(e.Data)) +
		sizeVarint(fCloseReason, reason) +
		sizeVarint(fDropped, e.Dropped) +
		sizeString(fPeerSubject, len(e.PeerSubject)) +
		sizeVarint(fPartial, btou(e.Partial))
	if isText {
		n += sizeString(fText, len(e.Data))
	}

	b := make([]byte, 0, protowire.SizeTag(fEvents)+protowire.SizeVarint(uint64(n))+n-len(e.Data)*(1+btoi(isText)))
	b = protowire.AppendTag(b, fEvents, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b = appendVarint(b, fSequence, e.Sequence)
	b = protowire.AppendTag(b, fTime, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(tsLen))
	b = appendVarint(b, fSeconds, uint64(secs))
	b = appendVarint(b, fNanos, uint64(nanos))
	b = appendVarint(b, fKind, kind)
	for _, f := range strs[:4] {
		b = appendString(b, f.num, f.s)
	}
	if len(e.Data) > 0 {
		b = protowire.AppendTag(b, fData, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(e.Data)))
	}
	if isText {
		b = protowire.AppendTag(b, fText, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(e.Data)))
	}
	b = appendVarint(b, fCloseReason, reason)
	b = appendVarint(b, fDropped, e.Dropped)
	b = appendString(b, fPeerSubject, e.PeerSubject)
	b = appendVarint(b, fPartial, btou(e.Partial))
	if len(b) != cap(b) {
		return nil, fmt.Errorf("tcpgate: encoding event %d: %d bytes, want %d", e.Sequence, len(b), cap(b))
	}
	return b, nil
}

func btou(b bool) uint64 { return uint64(btoi(b)) }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeString(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(s)))
	return append(b, s...)
}

// marshalBatch encodes evs as a SubscribeResponse: the events' memos and
// small payloads copied into one pooled buffer, large payloads referred to
// between views of it.
func marshalBatch(evs eventBatch) (mem.BufferSlice, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	size, refs := 0, 0
	for _, e := range evs {
		enc, err := memoOf(e)
		if err != nil {
			return nil, err
		}
		size += len(enc)
		if len(e.Data) >= refMin {
			refs++
		} else if isText(e) {
			size += 2 * len(e.Data)
		} else {
			size += len(e.Data)
		}
	}
	bp := batchBuffers.Get(size)
	root := mem.NewBuffer(bp, batchBuffers)
	b := (*bp)[:0]
	if refs == 0 {
		for _, e := range evs {
			enc, _ := memoOf(e)
			text := isText(e)
			mid, tail := split(e, enc, text)
			b = append(b, enc[:mid]...)
			b = append(b, e.Data...)
			if text {
				b = append(b, enc[mid:tail]...)
				b = append(b, e.Data...)
			}
			b = append(b, enc[tail:]...)
		}
		return mem.BufferSlice{root}, nil
	}

	// Views of root between the payloads sent by reference; each holds a
	// reference to root, and ours is dropped at the end. A payload goes as
	// a mem.SliceBuffer, whose Free does nothing: gRPC never recycles it.
	out := make(mem.BufferSlice, 0, 1+4*refs)
	start := 0
	cut := func() {
		if len(b) > start {
			out = append(out, root.Slice(start, len(b)))
			start = len(b)
		}
	}
	for _, e := range evs {
		enc, _ := memoOf(e)
		text := isText(e)
		mid, tail := split(e, enc, text)
		b = append(b, enc[:mid]...)
		if len(e.Data) < refMin {
			b = append(b, e.Data...)
			if text {
				b = append(b, enc[mid:tail]...)
				b = append(b, e.Data...)
			}
		} else {
			ref := mem.SliceBuffer(e.Data)
			cut()
			out = append(out, ref)
			if text {
				b = append(b, enc[mid:tail]...)
				cut()
				out = append(out, ref)
			}
		}
		b = append(b, enc[tail:]...)
	}
	cut()
	root.Free()
	return out, nil
}

// batchBuffers holds the buffers of marshalBatch. Unlike gRPC's default
// pool it does not zero a buffer before handing it out again: every byte
// of one is written before it is sent.
var batchBuffers = new(tieredPool)

const (
	// 2 KiB: mem.NewBuffer does not pool a buffer of 1 KiB or less.
	minTier = 11
	// 4 MiB: a batch holds about 1 MiB, or one larger event.
	maxTier = 22
)

// tieredPool is a mem.BufferPool of buffers whose capacity is a power of
// two from 1<<minTier to 1<<maxTier. Larger buffers are not pooled.
type tieredPool struct {
	tiers [maxTier - minTier + 1]sync.Pool
}

var _ mem.BufferPool = (*tieredPool)(nil)

// Get returns a buffer of length size, not zeroed.
func (p *tieredPool) Get(size int) *[]byte {
	t := max(bits.Len(uint(size-1)), minTier)
	if t > maxTier {
		b := make([]byte, size)
		return &b
	}
	if bp, ok := p.tiers[t-minTier].Get().(*[]byte); ok {
		*bp = (*bp)[:size]
		return bp
	}
	b := make([]byte, size, 1<<t)
	return &b
}

// Put returns a buffer that Get handed out.
func (p *tieredPool) Put(bp *[]byte) {
	c := cap(*bp)
	t := bits.Len(uint(c)) - 1
	if c != 1<<t || t < minTier || t > maxTier {
		return
	}
	p.tiers[t-minTier].Put(bp)
}
