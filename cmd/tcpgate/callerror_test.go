package main

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// TestCallErrorByReason checks that the CLI tells an absent gateway from
// the gateway's own answers by the ErrorInfo, not the message: a lookup
// refused by the gateway's DNS server reads "connection refused" too, and
// is the gateway's answer about the target.
func TestCallErrorByReason(t *testing.T) {
	c := &client{server: "127.0.0.1:50051"}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{
			name: "gRPC cannot reach the gateway",
			err:  status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:50051: connect: connection refused"`),
			want: "no gateway at 127.0.0.1:50051",
		},
		{
			name: "the gateway's resolver was refused",
			err: rpc.Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_HOST_NOT_FOUND,
				"dialing db.example:5432: resolving db.example: lookup db.example on 127.0.0.53:53: read udp 127.0.0.1:40000->127.0.0.53:53: read: connection refused", nil),
			want: "Unavailable: dialing db.example:5432",
		},
	}
	for _, tt := range tests {
		got := c.callError(tt.err).Error()
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("%s: callError = %q, want it to start with %q", tt.name, got, tt.want)
		}
	}
}

// TestCallErrorHinted: advice follows the gateway's own code and message,
// not gRPC's rendering of the error it wraps.
func TestCallErrorHinted(t *testing.T) {
	c := &client{server: "127.0.0.1:50051"}
	err := hinted{rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
		"reconnect.initial_backoff: must be at least 10ms, got 1ms", map[string]string{rpc.MetaField: "reconnect.initial_backoff"}), "set by --backoff"}
	want := "InvalidArgument: reconnect.initial_backoff: must be at least 10ms, got 1ms; set by --backoff"
	if got := c.callError(err).Error(); got != want {
		t.Errorf("callError = %q\nwant        %q", got, want)
	}
}
