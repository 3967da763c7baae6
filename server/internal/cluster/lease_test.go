package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// hookLog records what the lease hooks of each node did, in order.
type hookLog chan string

func (h hookLog) hooks(node string) LeaseHooks {
	return LeaseHooks{
		Take: func(id string, request []byte) { h <- node + " took " + id + " " + string(request) },
		Lost: func(id string, err error) { h <- node + " lost " + id + ": " + err.Error() },
	}
}

func (h hookLog) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case s := <-h:
		return s
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nothing within 30s", what)
		return ""
	}
}

// A node cut off from NATS while it keeps running gives its take-over
// connections up before another node takes their leases; exactly one
// node takes each, with the request it was given.
func TestLeaseTakenAfterPartition(t *testing.T) {
	ns := natstest.Start(t)
	detect := time.Second
	log := make(hookLog, 16)
	a := join(t, ns.URL(), "a", detect)
	b := join(t, ns.URL(), "b", detect)
	c := join(t, ns.URL(), "c", detect)
	for n, cl := range map[string]*Cluster{"a": a, "b": b, "c": c} {
		if err := cl.StartLeases(log.hooks(n)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := a.HoldLease(ctx, "dev.1", []byte("req-1")); err != nil {
		t.Fatal(err)
	}
	if err := b.HoldLease(ctx, "dev.1", []byte("req-1")); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("b holding a's lease: %v, want ErrLeaseHeld", err)
	}
	// a stays up but cannot reach NATS.
	a.nc.Close()
	first := log.next(t, "a giving its lease up")
	if !strings.HasPrefix(first, "a lost dev.1: not renewed for 1s") {
		t.Fatalf("first hook: %q, want a giving dev.1 up", first)
	}
	second := log.next(t, "another node taking the lease")
	if second != "b took dev.1 req-1" && second != "c took dev.1 req-1" {
		t.Fatalf("second hook: %q, want b or c taking dev.1 with its request", second)
	}
	taker := b
	if strings.HasPrefix(second, "c") {
		taker = c
	}
	select {
	case s := <-log:
		t.Fatalf("another hook after the take-over: %q", s)
	case <-time.After(3 * detect):
	}
	if got := taker.Held(); len(got) != 1 || got[0] != "dev.1" {
		t.Fatalf("the taker holds %v, want dev.1", got)
	}
	// Released: nobody takes it again.
	if err := taker.ReleaseLease(ctx, "dev.1"); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-log:
		t.Fatalf("a hook after the lease was released: %q", s)
	case <-time.After(3 * detect):
	}
}
