package rpc

import (
	"context"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// Response headers of Subscribe, sent as soon as the subscription is live,
// with HeaderLastSequence: the sequence space the sequences belong to, and
// the gateway that answered. The first event, STREAM_STARTED, carries the
// same, for clients that cannot read headers (a browser's EventSource).
const (
	HeaderIncarnation = "tcpgate-incarnation"
	HeaderNodeID      = "tcpgate-node-id"
)

// stream is one subscription as both event streams deliver it (Subscribe
// over gRPC, EventStream over REST): first the markers that open it,
// STREAM_STARTED and, when the client's position was not in the gateway's
// sequence space, INCARNATION_CHANGED, then the hub's events. Both
// streams open theirs here, so the markers are made in one place.
type stream struct {
	sub    *hub.Subscriber
	start  hub.Start
	header event.Header
	// opening holds the markers until the first Next returns them.
	opening []*event.Event
}

// openStream subscribes with opts and makes the stream's opening markers.
// Where the stream starts (the replay, the newest sequence, whether the
// client's position is another incarnation's) is the hub's decision, made
// atomically with the subscription; its errors are statuses.
func (s *Service) openStream(opts hub.SubscribeOptions) (*stream, error) {
	sub, err := s.cfg.Hub.Subscribe(opts)
	if err != nil {
		return nil, s.status(err)
	}
	st := &stream{sub: sub, start: sub.Start()}
	st.header = event.Header{Incarnation: s.cfg.Hub.Incarnation(), Node: s.cfg.NodeID, LastSequence: st.start.LastSequence}
	now := time.Now()
	st.opening = append(st.opening, &event.Event{Kind: event.StreamStarted, Time: now, Header: &st.header})
	if st.start.Changed {
		st.opening = append(st.opening, &event.Event{Kind: event.IncarnationChanged, Time: now, Header: &st.header})
	}
	for _, e := range st.opening {
		e.Seal()
	}
	return st, nil
}

// Next appends to buf the events ready for the stream: the opening
// markers at once on the first call, then the hub's (see
// hub.Subscriber.Next).
func (st *stream) Next(ctx context.Context, buf []*event.Event) ([]*event.Event, error) {
	if st.opening != nil {
		buf = append(buf, st.opening...)
		st.opening = nil
		return buf, nil
	}
	return st.sub.Next(ctx, buf)
}

// Close ends the subscription. It is idempotent.
func (st *stream) Close() { st.sub.Close() }

// An SSE event id is "INCARNATION-SEQUENCE": the sequence space and the
// sequence of the event, so that the Last-Event-ID of a reconnecting
// EventSource says both. An incarnation has no '-' (ids.Incarnation).

// AppendEventID appends the SSE id of sequence seq of incarnation inc.
func AppendEventID(b []byte, inc string, seq uint64) []byte {
	b = append(b, inc...)
	b = append(b, '-')
	return strconv.AppendUint(b, seq, 10)
}

// ParseEventID reads an SSE id made by AppendEventID: the incarnation and
// the sequence. ok is false for anything else, a bare sequence of an older
// gateway included.
func ParseEventID(id string) (inc string, seq uint64, ok bool) {
	inc, num, found := strings.Cut(strings.TrimSpace(id), "-")
	if !found || inc == "" || !validID(inc) || strings.Contains(num, "-") {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(num, 10, 64)
	if err != nil || seq == math.MaxUint64 { // a resume asks for seq + 1
		return "", 0, false
	}
	return inc, seq, true
}
