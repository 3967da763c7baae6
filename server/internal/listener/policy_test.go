package listener_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// kernelPort returns a port the kernel picked on 127.0.0.1, still bound
// when keep is set (a port in use), else free again.
func kernelPort(t *testing.T, keep bool) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if keep {
		t.Cleanup(func() { _ = ln.Close() })
	} else {
		_ = ln.Close()
	}
	return ln.Addr().(*net.TCPAddr).Port
}

// TestStartPortUnderPolicy: the listener registry decides the port of a
// listener asking for port 0 under a narrowed --allow-listen: one of the
// allowed ports that is free, not the kernel's pick; when every allowed
// port is taken it says so; a port outside the rules is refused there,
// whoever calls Start.
func TestStartPortUnderPolicy(t *testing.T) {
	busy, free := kernelPort(t, true), kernelPort(t, false)
	rules, err := policy.ParseRules(fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", busy, free))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newRegistry(t, listener.Config{Policy: &policy.Policy{AllowListen: rules}})

	info, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1"})
	if err != nil {
		t.Fatalf("Start on port 0 with ports %d (in use) and %d allowed: %v", busy, free, err)
	}
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(free)); info.Address != want {
		t.Fatalf("port 0 bound %s, want %s: the only allowed port free", info.Address, want)
	}
	if info.Port != free {
		t.Errorf("Info.Port = %d, want the port chosen, %d", info.Port, free)
	}

	// Both allowed ports are taken now.
	_, err = r.Start(context.Background(), listener.Spec{Host: "127.0.0.1"})
	if !errors.Is(err, listener.ErrAddressInUse) || !strings.Contains(err.Error(), "no free port among 2 tried from --allow-listen") {
		t.Errorf("Start on port 0 with every allowed port taken = %v, want ErrAddressInUse saying so", err)
	}

	// Outside the rules: refused by the policy, before any bind.
	outside := kernelPort(t, false)
	_, err = r.Start(context.Background(), listener.Spec{Host: "127.0.0.1", Port: outside})
	var denied *policy.DeniedError
	if !errors.As(err, &denied) || denied.Flag != "--allow-listen" {
		t.Errorf("Start on port %d, outside --allow-listen = %v, want a denial naming --allow-listen", outside, err)
	}
	if _, err := r.Start(context.Background(), listener.Spec{Host: "::1"}); !errors.Is(err, policy.ErrDenied) {
		t.Errorf("Start on a host no rule allows = %v, want policy.ErrDenied", err)
	}
	if list := r.List(); len(list) != 1 {
		t.Errorf("%d listeners after the refused starts, want 1", len(list))
	}
}

// TestStartDefaultPolicy: without a policy the default one holds, never
// "anything goes": ports below 1024 are refused, port 0 is the kernel's.
func TestStartDefaultPolicy(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	if _, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1", Port: 80}); !errors.Is(err, policy.ErrDenied) {
		t.Errorf("Start on port 80 with the default policy = %v, want policy.ErrDenied", err)
	}
	start(t, r, listener.Spec{})
}
