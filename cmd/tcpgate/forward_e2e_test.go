package main_test

import (
	"bufio"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestListenForwardCLI: `tcpgate listen --forward` relays a client to a
// line server, and `tcpgate subscribe --include-sent` prints both sides
// of the conversation in order, the server's side marked sent, while a
// plain subscribe prints the client's side only. --target-tls without
// --forward is refused naming both flags.
func TestListenForwardCLI(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	srv := servertest.NewLineServer(t, upperLines)

	out, _ := tg.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "relay", "--framing", "line", "--forward", srv.Addr())
	laddr := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(out)[1]
	both := tg.start(t, "subscribe", "--include-sent", "--kinds", "data")
	plain := tg.start(t, "subscribe", "--kinds", "data")
	// Each stream is live once it prints its first line.
	for _, p := range []*proc{both, plain} {
		p.waitFor(t, "the stream started", eventTimeout, func(out string) bool { return strings.Contains(out, "stream_started") })
	}

	c, err := net.Dial("tcp", laddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(eventTimeout))
	r := bufio.NewReader(c)
	for _, w := range []string{"hello", "again"} {
		if _, err := c.Write([]byte(w + "\n")); err != nil {
			t.Fatal(err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != strings.ToUpper(w)+"\n" {
			t.Fatalf("through the relay: %q, %v; want the server's %q", got, err, strings.ToUpper(w))
		}
	}
	want := regexp.MustCompile(`(?s)data listener=relay conn=\S+ 5 bytes "hello".*data listener=relay conn=\S+ sent 6 bytes "HELLO\\n".*` +
		`data listener=relay conn=\S+ 5 bytes "again".*data listener=relay conn=\S+ sent 6 bytes "AGAIN\\n"`)
	both.waitFor(t, "both directions in order", eventTimeout, want.MatchString)
	got := plain.waitFor(t, "the client's lines", eventTimeout, func(out string) bool { return strings.Contains(out, `"again"`) })
	if strings.Contains(got, " sent ") {
		t.Errorf("subscribe without --include-sent printed sent data:\n%s", got)
	}

	_, stderr, err := tg.run(t, "listen", "0", "--host", "127.0.0.1", "--target-tls")
	if err == nil || !strings.Contains(stderr, "--target-tls") || !strings.Contains(stderr, "--forward") {
		t.Errorf("listen --target-tls without --forward: err %v, stderr %q; want a refusal naming both flags", err, stderr)
	}
}
