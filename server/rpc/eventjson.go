package rpc

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// appendEventJSON appends e as one JSON object, equal as JSON to what
// protojson makes of the tcpgatev1.Event that eventToProto builds under
// format f: lowerCamelCase names, enums by name, 64-bit integers as
// strings, bytes in base64, the time in RFC 3339 with 0, 3, 6 or 9
// fractional digits, zero values left out, fields in number order.
// TestEventJSON holds it to protojson over every field and kind.
//
// The REST event stream writes it for every event, so it is made by hand:
// protojson would build a message, walk it by reflection and allocate for
// each field.
func appendEventJSON(b []byte, e *event.Event, f payloadFormat) ([]byte, error) {
	var inc, node string
	if e.Header != nil {
		inc, node = e.Header.Incarnation, e.Header.Node
	}
	for _, s := range [...]struct{ name, v string }{
		{"listener_id", e.ListenerID}, {"connection_id", e.ConnectionID},
		{"remote_address", e.RemoteAddr}, {"local_address", e.LocalAddr}, {"peer_subject", e.PeerSubject},
		{"error", e.Error}, {"node_id", e.Node},
		{"header.incarnation", inc}, {"header.node_id", node},
	} {
		if !utf8.ValidString(s.v) {
			return b, fmt.Errorf("encoding tcpgate.v1.Event.%s as JSON: invalid UTF-8", s.name)
		}
	}
	b = append(b, '{')
	first := true
	key := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	if e.Sequence != 0 {
		key("sequence")
		b = append(b, '"')
		b = strconv.AppendUint(b, e.Sequence, 10)
		b = append(b, '"')
	}
	key("time")
	var err error
	if b, err = appendTimestamp(b, e.Time); err != nil {
		return b, err
	}
	if k := eventKinds[e.Kind]; k != 0 {
		key("kind")
		b = appendEnum(b, k.String())
	}
	str := func(name, v string) {
		if v != "" {
			key(name)
			b = appendJSONString(b, v)
		}
	}
	str("listenerId", e.ListenerID)
	str("connectionId", e.ConnectionID)
	str("remoteAddress", e.RemoteAddr)
	str("localAddress", e.LocalAddr)
	data, text := eventFields(f, e)
	if data {
		key("data")
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, e.Data)
		b = append(b, '"')
	}
	if text {
		key("text")
		s, _ := e.Text()
		b = appendJSONString(b, s)
	}
	if r := closeReason(e.CloseReason); r != 0 {
		key("closeReason")
		b = appendEnum(b, tcpgatev1.CloseReason(r).String())
	}
	if e.Dropped != 0 {
		key("dropped")
		b = append(b, '"')
		b = strconv.AppendUint(b, e.Dropped, 10)
		b = append(b, '"')
	}
	str("peerSubject", e.PeerSubject)
	if e.Partial {
		key("partial")
		b = append(b, "true"...)
	}
	if h := e.Header; h != nil {
		key("header")
		b = appendHeaderJSON(b, h)
	}
	if o := origins[e.Origin]; o != 0 {
		key("origin")
		b = appendEnum(b, o.String())
	}
	if d := direction(e); d != 0 {
		key("direction")
		b = appendEnum(b, tcpgatev1.Direction(d).String())
	}
	if e.Generation != 0 {
		key("generation")
		b = append(b, '"')
		b = strconv.AppendUint(b, e.Generation, 10)
		b = append(b, '"')
	}
	if e.Attempt != 0 {
		key("attempt")
		b = strconv.AppendUint(b, uint64(e.Attempt), 10)
	}
	if e.Delay != 0 {
		key("delay")
		b = appendDuration(b, e.Delay)
	}
	str("error", e.Error)
	if r := closeReason(e.TargetReason); r != 0 {
		key("targetCloseReason")
		b = appendEnum(b, tcpgatev1.CloseReason(r).String())
	}
	str("nodeId", e.Node)
	return append(b, '}'), nil
}

// appendHeaderJSON appends h as protojson writes a ResponseHeader: zero
// values left out, the sequence as a string.
func appendHeaderJSON(b []byte, h *event.Header) []byte {
	b = append(b, '{')
	sep := false
	field := func(name string) {
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	if h.Incarnation != "" {
		field("incarnation")
		b = appendJSONString(b, h.Incarnation)
	}
	if h.Node != "" {
		field("nodeId")
		b = appendJSONString(b, h.Node)
	}
	if h.LastSequence != 0 {
		field("lastSequence")
		b = append(b, '"')
		b = strconv.AppendUint(b, h.LastSequence, 10)
		b = append(b, '"')
	}
	return append(b, '}')
}

func appendEnum(b []byte, name string) []byte {
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"')
}

// The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31.
const (
	minTimestamp = -62135596800
	maxTimestamp = 253402300799
)

var errTimestampRange = errors.New("encoding tcpgate.v1.Event.time as JSON: outside 0001-01-01 to 9999-12-31")

// appendTimestamp appends t as protojson writes a google.protobuf.Timestamp:
// UTC, RFC 3339, the fraction in groups of three digits, trailing zero
// groups left out.
func appendTimestamp(b []byte, t time.Time) ([]byte, error) {
	secs, nanos := t.Unix(), t.Nanosecond()
	if secs < minTimestamp || secs > maxTimestamp {
		return b, errTimestampRange
	}
	b = append(b, '"')
	b = time.Unix(secs, 0).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	b = appendFraction(b, int64(nanos))
	return append(b, 'Z', '"'), nil
}

// appendDuration appends d as protojson writes a google.protobuf.Duration:
// a string of seconds with 0, 3, 6 or 9 fractional digits and an "s".
func appendDuration(b []byte, d time.Duration) []byte {
	secs, nanos := durationParts(d)
	b = append(b, '"')
	if secs < 0 || nanos < 0 {
		b = append(b, '-')
		secs, nanos = -secs, -nanos
	}
	b = strconv.AppendInt(b, secs, 10)
	b = appendFraction(b, nanos)
	return append(b, 's', '"')
}

// appendFraction appends nanos (0 to 999,999,999) as protojson writes the
// fraction of a second of a Timestamp or a Duration: nothing for 0, else
// a '.' and 3, 6 or 9 digits, as few as hold it.
func appendFraction(b []byte, nanos int64) []byte {
	if nanos == 0 {
		return b
	}
	digits := 9
	for digits > 3 && nanos%1000 == 0 {
		nanos /= 1000
		digits -= 3
	}
	b = append(b, '.')
	var frac [9]byte
	for i := digits - 1; i >= 0; i-- {
		frac[i] = byte('0' + nanos%10)
		nanos /= 10
	}
	return append(b, frac[:digits]...)
}

// appendJSONString appends s, valid UTF-8, as a JSON string: quotes,
// backslashes and control characters escaped, everything else as it is.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			const hex = "0123456789abcdef"
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
