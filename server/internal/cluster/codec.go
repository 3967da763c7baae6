package cluster

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// An event crosses the cluster as the payload of one stream message: a
// version byte, then the event's fields as protobuf wire fields (varints
// and length-prefixed bytes) numbered below. Unknown fields are skipped,
// so a newer node's events still decode on an older one; the version
// byte changes only when a field changes meaning.
const codecVersion = 1

// Field numbers of the cluster encoding. They are the cluster's own and
// need not follow tcpgate.v1.Event's.
const (
	cTime         protowire.Number = 1 // unix nanoseconds
	cKind         protowire.Number = 2
	cListenerID   protowire.Number = 3
	cConnectionID protowire.Number = 4
	cRemoteAddr   protowire.Number = 5
	cLocalAddr    protowire.Number = 6
	cData         protowire.Number = 7
	cCloseReason  protowire.Number = 8
	cDropped      protowire.Number = 9
	cPeerSubject  protowire.Number = 10
	cPartial      protowire.Number = 11
	cOrigin       protowire.Number = 12
	cDirection    protowire.Number = 13
	cGeneration   protowire.Number = 14
	cAttempt      protowire.Number = 15
	cDelay        protowire.Number = 16
	cError        protowire.Number = 17
	cTargetReason protowire.Number = 18
	cNode         protowire.Number = 19
)

// errDecode is the cause of every event that does not decode.
var errDecode = errors.New("cluster event does not decode")

// appendEvent appends e's encoding to b. Sequence is not encoded: the
// stream numbers the message.
func appendEvent(b []byte, e *event.Event) []byte {
	b = append(b, codecVersion)
	b = appendVarint(b, cTime, uint64(e.Time.UnixNano()))
	b = appendVarint(b, cKind, uint64(e.Kind))
	b = appendString(b, cListenerID, e.ListenerID)
	b = appendString(b, cConnectionID, e.ConnectionID)
	b = appendString(b, cRemoteAddr, e.RemoteAddr)
	b = appendString(b, cLocalAddr, e.LocalAddr)
	if len(e.Data) > 0 {
		b = protowire.AppendTag(b, cData, protowire.BytesType)
		b = protowire.AppendBytes(b, e.Data)
	}
	b = appendVarint(b, cCloseReason, uint64(e.CloseReason))
	b = appendVarint(b, cDropped, e.Dropped)
	b = appendString(b, cPeerSubject, e.PeerSubject)
	if e.Partial {
		b = appendVarint(b, cPartial, 1)
	}
	b = appendVarint(b, cOrigin, uint64(e.Origin))
	b = appendVarint(b, cDirection, uint64(e.Direction))
	b = appendVarint(b, cGeneration, e.Generation)
	b = appendVarint(b, cAttempt, uint64(e.Attempt))
	b = appendVarint(b, cDelay, uint64(e.Delay))
	b = appendString(b, cError, e.Error)
	b = appendVarint(b, cTargetReason, uint64(e.TargetReason))
	return appendString(b, cNode, e.Node)
}

func appendVarint(b []byte, n protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, n protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// decodeEvent decodes one stream message. The event's Data is a copy:
// the message's buffer belongs to the NATS client.
func decodeEvent(b []byte) (*event.Event, error) {
	if len(b) == 0 || b[0] != codecVersion {
		if len(b) == 0 {
			return nil, fmt.Errorf("%w: empty message", errDecode)
		}
		return nil, fmt.Errorf("%w: version %d, want %d (a node of another release?)", errDecode, b[0], codecVersion)
	}
	b = b[1:]
	e := &event.Event{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: %v", errDecode, protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return nil, fmt.Errorf("%w: field %d: %v", errDecode, num, protowire.ParseError(m))
			}
			b = b[m:]
			setVarint(e, num, v)
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, fmt.Errorf("%w: field %d: %v", errDecode, num, protowire.ParseError(m))
			}
			b = b[m:]
			setBytes(e, num, v)
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, fmt.Errorf("%w: field %d: %v", errDecode, num, protowire.ParseError(m))
			}
			b = b[m:]
		}
	}
	if e.Kind <= event.KindUnspecified || e.Time.IsZero() {
		return nil, fmt.Errorf("%w: no kind or time", errDecode)
	}
	return e, nil
}

func setVarint(e *event.Event, num protowire.Number, v uint64) {
	switch num {
	case cTime:
		e.Time = time.Unix(0, int64(v))
	case cKind:
		e.Kind = event.Kind(v)
	case cCloseReason:
		e.CloseReason = event.CloseReason(v)
	case cDropped:
		e.Dropped = v
	case cPartial:
		e.Partial = v != 0
	case cOrigin:
		e.Origin = event.Origin(v)
	case cDirection:
		e.Direction = event.Direction(v)
	case cGeneration:
		e.Generation = v
	case cAttempt:
		e.Attempt = uint32(v)
	case cDelay:
		e.Delay = time.Duration(v)
	case cTargetReason:
		e.TargetReason = event.CloseReason(v)
	}
}

func setBytes(e *event.Event, num protowire.Number, v []byte) {
	switch num {
	case cListenerID:
		e.ListenerID = string(v)
	case cConnectionID:
		e.ConnectionID = string(v)
	case cRemoteAddr:
		e.RemoteAddr = string(v)
	case cLocalAddr:
		e.LocalAddr = string(v)
	case cData:
		e.Data = append([]byte(nil), v...)
	case cPeerSubject:
		e.PeerSubject = string(v)
	case cError:
		e.Error = string(v)
	case cNode:
		e.Node = string(v)
	}
}
