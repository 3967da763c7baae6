package servertest_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

func TestStart(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if err != nil {
		t.Fatalf("ListListeners: %v", err)
	}
	if n := len(resp.GetListeners()); n != 0 {
		t.Errorf("a fresh gateway has %d listeners, want 0", n)
	}
	if g.BaseURL != "" {
		t.Errorf("BaseURL = %q without an HTTP address, want empty", g.BaseURL)
	}

	started, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if err != nil {
		t.Fatalf("StartListener: %v", err)
	}
	addr := started.GetListener().GetAddress()

	// Stop is idempotent, returns the same result each time, and frees
	// everything the gateway bound.
	for i := range 3 {
		if err := g.Stop(); err != nil {
			t.Fatalf("Stop %d: %v", i, err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listener port %s still bound after Stop: %v", addr, err)
	}
	_ = ln.Close()
	_, err = g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
		t.Errorf("call after Stop = %v, want the client closed", err)
	}
}
