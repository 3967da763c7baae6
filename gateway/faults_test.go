package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// faultWait bounds every wait of the fault tests; reaching it is a failure,
// not a measurement.
const faultWait = 10 * time.Second

// TestSSEClientDrops: Server-Sent Events clients hang up in the middle of a
// busy stream. Each one's handler and gRPC subscription go away (no
// subscriber, no goroutine is left for it) and a new stream still works.
func TestSSEClientDrops(t *testing.T) {
	const drops = 5
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	// No keep-alive: every request's connection, and its goroutines on
	// both sides, ends with the request.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}

	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	started, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{
		Host:    "127.0.0.1",
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := started.GetListener()

	// Traffic: a client writing lines steadily until the test ends, bounded
	// in count and time.
	sender, err := net.DialTimeout("tcp", l.GetAddress(), faultWait)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trafficErr := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(6 * faultWait)
		_ = sender.SetWriteDeadline(deadline)
		var buf []byte
		for i := 0; i < 100_000; i++ {
			select {
			case <-stop:
				trafficErr <- nil
				return
			default:
			}
			buf = buf[:0]
			for j := range 20 {
				buf = fmt.Appendf(buf, "line %d.%d\n", i, j)
			}
			if _, err := sender.Write(buf); err != nil {
				trafficErr <- fmt.Errorf("traffic stalled: %w", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
		trafficErr <- errors.New("traffic ran out before the test ended")
	}()
	defer func() {
		close(stop)
		if err := <-trafficErr; err != nil {
			t.Error(err)
		}
		sender.Close()
	}()

	query := "listenerIds=" + l.GetListenerId()
	// The baseline includes the gateway's own gRPC client connection, which
	// the first REST call opens.
	if resp, _ := faultGet(t, hc, g.BaseURL+"/v1/listeners"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/listeners = %d", resp.StatusCode)
	}
	baseline := faultSettledGoroutines()

	var last uint64
	for i := range drops {
		s := faultOpenSSE(t, hc, g.BaseURL, query)
		for range 3 {
			e := s.nextData(t)
			if e.GetSequence() <= last {
				t.Fatalf("stream %d: sequence %d after %d", i, e.GetSequence(), last)
			}
			last = e.GetSequence()
		}
		// The streams dropped before this one are gone (the gateway
		// notices a hang-up asynchronously); this one is counted.
		servertest.Eventually(t, fmt.Sprintf("stream %d the only subscriber", i), func() bool {
			return faultSubscribers(t, hc, g.BaseURL) == 1
		})
		// Hang up while the gateway is writing.
		s.body.Close()
		s.cancel()
	}
	t.Logf("%d streams dropped; goroutines at baseline %d, now %d", drops, baseline, runtime.NumGoroutine())

	servertest.Eventually(t, "every dropped stream's subscription gone", func() bool {
		return faultSubscribers(t, hc, g.BaseURL) == 0
	})
	// A few goroutines come and go with the runtime and the HTTP and gRPC
	// machinery; a leaked stream costs at least two (handler and receiver),
	// so five of them would be far over this slack.
	const slack = 4
	servertest.Eventually(t, fmt.Sprintf("goroutines back to %d+%d", baseline, slack), func() bool {
		return runtime.NumGoroutine() <= baseline+slack
	})

	// The gateway still streams.
	s := faultOpenSSE(t, hc, g.BaseURL, query)
	if e := s.nextData(t); e.GetSequence() <= last || e.GetListenerId() != l.GetListenerId() {
		t.Fatalf("new stream: %v after sequence %d", e, last)
	}
	s.body.Close()
	s.cancel()
}

// faultSSE is an open GET /v1/events with Accept: text/event-stream.
type faultSSE struct {
	body   io.ReadCloser
	br     *bufio.Reader
	cancel context.CancelFunc
}

// faultOpenSSE opens an SSE stream; its reads fail after faultWait.
func faultOpenSSE(t *testing.T, hc *http.Client, base, query string) *faultSSE {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/events?"+query, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /v1/events: %v", err)
	}
	s := &faultSSE{body: resp.Body, br: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(func() {
		s.body.Close()
		s.cancel()
	})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /v1/events = %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return s
}

// nextData returns the next DATA event of the stream.
func (s *faultSSE) nextData(t *testing.T) *tcpgatev1.Event {
	t.Helper()
	for range 1 << 16 {
		line, err := s.br.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE stream: %v", err)
		}
		data, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "data: ")
		if !ok {
			continue
		}
		e := &tcpgatev1.Event{}
		if err := protojson.Unmarshal([]byte(data), e); err != nil {
			t.Fatalf("SSE data %q: %v", data, err)
		}
		if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_DATA {
			return e
		}
	}
	t.Fatal("no DATA event in 65536 lines")
	return nil
}

// faultGet GETs url and reads the whole body.
func faultGet(t *testing.T, hc *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, b
}

// faultSubscribers returns the open Subscribe streams of every policy, as
// /metrics reports them.
func faultSubscribers(t *testing.T, hc *http.Client, base string) int {
	t.Helper()
	resp, b := faultGet(t, hc, base+"/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d", resp.StatusCode)
	}
	n, found := 0, false
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "tcpgate_subscribers{")
		if !ok {
			continue
		}
		_, v, _ := strings.Cut(rest, "} ")
		k, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		n += int(k)
		found = true
	}
	if !found {
		t.Fatal("/metrics has no tcpgate_subscribers")
	}
	return n
}

// faultSettledGoroutines returns the fewest goroutines seen over a short
// while, so that one passing by does not raise the baseline.
func faultSettledGoroutines() int {
	least := runtime.NumGoroutine()
	for range 10 {
		time.Sleep(10 * time.Millisecond)
		least = min(least, runtime.NumGoroutine())
	}
	return least
}
