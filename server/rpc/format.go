package rpc

import (
	"unicode/utf8"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// payloadFormat is a tcpgatev1.PayloadFormat with the default resolved:
// how a payload appears in an Event or a Reply.
type payloadFormat uint8

const (
	// formatTextOrData sends text when the bytes are valid UTF-8, data
	// otherwise: every payload once. The default.
	formatTextOrData payloadFormat = iota
	// formatData sends data always.
	formatData
	// formatBoth sends data, and text too when the bytes are valid UTF-8
	// and twice the payload still fits one message (bothTextMax).
	formatBoth
	numFormats
)

// formatFromProto resolves f, the field named field, or returns the
// InvalidArgument error naming it.
func formatFromProto(field string, f tcpgatev1.PayloadFormat) (payloadFormat, error) {
	switch f {
	case tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_UNSPECIFIED, tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_TEXT_OR_DATA:
		return formatTextOrData, nil
	case tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_DATA:
		return formatData, nil
	case tcpgatev1.PayloadFormat_PAYLOAD_FORMAT_BOTH:
		return formatBoth, nil
	}
	return 0, invalid(field, "unknown value %d", int32(f))
}

// maxMessageBytes is the largest message Subscribe sends: gRPC's default
// receive limit (grpc.MaxCallRecvMsgSize), so that every client with
// default settings, grpcurl included, can read every message. A frame
// (at most MaxFrameLimit, 3 MiB) always fits in one with its fields.
const maxMessageBytes = 4 << 20

// bothTextMax is the largest payload PAYLOAD_FORMAT_BOTH sends twice: two
// copies and 64 KiB for the other fields stay within maxMessageBytes.
// Larger ones go as data only, as the proto documents.
const bothTextMax = (maxMessageBytes - 64<<10) / 2

// payloadFields says which of data and text carry a payload of n bytes,
// text when it is valid UTF-8 (isText), under format f. An empty payload
// goes in neither, as proto3 leaves empty fields out.
func payloadFields(f payloadFormat, n int, isText bool) (data, text bool) {
	if n == 0 {
		return false, false
	}
	switch f {
	case formatData:
		return true, false
	case formatBoth:
		return true, isText && n <= bothTextMax
	}
	return !isText, isText
}

// eventFields is payloadFields for e's payload.
func eventFields(f payloadFormat, e *event.Event) (data, text bool) {
	_, isText := e.Text()
	return payloadFields(f, len(e.Data), isText)
}

// replyToProto shapes an awaited reply as AwaitReply.payload_format says.
func replyToProto(b []byte, f payloadFormat) *tcpgatev1.Reply {
	data, text := payloadFields(f, len(b), utf8.Valid(b))
	r := &tcpgatev1.Reply{}
	if data {
		r.Data = b
	}
	if text {
		r.Text = string(b)
	}
	return r
}
