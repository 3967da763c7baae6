package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// shutdownMargin is what a shutdown may take past its timeout in these
// tests: the process of closing sockets after the deadline, on a -race
// build on a loaded machine. The mechanism itself waits for nothing past
// the deadline.
const shutdownMargin = 2 * time.Second

type stopListenerResult struct {
	resp *tcpgatev1.StopListenerResponse
	err  error
}

func stopListenerAsync(g *servertest.Gateway, ctx context.Context, id string, drain time.Duration) <-chan stopListenerResult {
	res := make(chan stopListenerResult, 1)
	go func() {
		resp, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: id, DrainTimeout: durationpb.New(drain)})
		res <- stopListenerResult{resp, err}
	}()
	return res
}

func waitListenerState(t *testing.T, g *servertest.Gateway, id string, state tcpgatev1.ListenerState) {
	t.Helper()
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		resp, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: id})
		if err == nil && resp.GetListener().GetState() == state {
			return
		}
	}
	t.Fatalf("listener %s never reached %v", id, state)
}

func stopListenerResultOf(t *testing.T, what string, res <-chan stopListenerResult) *tcpgatev1.Listener {
	t.Helper()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r.resp.GetListener()
	case <-time.After(wait):
		t.Fatalf("%s did not return within %v", what, wait)
	}
	return nil
}

// TestStopListenerSecondDrain: a second StopListener with a shorter
// drain_timeout shortens the drain in progress, and both calls return once
// the listener has stopped, its id free; a longer one does not extend it.
func TestStopListenerSecondDrain(t *testing.T) {
	tests := []struct {
		name          string
		first, second time.Duration
	}{
		// The first drain is longer than any wait here: only the second
		// call can end it.
		{"shorter second shortens", 5 * time.Minute, 50 * time.Millisecond},
		{"longer second does not extend", 300 * time.Millisecond, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := servertest.Start(t, server.Config{})
			l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "d1"})
			sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
			idle := servertest.Dial(t, l.GetAddress())
			opened := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)

			first := stopListenerAsync(g, servertest.Context(t), "d1", tt.first)
			waitListenerState(t, g, "d1", tcpgatev1.ListenerState_LISTENER_STATE_DRAINING)
			second := stopListenerAsync(g, servertest.Context(t), "d1", tt.second)

			a := stopListenerResultOf(t, "the first StopListener", first)
			b := stopListenerResultOf(t, "the second StopListener", second)
			if !proto.Equal(a, b) || a.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_STOPPED {
				t.Errorf("the two calls returned\n%v\nand\n%v\nwant the same listener, STOPPED", a, b)
			}
			closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
			if closed.GetConnectionId() != opened.GetConnectionId() || closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED {
				t.Errorf("close event %v, want %s closed with LISTENER_STOPPED", closed, opened.GetConnectionId())
			}
			if _, err := idle.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Errorf("idle client read %v, want EOF", err)
			}
			g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "d1"}) // the id is free
		})
	}
}

// TestMaxDrainTimeout: drain_timeout is at most --max-drain-timeout (10
// minutes unless configured); more is InvalidArgument over gRPC and 400
// over REST, naming the flag, and the listener goes on listening.
func TestMaxDrainTimeout(t *testing.T) {
	tests := []struct {
		name  string
		max   time.Duration // server.Config.MaxDrainTimeout
		bound time.Duration
	}{
		{"default", 0, 10 * time.Minute},
		{"configured", time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", MaxDrainTimeout: tt.max})
			g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "d1"})

			_, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "d1", DrainTimeout: durationpb.New(tt.bound + time.Second)})
			servertest.WantCode(t, err, codes.InvalidArgument)
			for _, s := range []string{"drain_timeout", "--max-drain-timeout", tt.bound.String()} {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, s) {
					t.Errorf("gRPC message %q does not say %s", msg, s)
				}
			}

			req, err := http.NewRequestWithContext(servertest.Context(t), http.MethodDelete, g.BaseURL+"/v1/listeners/d1?drainTimeout=3600s", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("REST DELETE: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &st) != nil ||
				st.Code != int(codes.InvalidArgument) || !strings.Contains(st.Message, "--max-drain-timeout") {
				t.Errorf("REST DELETE ?drainTimeout=3600s: %d %s, want 400 InvalidArgument naming --max-drain-timeout", resp.StatusCode, body)
			}

			got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "d1"})
			if err != nil || got.GetListener().GetState() != tcpgatev1.ListenerState_LISTENER_STATE_LISTENING {
				t.Errorf("after the refused calls: %v, %v; want d1 still listening", got, err)
			}
			if _, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "d1", DrainTimeout: durationpb.New(tt.bound)}); err != nil {
				t.Errorf("StopListener with a drain of exactly %s: %v", tt.bound, err)
			}
		})
	}
}

// TestShutdownOrder holds a shutdown with a real call (a Send awaiting a
// reply that never comes) and checks what a user sees meanwhile: the
// data-plane listeners stop accepting first, while a connection already
// open still works for the calls in flight; the log says, at an interval,
// which call the shutdown waits for and how many connections are open;
// and at the timeout the call is cancelled and the shutdown ends, cleanly.
func TestShutdownOrder(t *testing.T) {
	const timeout = 4 * time.Second
	var logs servertest.LogSink
	g := servertest.Start(t, server.Config{ShutdownTimeout: timeout, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	client := servertest.Dial(t, l.GetAddress())
	echoLine(t, client, "before")

	accepted := make(chan struct{})
	silent := servertest.Peer(t, func(c net.Conn) {
		close(accepted)
		_, _ = io.Copy(io.Discard, c)
	})
	sent := make(chan error, 1)
	go func() {
		_, err := g.Client.Send(context.Background(), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: silent},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "ping\n"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
			Timeout:    durationpb.New(time.Minute),
		})
		sent <- err
	}()
	select {
	case <-accepted:
	case <-time.After(wait):
		t.Fatal("the Send never reached its peer")
	}

	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()

	// Listeners stop accepting before the control plane waits for calls.
	for {
		c, err := net.DialTimeout("tcp", l.GetAddress(), wait)
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			// Queued in the backlog as the socket closed; the next is refused.
		case err != nil:
			t.Fatalf("dialing the listener during shutdown: %v", err)
		default:
			c.Close()
		}
		select {
		case err := <-sent:
			t.Fatalf("the listener kept accepting connections until the shutdown ended the Send in flight (%v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The calls in flight still have their connections.
	echoLine(t, client, "during")

	// The log says what the shutdown waits for.
	var line string
	for deadline := time.Now().Add(timeout); line == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `msg="shutdown waiting"`) {
				line = l
				break
			}
		}
	}
	if line == "" {
		t.Fatalf("no \"shutdown waiting\" line while the shutdown waited for a Send:\n%s", logs.String())
	}
	for _, s := range []string{"calls=1", "GatewayService/Send for", "connections=1"} {
		if !strings.Contains(line, s) {
			t.Errorf("waiting line %q does not say %s", line, s)
		}
	}
	select {
	case err := <-sent:
		t.Fatalf("the Send ended (%v) before the shutdown timeout", err)
	default:
	}

	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(timeout + shutdownMargin):
		t.Fatalf("shutdown still running %v after it began, with a %v timeout", time.Since(start).Round(time.Millisecond), timeout)
	}
	t.Logf("shutdown held by a Send took %v with a %v timeout", time.Since(start).Round(time.Millisecond), timeout)
	select {
	case err := <-sent:
		if code := status.Code(err); code != codes.Unavailable && code != codes.Canceled {
			t.Errorf("the held Send ended with %v, want Unavailable or Canceled", err)
		}
	case <-time.After(wait):
		t.Fatal("the held Send never returned")
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after the shutdown the client read %v, want EOF", err)
	}
}

func echoLine(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s + "\n")); err != nil {
		t.Fatalf("writing %q: %v", s, err)
	}
	if got := string(servertest.ReadN(t, c, len(s)+1)); got != s+"\n" {
		t.Fatalf("echo %q, want %q", got, s+"\n")
	}
}
