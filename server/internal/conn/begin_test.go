package conn_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
)

// Sends begun in turn (Begin) are written in the order they began, each
// caller waiting for its own reply (Wait) concurrently, in any order: the
// replies of an in-order peer go to the sends they answer.
func TestBeginOrdersWaitsApart(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec})
	const n = 20
	pend := make([]*conn.Pending, n)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for i := range n {
		p, err := c.Begin(ctx, fmt.Appendf(nil, "q%d\n", i), conn.Await{Mode: await.Frame, MaxBytes: 64})
		if err != nil {
			t.Fatalf("Begin %d: %v", i, err)
		}
		pend[i] = p
	}
	want := ""
	for i := range n {
		want += fmt.Sprintf("q%d\n", i)
	}
	if got := readN(t, cc, len(want)); got != want {
		t.Fatalf("peer read %q, want the sends in the order they began", got)
	}
	var wg sync.WaitGroup
	for i := n - 1; i >= 0; i-- { // waits in reverse order
		wg.Go(func() {
			reply, err := pend[i].Wait(ctx)
			if err != nil || string(reply) != fmt.Sprintf("a%d", i) {
				t.Errorf("Wait %d = %q, %v; want a%d", i, reply, err, i)
			}
		})
	}
	for i := range n {
		fmt.Fprintf(cc, "a%d\n", i)
	}
	wg.Wait()
}

// Generation is stamped on every event of the connection, and LastWrite
// moves on with each write, from the time the connection opened.
func TestGenerationAndLastWrite(t *testing.T) {
	rec := newRecorder()
	c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: rec, Origin: event.Outbound, Generation: 7})
	opened := c.LastWrite()
	if opened.IsZero() || time.Since(opened) > testTimeout {
		t.Fatalf("LastWrite of a new connection = %v, want when it opened", opened)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := c.Send(context.Background(), []byte("x\n"), conn.Await{}); err != nil {
		t.Fatal(err)
	}
	if !c.LastWrite().After(opened) {
		t.Fatalf("LastWrite after a write = %v, not after %v", c.LastWrite(), opened)
	}
	readN(t, cc, 2)
	fmt.Fprint(cc, "line\npart")
	_ = cc.CloseWrite()
	for _, e := range rec.waitClosed(t) {
		if e.Generation != 7 || e.Origin != event.Outbound {
			t.Errorf("event %v: generation %d origin %v, want 7 outbound", e.Kind, e.Generation, e.Origin)
		}
	}
}
