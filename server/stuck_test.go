package server_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// stuckShutdownTimeout is the shutdown timeout of the stuck-subscriber
// tests: long, so that a shutdown that waits it out is told apart from one
// that does not wait on stuck subscribers at all.
const stuckShutdownTimeout = 12 * time.Second

// flood streams total bytes of text into a new listener of g, so that
// every subscriber that does not read falls behind.
func flood(t *testing.T, g *servertest.Gateway, total int) {
	t.Helper()
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "flood"})
	c := servertest.Dial(t, l.GetAddress())
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4<<10)
	_ = c.SetWriteDeadline(time.Now().Add(wait))
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("flooding after %d bytes: %v", sent, err)
		}
	}
}

// stopTook stops g and returns how long the shutdown took.
func stopTook(t *testing.T, g *servertest.Gateway) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- g.Stop() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-time.After(stuckShutdownTimeout + wait):
		t.Fatal("stop did not return")
	}
	return time.Since(start)
}

// TestStuckGRPCSubscriberDoesNotHoldShutdown: a Subscribe client that
// stopped reading does not hold the shutdown for --shutdown-timeout: the
// send that cannot complete ends its stream.
func TestStuckGRPCSubscriberDoesNotHoldShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 64 MiB; skipped with -short")
	}
	g := servertest.Start(t, server.Config{ShutdownTimeout: stuckShutdownTimeout})
	// Its own connection, with no BDP-grown window: it never reads.
	cc, err := grpc.NewClient(g.Server.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck, err := tcpgatev1.NewGatewayServiceClient(cc).Subscribe(ctx, &tcpgatev1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Header(); err != nil {
		t.Fatal(err)
	}
	reading := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{"none"}})
	flood(t, g, 64<<20)

	took := stopTook(t, g)
	if took > stuckShutdownTimeout/2 {
		t.Fatalf("shutdown took %s with a stuck gRPC subscriber (timeout %s): it waited on a client that does not read", took.Round(time.Millisecond), stuckShutdownTimeout)
	}
	servertest.WantCode(t, reading.End(), 14) // Unavailable: the reading one still learns why
}

// TestStuckRESTSubscriberDoesNotHoldShutdown: the same for a REST client:
// one that stopped reading does not hold the shutdown, and one that reads
// gets its final error line.
func TestStuckRESTSubscriberDoesNotHoldShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 64 MiB; skipped with -short")
	}
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", ShutdownTimeout: stuckShutdownTimeout})
	host := strings.TrimPrefix(g.BaseURL, "http://")
	open := func(path string, rcvbuf int) (net.Conn, *bufio.Reader) {
		c, err := net.DialTimeout("tcp", host, wait)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if rcvbuf > 0 {
			_ = c.(*net.TCPConn).SetReadBuffer(rcvbuf)
		}
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host)
		_ = c.SetReadDeadline(time.Now().Add(stuckShutdownTimeout + wait))
		br := bufio.NewReader(c)
		if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, " 200 ") {
			t.Fatalf("GET %s: %q, %v", path, line, err)
		}
		return c, br
	}
	open("/v1/events", 4<<10) // stuck: reads nothing more
	_, reading := open("/v1/events?listenerIds=none", 0)
	flood(t, g, 64<<20)

	took := stopTook(t, g)
	if took > stuckShutdownTimeout/2 {
		t.Fatalf("shutdown took %s with a stuck REST subscriber (timeout %s): it waited on a client that does not read", took.Round(time.Millisecond), stuckShutdownTimeout)
	}
	var last string
	for {
		line, err := reading.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(line, "{") {
			last = line
		}
	}
	if !strings.HasPrefix(last, `{"error":`) || !strings.Contains(last, `"code":14`) {
		t.Fatalf("the reading REST client's last line %q, want {\"error\": {\"code\": 14 ...}}", last)
	}
}
