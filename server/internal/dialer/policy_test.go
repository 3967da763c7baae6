package dialer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// TestSendRefusesDenied: Send is the dialer's only way to connect, and it
// checks the policy itself. The zero Dialer holds the default policy: a
// cloud metadata address is refused before anything is dialed, whatever
// the caller checked or did not.
func TestSendRefusesDenied(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var d dialer.Dialer
	_, err := d.Send(ctx, dialer.Request{Address: "169.254.169.254:80", Payload: []byte("GET /")})
	if !errors.Is(err, policy.ErrDenied) {
		t.Fatalf("Send to 169.254.169.254:80 with the default policy = %v, want policy.ErrDenied: the dialer dials around the policy", err)
	}
	if !strings.Contains(err.Error(), "169.254.169.254:80") {
		t.Errorf("the refusal %q does not name the address", err)
	}
	if st := d.Stats(); st.Sends != 0 {
		t.Errorf("a refused send counts %d sends: nothing was dialed", st.Sends)
	}
}

// resolver answers every lookup with its addresses.
type resolver []netip.Addr

func (r resolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) { return r, nil }

// TestSendDialsWhatThePolicyChecked: a name is resolved once, and only the
// addresses the policy allows are dialed; a denied loopback peer sees no
// connection at all.
func TestSendDialsWhatThePolicyChecked(t *testing.T) {
	var accepted atomic.Int32
	addr := peer(t, func(c *net.TCPConn) {
		accepted.Add(1)
		reply([]byte("pong"))(c)
	})
	_, port, _ := net.SplitHostPort(addr)
	deny, err := policy.ParseRules("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	// The name resolves to the denied 127.0.0.1 and to 127.0.0.2, where
	// nothing listens: the denied one is never dialed.
	d := dialer.Dialer{Policy: &policy.Policy{DenyDial: deny, Resolver: resolver{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}}}
	if _, err := d.Send(ctx, dialer.Request{Address: "peer.test:" + port, Payload: []byte("ping")}); errors.Is(err, policy.ErrDenied) || err == nil {
		t.Errorf("Send with one address allowed = %v, want the allowed address dialed (and refused: nothing listens there)", err)
	}
	// Only the denied address: refused, by IP and by name.
	d.Policy.Resolver = resolver{netip.MustParseAddr("127.0.0.1")}
	for _, a := range []string{addr, "peer.test:" + port} {
		if _, err := d.Send(ctx, dialer.Request{Address: a, Payload: []byte("ping")}); !errors.Is(err, policy.ErrDenied) {
			t.Errorf("Send to %s (127.0.0.1, denied) = %v, want policy.ErrDenied", a, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the denied peer accepted %d connections, want none", n)
	}

	// Allowed, the same peer answers.
	d.Policy = &policy.Policy{Resolver: resolver{netip.MustParseAddr("127.0.0.1")}}
	res, err := d.Send(ctx, dialer.Request{Address: "peer.test:" + port, Payload: []byte("ping"), Await: await.FirstRead, MaxReply: 16})
	if err != nil || string(res.Reply) != "pong" {
		t.Errorf("Send allowed = %q, %v; want pong", res.Reply, err)
	}
}
