package rpc

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
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
//   - the fields of an event other than its sequence and payload are
//     encoded once, on first use, and cached on the event
//     (event.Event.Memo), shared by the events of one read (memoize):
//     every other subscriber copies those few bytes, whatever its payload
//     format;
//   - a payload of refMin bytes or more is not copied at all: the response
//     refers to the event's Data, which is immutable once published, as a
//     mem.SliceBuffer (whose Free does nothing, so gRPC never recycles or
//     writes to it), as data, as text, or as both, as the subscriber's
//     payload format says (whether it is UTF-8 the hub found out when it
//     sealed the event);
//   - the rest of a batch goes in one buffer from a pool that does not zero
//     what it hands out, since every byte sent is written first.
//
// Every other message goes to the standard codec, and so does every
// Unmarshal, except that a request of this API that does not decode is
// marked rather than refused (see Unmarshal).
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

// Unmarshal decodes as the standard codec does, but a request of this API
// that does not decode (bytes that are not protobuf, a string that is not
// UTF-8) is not an error here: grpc-go answers every codec error with
// Internal, whatever status the codec returns, and a malformed request is
// the caller's mistake. Such a message is left empty and marked instead,
// and the interceptors Decoded and DecodedStream answer InvalidArgument
// with the decoder's reason before any method sees it (decodeError).
// Messages of other services (health, reflection) keep grpc-go's answer.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := stdCodec.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok || m.ProtoReflect().Descriptor().ParentFile().Package() != tcpgatev1Package {
		return err
	}
	md := m.ProtoReflect().Descriptor()
	reason := "not valid protobuf wire format (" + err.Error() + ")"
	if field := invalidUTF8Field(md, data.Materialize(), ""); field != "" {
		reason = field + " is not valid UTF-8"
	}
	proto.Reset(m)
	m.ProtoReflect().SetUnknown(appendMalformed(nil, reason))
	return nil
}

// invalidUTF8Field names the string field of raw, a message of type md,
// that holds invalid UTF-8 (the protobuf decoder's error does not say
// which), as "await_reply.match.prefix"; "" when there is none, or raw is
// not well-formed enough to tell.
func invalidUTF8Field(md protoreflect.MessageDescriptor, raw []byte, prefix string) string {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return ""
		}
		raw = raw[n:]
		n = protowire.ConsumeFieldValue(num, typ, raw)
		if n < 0 {
			return ""
		}
		value := raw[:n]
		raw = raw[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			continue
		}
		b, _ := protowire.ConsumeBytes(value)
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(b) {
				return prefix + string(fd.Name())
			}
		case protoreflect.MessageKind:
			if !fd.IsMap() {
				if name := invalidUTF8Field(fd.Message(), b, prefix+string(fd.Name())+"."); name != "" {
					return name
				}
			}
		}
	}
	return ""
}

// tcpgatev1Package is the protobuf package of the API's messages.
const tcpgatev1Package = "tcpgate.v1"

// malformedTag starts the mark Codec leaves in a request that did not
// decode: a field numbered 0, which the wire format has no room for, so
// that no request a client sends can decode to it.
var malformedTag = protowire.EncodeTag(0, protowire.BytesType)

func appendMalformed(b []byte, reason string) []byte {
	return protowire.AppendString(protowire.AppendVarint(b, malformedTag), reason)
}

// Decoded is the unary interceptor that answers a request Codec could not
// decode with InvalidArgument, so that no method runs on a message left
// empty. The server installs it after authentication: a caller without
// the token learns nothing of how its bytes were read.
func Decoded(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok {
		if err := decodeError(m); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// DecodedStream is Decoded for streams: every message the handler
// receives is checked.
func DecodedStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, decodedStream{ss})
}

type decodedStream struct{ grpc.ServerStream }

func (s decodedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if pm, ok := m.(proto.Message); ok {
		return decodeError(pm)
	}
	return nil
}

// decodeError is the InvalidArgument status of a request that Codec
// could not decode, or nil for one that decoded.
func decodeError(m proto.Message) error {
	raw := m.ProtoReflect().GetUnknown()
	tag, n := protowire.ConsumeVarint(raw)
	if n <= 0 || tag != malformedTag {
		return nil
	}
	reason, n := protowire.ConsumeString(raw[n:])
	if n < 0 {
		reason = "unreadable"
	}
	return Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, fmt.Sprintf("malformed request %s: %s", m.ProtoReflect().Descriptor().FullName(), reason), nil)
}

// eventBatch is the message Subscribe sends: the engine's events, which only
// Codec knows how to encode (as a tcpgatev1.SubscribeResponse), with the
// payload format the subscriber asked for. Subscribe cuts a hub batch into
// eventBatches of at most maxMessageBytes (fitBatch), and passes along the
// elements it sized them by, so that each event is sized once.
type eventBatch struct {
	events []*event.Event
	format payloadFormat
	// els, when set, are elementOf(events[i], format), one per event.
	els []element
}

// refMin is the smallest payload sent by reference rather than copied into
// the batch's buffer: below it, copying a few bytes costs less than another
// buffer in the response.
const refMin = 2 << 10

// An event goes into a response as one element of SubscribeResponse.events
// (field 1): its tag and length, its sequence (field 1), then the event's
// memo (event.Event.Memo) with the payload fields in between. The memo is
// the event's wire format without the element's tag and length, without
// its sequence, and without fields 8 (data) and 9 (text), which depend on
// the subscriber's payload format: memo[:mid] holds fields 2 to 7,
// memo[mid:] fields 10 to 14 (see tailSize). Leaving the sequence out lets
// the events of one read, alike in all else, share one memo (memoize). The
// memo holds bytes only, a few dozen of them, to keep small what every
// event in the replay ring carries.

// eventsEncoded counts the events given a memo (encoded, or sharing the
// memo of the event before them), for tests.
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

// tailSize is the size of the fields after the payload in e's memo.
func tailSize(e *event.Event) int {
	n := sizeVarint(fCloseReason, closeReason(e.CloseReason)) +
		sizeVarint(fDropped, e.Dropped) + sizeString(fPeerSubject, len(e.PeerSubject)) +
		sizeVarint(fPartial, btou(e.Partial))
	if e.Header != nil {
		n += protowire.SizeTag(fHeader) + protowire.SizeBytes(headerSize(e.Header))
	}
	n += sizeVarint(fOrigin, uint64(origins[e.Origin])) +
		sizeVarint(fDirection, direction(e)) + sizeVarint(fGeneration, e.Generation) +
		sizeVarint(fAttempt, uint64(e.Attempt))
	if e.Delay != 0 {
		n += protowire.SizeTag(fDelay) + protowire.SizeBytes(durationSize(e.Delay))
	}
	return n + sizeString(fError, len(e.Error)) + sizeVarint(fTargetReason, closeReason(e.TargetReason)) +
		sizeString(fEventNodeID, len(e.Node))
}

// direction is the wire value of a Data event's direction; other kinds
// have none.
func direction(e *event.Event) uint64 {
	if e.Kind != event.Data {
		return 0
	}
	return uint64(directions[e.Direction])
}

// durationSize is the size of a google.protobuf.Duration's fields.
func durationSize(d time.Duration) int {
	secs, nanos := durationParts(d)
	return sizeVarint(fSeconds, uint64(secs)) + sizeVarint(fNanos, uint64(nanos))
}

// durationParts splits d as google.protobuf.Duration holds it: whole
// seconds, and nanoseconds of the same sign.
func durationParts(d time.Duration) (secs, nanos int64) {
	return int64(d / time.Second), int64(int32(d % time.Second))
}

// headerSize is the size of a ResponseHeader's fields.
func headerSize(h *event.Header) int {
	return sizeString(fIncarnation, len(h.Incarnation)) + sizeString(fNodeID, len(h.Node)) +
		sizeVarint(fLastSequence, h.LastSequence)
}

// element is how one event goes into a response under one payload format.
type element struct {
	seq        uint64 // the event's sequence, which is not in memo
	memo       []byte
	mid        int  // where the payload fields go in memo
	data, text bool // which payload fields are sent
	n          int  // the element's length, without its tag and length
}

func elementOf(e *event.Event, f payloadFormat) (element, error) {
	enc, err := memoOf(e)
	if err != nil {
		return element{}, err
	}
	el := element{seq: e.Sequence, memo: enc, mid: len(enc) - tailSize(e), n: sizeVarint(fSequence, e.Sequence) + len(enc)}
	el.data, el.text = eventFields(f, e)
	if el.data {
		el.n += sizeString(fData, len(e.Data))
	}
	if el.text {
		el.n += sizeString(fText, len(e.Data))
	}
	return el, nil
}

// wireSize is the bytes the element takes in a response.
func (el element) wireSize() int {
	return protowire.SizeTag(fEvents) + protowire.SizeVarint(uint64(el.n)) + el.n
}

// copies is how many times the payload is sent.
func (el element) copies() int { return btoi(el.data) + btoi(el.text) }

func closeReason(r event.CloseReason) uint64 {
	if r == event.ReasonUnspecified {
		return 0
	}
	return uint64(closeReasons[r])
}

// Field numbers of tcpgatev1.Event and of google.protobuf.Timestamp.
// TestEventFieldsCovered walks the Event descriptor to hold this list, and
// the JSON encoder's (eventjson.go), to the proto.
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
	fHeader        protowire.Number = 14
	fOrigin        protowire.Number = 15
	fDirection     protowire.Number = 16
	fGeneration    protowire.Number = 17
	fAttempt       protowire.Number = 18
	fDelay         protowire.Number = 19
	fError         protowire.Number = 20
	fTargetReason  protowire.Number = 21
	fEventNodeID   protowire.Number = 22
	fIncarnation   protowire.Number = 1 // ResponseHeader.incarnation
	fNodeID        protowire.Number = 2 // ResponseHeader.node_id
	fLastSequence  protowire.Number = 3 // ResponseHeader.last_sequence
	fSeconds       protowire.Number = 1 // Timestamp.seconds, Duration.seconds
	fNanos         protowire.Number = 2 // Timestamp.nanos, Duration.nanos
)

// encodeEvent encodes e as proto.Marshal encodes the tcpgatev1.Event that
// eventToProto makes of it, with the sequence and the payload fields left
// out and without the element's tag and length (see element): fields in
// number order, zero values left out, Time always present, strings checked
// for UTF-8 as proto3 requires.
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
		{fError, "error", e.Error},
		{fEventNodeID, "node_id", e.Node},
	}
	if h := e.Header; h != nil && (!utf8.ValidString(h.Incarnation) || !utf8.ValidString(h.Node)) {
		return nil, fmt.Errorf("proto: field tcpgate.v1.Event.header contains invalid UTF-8")
	}
	for _, f := range strs {
		if !utf8.ValidString(f.s) {
			return nil, fmt.Errorf("proto: field tcpgate.v1.Event.%s contains invalid UTF-8", f.name)
		}
	}
	secs, nanos := e.Time.Unix(), int64(int32(e.Time.Nanosecond()))
	kind := uint64(eventKinds[e.Kind])
	reason := closeReason(e.CloseReason)

	tsLen := sizeVarint(fSeconds, uint64(secs)) + sizeVarint(fNanos, uint64(nanos))
	n := protowire.SizeTag(fTime) + protowire.SizeBytes(tsLen) +
		sizeVarint(fKind, kind) +
		sizeString(fListenerID, len(e.ListenerID)) +
		sizeString(fConnectionID, len(e.ConnectionID)) +
		sizeString(fRemoteAddress, len(e.RemoteAddr)) +
		sizeString(fLocalAddress, len(e.LocalAddr)) +
		tailSize(e)

	b := make([]byte, 0, n)
	b = protowire.AppendTag(b, fTime, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(tsLen))
	b = appendVarint(b, fSeconds, uint64(secs))
	b = appendVarint(b, fNanos, uint64(nanos))
	b = appendVarint(b, fKind, kind)
	for _, f := range strs[:4] {
		b = appendString(b, f.num, f.s)
	}
	b = appendVarint(b, fCloseReason, reason)
	b = appendVarint(b, fDropped, e.Dropped)
	b = appendString(b, fPeerSubject, e.PeerSubject)
	b = appendVarint(b, fPartial, btou(e.Partial))
	if h := e.Header; h != nil {
		b = protowire.AppendTag(b, fHeader, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerSize(h)))
		b = appendString(b, fIncarnation, h.Incarnation)
		b = appendString(b, fNodeID, h.Node)
		b = appendVarint(b, fLastSequence, h.LastSequence)
	}
	b = appendVarint(b, fOrigin, uint64(origins[e.Origin]))
	b = appendVarint(b, fDirection, direction(e))
	b = appendVarint(b, fGeneration, e.Generation)
	b = appendVarint(b, fAttempt, uint64(e.Attempt))
	if e.Delay != 0 {
		secs, nanos := durationParts(e.Delay)
		b = protowire.AppendTag(b, fDelay, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(durationSize(e.Delay)))
		b = appendVarint(b, fSeconds, uint64(secs))
		b = appendVarint(b, fNanos, uint64(nanos))
	}
	b = appendString(b, fError, e.Error)
	b = appendVarint(b, fTargetReason, closeReason(e.TargetReason))
	b = appendString(b, fEventNodeID, e.Node)
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

// elements appends to dst the element of each of evs under format f.
func elements(dst []element, evs []*event.Event, f payloadFormat) ([]element, error) {
	if err := memoize(evs); err != nil {
		return dst, err
	}
	for _, e := range evs {
		el, err := elementOf(e, f)
		if err != nil {
			return dst, err
		}
		dst = append(dst, el)
	}
	return dst, nil
}

// fitBatch returns how many of els, from the first, go in one message of
// at most limit bytes: at least one, which fits alone since frames are
// bounded well below maxMessageBytes (marshalBatch checks).
func fitBatch(els []element, limit int) int {
	size := 0
	for i, el := range els {
		size += el.wireSize()
		if size > limit && i > 0 {
			return i
		}
	}
	return len(els)
}

// errMessageTooLarge reports a batch that would exceed maxMessageBytes.
var errMessageTooLarge = errors.New("message larger than gRPC's default 4 MiB limit")

// marshalBatch encodes b as a SubscribeResponse: the events' memos and
// small payloads copied into one pooled buffer, large payloads referred to
// between views of it. It refuses to make a message over maxMessageBytes,
// which a client with default settings could not read.
func marshalBatch(b eventBatch) (mem.BufferSlice, error) {
	if len(b.events) == 0 {
		return nil, nil
	}
	els := b.els
	if len(els) != len(b.events) {
		var err error
		if els, err = elements(make([]element, 0, len(b.events)), b.events, b.format); err != nil {
			return nil, err
		}
	}
	size, total, refs := 0, 0, 0
	for i, el := range els {
		e := b.events[i]
		ws := el.wireSize()
		total += ws
		size += ws
		if len(e.Data) >= refMin {
			size -= el.copies() * len(e.Data)
			refs += el.copies()
		}
	}
	if total > maxMessageBytes {
		return nil, fmt.Errorf("tcpgate: encoding %d events: %d bytes: %w", len(b.events), total, errMessageTooLarge)
	}
	bp := batchBuffers.Get(size)
	root := mem.NewBuffer(bp, batchBuffers)
	buf := (*bp)[:0]

	// Views of root between the payloads sent by reference; each holds a
	// reference to root, and ours is dropped at the end. A payload goes as
	// a mem.SliceBuffer, whose Free does nothing: gRPC never recycles it.
	var out mem.BufferSlice
	if refs > 0 {
		out = make(mem.BufferSlice, 0, 1+2*refs)
	}
	start := 0
	payload := func(num protowire.Number, d []byte) {
		buf = protowire.AppendTag(buf, num, protowire.BytesType)
		buf = protowire.AppendVarint(buf, uint64(len(d)))
		if len(d) < refMin {
			buf = append(buf, d...)
			return
		}
		if len(buf) > start {
			out = append(out, root.Slice(start, len(buf)))
			start = len(buf)
		}
		out = append(out, mem.SliceBuffer(d))
	}
	for i, e := range b.events {
		el := els[i]
		buf = protowire.AppendTag(buf, fEvents, protowire.BytesType)
		buf = protowire.AppendVarint(buf, uint64(el.n))
		buf = appendVarint(buf, fSequence, el.seq)
		buf = append(buf, el.memo[:el.mid]...)
		if el.data {
			payload(fData, e.Data)
		}
		if el.text {
			payload(fText, e.Data)
		}
		buf = append(buf, el.memo[el.mid:]...)
	}
	if len(buf) != size {
		root.Free()
		return nil, fmt.Errorf("tcpgate: encoding %d events: %d bytes, want %d", len(b.events), len(buf), size)
	}
	if refs == 0 {
		return mem.BufferSlice{root}, nil
	}
	if len(buf) > start {
		out = append(out, root.Slice(start, len(buf)))
	}
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
