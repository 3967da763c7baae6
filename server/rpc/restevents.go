package rpc

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// EventSource serves the REST event stream straight from the hub: each
// REST client is a hub subscriber of its own, with the queue, policies and
// bounds of a gRPC one, and gets its events as JSON made once per event
// and payload format for every REST client (jsonCache). The HTTP side
// (package gateway) checks auth and writes; EventSource validates, as
// Subscribe does, subscribes and encodes.
type EventSource struct {
	svc     *Service
	observe func(err error, start time.Time)
	cache   jsonCache
	open    atomic.Int64 // streams open: with one, there is nothing to share
}

// NewEventSource returns the event source of svc. observe, when set, is
// called once per stream as it closes, with the status that ended it, so
// that REST streams are counted with the gRPC calls.
func NewEventSource(svc *Service, observe func(err error, start time.Time)) *EventSource {
	return &EventSource{svc: svc, observe: observe, cache: jsonCache{limit: jsonCacheBytes}}
}

// JSONEvent is one event of the REST stream: its sequence (0 on
// EVENTS_DROPPED markers) and its JSON object, which may be shared with
// other streams and must not be modified; it is valid until the next
// call of Next.
type JSONEvent struct {
	Sequence uint64
	JSON     []byte
	// ID, when HasID, is the sequence the event's SSE id names (see
	// AppendEventID): its own, or, on STREAM_STARTED, the one before the
	// first the stream can carry, so that an EventSource that reconnects
	// before any event resumes exactly where it started. The other
	// markers have none, so that an EventSource keeps its last.
	ID    uint64
	HasID bool
}

// EventStream is one REST client's subscription. Next is called from one
// goroutine; Close may be called from any, and must be called.
type EventStream struct {
	src    *EventSource
	sub    *stream
	format payloadFormat
	start  time.Time
	batch  []*event.Event
	// scratch holds the JSON of the last batch when it was not cached.
	scratch []byte

	mu     sync.Mutex // guards end and closed
	end    error      // the status that ended the stream, once known
	closed bool
}

// Subscribe validates req exactly as GatewayService.Subscribe does and
// starts a subscription. Its errors are gRPC statuses.
func (es *EventSource) Subscribe(req *tcpgatev1.SubscribeRequest) (*EventStream, error) {
	return es.subscribe(req, func(*hub.SubscribeOptions) {})
}

// SubscribeSSE is Subscribe for Server-Sent Events, whose client (a
// browser's EventSource) stops for good at an error response, and which
// resumes with lastEventID, the Last-Event-ID header ("" when absent):
// an id this gateway made (AppendEventID) wins over since_incarnation
// and since_sequence, as the position the client last had. A position
// the gateway cannot serve (another incarnation, a sequence it has not
// reached, an id it did not make) is never an error: the stream opens
// with STREAM_STARTED and INCARNATION_CHANGED and replays the ring from
// its start.
func (es *EventSource) SubscribeSSE(req *tcpgatev1.SubscribeRequest, lastEventID string) (*EventStream, error) {
	return es.subscribe(req, func(opts *hub.SubscribeOptions) {
		opts.Lenient = true
		if lastEventID == "" {
			return
		}
		inc, seq, ok := ParseEventID(lastEventID)
		if !ok {
			opts.Resync = true
			return
		}
		// An EventSource resumes after the last event it saw.
		opts.Incarnation, opts.Since = inc, seq+1
	})
}

func (es *EventSource) subscribe(req *tcpgatev1.SubscribeRequest, adjust func(*hub.SubscribeOptions)) (*EventStream, error) {
	start := time.Now()
	opts, format, err := es.svc.subscription(req)
	if err == nil {
		adjust(&opts)
		var sub *stream
		if sub, err = es.svc.openStream(opts); err == nil {
			es.open.Add(1)
			return &EventStream{src: es, sub: sub, format: format, start: start}, nil
		}
	}
	if es.observe != nil {
		es.observe(err, start)
	}
	return nil, err
}

// LastSequence is the newest sequence when the subscription started:
// nothing after it will be missed.
func (st *EventStream) LastSequence() uint64 { return st.sub.header.LastSequence }

// Incarnation is the gateway's incarnation, which the stream's sequences
// belong to.
func (st *EventStream) Incarnation() string { return st.sub.header.Incarnation }

// NodeID is the node id of the gateway that serves the stream.
func (st *EventStream) NodeID() string { return st.sub.header.Node }

// ShuttingDown is closed when the gateway shuts down: the stream's last
// writes are then bounded by FinalWriteTimeout. What remains for it (the
// final status) still comes from Next.
func (st *EventStream) ShuttingDown() <-chan struct{} { return st.src.svc.cfg.Hub.Closed() }

// Next appends to buf the events ready for this stream, as JSON, waiting
// until there is at least one. It returns ctx.Err() when ctx is done, and
// once the subscription has ended and what remained was returned, the
// status that ended it (Unavailable at shutdown, ResourceExhausted for a
// DISCONNECT subscriber that fell behind).
func (st *EventStream) Next(ctx context.Context, buf []JSONEvent) ([]JSONEvent, error) {
	var err error
	st.batch, err = st.sub.Next(ctx, st.batch[:0])
	from := len(buf)
	buf, encErr := st.src.cache.encode(st.batch, st.format, buf, st.src.open.Load() > 1, &st.scratch)
	if encErr == nil {
		for i, e := range st.batch {
			je := &buf[from+i]
			switch {
			case e.Sequence != 0:
				je.ID, je.HasID = e.Sequence, true
			case e.Kind == event.StreamStarted:
				je.ID, je.HasID = st.sub.start.From-1, true
			}
		}
	}
	clear(st.batch)
	if encErr != nil {
		st.src.svc.log.Error("encoding event as JSON", "error", encErr)
		err = Status(codes.Internal, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "encoding an event as JSON failed", nil)
		st.setEnd(err)
		return buf, err
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return buf, err
		}
		err = st.src.svc.streamError(ctx, err)
		st.setEnd(err)
	}
	return buf, err
}

func (st *EventStream) setEnd(err error) {
	st.mu.Lock()
	if st.end == nil {
		st.end = err
	}
	st.mu.Unlock()
}

// Close ends the subscription. It is idempotent.
func (st *EventStream) Close() {
	st.mu.Lock()
	closed, end := st.closed, st.end
	st.closed = true
	st.mu.Unlock()
	if closed {
		return
	}
	st.sub.Close()
	st.src.open.Add(-1)
	if st.src.observe != nil {
		if end == nil {
			end = Status(codes.Canceled, tcpgatev1.ErrorReason_ERROR_REASON_CANCELED, "client went away", nil)
		}
		st.src.observe(end, st.start)
	}
}

// jsonCacheBytes bounds the JSON cached for REST clients: room for every
// event of several full batches (about 1 MiB each), so that clients
// reading at about the same pace share one encoding, while a lagging one
// encodes its own.
const jsonCacheBytes = 16 << 20

// jsonCacheSlots is how many events of one payload format the cache can
// hold: a few batches of small events (a batch is about 1 MiB of events of
// 160 bytes and more).
const jsonCacheSlots = 1 << 15

// jsonCache holds the JSON of recent events, by sequence and payload
// format, in a place bounded in bytes (limit) rather than on the events:
// an event in the replay ring keeps no JSON alive, so the ring's and the
// queues' byte bounds stay true of real memory. Each format has a
// direct-mapped table indexed by sequence: a newer event takes the slot of
// one jsonCacheSlots older, and an entry that would take the cache past
// limit is not kept. EVENTS_DROPPED markers, which belong to one
// subscriber, are never cached.
type jsonCache struct {
	limit int

	mu    sync.Mutex // guards the fields below
	slots [numFormats][]jsonSlot
	bytes int // JSON bytes held in slots
}

// scratchKeep is the largest JSON buffer a stream keeps between batches:
// room for the JSON of any batch of small events (a batch is about 1 MiB
// of events); a larger one, made for large frames, is not kept.
const scratchKeep = 4 << 20

type jsonSlot struct {
	seq  uint64
	json []byte
}

// encode appends the JSON of evs under format f to buf. With shared set
// (more than one REST stream is open) it takes what the cache has and
// caches what it encodes; otherwise nobody would share it, and it encodes
// into scratch, which buf then refers to until the next call.
func (c *jsonCache) encode(evs []*event.Event, f payloadFormat, buf []JSONEvent, shared bool, scratch *[]byte) ([]JSONEvent, error) {
	if len(evs) == 0 {
		return buf, nil
	}
	start := len(buf)
	if !shared {
		if cap(*scratch) > scratchKeep {
			*scratch = nil // an idle stream keeps no large buffer
		}
		b := (*scratch)[:0]
		ends := make([]int, 0, 32)
		for _, e := range evs {
			var err error
			if b, err = appendEventJSON(b, e, f); err != nil {
				return buf[:start], err
			}
			ends = append(ends, len(b))
		}
		*scratch = b
		from := 0
		for i, e := range evs {
			buf = append(buf, JSONEvent{Sequence: e.Sequence, JSON: b[from:ends[i]:ends[i]]})
			from = ends[i]
		}
		return buf, nil
	}
	misses := 0
	c.mu.Lock()
	table := c.slots[f]
	for _, e := range evs {
		var j []byte
		if e.Sequence != 0 && table != nil {
			if sl := &table[e.Sequence%jsonCacheSlots]; sl.seq == e.Sequence {
				j = sl.json
			}
		}
		if j == nil {
			misses++
		}
		buf = append(buf, JSONEvent{Sequence: e.Sequence, JSON: j})
	}
	c.mu.Unlock()
	if misses == 0 {
		return buf, nil
	}
	for i, e := range evs {
		je := &buf[start+i]
		if je.JSON != nil {
			continue
		}
		j, err := appendEventJSON(make([]byte, 0, jsonSizeHint(e, f)), e, f)
		if err != nil {
			return buf[:start], err
		}
		je.JSON = j
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slots[f] == nil {
		c.slots[f] = make([]jsonSlot, jsonCacheSlots)
	}
	table = c.slots[f]
	for i, e := range evs {
		j := buf[start+i].JSON
		if e.Sequence == 0 || len(j) > c.limit/4 {
			continue
		}
		sl := &table[e.Sequence%jsonCacheSlots]
		if sl.seq >= e.Sequence {
			continue // already there, or a newer event's
		}
		if n := c.bytes - len(sl.json) + len(j); n <= c.limit {
			sl.seq, sl.json, c.bytes = e.Sequence, j, n
		}
	}
	return buf, nil
}

// jsonSizeHint is about the size of e's JSON, so that most encodings
// allocate once.
func jsonSizeHint(e *event.Event, f payloadFormat) int {
	n := 160 + len(e.ListenerID) + len(e.ConnectionID) + len(e.RemoteAddr) + len(e.LocalAddr) + len(e.PeerSubject)
	data, text := eventFields(f, e)
	if data {
		n += (len(e.Data) + 2) / 3 * 4
	}
	if text {
		n += len(e.Data) + len(e.Data)/8
	}
	return n
}
