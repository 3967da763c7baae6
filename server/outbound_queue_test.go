package server_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// metric returns the value of the sample of /metrics whose name and
// labels are series ("tcpgate_outbound_queued_bytes", or
// `tcpgate_outbound_connections{state="open"}`); -1 when there is none.
func metric(t testing.TB, g *servertest.Gateway, series string) float64 {
	t.Helper()
	_, body := g.REST.Do("GET", "/metrics", "", nil)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q: %v", series, v, err)
			}
			return f
		}
	}
	return -1
}

// getConn returns the connection id as GetConnection shows it.
func getConn(t testing.TB, g *servertest.Gateway, id string) *tcpgatev1.Connection {
	t.Helper()
	resp, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: id})
	if err != nil {
		t.Fatalf("GetConnection %s: %v", id, err)
	}
	return resp.GetConnection()
}

// Sends made while the server is down are held, in order, within
// queue_while_down_bytes: one past the bound is ResourceExhausted
// QUEUE_FULL, the held ones are written once the server is back, after
// on_connect (written first on every generation) and in the order they
// were made, and each caller gets its own reply. The bytes held show on
// /metrics, with the connections by state and the reconnects.
func TestQueueWhileDown(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "q", Address: srv.Addr(), Framing: lineFraming(),
		// With expect, the server's answer to on_connect answers no Send.
		OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "login"}, Framed: true,
			Expect: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "echo login"}}},
		Reconnect:           &tcpgatev1.Reconnect{InitialBackoff: ms(100), MaxBackoff: ms(200)},
		QueueWhileDownBytes: 16})
	if got := metric(t, g, `tcpgate_outbound_connections{state="open"}`); got != 1 {
		t.Errorf(`tcpgate_outbound_connections{state="open"} = %v, want 1`, got)
	}
	srv.Kill()
	servertest.Eventually(t, "q down", func() bool {
		st := getConn(t, g, "q").GetState()
		return st == tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING || st == tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING
	})

	// Each Send is held before the next is made, so their order is known.
	words := []string{"a1", "b22", "c333"} // 3+4+5 bytes framed: 12 of 16
	replies := make([]string, len(words))
	errs := make([]error, len(words))
	var wg sync.WaitGroup
	held := 0
	for i, w := range words {
		wg.Go(func() { replies[i], errs[i] = sendLine(t, g, "q", w) })
		held += len(w) + 1
		servertest.Eventually(t, fmt.Sprintf("%d bytes held", held), func() bool { return metric(t, g, "tcpgate_outbound_queued_bytes") == float64(held) })
	}
	_, err := sendLine(t, g, "q", "d4444") // 6 more: 18 > 16
	if e := servertest.ErrorOf(err); e.Code != codes.ResourceExhausted || e.Reason != "QUEUE_FULL" || !strings.Contains(e.Message, "queue_while_down_bytes") {
		t.Fatalf("a Send past the bound: %v, want ResourceExhausted QUEUE_FULL naming queue_while_down_bytes", err)
	}
	if got := metric(t, g, "tcpgate_outbound_reconnects_total"); got < 1 {
		t.Errorf("tcpgate_outbound_reconnects_total = %v, want at least 1", got)
	}
	servertest.Eventually(t, "a refused attempt counted", func() bool {
		return metric(t, g, `tcpgate_outbound_dial_failures_total{reason="refused"}`) >= 1
	})

	srv.Start()
	wg.Wait()
	for i, w := range words {
		if errs[i] != nil || replies[i] != "echo "+w {
			t.Errorf("held Send %q = %q, %v; want its own reply", w, replies[i], errs[i])
		}
	}
	if got, want := srv.Lines(1), []string{"login", "a1", "b22", "c333"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the second connection got %q, want on_connect first, then the held Sends in order: %q", got, want)
	}
	if got := srv.Lines(0); len(got) == 0 || got[0] != "login" {
		t.Errorf("the first connection got %q, want on_connect first", got)
	}
	if got := metric(t, g, "tcpgate_outbound_queued_bytes"); got != 0 {
		t.Errorf("tcpgate_outbound_queued_bytes = %v after the flush, want 0", got)
	}
}

// A held Send whose timeout passes leaves the queue with
// DeadlineExceeded and is never written; closing the connection for good
// fails the Sends still held at once, with Unavailable.
func TestQueueWhileDownTimeoutAndClose(t *testing.T) {
	addr := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "q", Address: addr, Framing: lineFraming(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(100)}, QueueWhileDownBytes: 1024})
	start := time.Now()
	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "q"}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
		Timeout: durationpb.New(200 * time.Millisecond),
	})
	if e := servertest.ErrorOf(err); e.Code != codes.DeadlineExceeded || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("a held Send past its timeout: %v after %s, want DeadlineExceeded after 200ms", err, time.Since(start))
	}
	if got := metric(t, g, "tcpgate_outbound_queued_bytes"); got != 0 {
		t.Fatalf("tcpgate_outbound_queued_bytes = %v, want 0: the timed-out Send leaves the queue", got)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := sendLine(t, g, "q", "held")
		errc <- err
	}()
	servertest.Eventually(t, "the Send held", func() bool { return metric(t, g, "tcpgate_outbound_queued_bytes") > 0 })
	if _, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "q"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if e := servertest.ErrorOf(err); e.Code != codes.Unavailable || e.Reason != "CONNECTION_CLOSED" {
			t.Fatalf("a held Send when the connection closed for good: %v, want Unavailable CONNECTION_CLOSED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held Send did not fail when the connection closed for good")
	}
}

// With queue_while_down_bytes 0, a Send while down fails at once with
// Unavailable NOT_CONNECTED and a RetryInfo of the time until the next
// attempt.
func TestSendWhileDownRefused(t *testing.T) {
	addr := servertest.RefusedAddr(t)
	g := servertest.Start(t, server.Config{})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "down", Address: addr, Reconnect: &tcpgatev1.Reconnect{InitialBackoff: durationpb.New(2 * time.Second), MaxBackoff: durationpb.New(4 * time.Second)}})
	start := time.Now()
	_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "down"}, Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
	})
	if e := servertest.ErrorOf(err); e.Code != codes.Unavailable || e.Reason != "NOT_CONNECTED" || time.Since(start) > time.Second {
		t.Fatalf("Send while down: %v after %s, want Unavailable NOT_CONNECTED at once", err, time.Since(start))
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if d := retry.GetRetryDelay().AsDuration(); retry == nil || d <= 0 || d > 2*time.Second {
		t.Fatalf("RetryInfo %v, want a delay in (0, 2s]: the time until the next attempt", retry)
	}
}

// A Send whose reply is awaited when its socket drops fails with
// Unavailable CONNECTION_CLOSED, even with a queue while down, and is
// never written again: at most once. The connection comes back, and the
// next Send is answered.
func TestSendCutByDisconnect(t *testing.T) {
	srv := servertest.NewLineServer(t, func(line string) string {
		if line == "hold" {
			return "" // never answered
		}
		return servertest.EchoLine(line)
	})
	g := servertest.Start(t, server.Config{})
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "cut", Address: srv.Addr(), Framing: lineFraming(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(20), MaxBackoff: ms(50)}, QueueWhileDownBytes: 1024})
	errc := make(chan error, 1)
	go func() {
		_, err := sendLine(t, g, "cut", "hold")
		errc <- err
	}()
	servertest.Eventually(t, "the server got the line", func() bool {
		return len(srv.Lines(0)) == 1
	})
	srv.Kill()
	err := <-errc
	if e := servertest.ErrorOf(err); e.Code != codes.Unavailable || e.Reason != "CONNECTION_CLOSED" {
		t.Fatalf("a Send awaiting its reply when the socket dropped: %v, want Unavailable CONNECTION_CLOSED", err)
	}
	srv.Start()
	servertest.Eventually(t, "cut connected again", func() bool {
		return getConn(t, g, "cut").GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if reply, err := sendLine(t, g, "cut", "after"); err != nil || reply != "echo after" {
		t.Fatalf("Send after the reconnect = %q, %v", reply, err)
	}
	if got := srv.Lines(1); strings.Join(got, ",") != "after" {
		t.Errorf("the second socket got %q, want only the new Send: a cut Send is never written again", got)
	}
}
