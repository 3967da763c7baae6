package servertest_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
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

// TestHarness drives a gateway through the harness as the daemon's tests
// do: a listener, a TCP client, a subscription that sees what it sent, a
// peer answering a Send, the REST client with its errors, and the logs.
func TestHarness(t *testing.T) {
	var logs servertest.LogSink
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if g.REST == nil || g.REST.Base != g.BaseURL {
		t.Fatalf("REST = %v with BaseURL %q, want a client of it", g.REST, g.BaseURL)
	}

	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "h"})
	if !strings.HasPrefix(l.GetAddress(), "127.0.0.1:") {
		t.Fatalf("listener on %q, want 127.0.0.1 by default", l.GetAddress())
	}
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{"h"}})
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if e := s.Next(); e.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED {
		t.Fatalf("first event %v, want CONNECTION_OPENED", e)
	}
	if e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA); e.GetText() != "hello" {
		t.Fatalf("data %v, want hello", e)
	}

	echo := servertest.Peer(t, func(c net.Conn) {
		b := servertest.ReadN(t, c, 4)
		_, _ = c.Write(b)
	})
	resp, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_Address{Address: echo},
		Payload:    &tcpgatev1.SendRequest_Text{Text: "ping"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
	})
	if err != nil || resp.GetReply().GetText() != "ping" {
		t.Fatalf("Send to the peer = %v, %v; want its echo", resp, err)
	}
	_, err = g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:  &tcpgatev1.SendRequest_Address{Address: servertest.RefusedAddr(t)},
		Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
	})
	servertest.WantCode(t, err, codes.Unavailable)

	var list tcpgatev1.ListListenersResponse
	g.REST.Call(http.MethodGet, "/v1/listeners", "", &list)
	if len(list.GetListeners()) != 1 || list.GetListeners()[0].GetListenerId() != "h" {
		t.Fatalf("REST listeners = %v, want h", list.GetListeners())
	}
	r, body := g.REST.Do(http.MethodGet, "/v1/listeners/nope", "", nil)
	servertest.WantError(t, r, body, http.StatusNotFound, int(codes.NotFound), "nope")

	c.Close()
	servertest.Eventually(t, "the connection gone from the list", func() bool {
		resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
		return err == nil && len(resp.GetConnections()) == 0
	})
	if !strings.Contains(logs.String(), "listener_id=h") {
		t.Errorf("the log sink holds no line of listener h:\n%s", logs.String())
	}

	// Stopping the gateway ends the stream with a status.
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.End(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream ended with %v, want Unavailable", err)
	}
}

// TestBadInputsCoverEveryRPC: the shared table has a row for every method
// of the service, and each error row says what its answer must mention
// and its reason.
func TestBadInputsCoverEveryRPC(t *testing.T) {
	b := servertest.StartBadInputs(t, server.Config{})
	seen := map[string]bool{}
	for _, r := range b.Rows {
		seen[r.RPC] = true
		if r.Code != codes.OK && (r.Mention == "" || r.Reason == tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED) {
			t.Errorf("row %s/%s: an error row needs its mention and reason", r.RPC, r.Name)
		}
	}
	servertest.WantEveryMethod(t, seen)
}
