package listener_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

// TestListenerMaxConnections: the registry itself, whoever calls Start,
// refuses a listener whose max_connections is over
// --listener-max-connections with the error naming the field and the flag,
// gives one that sets none the bound, and keeps one that sets less.
func TestListenerMaxConnections(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{ListenerMaxConnections: 2})

	_, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1", MaxConnections: 3})
	var over *limits.FieldError
	if !errors.Is(err, listener.ErrInvalidSpec) || !errors.As(err, &over) {
		t.Fatalf("Start with max_connections 3 over a bound of 2 = %v, want a *limits.FieldError wrapping ErrInvalidSpec", err)
	}
	if over.Field != "max_connections" || over.Flag != "--listener-max-connections" || over.Limit != 2 || over.Got != 3 {
		t.Errorf("error names field %q flag %q limit %d got %d, want max_connections --listener-max-connections 2 3", over.Field, over.Flag, over.Limit, over.Got)
	}
	if want := "max_connections: must be at most 2 (--listener-max-connections), got 3"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if got := len(r.List()); got != 0 {
		t.Errorf("%d listeners after a refused Start, want none", got)
	}

	if info := start(t, r, listener.Spec{MaxConnections: 1}); info.MaxConnections != 1 {
		t.Errorf("max_connections 1 under a bound of 2: listener has %d, want 1", info.MaxConnections)
	}
	info := start(t, r, listener.Spec{})
	if info.MaxConnections != 2 {
		t.Fatalf("a listener that sets no max_connections has %d, want the bound 2", info.MaxConnections)
	}
	// The default is a bound that holds: a third connection is refused.
	for range 2 {
		connID(t, r, dial(t, info.Address))
	}
	extra := dial(t, info.Address)
	if got := readAll(t, extra); got != "" {
		t.Errorf("refused client read %q", got)
	}
	closed := ofKind(rec.waitCount(t, event.ConnectionClosed, 1), event.ConnectionClosed)[0]
	if closed.CloseReason != event.ReasonLimitReached || closed.ListenerID != info.ID {
		t.Errorf("close event: %v on %s, want limit_reached on %s", closed.CloseReason, closed.ListenerID, info.ID)
	}
}

// TestDefaultIdleTimeout: a listener that sets no idle timeout gets the
// registry's (--idle-timeout) and closes a silent connection with it; one
// that sets its own keeps it.
func TestDefaultIdleTimeout(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{IdleTimeout: 100 * time.Millisecond})
	if own := start(t, r, listener.Spec{IdleTimeout: time.Hour}); own.IdleTimeout != time.Hour {
		t.Errorf("a listener with idle_timeout 1h has %s", own.IdleTimeout)
	}
	info := start(t, r, listener.Spec{})
	if info.IdleTimeout != 100*time.Millisecond {
		t.Fatalf("a listener that sets no idle_timeout has %s, want the default 100ms", info.IdleTimeout)
	}
	c := dial(t, info.Address)
	id := connID(t, r, c)
	if got := rec.waitClosed(t, id); got != event.ReasonIdleTimeout {
		t.Errorf("reason %v, want idle_timeout", got)
	}
	readAll(t, c)
}
