package main_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
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
			cc, err := grpc.NewClient(d.waitServing(t), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			api := tcpgatev1.NewGatewayServiceClient(cc)
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
			if _, err := nc.Write(bytes.Repeat([]byte("\n"), 65536)); err != nil {
				t.Fatal(err)
			}

			start := time.Now()
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
