package main_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// fixedReplyPeakRSS bounds the daemon's peak resident set under
// TestFixedReplyMemory. An idle daemon peaks at about 20 MiB; the queue of
// one connection holds at most 1 MiB (--max-write-buffer-bytes far above),
// the 3 MiB reply once, and the 65,536 empty frames' events a few MiB. 96
// MiB leaves room for the Go runtime's slack and the gRPC calls, and is far
// below what the unbounded reply cost: 550 MB for the 8 KiB reply, an
// out-of-memory crash for the 3 MiB one.
const fixedReplyPeakRSS = 96 << 20

// TestFixedReplyMemory is the repro of a fixed auto reply multiplied by the
// frames of one read: a client that never reads sends 65,536 newlines in
// one write to a line listener that answers each with a fixed reply. The
// daemon stays up, queues no more than its bound, and closes the
// connection with WRITE_ERROR after --write-timeout.
func TestFixedReplyMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("memory repro: runs the daemon under load")
	}
	tests := []struct {
		name  string
		reply int
	}{
		{"3 MiB reply", 3 << 20},
		{"8 KiB reply", 8 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startPlainDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
				"--write-timeout", "1s")
			api := servertest.Client(t, d.waitServing(t))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			sub, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sub.Header(); err != nil {
				t.Fatal(err)
			}
			l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{
				Host:    "127.0.0.1",
				Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
				AutoReply: &tcpgatev1.AutoReply{
					Mode:    tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
					Payload: &tcpgatev1.AutoReply_Data{Data: bytes.Repeat([]byte("r"), tt.reply)},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			nc, err := net.Dial("tcp", l.GetListener().GetAddress())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.(*net.TCPConn).SetReadBuffer(4 << 10) // and never reads
			// Before the daemon can begin to answer.
			start := time.Now()
			if _, err := nc.Write(bytes.Repeat([]byte("\n"), 65536)); err != nil {
				t.Fatal(err)
			}

			var closed *tcpgatev1.Event
			for closed == nil {
				resp, err := sub.Recv()
				if err != nil {
					t.Fatalf("waiting for the close (the daemon died?): %v", err)
				}
				for _, e := range resp.GetEvents() {
					if e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
						closed = e
					}
				}
			}
			if got := closed.GetCloseReason(); got != tcpgatev1.CloseReason_CLOSE_REASON_WRITE_ERROR {
				t.Errorf("close reason = %s, want CLOSE_REASON_WRITE_ERROR", got)
			}
			if took := time.Since(start); took < time.Second {
				t.Errorf("closed after %v, before --write-timeout 1s", took)
			}
			if _, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: l.GetListener().GetListenerId()}); err != nil {
				t.Fatalf("the daemon after the repro: %v", err)
			}
			peak := d.peakRSS(t)
			t.Logf("peak RSS %s (bound %s)", mib(peak), mib(fixedReplyPeakRSS))
			if peak > fixedReplyPeakRSS {
				t.Errorf("peak RSS %s, want at most %s", mib(peak), mib(fixedReplyPeakRSS))
			}
		})
	}
}

var logHTTPAddr = regexp.MustCompile(`\bhttp_addr=(\S+)`)

// metric reads one unlabeled metric from the daemon's /metrics.
func metric(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// TestMaxWriteBufferBytes shows the flag reaching the engine: with a 64 KiB
// budget, a connection whose peer never reads holds it, and another
// listener's echo waits until --write-timeout closes the stuck one. A
// negative value is refused naming the flag.
func TestMaxWriteBufferBytes(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a write timeout")
	}
	t.Parallel()
	out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--max-write-buffer-bytes", "-1")
	if !strings.Contains(out, "--max-write-buffer-bytes") {
		t.Errorf("serve with a negative --max-write-buffer-bytes: %s", out)
	}

	d := startPlainDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0",
		"--write-timeout", "3s", "--max-write-buffer-bytes", "65536")
	grpcAddr := d.waitServing(t)
	m := logHTTPAddr.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no http_addr in the log:\n%s", d.stderr.String())
	}
	httpAddr := strings.Trim(m[1], `"`)
	api := servertest.Client(t, grpcAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line := &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
	stuck, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: line,
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Data{Data: bytes.Repeat([]byte("r"), 1<<20)}}})
	if err != nil {
		t.Fatal(err)
	}
	echo, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: line,
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := net.Dial("tcp", stuck.GetListener().GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_ = sc.(*net.TCPConn).SetReadBuffer(4 << 10) // and never reads
	if _, err := sc.Write(bytes.Repeat([]byte("\n"), 64)); err != nil {
		t.Fatal(err)
	}
	// Stuck: the socket takes no more, so a write holds the budget.
	var last uint64
	for same := 0; same < 3; {
		time.Sleep(50 * time.Millisecond)
		l, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: stuck.GetListener().GetListenerId()})
		if err != nil {
			t.Fatal(err)
		}
		if n := l.GetListener().GetBytesOut(); n > 0 && n == last {
			same++
		} else {
			same, last = 0, n
		}
	}
	// One 1 MiB reply is in flight: larger than the budget, it went alone.
	if got := metric(t, httpAddr, "tcpgate_write_queued_bytes"); got != 1<<20 {
		t.Errorf("tcpgate_write_queued_bytes = %v, want 1048576", got)
	}
	start := time.Now()
	ec, err := net.Dial("tcp", echo.GetListener().GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	if _, err := ec.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	_ = ec.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 3)
	if _, err := io.ReadFull(ec, got); err != nil || string(got) != "hi\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	// The echo came once the stuck connection was closed (3 s after its
	// last write began), not at once.
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("echo after %v: it was queued past --max-write-buffer-bytes", waited)
	}
}
