package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// TestRESTTimeoutsSpareStreams: --http-read-timeout and
// --http-idle-timeout bound what a client sends and how long a kept-alive
// connection idles, never how long a healthy event stream lasts: a stream
// open well past both still gets its events.
func TestRESTTimeoutsSpareStreams(t *testing.T) {
	const timeout = 200 * time.Millisecond
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", HTTPReadTimeout: timeout, HTTPIdleTimeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.BaseURL+"/v1/events", nil)
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/events: %s", resp.Status)
	}
	time.Sleep(5 * timeout) // past both timeouts
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "EVENT_KIND_LISTENER_STARTED") && strings.Contains(sc.Text(), l.GetListenerId()) {
			return
		}
	}
	t.Fatalf("the event stream ended before LISTENER_STARTED: %v", sc.Err())
}

// TestRESTBodyReadTimeout: a request whose body trickles in is cut after
// --http-read-timeout instead of holding its connection.
func TestRESTBodyReadTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", HTTPReadTimeout: timeout})
	addr := strings.TrimPrefix(g.BaseURL, "http://")
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Ten bytes of the hundred announced, then nothing.
	fmt.Fprintf(c, "POST /v1/listeners HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"port\": 0", addr)
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c) // an error answer, then the close
	if took := time.Since(start); err != nil || took > 5*time.Second {
		t.Fatalf("the gateway held a stalled body for %v (%v), want the connection cut after --http-read-timeout (%v)", took.Round(time.Millisecond), err, timeout)
	}
}

// TestGRPCConnectionCap: past --max-grpc-connections a connection is
// closed as soon as it is accepted; one that leaves makes room.
func TestGRPCConnectionCap(t *testing.T) {
	g := servertest.Start(t, server.Config{MaxGRPCConnections: 1})
	addr := g.Server.GRPCAddr()
	held, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// closedSoon reports whether the gateway closes c within a second (it
	// waits longer than that for a gRPC preface otherwise): what it reads
	// (the server's HTTP/2 settings) ends in EOF or a reset, not the
	// deadline.
	closedSoon := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	if closedSoon(held) {
		t.Fatal("the first connection was closed, want it held under --max-grpc-connections 1")
	}
	extra, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedSoon(extra) {
		t.Fatal("a second connection stayed open past --max-grpc-connections 1")
	}
	held.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		next, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ok := !closedSoon(next)
		next.Close()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no room after the held connection closed")
		}
	}
}

// TestGRPCIdleTimeout: a gRPC connection with no call for
// --grpc-idle-timeout is closed by the server (GOAWAY), and the client's
// next call reconnects.
func TestGRPCIdleTimeout(t *testing.T) {
	g := servertest.Start(t, server.Config{GRPCIdleTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{}); err != nil {
		t.Fatal(err)
	}
	// READY until the server lets the idle connection go.
	for st := g.Conn.GetState(); st == connectivity.Ready; st = g.Conn.GetState() {
		if !g.Conn.WaitForStateChange(ctx, st) {
			t.Fatalf("the idle connection is still %v after %v, want it closed after --grpc-idle-timeout", st, 10*time.Second)
		}
	}
	if _, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{}); err != nil {
		t.Fatalf("a call after the idle close: %v", err)
	}
}
