package main_test

// Exhaustion by clients without the token, and connection slots: the built
// daemon under a lowered open-file limit, so that running out of file
// descriptors is reached in a few hundred connections.
//
// The new settings are given as TCPGATE_ environment variables rather than
// flags: a daemon without them ignores them and shows the hole, instead of
// refusing an unknown flag.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// exhaustFDs is the open-file limit of the daemons here: low enough that
// a few hundred connections use every descriptor, high enough for the
// default limits (FDReserve is 256).
const exhaustFDs = 512

// exhaustToken is the control plane's token in these tests.
const exhaustToken = "exhaust-secret"

// startLimited starts `tcpgate serve` with gRPC and REST on 127.0.0.1:0
// under an open-file limit of fds, and returns it with both addresses.
func startLimited(t *testing.T, fds int, env []string, args ...string) (d *daemon, grpcAddr, httpAddr string) {
	t.Helper()
	script := fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, fds)
	all := append([]string{"-c", script, tcpgateBin, "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)
	d = startDaemonBin(t, "/bin/sh", env, all...)
	grpcAddr = d.waitServing(t)
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("tcpgate logged no http_addr:\n%s", d.stderr.String())
	}
	return d, grpcAddr, strings.Trim(m[1], `"`)
}

// withToken adds the bearer token to ctx's outgoing metadata.
func withToken(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+exhaustToken)
}

// unauthorized opens a connection to the REST address, sends one request
// without the token, and returns the connection, kept alive, with the
// status line it got ("" when the gateway closed it or did not answer).
func unauthorized(addr string, wait time.Duration) (net.Conn, string) {
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return nil, ""
	}
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, "GET /v1/listeners HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		return c, ""
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return c, ""
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetDeadline(time.Time{})
	return c, resp.Status
}

// TestExhaustIdleREST: kept-alive REST connections left idle after a 401
// cannot use up the daemon's file descriptors. With more of them than the
// open-file limit, gRPC still answers, listeners still start and accept,
// the REST connections beyond --max-http-connections are closed at once
// (and logged), the idle ones are closed after --http-idle-timeout, and
// then REST answers again.
func TestExhaustIdleREST(t *testing.T) {
	if testing.Short() {
		t.Skip("opens more connections than the daemon has file descriptors")
	}
	t.Parallel()
	const idle = 3 * time.Second
	d, grpcAddr, httpAddr := startLimited(t, exhaustFDs,
		hermeticEnv("TCPGATE_AUTH_TOKEN="+exhaustToken, "TCPGATE_HTTP_IDLE_TIMEOUT="+idle.String()))

	// More connections than the daemon has descriptors, each refused
	// for want of the token and then left open.
	const flood = exhaustFDs + 100
	conns := make([]net.Conn, flood)
	statuses := make([]string, flood)
	var wg sync.WaitGroup
	for i := range flood {
		wg.Go(func() { conns[i], statuses[i] = unauthorized(httpAddr, 5*time.Second) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	var got401 int
	for _, s := range statuses {
		if strings.HasPrefix(s, "401") {
			got401++
		}
	}
	t.Logf("%d of %d connections got a 401 and stay open", got401, flood)
	if got401 == 0 {
		t.Fatal("no connection got a 401: the flood did not reach the gateway")
	}

	// The control plane still accepts: a new gRPC connection answers, a
	// listener starts, and its socket accepts and serves a connection.
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	api := servertest.Client(t, grpcAddr)
	callCtx, callCancel := context.WithTimeout(withToken(ctx), 5*time.Second)
	l, err := api.StartListener(callCtx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1",
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	callCancel()
	if err != nil {
		t.Fatalf("StartListener during the flood: %v, want the gRPC control plane still accepting", err)
	}
	data, err := net.DialTimeout("tcp", l.GetListener().GetAddress(), 5*time.Second)
	if err != nil {
		t.Fatalf("dialing the listener during the flood: %v", err)
	}
	defer data.Close()
	_ = data.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(data, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(data, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo from the listener during the flood: %q, %v, want \"ping\"", buf, err)
	}
	waitLog(t, d, "connection refused: --max-http-connections reached")

	// The idle connections are closed by the gateway.
	deadline := time.Now().Add(idle + 10*time.Second)
	var open int
	for i, c := range conns {
		if c == nil || !strings.HasPrefix(statuses[i], "401") {
			continue
		}
		_ = c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d idle connections still open %v after their 401, want every one closed after --http-idle-timeout (%v)", open, idle+10*time.Second, idle)
	}

	// And REST answers again.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/v1/listeners", nil)
	req.Header.Set("Authorization", "Bearer "+exhaustToken)
	hc := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("REST after the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST after the flood: %s, want 200", resp.Status)
	}
}

// waitLog waits until the daemon's stderr, read in the background, holds
// line.
func waitLog(t *testing.T, d *daemon, line string) {
	t.Helper()
	servertest.EventuallyWithin(t, fmt.Sprintf("the daemon logging %q", line), eventTimeout, func() bool {
		return strings.Contains(d.stderr.String(), line)
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestExhaustHealthWatchers: health Watch streams need no token, so they
// are bounded: past --max-health-watchers, a Watch is refused with
// ResourceExhausted naming the flag, and a slot given back is free again.
func TestExhaustHealthWatchers(t *testing.T) {
	if testing.Short() {
		t.Skip("opens many streams")
	}
	t.Parallel()
	const bound = 64 // the default --max-health-watchers
	_, grpcAddr, _ := startLimited(t, exhaustFDs, hermeticEnv("TCPGATE_AUTH_TOKEN="+exhaustToken))
	health := healthpb.NewHealthClient(servertest.ClientConn(t, grpcAddr))
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	// watch opens a Watch without the token and reports its first answer.
	watch := func(ctx context.Context) error {
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		resp, err := w.Recv()
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %s, want SERVING", resp.GetStatus())
		}
		return nil
	}
	cancels := make([]context.CancelFunc, 0, bound)
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := range bound {
		wctx, wcancel := context.WithCancel(ctx)
		cancels = append(cancels, wcancel)
		if err := watch(wctx); err != nil {
			t.Fatalf("Watch %d of %d: %v", i+1, bound, err)
		}
	}
	for range 8 {
		err := watch(ctx)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "--max-health-watchers") {
			t.Fatalf("Watch past %d open: %v, want ResourceExhausted naming --max-health-watchers", bound, err)
		}
	}
	// A watcher that leaves frees its slot (once the server has seen it go).
	cancels[0]()
	for {
		wctx, wcancel := context.WithCancel(ctx)
		err := watch(wctx)
		cancels = append(cancels, wcancel)
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || ctx.Err() != nil {
			t.Fatalf("Watch after one left: %v, want a slot free again", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestExhaustGRPCStreams: one gRPC connection carries at most
// --max-grpc-streams calls at once; one more waits in the client (grpc-go
// queues it until a stream ends) and runs once one does.
func TestExhaustGRPCStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("opens many streams")
	}
	t.Parallel()
	const bound = 100 // the default --max-grpc-streams
	_, grpcAddr, _ := startLimited(t, exhaustFDs, hermeticEnv())
	api := servertest.Client(t, grpcAddr)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	subscribe := func(ctx context.Context) error {
		sub, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{})
		if err != nil {
			return err
		}
		_, err = sub.Header()
		return err
	}
	cancels := make([]context.CancelFunc, 0, bound)
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := range bound {
		sctx, scancel := context.WithCancel(ctx)
		cancels = append(cancels, scancel)
		if err := subscribe(sctx); err != nil {
			t.Fatalf("Subscribe %d of %d: %v", i+1, bound, err)
		}
	}
	// One more waits for a free stream.
	waitCtx, waitCancel := context.WithTimeout(ctx, time.Second)
	err := subscribe(waitCtx)
	waitCancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Subscribe past %d streams on one connection: %v, want it to wait (DeadlineExceeded after 1s)", bound, err)
	}
	// It runs once a stream ends.
	queued := make(chan error, 1)
	qctx, qcancel := context.WithCancel(ctx)
	defer qcancel()
	go func() { queued <- subscribe(qctx) }()
	cancels[0]()
	select {
	case err := <-queued:
		if err != nil {
			t.Fatalf("Subscribe once a stream ended: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the waiting Subscribe never ran after a stream ended")
	}
}

// TestExhaustPerIP: with --max-connections-per-ip set, one peer IP cannot
// take every slot of every listener: the connection past its share is
// opened and closed with LIMIT_REACHED, while another IP still gets in.
// Both peers are loopback addresses, counted because the bound is set.
func TestExhaustPerIP(t *testing.T) {
	t.Parallel()
	const perIP = 3
	d, grpcAddr, _ := startLimited(t, exhaustFDs, hermeticEnv(fmt.Sprintf("TCPGATE_MAX_CONNECTIONS_PER_IP=%d", perIP)))
	api := servertest.Client(t, grpcAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*callTimeout)
	defer cancel()

	next := watchConnections(t, api)

	echo := tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}
	var addrs []string
	for range 2 {
		l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", AutoReply: &echo})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.GetListener().GetAddress())
	}
	served := func(t *testing.T, c net.Conn) bool {
		t.Helper()
		if _, err := io.WriteString(c, "hi"); err != nil {
			return false
		}
		buf := make([]byte, 2)
		_, err := io.ReadFull(c, buf)
		return err == nil && string(buf) == "hi"
	}

	// The peer's share, over both listeners.
	for i := range perIP {
		c := servertest.DialFrom(t, "127.0.0.2", addrs[i%2])
		if e := next(t, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED); e.GetRemoteAddress() != c.LocalAddr().String() {
			t.Fatalf("CONNECTION_OPENED of %s, want %s", e.GetRemoteAddress(), c.LocalAddr())
		}
		if !served(t, c) {
			t.Fatalf("connection %d of 127.0.0.2 not served", i+1)
		}
	}
	// One more from that IP, on either listener, is opened and closed.
	extra := servertest.DialFrom(t, "127.0.0.2", addrs[1])
	opened := next(t, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	closed := next(t, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if opened.GetRemoteAddress() != extra.LocalAddr().String() || closed.GetConnectionId() != opened.GetConnectionId() ||
		closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_LIMIT_REACHED {
		t.Fatalf("connection %d of 127.0.0.2: opened %v, closed %v, want it closed with LIMIT_REACHED", perIP+1, opened, closed)
	}
	if served(t, extra) {
		t.Fatalf("connection %d of 127.0.0.2 was served past --max-connections-per-ip %d", perIP+1, perIP)
	}
	waitLog(t, d, "connection refused: --max-connections-per-ip (3) reached")
	// Another IP still gets in.
	other := servertest.DialFrom(t, "127.0.0.3", addrs[1])
	if !served(t, other) {
		t.Fatal("a connection from 127.0.0.3 was not served while 127.0.0.2 held its share")
	}
}
