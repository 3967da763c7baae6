package hub_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestNextBatches: Next returns every ready event at once, up to about 1 MiB
// counted by Event.Size, the rest on later calls; a larger event comes alone. It holds
// for replayed events, live ones and the switch between them.
func TestNextBatches(t *testing.T) {
	const K = 1 << 10
	seq := func(sizes ...int) []int { return sizes }
	rep := func(n, size int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = size
		}
		return out
	}
	cat := func(parts ...[]int) []int {
		var out []int
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name    string
		sizes   []int // payload of each event
		batches []int // events per Next call
	}{
		{"small events in one batch", rep(100, 100), seq(100)},
		{"empty payloads in one batch", rep(1000, 0), seq(1000)},
		{"just under 1 MiB with overhead", rep(4, 256*K-sizeOf(0)), seq(4)},
		{"payload alone exactly 1 MiB", rep(4, 256*K), seq(3, 1)},
		{"just over 1 MiB", rep(5, 256*K-sizeOf(0)), seq(4, 1)},
		{"600 KiB each", rep(3, 600*K), seq(1, 1, 1)},
		{"large event alone", cat(rep(10, K), seq(2<<20), rep(10, K)), seq(10, 1, 10)},
		{"large events alone", cat(seq(3<<20, 2<<20), rep(3, K)), seq(1, 1, 3)},
		{"many batches", rep(40, 100*K), seq(10, 10, 10, 10)},
	}
	modes := []struct {
		name   string
		replay int // events published before Subscribe with Since 1, -1 for all
	}{
		{"live", 0},
		{"replay", -1},
		{"replay then live", 2},
	}
	for _, m := range modes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				h := hub.New(hub.Config{Now: fixedNow})
				defer h.Close()
				evs := make([]*event.Event, len(tt.sizes))
				for i, n := range tt.sizes {
					evs[i] = dataEvent("l1", "c1", n)
				}
				split := m.replay
				if split < 0 {
					split = len(evs)
				}
				publish(h, evs[:split]...)
				s := subscribe(t, h, hub.SubscribeOptions{Since: 1})
				publish(h, evs[split:]...)

				var got []int
				received := 0
				for received < len(evs) {
					batch := next(t, s)
					size := 0
					for i, e := range batch {
						if e != evs[received+i] {
							t.Fatalf("batch %d, event %d: got sequence %d, want %d", len(got), i, e.Sequence, evs[received+i].Sequence)
						}
						size += e.Size()
					}
					if len(batch) > 1 && size > maxBatch {
						t.Fatalf("batch %d holds %d events of %d bytes, more than %d", len(got), len(batch), size, maxBatch)
					}
					got = append(got, len(batch))
					received += len(batch)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.batches) {
					t.Fatalf("batches of %v events, want %v", got, tt.batches)
				}
			})
		}
	}
}

// TestNextAppendsToBuf: Next appends to the slice it is given.
func TestNextAppendsToBuf(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{})
	keep := &event.Event{Kind: event.Data}
	buf := make([]*event.Event, 1, 8)
	buf[0] = keep
	publish(h, events(3, 10)...)
	got, err := s.Next(context.Background(), buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != keep || !equal(seqs(got[1:]), span(1, 3)) {
		t.Fatalf("Next(buf) = %s, want buf's event then 1..3", describe(got))
	}
	publish(h, events(2, 10)...)
	got, err = s.Next(context.Background(), got[:0])
	if err != nil || !equal(seqs(got), span(4, 5)) {
		t.Fatalf("Next(buf[:0]) = %s, %v; want 4..5", describe(got), err)
	}
}
