package hub_test

import (
	"sync"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/servertest/seed"
)

// TestReplaySince publishes 1..5, subscribes with Since, publishes 6..8 and
// closes: the subscriber must get exactly the ring's events from Since on,
// then the live ones.
func TestReplaySince(t *testing.T) {
	tests := []struct {
		name  string
		since uint64
		want  []uint64
	}{
		{"0 is live only", 0, span(6, 8)},
		{"1 replays all", 1, span(1, 8)},
		{"middle", 3, span(3, 8)},
		{"last", 5, span(5, 8)},
		{"next is live only", 6, span(6, 8)},
		// Past 6 is a *SequenceError: TestSubscribeSequenceOutOfRange.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			publish(h, events(5, 10)...)
			s := subscribe(t, h, hub.SubscribeOptions{Since: tt.since})
			publish(h, events(3, 10)...)
			h.Close()
			got := drainClosed(t, s)
			if !equal(seqs(got), tt.want) {
				t.Fatalf("Since=%d got %s, want %v", tt.since, describe(got), tt.want)
			}
		})
	}
}

// TestReplayWhilePublishing subscribes repeatedly while a publisher runs:
// each subscription must get every event from its Since to the end, with no
// gap and no duplicate where replay meets live. The publisher hands over
// after each chunk and goes straight on with the next, so every Subscribe
// runs while a chunk is being published, and none is left out by scheduling.
func TestReplayWhilePublishing(t *testing.T) {
	const chunks, perChunk = 60, 300
	const total = chunks * perChunk
	h := hub.New(hub.Config{Now: fixedNow})

	chunkDone := make(chan struct{})
	var pub sync.WaitGroup
	pub.Go(func() {
		defer close(chunkDone)
		for c := range chunks {
			for i := 0; i < perChunk; {
				n := min(1+i%7, perChunk-i)
				publish(h, events(n, 16)...)
				i += n
			}
			if c < chunks-1 {
				chunkDone <- struct{}{}
			}
		}
	})

	type sub struct {
		since uint64
		s     *hub.Subscriber
	}
	var subs []sub
	for range chunkDone {
		last := h.LastSequence()
		var since uint64
		switch len(subs) % 4 {
		case 0:
			since = last - 50 // replay a little
		case 1:
			since = last + 1 // the next event: live only, or a short replay
		case 2:
			since = max(1, last/2) // replay a lot
		case 3:
			since = 1 // replay everything
		}
		subs = append(subs, sub{since, subscribe(t, h, hub.SubscribeOptions{Since: since})})
	}
	pub.Wait()
	h.Close()
	if len(subs) != chunks-1 {
		t.Fatalf("%d subscriptions, want %d", len(subs), chunks-1)
	}
	for _, s := range subs {
		got := drainClosed(t, s.s)
		if !equal(seqs(got), span(s.since, total)) {
			t.Fatalf("Since=%d got %s, want %d..%d", s.since, describe(got), s.since, total)
		}
	}
}

// TestReplayRingEviction: a ring too small for what was asked yields one
// marker counting exactly the sequences it no longer holds when the
// subscriber reads (the 3 live events have pushed 3 more out), then the
// rest.
func TestReplayRingEviction(t *testing.T) {
	size := sizeOf(100)
	tests := []struct {
		name        string
		replayBytes int
		since       uint64
		want        string
	}{
		{"evicted start", 10*size + size/2, 1, "[drop(23) 24..33]"},
		{"evicted middle", 10 * size, 15, "[drop(9) 24..33]"},
		{"first held", 10 * size, 24, "[24..33]"},
		{"pushed out before it was read", 10 * size, 21, "[drop(3) 24..33]"},
		{"inside", 10 * size, 25, "[25..33]"},
		{"ring smaller than one event keeps the newest", 1, 1, "[drop(30) 31..33]"},
		{"ring smaller than one event, asking for the last replayed", 1, 30, "[drop(1) 31..33]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: tt.replayBytes})
			publish(h, events(30, 100)...)
			s := subscribe(t, h, hub.SubscribeOptions{Since: tt.since})
			publish(h, events(3, 100)...)
			h.Close()
			got := drainClosed(t, s)
			if describe(got) != tt.want {
				t.Fatalf("got %s, want %s", describe(got), tt.want)
			}
			checkAccounted(t, got, tt.since)
		})
	}
}

// TestReplayRingEvictionMixedSizes checks the ring against a model: it holds
// the longest run of newest events whose sizes fit ReplayBytes.
func TestReplayRingEvictionMixedSizes(t *testing.T) {
	r := seed.Rand(t)
	const limit = 64 << 10
	for round := range 20 {
		h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: limit})
		var sizes []int
		n := 50 + r.IntN(500)
		for range n {
			e := dataEvent("listener", "connection", r.IntN(2000))
			if r.IntN(50) == 0 {
				e.Data = make([]byte, limit) // alone bigger than the ring
			}
			sizes = append(sizes, e.Size())
			publish(h, e)
		}
		held, bytes := 0, 0
		for i := n - 1; i >= 0 && (held == 0 || bytes+sizes[i] <= limit); i-- {
			bytes += sizes[i]
			held++
		}
		firstHeld := uint64(n - held + 1)
		since := uint64(1 + r.IntN(n))

		s := subscribe(t, h, hub.SubscribeOptions{Since: since})
		h.Close()
		got := drainClosed(t, s)
		real, dropped, markers := split(got)
		wantDropped := uint64(0)
		if since < firstHeld {
			wantDropped = firstHeld - since
		}
		if dropped != wantDropped || markers > 1 {
			t.Fatalf("round %d: %d events, ring holds %d..%d, Since=%d: got %s, want one marker of %d",
				round, n, firstHeld, n, since, describe(got), wantDropped)
		}
		if !equal(seqs(real), span(max(since, firstHeld), uint64(n))) {
			t.Fatalf("round %d: Since=%d got %s, want %d..%d", round, since, describe(got), max(since, firstHeld), n)
		}
		checkAccounted(t, got, since)
	}
}

func TestReplayDisabled(t *testing.T) {
	tests := []struct {
		name  string
		since uint64
		want  string
	}{
		{"since 0", 0, "[6..8]"},
		{"since 1", 1, "[drop(5) 6..8]"},
		{"since 4", 4, "[drop(2) 6..8]"},
		{"since next", 6, "[6..8]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: -1})
			publish(h, events(5, 10)...)
			s := subscribe(t, h, hub.SubscribeOptions{Since: tt.since})
			publish(h, events(3, 10)...)
			h.Close()
			got := drainClosed(t, s)
			if describe(got) != tt.want {
				t.Fatalf("got %s, want %s", describe(got), tt.want)
			}
		})
	}
}

// TestReplayDefaultRing: ReplayBytes 0 means a real ring, not none.
func TestReplayDefaultRing(t *testing.T) {
	h := hub.New(hub.Config{})
	publish(h, events(1000, 1000)...)
	s := subscribe(t, h, hub.SubscribeOptions{Since: 1})
	h.Close()
	got := drainClosed(t, s)
	if !equal(seqs(got), span(1, 1000)) {
		t.Fatalf("got %s, want 1..1000", describe(got))
	}
}

// TestReplayMarkerWhereTheGapIs: a subscriber that resumes from a ring that
// lost the start of what it asked for, and then also overflows its live
// queue, must see each marker where its gap is: first the ring's loss before
// the replay, then the queue's loss before the newest live events.
func TestReplayMarkerWhereTheGapIs(t *testing.T) {
	size := sizeOf(100)
	h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: 10 * size})
	defer h.Close()
	publish(h, events(20, 100)...) // ring holds 11..20
	s := subscribe(t, h, hub.SubscribeOptions{Since: 1, QueueBytes: 2 * size})
	publish(h, events(5, 100)...) // 21..25: the ring holds 16..25, the queue keeps 24..25
	got := collect(t, s, 7)
	if want := "[drop(15) 16..20 drop(3) 24..25]"; describe(got) != want {
		t.Errorf("got %s, want %s", describe(got), want)
	}
	checkAccounted(t, got, 1)
}
