package listener_test

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

var (
	client4 = netip.MustParseAddrPort("203.0.113.7:51000")
	client6 = netip.MustParseAddrPort("[2001:db8::7]:51000")
	front4  = netip.MustParseAddrPort("198.51.100.1:443")
	front6  = netip.MustParseAddrPort("[2001:db8::1]:443")
)

// proxyListener starts an echoing line listener that takes PROXY headers
// of mode.
func proxyListener(t *testing.T, r *gateway, mode proxyproto.Mode) listener.Info {
	t.Helper()
	return start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}, ProxyProtocol: mode})
}

// openedFrom waits for the CONNECTION_OPENED event whose remote address is
// remote and returns it.
func openedFrom(t *testing.T, rec *recorder, remote string) *event.Event {
	t.Helper()
	var found *event.Event
	rec.WaitFor(t, "connection_opened from "+remote, func(evs []*event.Event) bool {
		for _, e := range ofKind(evs, event.ConnectionOpened) {
			if e.RemoteAddr == remote {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

// listed returns the registry's snapshot of connection id.
func listed(t *testing.T, r *gateway, id string) registry.Info {
	t.Helper()
	info, err := r.conns.GetConn(id)
	if err != nil {
		t.Fatalf("GetConn(%s): %v", id, err)
	}
	return info
}

// TestProxyHeaderAddress: with a header of each kind, the connection's
// remote address, in its opened event and in the registry, is the client
// the header names, its local address the socket's, and the bytes after
// the header are the client's, read as frames.
func TestProxyHeaderAddress(t *testing.T) {
	tests := []struct {
		name   string
		mode   proxyproto.Mode
		header []byte
		want   string // the remote address; "" for the socket's
	}{
		{"v1 TCP4", proxyproto.V1, proxyproto.AppendV1(nil, client4, front4), "203.0.113.7:51000"},
		{"v1 TCP6", proxyproto.Any, proxyproto.AppendV1(nil, client6, front6), "[2001:db8::7]:51000"},
		{"v2 IPv4", proxyproto.V2, proxyproto.AppendV2(nil, client4, front4, nil), "203.0.113.7:51000"},
		{"v2 IPv6 with a TLV", proxyproto.Any, proxyproto.AppendV2(nil, client6, front6, []byte{0x05, 0, 2, 'i', 'd'}), "[2001:db8::7]:51000"},
		{"v1 UNKNOWN", proxyproto.V1, []byte("PROXY UNKNOWN\r\n"), ""},
		{"v2 LOCAL", proxyproto.V2, proxyproto.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}, nil), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newRegistry(t, listener.Config{})
			info := proxyListener(t, r, tt.mode)
			c := dial(t, info.Address)
			if _, err := c.Write(tt.header); err != nil {
				t.Fatal(err)
			}
			echo(t, c, "after the header")
			want := tt.want
			if want == "" {
				want = c.LocalAddr().String()
			}
			opened := openedFrom(t, rec, want)
			if opened.LocalAddr != c.RemoteAddr().String() {
				t.Errorf("local address %s, want the socket's %s", opened.LocalAddr, c.RemoteAddr())
			}
			got := listed(t, r, opened.ConnectionID)
			if got.RemoteAddr != want || got.LocalAddr != c.RemoteAddr().String() {
				t.Errorf("registry lists %s -> %s, want %s -> %s", got.RemoteAddr, got.LocalAddr, want, c.RemoteAddr())
			}
		})
	}
}

// TestProxyHeaderSplitAndFirstBytes: a header that comes a byte per write
// is read whole, and the client's first bytes, in the same write as the
// header's last, are its first frame, intact.
func TestProxyHeaderSplitAndFirstBytes(t *testing.T) {
	for _, mode := range []proxyproto.Mode{proxyproto.V1, proxyproto.V2} {
		t.Run(mode.String(), func(t *testing.T) {
			r, rec := newRegistry(t, listener.Config{})
			info := start(t, r, listener.Spec{Framing: lines(), ProxyProtocol: mode})
			c := dial(t, info.Address)
			header := proxyproto.AppendV1(nil, client4, front4)
			if mode == proxyproto.V2 {
				header = proxyproto.AppendV2(nil, client4, front4, nil)
			}
			last := len(header) - 1
			for i := range last {
				if _, err := c.Write(header[i : i+1]); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.Write(append(header[last:last+1:last+1], "first\nsecond\n"...)); err != nil {
				t.Fatal(err)
			}
			opened := openedFrom(t, rec, client4.String())
			evs := rec.WaitFor(t, "two frames", func(evs []*event.Event) bool { return len(ofKind(evs, event.Data)) >= 2 })
			data := ofKind(evs, event.Data)
			if string(data[0].Data) != "first" || string(data[1].Data) != "second" || data[0].ConnectionID != opened.ConnectionID {
				t.Errorf("frames %q, %q, want \"first\", \"second\":\n%s", data[0].Data, data[1].Data, record.Describe(evs))
			}
		})
	}
}

// TestProxyHeaderInvalid: a connection without a valid header of a
// version taken is opened as the socket's peer and closed with
// PROXY_HEADER_INVALID, saying what was wrong, and none of its bytes is
// data; the listener goes on serving the next.
func TestProxyHeaderInvalid(t *testing.T) {
	tests := []struct {
		name string
		mode proxyproto.Mode
		send []byte
		says string
	}{
		{"no header", proxyproto.Any, []byte("hello gateway\n"), "not with"},
		{"malformed v1", proxyproto.V1, []byte("PROXY TCP4 1.2.3.4 nowhere 1 2\r\nhello\n"), "not an IP address"},
		{"v1 where v2 is taken", proxyproto.V2, append(proxyproto.AppendV1(nil, client4, front4), "hello\n"...), "version 1 header"},
		{"v2 where v1 is taken", proxyproto.V1, append(proxyproto.AppendV2(nil, client4, front4, nil), "hello\n"...), "version 2 header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newRegistry(t, listener.Config{})
			info := proxyListener(t, r, tt.mode)
			c := dial(t, info.Address)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, c); got != "" {
				t.Errorf("the refused client read %q", got)
			}
			opened := openedFrom(t, rec, c.LocalAddr().String())
			if reason := rec.waitClosed(t, opened.ConnectionID); reason != event.ReasonProxyHeaderInvalid {
				t.Errorf("closed with %v, want proxy_header_invalid", reason)
			}
			evs := rec.Events()
			if closed := closeEvent(evs, opened.ConnectionID); !strings.Contains(closed.Error, tt.says) {
				t.Errorf("close event says %q, want it to say %q", closed.Error, tt.says)
			}
			if d := ofKind(evs, event.Data); len(d) > 0 {
				t.Errorf("a refused connection's bytes became data:\n%s", record.Describe(evs))
			}
			good := dial(t, info.Address)
			header := proxyproto.AppendV1(nil, client4, front4)
			if tt.mode == proxyproto.V2 {
				header = proxyproto.AppendV2(nil, client4, front4, nil)
			}
			if _, err := good.Write(header); err != nil {
				t.Fatal(err)
			}
			echo(t, good, "next one served")
		})
	}
}

// TestProxyHeaderLate: a connection that has not sent its header within
// ProxyHeaderTimeout is closed with PROXY_HEADER_INVALID.
func TestProxyHeaderLate(t *testing.T) {
	old := listener.ProxyHeaderTimeout
	listener.ProxyHeaderTimeout = 50 * time.Millisecond
	t.Cleanup(func() { listener.ProxyHeaderTimeout = old })
	r, rec := newRegistry(t, listener.Config{})
	info := proxyListener(t, r, proxyproto.Any)
	c := dial(t, info.Address)
	if _, err := c.Write([]byte("PROXY TCP4 203.0.113.7")); err != nil { // and no more
		t.Fatal(err)
	}
	if got := readAll(t, c); got != "" {
		t.Errorf("the late client read %q", got)
	}
	opened := openedFrom(t, rec, c.LocalAddr().String())
	if reason := rec.waitClosed(t, opened.ConnectionID); reason != event.ReasonProxyHeaderInvalid {
		t.Errorf("closed with %v, want proxy_header_invalid", reason)
	}
	if closed := closeEvent(rec.Events(), opened.ConnectionID); !strings.Contains(closed.Error, "within") {
		t.Errorf("close event says %q, want it to say the header was late", closed.Error)
	}
}

// TestProxyHeaderStop: a connection still sending its header when the
// listener stops is closed with the stop's reason, and the stop does not
// wait for it.
func TestProxyHeaderStop(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := proxyListener(t, r, proxyproto.V1)
	c := dial(t, info.Address)
	if _, err := c.Write([]byte("PROXY TCP4")); err != nil {
		t.Fatal(err)
	}
	// Accepted: counted by the listener, its header awaited.
	rec.WaitFor(t, "the accept", func([]*event.Event) bool {
		got, err := r.Get(info.ID)
		return err == nil && got.ConnectionsTotal == 1
	})
	if _, err := r.Stop(ctx(t), info.ID, longDrain); err != nil {
		t.Fatal(err)
	}
	opened := openedFrom(t, rec, c.LocalAddr().String())
	if reason := rec.waitClosed(t, opened.ConnectionID); reason != event.ReasonListenerStopped {
		t.Errorf("closed with %v, want listener_stopped", reason)
	}
}

// TestProxyHeaderTLS: with TLS the header comes first, in the clear, then
// the handshake; the connection is the header's client.
func TestProxyHeaderTLS(t *testing.T) {
	ca := servertest.NewCA(t)
	certPEM, keyPEM := ca.IssueLoopback(t)
	cert := servertest.KeyPair(t, certPEM, keyPEM)
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{
		Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}, ProxyProtocol: proxyproto.V2,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	raw := dial(t, info.Address)
	if _, err := raw.Write(proxyproto.AppendV2(nil, client4, front4, nil)); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	echo(t, c, "over TLS")
	opened := openedFrom(t, rec, client4.String())
	if opened.LocalAddr != raw.RemoteAddr().String() {
		t.Errorf("local address %s, want %s", opened.LocalAddr, raw.RemoteAddr())
	}
}

// TestProxyHeaderPerIP: the per-IP limit counts the client each header
// names, not the balancer: two connections naming one client take its one
// slot and the second is refused, while a third naming another client,
// from the same balancer, gets in.
func TestProxyHeaderPerIP(t *testing.T) {
	r, rec := newGateway(t, listener.Config{}, registry.Config{MaxConnectionsPerIP: 1})
	info := proxyListener(t, r, proxyproto.V1)
	connect := func(src netip.AddrPort) net.Conn {
		c := servertest.DialFrom(t, "127.0.0.2", info.Address)
		if _, err := c.Write(proxyproto.AppendV1(nil, src, front4)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := connect(client4)
	echo(t, first, "first")

	second := connect(netip.AddrPortFrom(client4.Addr(), 51001))
	if got := readAll(t, second); got != "" {
		t.Errorf("refused client read %q", got)
	}
	refused := openedFrom(t, rec, "203.0.113.7:51001")
	if reason := rec.waitClosed(t, refused.ConnectionID); reason != event.ReasonLimitReached {
		t.Errorf("second connection of one client closed with %v, want limit_reached", reason)
	}

	third := connect(netip.MustParseAddrPort("203.0.113.8:51000"))
	echo(t, third, "another client")
	echo(t, first, "first still served")
}
