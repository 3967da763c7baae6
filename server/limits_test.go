package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

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
	l := startListener(t, g, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
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
