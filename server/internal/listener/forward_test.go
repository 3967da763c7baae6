package listener_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// TestStartForwardRefused: the registry itself, whoever calls Start,
// refuses a forward it cannot relay, naming the field, and starts nothing.
func TestStartForwardRefused(t *testing.T) {
	fwd := &listener.Forward{Address: "127.0.0.1:9"}
	withDialer := listener.Config{Dialer: &dialer.Dialer{}}
	for _, tt := range []struct {
		name  string
		cfg   listener.Config
		spec  listener.Spec
		field string
	}{
		{"no address", withDialer, listener.Spec{Forward: &listener.Forward{}}, "forward.address"},
		{"with an auto reply", withDialer, listener.Spec{Forward: fwd, AutoReply: conn.AutoReply{Mode: conn.Echo}}, "forward"},
		{"no dialer", listener.Config{}, listener.Spec{Forward: fwd}, "forward"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newRegistry(t, tt.cfg)
			tt.spec.Host = "127.0.0.1"
			_, err := r.Start(context.Background(), tt.spec)
			var fe *page.FieldError
			if !errors.Is(err, listener.ErrInvalidSpec) || !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Start = %v, want a *page.FieldError naming %s wrapping ErrInvalidSpec", err, tt.field)
			}
			if got := len(r.List()); got != 0 {
				t.Errorf("%d listeners after a refused Start, want none", got)
			}
		})
	}
}

// TestForwardDialsThroughDialer: every accepted connection of a forwarding
// listener dials its target through the registry's Dialer, whose policy is
// checked at that dial: allowed, the bytes reach the target; denied, the
// target sees no connection and the client's closes with FORWARD_FAILED.
func TestForwardDialsThroughDialer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			c.Close()
			got <- string(b)
		}
	}()
	fwd := &listener.Forward{Address: ln.Addr().String()}
	r, rec := newRegistry(t, listener.Config{Dialer: &dialer.Dialer{}})
	info := start(t, r, listener.Spec{Forward: fwd})

	c, err := net.Dial("tcp", info.Address)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("through"))
	_ = c.(*net.TCPConn).CloseWrite()
	if s := <-got; s != "through" {
		t.Errorf("the target got %q, want through", s)
	}
	c.Close()

	deny, err := policy.ParseRules("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r, rec = newRegistry(t, listener.Config{Dialer: &dialer.Dialer{Policy: &policy.Policy{DenyDial: deny}}})
	info = start(t, r, listener.Spec{Forward: fwd})
	c, err = net.Dial("tcp", info.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	evs := rec.waitCount(t, event.ConnectionClosed, 1)
	closed := ofKind(evs, event.ConnectionClosed)[0]
	if closed.CloseReason != event.ReasonForwardFailed || closed.TargetReason != event.ReasonForwardFailed || !strings.Contains(closed.Error, "denied") {
		t.Errorf("closed with %v (target %v), error %q; want forward_failed saying the policy denied it", closed.CloseReason, closed.TargetReason, closed.Error)
	}
	select {
	case s := <-got:
		t.Errorf("the target got a connection (%q) the policy denies", s)
	default:
	}
	if s := r.Stats(); s.ForwardDialFailures != 1 {
		t.Errorf("Stats().ForwardDialFailures = %d, want 1", s.ForwardDialFailures)
	}
}
