package main_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

var shutdownHTTPAddr = regexp.MustCompile(`\bhttp_addr=(\S+)`)

// goroutines reads go_goroutines from the daemon's /metrics.
func goroutines(t *testing.T, httpAddr string) int {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatal("no go_goroutines in /metrics")
	return 0
}

// load runs TCP senders, gRPC and SSE subscribers and one-shot Sends against
// a daemon until ctx ends.
func load(ctx context.Context, t *testing.T, api tcpgatev1.GatewayServiceClient, listenerAddr, httpAddr string) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	for i := range 4 {
		c, err := net.Dial("tcp", listenerAddr)
		if err != nil {
			t.Fatal(err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		wg.Go(func() { io.Copy(io.Discard, c) }) // the echo
		wg.Go(func() {
			line := bytes.Repeat([]byte(fmt.Sprintf("sender %d says hello\n", i)), 200)
			for ctx.Err() == nil {
				if _, err := c.Write(line); err != nil {
					return
				}
			}
		})
	}
	for _, p := range []tcpgatev1.SlowConsumerPolicy{
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST,
		tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
	} {
		st, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{SlowConsumer: p})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
			}
		})
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/v1/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	wg.Go(func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			api.Send(ctx, &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: listenerAddr},
				Payload: &tcpgatev1.SendRequest_Text{Text: "one-shot\n"},
			})
		}
	})
	return &wg
}

// TestSIGTERMUnderLoad runs the daemon under full load twice: once to show
// its goroutines return to the baseline when the load goes away, and once
// to SIGTERM it mid-load: it exits 0 within --shutdown-timeout and frees
// every port.
func TestSIGTERMUnderLoad(t *testing.T) {
	const shutdownTimeout = 3 * time.Second
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--shutdown-timeout", shutdownTimeout.String())
	grpcAddr := d.waitServing(t)
	m := shutdownHTTPAddr.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no http_addr in the log:\n%s", d.stderr.String())
	}
	httpAddr := m[1]

	cc, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	api := tcpgatev1.NewGatewayServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{
		Host:      "127.0.0.1",
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	if err != nil {
		t.Fatal(err)
	}
	lAddr := resp.GetListener().GetAddress()
	// The REST gateway dials its gRPC connection on first use: make that
	// connection part of the baseline.
	if r, err := http.Get("http://" + httpAddr + "/v1/listeners"); err != nil {
		t.Fatal(err)
	} else {
		r.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	baseline := goroutines(t, httpAddr)

	// Phase 1: load, then none: the daemon's goroutines come back down.
	phase1, stop1 := context.WithCancel(ctx)
	wg := load(phase1, t, api, lAddr, httpAddr)
	time.Sleep(500 * time.Millisecond)
	during := goroutines(t, httpAddr)
	stop1()
	wg.Wait()
	http.DefaultClient.CloseIdleConnections()
	after := during
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		// The /metrics request itself runs on a goroutine or two.
		if after = goroutines(t, httpAddr); after <= baseline+2 {
			break
		}
	}
	http.DefaultClient.CloseIdleConnections()
	t.Logf("daemon goroutines: %d before load, %d under load, %d after", baseline, during, after)
	if during <= baseline {
		t.Fatalf("load did not show: %d goroutines under load, %d before", during, baseline)
	}
	if after > baseline+2 {
		t.Fatalf("daemon goroutines stayed at %d after the load ended (baseline %d)", after, baseline)
	}

	// Phase 2: SIGTERM at full speed.
	phase2, stop2 := context.WithCancel(ctx)
	defer stop2()
	wg = load(phase2, t, api, lAddr, httpAddr)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	d.stop(t)
	took := time.Since(start)
	stop2()
	wg.Wait()
	http.DefaultClient.CloseIdleConnections()
	t.Logf("exited 0 under load in %s", took.Round(time.Millisecond))
	// The timeout bounds the whole shutdown; what follows it (closing
	// listeners, process exit) takes milliseconds, given 2 s here for a
	// -race build on a loaded machine.
	if took > shutdownTimeout+2*time.Second {
		t.Fatalf("exit took %s with --shutdown-timeout %s", took, shutdownTimeout)
	}
	for _, addr := range []string{grpcAddr, httpAddr, lAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s still bound after exit: %v", addr, err)
		}
		ln.Close()
	}
}
