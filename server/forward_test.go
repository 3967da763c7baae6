package server_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// forwarding starts a forwarding listener to addr on g.
func forwarding(t *testing.T, g *servertest.Gateway, addr string, more func(*tcpgatev1.StartListenerRequest)) *tcpgatev1.Listener {
	t.Helper()
	req := &tcpgatev1.StartListenerRequest{Forward: &tcpgatev1.Forward{Address: addr}}
	if more != nil {
		more(req)
	}
	return g.StartListener(t, req)
}

// closeWrite half-closes c, a *net.TCPConn or a *tls.Conn.
func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("half-closing: %v", err)
	}
}

// relayed gathers the DATA events of one connection, by direction, up to
// its CONNECTION_CLOSED, which it returns.
func relayed(t *testing.T, s *servertest.Stream, connID string) (received, sent []byte, closed *tcpgatev1.Event) {
	t.Helper()
	for {
		e := s.Next()
		if e.GetConnectionId() != connID {
			continue
		}
		switch e.GetKind() {
		case tcpgatev1.EventKind_EVENT_KIND_DATA:
			p := append(e.GetData(), e.GetText()...)
			if e.GetDirection() == tcpgatev1.Direction_DIRECTION_SENT {
				sent = append(sent, p...)
			} else {
				received = append(received, p...)
			}
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
			return received, sent, e
		}
	}
}

// Large random payloads cross a forwarding listener both ways at once,
// byte for byte, each side's end of stream passed on to the other. A
// lossless subscriber with include_sent sees both directions whole, a
// default one only what the client said; the close event says why each
// side ended, and the metrics count the bytes.
func TestForwardBytesBothWays(t *testing.T) {
	size := 4 << 20
	if testing.Short() {
		size = 1 << 20
	}
	rnd := servertest.Rand(t)
	up, down := make([]byte, size), make([]byte, size+12345)
	for _, b := range [][]byte{up, down} {
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
	}

	gotUp := make(chan []byte, 1)
	target := servertest.Peer(t, func(c net.Conn) {
		var wg sync.WaitGroup
		wg.Go(func() {
			b, _ := io.ReadAll(c)
			gotUp <- b
		})
		_, _ = c.Write(down)
		_ = c.(*net.TCPConn).CloseWrite()
		wg.Wait()
	})
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	both := g.Subscribe(t, &tcpgatev1.SubscribeRequest{IncludeSent: true, SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE})
	plain := g.Subscribe(t, &tcpgatev1.SubscribeRequest{SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE})
	l := forwarding(t, g, target, nil)
	if l.GetForward().GetAddress() != target {
		t.Errorf("listener forward = %v, want address %s", l.GetForward(), target)
	}

	c := servertest.Dial(t, l.GetAddress())
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(up)
		if err == nil {
			err = c.CloseWrite()
		}
		writeErr <- err
	}()
	gotDown, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("client reading: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("client writing: %v", err)
	}
	if !bytes.Equal(gotDown, down) {
		t.Errorf("client got %d bytes, want the target's %d, byte for byte", len(gotDown), len(down))
	}
	select {
	case b := <-gotUp:
		if !bytes.Equal(b, up) {
			t.Errorf("target got %d bytes, want the client's %d, byte for byte", len(b), len(up))
		}
	case <-time.After(servertest.Wait):
		t.Fatal("the target never saw the client's end of stream")
	}

	opened := both.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	recv, sent, closed := relayed(t, both, opened.GetConnectionId())
	if !bytes.Equal(recv, up) || !bytes.Equal(sent, down) {
		t.Errorf("include_sent subscriber: %d received and %d sent bytes, want %d and %d, byte for byte", len(recv), len(sent), len(up), len(down))
	}
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED || closed.GetError() != "" {
		t.Errorf("closed: reason %v, target %v, error %q; want PEER_CLOSED both, no error", closed.GetCloseReason(), closed.GetTargetCloseReason(), closed.GetError())
	}
	recv, sent, _ = relayed(t, plain, opened.GetConnectionId())
	if !bytes.Equal(recv, up) || len(sent) != 0 {
		t.Errorf("default subscriber: %d received and %d sent bytes, want %d and none", len(recv), len(sent), len(up))
	}

	for name, want := range map[string]int{
		`tcpgate_forwarded_bytes_total{direction="to_target"}`:   len(up),
		`tcpgate_forwarded_bytes_total{direction="from_target"}`: len(down),
		"tcpgate_forward_dial_failures_total":                    0,
	} {
		if got := metric(t, g, name); got != float64(want) {
			t.Errorf("%s = %v, want %d", name, got, want)
		}
	}
}

// A half-close is passed on each way, and the other direction goes on
// until its side ends too: the connection is HALF_CLOSED meanwhile.
func TestForwardHalfClose(t *testing.T) {
	t.Run("client first", func(t *testing.T) {
		target := servertest.Peer(t, func(c net.Conn) {
			b, _ := io.ReadAll(c) // until the client's end of stream
			_, _ = c.Write(append([]byte("after your end: "), b...))
		})
		g := servertest.Start(t, server.Config{})
		sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
		l := forwarding(t, g, target, nil)
		c := servertest.Dial(t, l.GetAddress())
		_, _ = c.Write([]byte("question"))
		closeWrite(t, c)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "after your end: question" {
			t.Fatalf("client read %q, %v; want the target's answer after the half-close, then the end", got, err)
		}
		_ = c.Close()
		closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
		if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
			t.Errorf("closed: %v, target %v; want PEER_CLOSED both", closed.GetCloseReason(), closed.GetTargetCloseReason())
		}
	})
	t.Run("target first", func(t *testing.T) {
		gotLate := make(chan string, 1)
		target := servertest.Peer(t, func(c net.Conn) {
			_, _ = c.Write([]byte("banner"))
			_ = c.(*net.TCPConn).CloseWrite()
			b, _ := io.ReadAll(c)
			gotLate <- string(b)
		})
		g := servertest.Start(t, server.Config{})
		sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
		l := forwarding(t, g, target, nil)
		c := servertest.Dial(t, l.GetAddress())
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "banner" {
			t.Fatalf("client read %q, %v; want the banner, then the end", got, err)
		}
		opened := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
		// The gateway's writing side is shut: a Send has nowhere to go.
		_, err = g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: opened.GetConnectionId()},
			Payload: &tcpgatev1.SendRequest_Text{Text: "too late"},
		})
		if e := servertest.ErrorOf(err); e.Code != codes.NotFound || e.Reason != "CONNECTION_CLOSED" {
			t.Errorf("Send after the target's end = %v, want NotFound with reason CONNECTION_CLOSED", err)
		}
		// Half-closed on the gateway's side only: the client still talks.
		_, _ = c.Write([]byte("still here"))
		closeWrite(t, c)
		select {
		case s := <-gotLate:
			if s != "still here" {
				t.Errorf("target got %q after its half-close, want still here", s)
			}
		case <-time.After(servertest.Wait):
			t.Fatal("the target never got the client's last words and end")
		}
		closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
		if closed.GetConnectionId() != opened.GetConnectionId() || closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PEER_CLOSED {
			t.Errorf("closed: %v, target %v; want PEER_CLOSED both", closed.GetCloseReason(), closed.GetTargetCloseReason())
		}
	})
	t.Run("listed half-closed while the target talks", func(t *testing.T) {
		release := make(chan struct{})
		target := servertest.Peer(t, func(c net.Conn) {
			_, _ = io.ReadAll(c)
			<-release
			_, _ = c.Write([]byte("late"))
		})
		g := servertest.Start(t, server.Config{})
		l := forwarding(t, g, target, nil)
		c := servertest.Dial(t, l.GetAddress())
		closeWrite(t, c)
		servertest.Eventually(t, "the connection listed HALF_CLOSED", func() bool {
			resp, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
			cs := resp.GetConnections()
			return err == nil && len(cs) == 1 && cs[0].GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED
		})
		close(release)
		if got, _ := io.ReadAll(c); string(got) != "late" {
			t.Errorf("client read %q after its half-close, want late", got)
		}
	})
}

// A target that refuses, and one the dial policy denies, close the
// client's connection at once, without a byte, with FORWARD_FAILED and
// the dial's error; the failures are counted.
func TestForwardDialFails(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cfg    server.Config
		addr   func(t *testing.T) string
		errHas string
	}{
		{"target refuses", server.Config{HTTPAddr: "127.0.0.1:0"}, func(t *testing.T) string { return servertest.RefusedAddr(t) }, "refused"},
		{"policy denies", server.Config{HTTPAddr: "127.0.0.1:0", DenyDial: "127.0.0.2/32"}, func(t *testing.T) string {
			return servertest.Peer(t, func(net.Conn) { t.Error("the target of a denied forward was dialed") })
		}, "denied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			if tt.name == "policy denies" {
				_, port, _ := net.SplitHostPort(addr)
				addr = "127.0.0.2:" + port
			}
			g := servertest.Start(t, tt.cfg)
			sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
			l := forwarding(t, g, addr, nil)
			c := servertest.Dial(t, l.GetAddress())
			got, err := io.ReadAll(c)
			if len(got) != 0 || err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Errorf("client read %q, %v; want the connection closed at once", got, err)
			}
			sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
			closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
			if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_FORWARD_FAILED || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_FORWARD_FAILED {
				t.Errorf("closed: %v, target %v; want FORWARD_FAILED both", closed.GetCloseReason(), closed.GetTargetCloseReason())
			}
			if !strings.Contains(closed.GetError(), tt.errHas) || !strings.Contains(closed.GetError(), addr) {
				t.Errorf("closed error %q, want it to say %q and name %s", closed.GetError(), tt.errHas, addr)
			}
			if got := metric(t, g, "tcpgate_forward_dial_failures_total"); got != 1 {
				t.Errorf("tcpgate_forward_dial_failures_total = %v, want the 1 failed dial", got)
			}
		})
	}
}

// TLS on both sides: the client speaks TLS to the listener, the gateway
// speaks TLS to the target, verified with the given CA.
func TestForwardTLS(t *testing.T) {
	ca := servertest.NewCA(t)
	certPEM, keyPEM := ca.IssueLoopback(t)
	pair := servertest.KeyPair(t, certPEM, keyPEM)
	target := servertest.PeerTLS(t, &tls.Config{Certificates: []tls.Certificate{pair}}, func(c net.Conn) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err == nil {
			_, _ = c.Write(append([]byte("pong:"), buf...))
		}
		_, _ = io.ReadAll(c)
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{IncludeSent: true})
	l := forwarding(t, g, target, func(r *tcpgatev1.StartListenerRequest) {
		r.Tls = &tcpgatev1.ListenerTLS{CertPem: string(certPEM), KeyPem: string(keyPEM)}
		r.Forward.Tls = &tcpgatev1.DialTLS{CaPem: string(ca.CertPEM)}
	})
	if l.GetForward().GetTls().GetServerName() != "127.0.0.1" || !l.GetTls() {
		t.Errorf("listener tls %v, forward %v; want TLS both sides, the target verified as 127.0.0.1", l.GetTls(), l.GetForward())
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: servertest.Wait}, "tcp", l.GetAddress(), &tls.Config{RootCAs: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(servertest.Wait))
	_, _ = c.Write([]byte("ping"))
	got := servertest.ReadN(t, c, len("pong:ping"))
	if string(got) != "pong:ping" {
		t.Errorf("client got %q, want pong:ping", got)
	}
	_ = c.Close()
	opened := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	recv, sent, _ := relayed(t, sub, opened.GetConnectionId())
	if string(recv) != "ping" || string(sent) != "pong:ping" {
		t.Errorf("events: received %q, sent %q; want the plaintext ping and pong:ping", recv, sent)
	}

	t.Run("target not trusted", func(t *testing.T) {
		l := forwarding(t, g, target, func(r *tcpgatev1.StartListenerRequest) { r.Forward.Tls = &tcpgatev1.DialTLS{} })
		c := servertest.Dial(t, l.GetAddress())
		if got, _ := io.ReadAll(c); len(got) != 0 {
			t.Errorf("client read %q, want the connection closed at once", got)
		}
		closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
		if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_FORWARD_FAILED || !strings.Contains(closed.GetError(), "TLS") {
			t.Errorf("closed: %v, error %q; want FORWARD_FAILED saying TLS", closed.GetCloseReason(), closed.GetError())
		}
	})
}

// A forwarded connection is one accepted connection of its listener:
// listed, written to by Send (between relayed bytes), and closed on both
// sides by CloseConnection, StopListener and the shutdown.
func TestForwardIsAConnection(t *testing.T) {
	targetEnded := make(chan error, 4)
	target := servertest.Peer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hello from the target\n"))
		_, err := io.Copy(io.Discard, c)
		targetEnded <- err
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{IncludeSent: true})
	l := forwarding(t, g, target, nil)
	ctx := servertest.Context(t)
	open := func() (*net.TCPConn, string) {
		c := servertest.Dial(t, l.GetAddress())
		servertest.ReadN(t, c, len("hello from the target\n"))
		return c, sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED).GetConnectionId()
	}
	waitTarget := func(what string) {
		t.Helper()
		select {
		case err := <-targetEnded:
			if err != nil {
				t.Errorf("%s: the target's side ended with %v, want an end of stream", what, err)
			}
		case <-time.After(servertest.Wait):
			t.Fatalf("%s: the target's side stayed open", what)
		}
	}

	c, id := open()
	resp, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
	if err != nil || len(resp.GetConnections()) != 1 {
		t.Fatalf("ListConnections = %v, %v; want the one forwarded connection", resp, err)
	}
	if got := resp.GetConnections()[0]; got.GetConnectionId() != id || got.GetOrigin() != tcpgatev1.Origin_ORIGIN_ACCEPTED {
		t.Errorf("listed %v, want %s of origin ACCEPTED", got, id)
	}
	if _, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
		Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id}, Payload: &tcpgatev1.SendRequest_Text{Text: "from the API\n"},
	}); err != nil {
		t.Fatalf("Send to a forwarded connection: %v", err)
	}
	if got := servertest.ReadN(t, c, len("from the API\n")); string(got) != "from the API\n" {
		t.Errorf("client got %q from the Send", got)
	}
	if _, err := g.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the client's side stayed open after CloseConnection")
	}
	waitTarget("CloseConnection")
	_, sent, closed := relayed(t, sub, id)
	if string(sent) != "hello from the target\nfrom the API\n" {
		t.Errorf("sent events %q, want the target's words, then the Send", sent)
	}
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_API {
		t.Errorf("closed: %v, target %v; want CLOSED_BY_API both", closed.GetCloseReason(), closed.GetTargetCloseReason())
	}

	c, id = open()
	if _, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: l.GetListenerId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the client's side stayed open after StopListener")
	}
	waitTarget("StopListener")
	if _, _, closed := relayed(t, sub, id); closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED || closed.GetTargetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LISTENER_STOPPED {
		t.Errorf("closed: %v, target %v; want LISTENER_STOPPED both", closed.GetCloseReason(), closed.GetTargetCloseReason())
	}

	l = forwarding(t, g, target, nil)
	c, _ = open()
	if err := g.Stop(); err != nil {
		t.Fatalf("shutdown with a relay open: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the client's side stayed open after the shutdown")
	}
	waitTarget("shutdown")
}

// The idle timeout of a forwarding listener counts bytes either way: a
// client that only listens to a talkative target stays, and a relay where
// neither side says anything closes.
func TestForwardIdle(t *testing.T) {
	target := servertest.Peer(t, func(c net.Conn) {
		for i := range 6 {
			if _, err := fmt.Fprintf(c, "tick %d\n", i); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, _ = io.Copy(io.Discard, c) // then silent
	})
	g := servertest.Start(t, server.Config{})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	l := forwarding(t, g, target, func(r *tcpgatev1.StartListenerRequest) {
		r.IdleTimeout = durationpb.New(300 * time.Millisecond)
	})
	c := servertest.Dial(t, l.GetAddress())
	got, _ := io.ReadAll(c) // the client says nothing
	if !strings.HasPrefix(string(got), "tick 0\n") || !strings.Contains(string(got), "tick 5\n") {
		t.Errorf("client got %q before the idle close, want every tick: the target's bytes count", got)
	}
	closed := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT {
		t.Errorf("closed: %v, want IDLE_TIMEOUT", closed.GetCloseReason())
	}
}
