package listener_test

import (
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

// TestMaxConnectionsPerIP: one peer IP gets at most MaxConnectionsPerIP
// slots over every listener; the next is opened and closed with
// LIMIT_REACHED, while another IP still gets in, and a slot given back is
// free again.
func TestMaxConnectionsPerIP(t *testing.T) {
	r, rec := newGateway(t, listener.Config{}, registry.Config{MaxConnections: 100, MaxConnectionsPerIP: 2, PerIPLoopback: true})
	spec := listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}}
	a, b := start(t, r, spec), start(t, r, spec)
	// The peer's two slots, one on each listener: the bound is the
	// registry's, not a listener's.
	first := servertest.DialFrom(t, "127.0.0.2", a.Address)
	connID(t, r, first)
	second := servertest.DialFrom(t, "127.0.0.2", b.Address)
	connID(t, r, second)

	extra := servertest.DialFrom(t, "127.0.0.2", a.Address)
	if got := readAll(t, extra); got != "" {
		t.Errorf("refused client read %q", got)
	}
	evs := rec.waitCount(t, event.ConnectionClosed, 1)
	closed := ofKind(evs, event.ConnectionClosed)[0]
	if closed.CloseReason != event.ReasonLimitReached || closed.RemoteAddr != extra.LocalAddr().String() {
		t.Errorf("close event: %v of %s, want limit_reached of %s", closed.CloseReason, closed.RemoteAddr, extra.LocalAddr())
	}
	var opened bool
	for _, e := range ofKind(evs, event.ConnectionOpened) {
		opened = opened || e.ConnectionID == closed.ConnectionID
	}
	if !opened {
		t.Errorf("no connection_opened event for the refused connection:\n%s", record.Describe(evs))
	}

	// Another peer still gets in, and those let in still work.
	other := servertest.DialFrom(t, "127.0.0.3", a.Address)
	connID(t, r, other)
	echo(t, other, "another peer")
	echo(t, first, "still served")

	// A slot given back is the peer's again.
	_ = first.Close()
	closeEventOf(t, r, rec, first)
	again := servertest.DialFrom(t, "127.0.0.2", b.Address)
	connID(t, r, again)
	echo(t, again, "let in")
}

// TestMaxConnectionsPerIPLoopbackExempt: unless PerIPLoopback is set,
// loopback peers are not counted, so local tools may take every slot.
func TestMaxConnectionsPerIPLoopbackExempt(t *testing.T) {
	r, _ := newGateway(t, listener.Config{}, registry.Config{MaxConnectionsPerIP: 1})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	for range 3 {
		c := servertest.DialFrom(t, "127.0.0.2", info.Address)
		connID(t, r, c)
		echo(t, c, "exempt")
	}
}
