// Package event defines the events the gateway publishes: listener and
// connection lifecycle and received frames. It is the engine's vocabulary and
// knows nothing of protobuf; server/rpc translates it.
package event

import (
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Kind says what an Event reports.
type Kind int

// The kinds of event. The zero value is never published.
const (
	KindUnspecified Kind = iota
	ListenerStarted
	ListenerStopped
	ConnectionOpened
	Data
	ConnectionClosed
	EventsDropped
	// StreamStarted opens every stream: Header says who answered and
	// where the sequence stood as the stream went live.
	StreamStarted
	// IncarnationChanged follows StreamStarted when the position a client
	// resumed from is not in the gateway's sequence space.
	IncarnationChanged
	// ReconnectScheduled says a managed outbound connection is down and
	// dials again after Delay: Attempt numbers that attempt, Error says
	// why it is down.
	ReconnectScheduled
	// ListenerUpdated says UpdateListener (or a reload) changed a running
	// listener in place; its port and connections stayed.
	ListenerUpdated
	// EventsLost says a cluster node could not store Dropped events of
	// ConnectionID in the cluster's stream. Unlike EventsDropped it is
	// published, with a sequence, and reaches every subscriber.
	EventsLost
)

// String returns the kind's lowercase name.
func (k Kind) String() string {
	switch k {
	case ListenerStarted:
		return "listener_started"
	case ListenerStopped:
		return "listener_stopped"
	case ConnectionOpened:
		return "connection_opened"
	case Data:
		return "data"
	case ConnectionClosed:
		return "connection_closed"
	case EventsDropped:
		return "events_dropped"
	case StreamStarted:
		return "stream_started"
	case IncarnationChanged:
		return "incarnation_changed"
	case ReconnectScheduled:
		return "reconnect_scheduled"
	case ListenerUpdated:
		return "listener_updated"
	case EventsLost:
		return "events_lost"
	}
	return "unspecified"
}

// CloseReason says why a connection closed. The first reason recorded for a
// connection wins.
type CloseReason int

// The close reasons, as the API reports them.
const (
	ReasonUnspecified CloseReason = iota
	ReasonPeerClosed
	ReasonPeerReset
	ReasonFrameTooLarge
	ReasonIdleTimeout
	ReasonListenerStopped
	ReasonClosedByAPI
	ReasonReadError
	ReasonWriteError
	ReasonLimitReached
	ReasonShutdown
	ReasonTLSHandshake
	ReasonReplyTimeout
	// ReasonHeartbeatFailed: a heartbeat's expected reply did not come.
	ReasonHeartbeatFailed
	// ReasonOnConnectFailed: on_connect could not be written, or its
	// expected reply did not come.
	ReasonOnConnectFailed
	// ReasonReconnectGaveUp: a managed outbound connection reached its
	// max_attempts failed attempts in a row.
	ReasonReconnectGaveUp
	// ReasonForwardFailed: a forwarding listener's target could not be
	// dialed.
	ReasonForwardFailed
	// ReasonClosedByRule: a reply rule with close_after answered a frame.
	ReasonClosedByRule
	// ReasonHandlerTimeout: a Handle stream did not answer a frame in time.
	ReasonHandlerTimeout
	// ReasonClosedByHandler: a Handle stream closed the connection.
	ReasonClosedByHandler
	// ReasonNodeLost: the cluster lost the connection's node.
	ReasonNodeLost
	// ReasonProxyHeaderInvalid: a PROXY protocol header was missing,
	// malformed, of a version not taken, or late.
	ReasonProxyHeaderInvalid

	// NumReasons is one more than the last reason: arrays indexed by
	// reason have this length.
	NumReasons = iota
)

// String returns the reason's lowercase name.
func (r CloseReason) String() string {
	switch r {
	case ReasonPeerClosed:
		return "peer_closed"
	case ReasonPeerReset:
		return "peer_reset"
	case ReasonFrameTooLarge:
		return "frame_too_large"
	case ReasonIdleTimeout:
		return "idle_timeout"
	case ReasonListenerStopped:
		return "listener_stopped"
	case ReasonClosedByAPI:
		return "closed_by_api"
	case ReasonReadError:
		return "read_error"
	case ReasonWriteError:
		return "write_error"
	case ReasonLimitReached:
		return "limit_reached"
	case ReasonShutdown:
		return "shutdown"
	case ReasonTLSHandshake:
		return "tls_handshake_failed"
	case ReasonReplyTimeout:
		return "reply_timeout"
	case ReasonHeartbeatFailed:
		return "heartbeat_failed"
	case ReasonOnConnectFailed:
		return "on_connect_failed"
	case ReasonReconnectGaveUp:
		return "reconnect_gave_up"
	case ReasonForwardFailed:
		return "forward_failed"
	case ReasonClosedByRule:
		return "closed_by_rule"
	case ReasonHandlerTimeout:
		return "handler_timeout"
	case ReasonClosedByHandler:
		return "closed_by_handler"
	case ReasonNodeLost:
		return "node_lost"
	case ReasonProxyHeaderInvalid:
		return "proxy_header_invalid"
	}
	return "unspecified"
}

// Origin says who opened a connection. It is data of the connection, not
// a type: the same conn.Conn serves every origin.
type Origin uint8

// The origins of a connection. The zero value means none: the event
// concerns no connection.
const (
	OriginNone Origin = iota
	// Accepted is a connection a listener accepted.
	Accepted
	// Outbound is a connection the gateway opened.
	Outbound
)

// String returns the origin's lowercase name.
func (o Origin) String() string {
	switch o {
	case Accepted:
		return "accepted"
	case Outbound:
		return "outbound"
	}
	return "none"
}

// Direction says which way the bytes of a Data event went. The zero value
// is Received, so that every frame a connection reads needs no setting.
type Direction uint8

// The directions of data.
const (
	// Received is what a peer said.
	Received Direction = iota
	// Sent is what the gateway wrote: only subscribers that ask for sent
	// data get it.
	Sent
)

// String returns the direction's lowercase name.
func (d Direction) String() string {
	if d == Sent {
		return "sent"
	}
	return "received"
}

// Header says which gateway a stream comes from and where its sequence
// stood when the stream went live.
type Header struct {
	// Incarnation names the sequence space (hub.Hub.Incarnation).
	Incarnation string
	// Node is the gateway's node id.
	Node string
	// LastSequence is the newest sequence when the stream went live.
	LastSequence uint64
}

// Event is one thing that happened in the gateway. Once published it is never
// modified: the same *Event, and the same Data slice, goes to every subscriber.
type Event struct {
	// Sequence is gateway-wide and strictly increasing, assigned by the hub;
	// 0 on EventsDropped markers, which belong to one subscriber only.
	Sequence     uint64
	Time         time.Time
	Kind         Kind
	ListenerID   string
	ConnectionID string
	RemoteAddr   string
	LocalAddr    string
	// Data is the frame of a Data event, or an incomplete frame left at close.
	Data        []byte
	CloseReason CloseReason
	// Dropped is how many events a subscriber missed, on EventsDropped.
	Dropped uint64
	// PeerSubject is the subject of the peer's TLS client certificate, on
	// ConnectionOpened.
	PeerSubject string
	// Partial marks a Data event whose frame is incomplete: the bytes of a
	// frame begun but not finished when the connection closed.
	Partial bool
	// Origin is who opened the connection the event concerns, on
	// connection events; OriginNone on listener events and markers.
	Origin Origin
	// Header is set on StreamStarted and IncarnationChanged, the markers
	// that open one stream (they are never published).
	Header *Header
	// Direction is which way a Data event's bytes went.
	Direction Direction
	// Generation numbers the socket of a managed outbound connection that
	// the event concerns (1 for the first); 0 for every other event.
	Generation uint64
	// Attempt and Delay are set on ReconnectScheduled: the attempt to come
	// and how long until it.
	Attempt uint32
	Delay   time.Duration
	// Error says what went wrong, on ReconnectScheduled and on some
	// ConnectionClosed events; empty when nothing did.
	Error string
	// TargetReason is why a forwarded connection's target side ended, on
	// ConnectionClosed of a forwarding listener's connection.
	TargetReason CloseReason
	// Node is the node the event happened on (its --node-id), stamped by
	// the hub that publishes it (hub.Config.Node) when the publisher set
	// none; empty on markers made for one subscriber (EVENTS_DROPPED).
	Node string
	// Retained is how many bytes of memory Data keeps alive beyond its own
	// length: a frame cut from a larger read shares that read's buffer, and
	// carries its share of the bytes no frame of the read covers. Counted
	// in Size, so that byte bounds hold for the memory events really hold.
	Retained int

	// Set by Seal, when the event is published.
	size   int
	utf8   bool
	sealed bool

	// memo is an opaque slot for the RPC layer: it caches the event's
	// encoded header here, so that an event sent to many subscribers is
	// encoded once. The engine never reads it. Size counts it (see overhead).
	memo atomic.Pointer[[]byte]
}

// Memo returns the bytes cached on the event, calling encode to make them
// on first use; a nil result is returned but not cached. Concurrent first
// callers may each call encode, and all get the one result cached. The
// bytes must not be modified. Only the RPC layer calls it, to cache the
// event's encoded header; the engine never reads it.
func (e *Event) Memo(encode func() []byte) []byte {
	if p := e.memo.Load(); p != nil {
		return *p
	}
	return e.setMemo(encode)
}

// HasMemo reports whether the event has its memo.
func (e *Event) HasMemo() bool { return e.memo.Load() != nil }

// ShareMemo gives the event the memo of from, which has one, unless it has
// a memo already. The RPC layer shares one memo between events that it
// encodes alike.
func (e *Event) ShareMemo(from *Event) {
	if p := from.memo.Load(); p != nil {
		e.memo.CompareAndSwap(nil, p)
	}
}

func (e *Event) setMemo(encode func() []byte) []byte {
	b := encode()
	if b == nil || e.memo.CompareAndSwap(nil, &b) {
		return b
	}
	return *e.memo.Load()
}

// Seal computes what every subscriber would otherwise compute again: the
// event's size and whether Data is text. The hub calls it when it publishes
// the event, after which the event never changes.
func (e *Event) Seal() {
	e.size = e.computeSize()
	e.utf8 = len(e.Data) > 0 && utf8.Valid(e.Data)
	e.sealed = true
}

// Text returns Data as a string when it is valid UTF-8. The string shares
// Data's memory: a published payload never changes, so no copy is needed.
func (e *Event) Text() (string, bool) {
	ok := e.utf8
	if !e.sealed {
		ok = len(e.Data) > 0 && utf8.Valid(e.Data)
	}
	if !ok {
		return "", false
	}
	return unsafe.String(unsafe.SliceData(e.Data), len(e.Data)), true
}

// overhead approximates the memory an event costs beyond its payload and
// strings: the struct itself, its slots in a queue and in the replay ring
// (which grows by doubling: two slots), and the header the RPC layer caches
// with Memo, which holds its strings again (counted in computeSize) and
// about 48 bytes of field tags, numbers and its time, in a slice boxed
// behind a pointer. It keeps byte-bounded queues honest for streams of
// tiny frames.
const overhead = int(unsafe.Sizeof(Event{})) + 3*int(unsafe.Sizeof(uintptr(0))) + memoOverhead

// memoOverhead is the cached header's bytes beyond the strings it repeats,
// its slice header and the box the atomic pointer points to.
const memoOverhead = 48 + int(unsafe.Sizeof([]byte(nil))) + 16

// Size is what the event counts against byte-bounded queues and the replay
// ring: what it keeps alive, payload, shared read buffer, strings (twice:
// in the event and in its cached header) and fixed costs.
func (e *Event) Size() int {
	if e.sealed {
		return e.size
	}
	return e.computeSize()
}

func (e *Event) computeSize() int {
	strs := len(e.ListenerID) + len(e.ConnectionID) + len(e.RemoteAddr) + len(e.LocalAddr) + len(e.PeerSubject) + len(e.Error) + len(e.Node)
	return overhead + len(e.Data) + e.Retained + 2*strs
}
