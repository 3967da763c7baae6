package main_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestServeLimits runs the binary with every limit flag set low and reaches
// each limit through the API: a limit reached is ResourceExhausted naming
// its flag, a request beyond a limit is InvalidArgument naming its flag,
// and a connection beyond one is closed at once with LIMIT_REACHED. It
// shows that the flags reach the engine, not only that the engine has
// limits.
func TestServeLimits(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--max-listeners", "2", "--max-connections", "3", "--listener-max-connections", "2",
		"--max-subscribers", "1", "--max-send-bytes", "64", "--max-frame-bytes", "1024",
		"--max-reply-bytes", "512", "--idle-timeout", "1500ms")
	api := servertest.Client(t, d.waitServing(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
	defer cancel()

	wantErr := func(t *testing.T, err error, code codes.Code, mention string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), mention) {
			t.Fatalf("err = %v, want %s naming %s", err, code, mention)
		}
	}

	// The one subscriber --max-subscribers allows watches the connections.
	next := watchConnections(t, api)

	t.Run("max-subscribers", func(t *testing.T) {
		s2, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{})
		if err == nil {
			_, err = s2.Recv()
		}
		wantErr(t, err, codes.ResourceExhausted, "--max-subscribers")
	})

	var a, b *tcpgatev1.Listener
	t.Run("max-frame-bytes and listener-max-connections", func(t *testing.T) {
		_, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
			Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: 2048}})
		wantErr(t, err, codes.InvalidArgument, "--max-frame-bytes")
		_, err = api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", MaxConnections: 3})
		wantErr(t, err, codes.InvalidArgument, "--listener-max-connections")

		resp, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
			Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
		if err != nil {
			t.Fatal(err)
		}
		a = resp.GetListener()
		// The flags fill in what the request left unset.
		if a.GetFraming().GetMaxFrameBytes() != 1024 || a.GetMaxConnections() != 2 || a.GetIdleTimeout().AsDuration() != 1500*time.Millisecond {
			t.Fatalf("listener %v: want max_frame_bytes 1024, max_connections 2 and idle_timeout 1.5s from the flags", a)
		}
	})
	if a == nil {
		t.FailNow()
	}

	t.Run("max-listeners", func(t *testing.T) {
		resp, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		b = resp.GetListener()
		_, err = api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
		wantErr(t, err, codes.ResourceExhausted, "--max-listeners")
	})
	if b == nil {
		t.FailNow()
	}

	dialOpen := func(t *testing.T, addr string) (net.Conn, *tcpgatev1.Event) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, next(t, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	}
	closedWith := func(t *testing.T, id string, reason tcpgatev1.CloseReason) {
		t.Helper()
		if e := next(t, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED); e.GetConnectionId() != id || e.GetCloseReason() != reason {
			t.Fatalf("close event %v, want %s closed with %s", e, id, reason)
		}
	}

	t.Run("frame too large", func(t *testing.T) {
		c, opened := dialOpen(t, a.GetAddress())
		if _, err := c.Write([]byte(strings.Repeat("x", 1500) + "\n")); err != nil {
			t.Fatal(err)
		}
		closedWith(t, opened.GetConnectionId(), tcpgatev1.CloseReason_CLOSE_REASON_FRAME_TOO_LARGE)
	})

	t.Run("idle-timeout", func(t *testing.T) {
		_, opened := dialOpen(t, a.GetAddress())
		closedWith(t, opened.GetConnectionId(), tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT)
	})

	t.Run("listener-max-connections and max-connections", func(t *testing.T) {
		// Listener a takes two (its default from the flag), the third is
		// turned away at once.
		var held []*tcpgatev1.Event
		for range 2 {
			c, opened := dialOpen(t, a.GetAddress())
			keepBusy(t, c)
			held = append(held, opened)
		}
		_, third := dialOpen(t, a.GetAddress())
		closedWith(t, third.GetConnectionId(), tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED)

		// Listener b has no bound of its own, but --max-connections 3 holds
		// over both: one more fits, the next does not.
		fc, fits := dialOpen(t, b.GetAddress())
		keepBusy(t, fc)
		_, over := dialOpen(t, b.GetAddress())
		closedWith(t, over.GetConnectionId(), tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED)

		resp, err := api.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var open []string
		for _, c := range resp.GetConnections() {
			open = append(open, c.GetConnectionId())
		}
		want := []string{held[0].GetConnectionId(), held[1].GetConnectionId(), fits.GetConnectionId()}
		slices.Sort(open)
		slices.Sort(want)
		if !slices.Equal(open, want) {
			t.Fatalf("open connections %v, want %v", open, want)
		}
	})

	t.Run("max-send-bytes and max-reply-bytes", func(t *testing.T) {
		_, err := api.Send(ctx, &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ListenerId{ListenerId: b.GetListenerId()},
			Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 65)},
		})
		wantErr(t, err, codes.ResourceExhausted, "--max-send-bytes")
		_, err = api.Send(ctx, &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_ListenerId{ListenerId: b.GetListenerId()},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "hi"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME, MaxBytes: 513},
		})
		wantErr(t, err, codes.InvalidArgument, "--max-reply-bytes")
		// Exactly the limit is fine (the connections are gone by now: it
		// reaches none, but it is accepted).
		if _, err := api.Send(ctx, &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ListenerId{ListenerId: b.GetListenerId()},
			Payload: &tcpgatev1.SendRequest_Data{Data: make([]byte, 64)},
		}); err != nil {
			t.Fatalf("Send of exactly --max-send-bytes: %v", err)
		}
	})
	cancel()
	d.stop(t)
}

// keepBusy writes a line to c every 200 ms until the test ends, so that an
// idle timeout does not close it.
func keepBusy(t *testing.T, c net.Conn) {
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("ping\n")); err != nil {
					return
				}
			}
		}
	}()
}

// TestServeLimitsOutOfRange: a frame or reply limit a gRPC message cannot
// carry is refused at start, naming the flag.
func TestServeLimitsOutOfRange(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"--max-frame-bytes", "--max-reply-bytes"} {
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", flag, "4000000")
		if !strings.Contains(out, flag) {
			t.Errorf("serve %s 4000000: output does not name the flag:\n%s", flag, out)
		}
	}
}

// watchConnections subscribes to the connection events of the gateway api
// reaches, once the subscription is live, and returns a function that
// waits for the next event of a kind, skipping others (at most
// servertest.Wait). The stream lasts as long as the test.
func watchConnections(t *testing.T, api tcpgatev1.GatewayServiceClient) func(*testing.T, tcpgatev1.EventKind) *tcpgatev1.Event {
	t.Helper()
	s := servertest.Subscribe(t, api, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{
		tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	}})
	return func(t *testing.T, kind tcpgatev1.EventKind) *tcpgatev1.Event {
		t.Helper()
		return s.In(t).NextOf(kind)
	}
}
