package main_test

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestGrpcurlLargestFrame: grpcurl, with gRPC's default 4 MiB receive
// limit, gets the largest line the limits allow (3 MiB), live and on
// resume from the replay ring. Sent as both data and text it was a 6 MiB
// message, and grpcurl died with "received message larger than max".
func TestGrpcurlLargestFrame(t *testing.T) {
	if testing.Short() {
		t.Skip("moves a 3 MiB frame through grpcurl; skipped with -short")
	}
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0")
	addr := d.waitServing(t)
	c := client{addr: addr}
	var started struct {
		Listener listenerJSON `json:"listener"`
	}
	c.call(t, "StartListener", map[string]any{
		"host":    "127.0.0.1",
		"port":    0,
		"framing": map[string]any{"mode": "FRAMING_MODE_LINE", "max_frame_bytes": 3 << 20},
	}, &started)
	lid, laddr := started.Listener.ListenerID, started.Listener.Address
	sub := subscribe(t, addr, map[string]any{"listener_ids": []string{lid}})
	sub.sync(t, laddr)

	line := strings.Repeat("0123456789abcdef", 3<<20/16)[:3<<20-1]
	nc, err := net.DialTimeout("tcp", laddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	isLine := func(e eventJSON) bool { return e.Kind == kindData && len(e.payload()) == len(line) }
	_, e := sub.waitFor(t, 0, "DATA of the 3 MiB line", isLine)
	if e.payload() != line || e.Data != "" {
		t.Fatalf("the 3 MiB line arrived altered, or as data (%d bytes of base64) as well as text", len(e.Data))
	}
	// A resume that reaches it in the ring.
	resumed := subscribe(t, addr, map[string]any{"listener_ids": []string{lid}, "since_sequence": e.Sequence})
	resumed.waitFor(t, 0, "replayed DATA of the 3 MiB line", isLine)
}
