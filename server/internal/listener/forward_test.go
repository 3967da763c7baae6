package listener_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/page"
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
// listener dials its target through the registry's Dialer, with the
// listener's address and TLS, so that nothing dials around the policy.
func TestForwardDialsThroughDialer(t *testing.T) {
	dials := make(chan dialer.DialRequest, 4)
	r, rec := newRegistry(t, listener.Config{Dialer: dialFunc(func(ctx context.Context, req dialer.DialRequest) (net.Conn, error) {
		dials <- req
		return nil, errors.New("no target in this test")
	})})
	info := start(t, r, listener.Spec{Forward: &listener.Forward{Address: "target.example:7"}})
	c, err := net.Dial("tcp", info.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if req := <-dials; req.Address != "target.example:7" || req.TLS != nil {
		t.Errorf("dialed %+v, want target.example:7 without TLS", req)
	}
	evs := rec.waitCount(t, event.ConnectionClosed, 1)
	closed := ofKind(evs, event.ConnectionClosed)[0]
	if closed.Error == "" || closed.CloseReason != event.ReasonForwardFailed || closed.TargetReason != event.ReasonForwardFailed {
		t.Errorf("closed with %v, error %q; want forward_failed saying why", closed.CloseReason, closed.Error)
	}
	if s := r.Stats(); s.ForwardDialFailures != 1 {
		t.Errorf("Stats().ForwardDialFailures = %d, want 1", s.ForwardDialFailures)
	}
}

type dialFunc func(ctx context.Context, req dialer.DialRequest) (net.Conn, error)

func (f dialFunc) Dial(ctx context.Context, req dialer.DialRequest) (net.Conn, error) {
	return f(ctx, req)
}
