package server_test

import (
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// recvStarted reads the first response of a Subscribe stream, which is
// its STREAM_STARTED marker alone, and returns it.
func recvStarted(t *testing.T, cl tcpgatev1.GatewayService_SubscribeClient) *tcpgatev1.Event {
	t.Helper()
	resp, err := cl.Recv()
	if err != nil {
		t.Fatalf("Subscribe: first response: %v", err)
	}
	evs := resp.GetEvents()
	if len(evs) != 1 || evs[0].GetKind() != tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		t.Fatalf("Subscribe: first response %v, want STREAM_STARTED alone", evs)
	}
	return evs[0]
}
