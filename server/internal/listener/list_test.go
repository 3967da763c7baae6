package listener_test

import (
	"errors"
	"runtime"
	"slices"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// TestListConnsPageCost: a page of 10 of 2000 connections copies the 10,
// not the 2000: what one ListConns allocates stays far below what a
// snapshot of every connection takes (2000 ConnInfo are about 300 KiB).
func TestListConnsPageCost(t *testing.T) {
	const n = 2000
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	remotes := make([]string, 0, n)
	for range n {
		remotes = append(remotes, dial(t, info.Address).LocalAddr().String())
	}
	rec.waitCount(t, event.ConnectionOpened, n)

	// The whole list, page by page, is every connection in order.
	var got []string
	var after uint64
	for {
		p, err := r.conns.ListConns(registry.Filter{}, 10, after)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range p.Conns {
			got = append(got, c.RemoteAddr)
			if c.State != registry.Open {
				t.Fatalf("%s: state %v, want ConnOpen", c.ID, c.State)
			}
		}
		if !p.More {
			break
		}
		after = p.Last
	}
	if !slices.Equal(got, remotes) {
		t.Fatalf("%d connections listed, want the %d dialed in order", len(got), n)
	}

	const budget = 32 << 10
	cost := uint64(1 << 62)
	for range 5 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		p, err := r.conns.ListConns(registry.Filter{RemotePrefix: "127.0.0.1:"}, 10, 0)
		runtime.ReadMemStats(&after)
		if err != nil || len(p.Conns) != 10 || !p.More {
			t.Fatalf("ListConns: %d connections, more %v, %v", len(p.Conns), p.More, err)
		}
		cost = min(cost, after.TotalAlloc-before.TotalAlloc)
	}
	t.Logf("a page of 10 of %d connections allocates %d bytes", n, cost)
	if cost > budget {
		t.Errorf("a page of 10 of %d connections allocates %d bytes, want at most %d: it copies more than its page", n, cost, budget)
	}

	if _, err := r.conns.ListConns(registry.Filter{}, -1, 0); !errors.Is(err, page.ErrInvalidSize) {
		t.Errorf("size -1: %v, want page.ErrInvalidSize", err)
	}
	if _, err := r.conns.ListConns(registry.Filter{RemotePrefix: string(make([]byte, registry.MaxRemotePrefixBytes+1))}, 0, 0); !errors.Is(err, registry.ErrInvalidFilter) {
		t.Errorf("a prefix of %d bytes: %v, want ErrInvalidFilter", registry.MaxRemotePrefixBytes+1, err)
	}
}
