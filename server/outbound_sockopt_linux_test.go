package server_test

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// socketOf returns the descriptor, in this process (where servertest's
// gateway runs), of the TCP socket bound to local.
func socketOf(t *testing.T, local string) int {
	t.Helper()
	want, err := netip.ParseAddrPort(local)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			continue
		}
		if in, ok := sa.(*syscall.SockaddrInet4); ok && netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port)) == want {
			return fd
		}
	}
	t.Fatalf("no socket of this process is bound to %s", local)
	return -1
}

// Connect's keep_alive and tcp_user_timeout are the socket's, on every
// generation; keep_alive.disabled turns the probes off.
func TestConnectSocketOptions(t *testing.T) {
	srv := servertest.NewLineServer(t, servertest.EchoLine)
	g := servertest.Start(t, server.Config{})
	check := func(c *tcpgatev1.Connection, keepAlive, idle, userMS int) {
		t.Helper()
		fd := socketOf(t, c.GetLocalAddress())
		for _, o := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, keepAlive},
			{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, idle},
			{"TCP_USER_TIMEOUT", syscall.IPPROTO_TCP, 0x12, userMS},
		} {
			if o.want < 0 {
				continue
			}
			got, err := syscall.GetsockoptInt(fd, o.level, o.opt)
			if err != nil {
				t.Fatal(err)
			}
			if (o.opt == syscall.SO_KEEPALIVE && (got != 0) != (o.want != 0)) || (o.opt != syscall.SO_KEEPALIVE && got != o.want) {
				t.Errorf("%s of %s = %d, want %d", o.name, c.GetConnectionId(), got, o.want)
			}
		}
	}
	set := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "set", Address: srv.Addr(),
		KeepAlive:      &tcpgatev1.TcpKeepAlive{Idle: durationpb.New(7 * time.Second), Interval: durationpb.New(2 * time.Second), Count: 3},
		TcpUserTimeout: durationpb.New(2500 * time.Millisecond),
		Reconnect:      &tcpgatev1.Reconnect{InitialBackoff: ms(20), MaxBackoff: ms(50)}})
	check(set, 1, 7, 2500)
	off := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "off", Address: srv.Addr(), KeepAlive: &tcpgatev1.TcpKeepAlive{Disabled: true}})
	check(off, 0, -1, 0)
	def := g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "def", Address: srv.Addr()})
	check(def, 1, 15, 0)

	// The next socket of "set" has them too.
	srv.Kill()
	srv.Start()
	var again *tcpgatev1.Connection
	servertest.Eventually(t, "set connected again", func() bool {
		r, err := g.Client.GetConnection(servertest.Context(t), &tcpgatev1.GetConnectionRequest{ConnectionId: "set"})
		again = r.GetConnection()
		return err == nil && again.GetGeneration() == 2 && again.GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if _, _, err := net.SplitHostPort(again.GetLocalAddress()); err != nil {
		t.Fatalf("generation 2's local address %q: %v", again.GetLocalAddress(), err)
	}
	check(again, 1, 7, 2500)
}
