package main_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestServeOutboundLimits: --max-outbound-connections and
// --max-queue-while-down-bytes (and their TCPGATE_ variables) reach the
// engine: a Connect past the first is ResourceExhausted naming its flag, a
// queue_while_down_bytes past the second is InvalidArgument naming both.
func TestServeOutboundLimits(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, hermeticEnv("TCPGATE_MAX_QUEUE_WHILE_DOWN_BYTES=100"), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--max-outbound-connections", "1")
	api := servertest.Client(t, d.waitServing(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
	defer cancel()
	refused := servertest.RefusedAddr(t)
	_, err := api.Connect(ctx, &tcpgatev1.ConnectRequest{Address: refused, QueueWhileDownBytes: 101})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "queue_while_down_bytes") || !strings.Contains(st.Message(), "--max-queue-while-down-bytes") {
		t.Fatalf("Connect with queue_while_down_bytes 101: %v, want InvalidArgument naming the field and --max-queue-while-down-bytes", err)
	}
	resp, err := api.Connect(ctx, &tcpgatev1.ConnectRequest{Address: refused, QueueWhileDownBytes: 100})
	if err != nil || resp.GetConnection().GetState() != tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING {
		t.Fatalf("Connect = %v, %v; want WAITING", resp, err)
	}
	_, err = api.Connect(ctx, &tcpgatev1.ConnectRequest{Address: refused})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--max-outbound-connections") {
		t.Fatalf("a second Connect: %v, want ResourceExhausted naming --max-outbound-connections", err)
	}
	if _, err := api.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: resp.GetConnection().GetConnectionId()}); err != nil {
		t.Fatal(err)
	}
	d.stop(t)
}

// TestServeOutboundLimitsNegative: serve refuses a negative
// --max-outbound-connections or --max-queue-while-down-bytes, naming it.
func TestServeOutboundLimitsNegative(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"--max-outbound-connections", "--max-queue-while-down-bytes"} {
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", flag, "-1")
		if !strings.Contains(out, flag) {
			t.Errorf("serve %s -1: output does not name the flag:\n%s", flag, out)
		}
	}
}
