package dialer_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// TestDialChecksEveryAttempt: Dial resolves and checks the policy at each
// call, so a name that starts resolving to a denied address is refused
// from then on, and a peer that accepted before sees no new connection.
func TestDialChecksEveryAttempt(t *testing.T) {
	accepted := make(chan struct{}, 4)
	addr := peer(t, func(c *net.TCPConn) {
		accepted <- struct{}{}
		buf := make([]byte, 1)
		_, _ = c.Read(buf)
	})
	_, port, _ := net.SplitHostPort(addr)
	deny, err := policy.ParseRules("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The name resolves to the peer's 127.0.0.1, allowed at first.
	pol := &policy.Policy{Resolver: resolver{netip.MustParseAddr("127.0.0.1")}}
	d := dialer.Dialer{Policy: pol}
	nc, err := d.Dial(ctx, dialer.DialRequest{Address: "device.test:" + port})
	if err != nil {
		t.Fatalf("Dial allowed = %v", err)
	}
	nc.Close()
	<-accepted

	pol.DenyDial = deny
	if nc, err := d.Dial(ctx, dialer.DialRequest{Address: "device.test:" + port}); !errors.Is(err, policy.ErrDenied) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("Dial after the name resolves to a denied address = %v, want policy.ErrDenied", err)
	}
	select {
	case <-accepted:
		t.Error("the denied peer accepted a connection")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestDialErrors: a refused dial is ErrRefused and names the address.
func TestDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d := dialer.Dialer{Policy: &policy.Policy{}}
	_, err = d.Dial(ctx, dialer.DialRequest{Address: addr})
	if !errors.Is(err, dialer.ErrRefused) {
		t.Fatalf("Dial to a closed port = %v, want ErrRefused", err)
	}
	if want := addr; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
}

// TestDialSocketOptions: the keep-alive settings and TCP_USER_TIMEOUT
// asked for are the socket's.
func TestDialSocketOptions(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_USER_TIMEOUT and the keep-alive socket options are read back on Linux only")
	}
	addr := peer(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		_, _ = c.Read(buf)
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d := dialer.Dialer{Policy: &policy.Policy{}}
	for _, tt := range []struct {
		name      string
		req       dialer.DialRequest
		keepAlive int // SO_KEEPALIVE
		idle      int // TCP_KEEPIDLE, seconds; 0: not checked
		userMS    int // TCP_USER_TIMEOUT
	}{
		{"defaults", dialer.DialRequest{}, 1, 15, 0},
		{"set", dialer.DialRequest{KeepAlive: net.KeepAliveConfig{Enable: true, Idle: 3 * time.Second, Interval: time.Second, Count: 2}, UserTimeout: 1500 * time.Millisecond}, 1, 3, 1500},
		{"keep-alive off", dialer.DialRequest{NoKeepAlive: true}, 0, 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Address = addr
			nc, err := d.Dial(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			rc, err := nc.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var ka, idle, user int
			var gerr error
			_ = rc.Control(func(fd uintptr) {
				if ka, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); gerr != nil {
					return
				}
				if idle, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE); gerr != nil {
					return
				}
				user, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, 0x12)
			})
			if gerr != nil {
				t.Fatal(gerr)
			}
			if (ka != 0) != (tt.keepAlive != 0) {
				t.Errorf("SO_KEEPALIVE = %d, want %d", ka, tt.keepAlive)
			}
			if tt.idle != 0 && idle != tt.idle {
				t.Errorf("TCP_KEEPIDLE = %d s, want %d", idle, tt.idle)
			}
			if user != tt.userMS {
				t.Errorf("TCP_USER_TIMEOUT = %d ms, want %d", user, tt.userMS)
			}
		})
	}
}
