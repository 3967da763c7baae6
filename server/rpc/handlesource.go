package rpc

import (
	"context"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// HandleStream is a Handle stream carried by something other than gRPC:
// the WebSocket at /v1/handle. Recv must return once Context ends, and
// io.EOF when the client ends its side.
type HandleStream interface {
	Context() context.Context
	Send(*tcpgatev1.HandleResponse) error
	Recv() (*tcpgatev1.HandleRequest, error)
}

// HandleSource serves Handle streams for the HTTP side (package gateway),
// exactly as GatewayService.Handle serves them: the same registration,
// limits and errors. The HTTP side checks auth and carries the messages.
type HandleSource struct {
	svc     *Service
	observe func(err error, start time.Time)
}

// NewHandleSource returns the Handle source of svc. observe, when set, is
// called once per stream as it ends, with the status that ended it, so
// that WebSocket streams are counted with the gRPC calls.
func NewHandleSource(svc *Service, observe func(err error, start time.Time)) *HandleSource {
	return &HandleSource{svc: svc, observe: observe}
}

// Serve serves one Handle stream until it ends, and returns the status
// that ended it (nil when the client ended its side).
func (hs *HandleSource) Serve(st HandleStream) error {
	start := time.Now()
	err := WithReason(hs.svc.serveHandle(st))
	if hs.observe != nil {
		hs.observe(err, start)
	}
	return err
}

// handleJSONSlack is what a JSON HandleRequest may take beyond its
// payloads: field names, a connection id, escapes.
const handleJSONSlack = 64 << 10

// MaxRequestBytes bounds one HandleRequest as JSON: a payload of
// --max-send-bytes as base64 (4/3) or as escaped text (a line of
// newlines doubles), with handleJSONSlack on top. gRPC bounds the binary
// form at --max-send-bytes and 64 KiB the same way.
func (hs *HandleSource) MaxRequestBytes() int64 {
	return 2*int64(hs.svc.cfg.MaxSendBytes) + handleJSONSlack
}
