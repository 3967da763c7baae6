package hub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

func TestSequencesAreContiguousFromOne(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	if got := h.LastSequence(); got != 0 {
		t.Fatalf("LastSequence before any event = %d, want 0", got)
	}
	s := subscribe(t, h, hub.SubscribeOptions{})

	var published []*event.Event
	for i, n := range []int{1, 3, 1, 10, 2} {
		evs := events(n, 10)
		if i%2 == 0 {
			publish(h, evs...)
		} else if err := h.Publish(timeoutCtx(t), evs...); err != nil {
			t.Fatalf("PublishWait: %v", err)
		}
		published = append(published, evs...)
		if got, want := h.LastSequence(), uint64(len(published)); got != want {
			t.Fatalf("LastSequence after %d events = %d, want %d", len(published), got, want)
		}
	}
	for i, e := range published {
		if e.Sequence != uint64(i+1) {
			t.Fatalf("published event %d got sequence %d, want %d", i, e.Sequence, i+1)
		}
	}

	got := collect(t, s, len(published))
	if want := span(1, uint64(len(published))); !equal(seqs(got), want) {
		t.Fatalf("subscriber got %s, want 1..%d", describe(got), len(published))
	}
	for i, e := range got {
		if e != published[i] {
			t.Fatalf("event %d: subscriber got a different *Event than was published", i)
		}
	}
}

func TestTimeIsStampedWhenZero(t *testing.T) {
	set := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	tests := []struct {
		name string
		in   time.Time
		want time.Time
	}{
		{"zero time gets Config.Now", time.Time{}, epoch},
		{"set time is kept", set, set},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			s := subscribe(t, h, hub.SubscribeOptions{})
			e := dataEvent("l1", "c1", 1)
			e.Time = tt.in
			publish(h, e)
			got := next(t, s)
			if len(got) != 1 || !got[0].Time.Equal(tt.want) {
				t.Fatalf("got %v at %v, want one event at %v", describe(got), got[0].Time, tt.want)
			}
		})
	}

	t.Run("nil Now uses the wall clock", func(t *testing.T) {
		h := hub.New(hub.Config{})
		defer h.Close()
		before := time.Now()
		e := dataEvent("l1", "c1", 1)
		publish(h, e)
		if e.Time.Before(before) || e.Time.After(time.Now()) {
			t.Fatalf("event stamped %v, want between %v and now", e.Time, before)
		}
	})
}

// TestConcurrentPublishersKeepOrder runs several publishers at once against
// several subscribers: every subscriber must see every event, in one
// gateway-wide order without gaps, with each publisher's events in the order
// it published them.
func TestConcurrentPublishersKeepOrder(t *testing.T) {
	const (
		publishers = 8
		perPub     = 400
		subs       = 3
		total      = publishers * perPub
	)
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()

	results := make([][]*event.Event, subs)
	var readers sync.WaitGroup
	for i := range subs {
		s := subscribe(t, h, hub.SubscribeOptions{})
		ctx := timeoutCtx(t)
		readers.Go(func() {
			var got []*event.Event
			for len(got) < total {
				evs, err := s.Next(ctx, nil)
				got = append(got, evs...)
				if err != nil {
					break
				}
			}
			results[i] = got
		})
	}

	start := make(chan struct{})
	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Go(func() {
			<-start
			l := fmt.Sprintf("p%d", p)
			for i := 0; i < perPub; {
				n := min(1+(i+p)%5, perPub-i) // batches of 1 to 5
				evs := make([]*event.Event, n)
				for j := range evs {
					evs[j] = numbered(l, i+j)
				}
				if p%2 == 0 {
					publish(h, evs...)
				} else if err := h.Publish(context.Background(), evs...); err != nil {
					t.Errorf("PublishWait: %v", err)
					return
				}
				i += n
			}
		})
	}
	close(start)
	pubs.Wait()
	readers.Wait()

	for i, got := range results {
		if !equal(seqs(got), span(1, total)) {
			t.Fatalf("subscriber %d got %s, want 1..%d", i, describe(got), total)
		}
		nextOf := map[string]int{}
		for _, e := range got {
			if n := number(t, e); n != nextOf[e.ListenerID] {
				t.Fatalf("subscriber %d: publisher %s's event %d arrived when %d was due", i, e.ListenerID, n, nextOf[e.ListenerID])
			}
			nextOf[e.ListenerID]++
		}
		for p := range publishers {
			if n := nextOf[fmt.Sprintf("p%d", p)]; n != perPub {
				t.Fatalf("subscriber %d got %d events of publisher %d, want %d", i, n, p, perPub)
			}
		}
	}
}

// filterFixture is published in this order, so event i has sequence i+1.
func filterFixture() []*event.Event {
	return []*event.Event{
		{Kind: event.ListenerStarted, ListenerID: "A"},                                                                                   // 1
		{Kind: event.ConnectionOpened, ListenerID: "A", ConnectionID: "c1", Origin: event.Accepted},                                      // 2
		{Kind: event.Data, ListenerID: "A", ConnectionID: "c1", Origin: event.Accepted, Data: []byte("x")},                               // 3
		{Kind: event.ListenerStarted, ListenerID: "B"},                                                                                   // 4
		{Kind: event.ConnectionOpened, ListenerID: "B", ConnectionID: "c2", Origin: event.Outbound},                                      // 5
		{Kind: event.Data, ListenerID: "B", ConnectionID: "c2", Origin: event.Outbound, Data: []byte("y")},                               // 6
		{Kind: event.Data, ListenerID: "A", ConnectionID: "c1", Origin: event.Accepted, Data: []byte("z")},                               // 7
		{Kind: event.ConnectionClosed, ListenerID: "A", ConnectionID: "c1", Origin: event.Accepted, CloseReason: event.ReasonPeerClosed}, // 8
		{Kind: event.Data, ListenerID: "B", ConnectionID: "c2", Origin: event.Outbound, Data: []byte("w")},                               // 9
		{Kind: event.ListenerStopped, ListenerID: "A"},                                                                                   // 10
	}
}

func TestFilters(t *testing.T) {
	tests := []struct {
		name   string
		filter hub.Filter
		want   []uint64
	}{
		{"empty matches all", hub.Filter{}, span(1, 10)},
		{"one listener", hub.Filter{ListenerIDs: []string{"A"}}, []uint64{1, 2, 3, 7, 8, 10}},
		{"two listeners", hub.Filter{ListenerIDs: []string{"B", "A"}}, span(1, 10)},
		{"unknown listener", hub.Filter{ListenerIDs: []string{"C"}}, nil},
		{"one connection", hub.Filter{ConnectionIDs: []string{"c2"}}, []uint64{5, 6, 9}},
		{"one kind", hub.Filter{Kinds: []event.Kind{event.Data}}, []uint64{3, 6, 7, 9}},
		{"two kinds", hub.Filter{Kinds: []event.Kind{event.ConnectionOpened, event.ConnectionClosed}}, []uint64{2, 5, 8}},
		{"listener and kind", hub.Filter{ListenerIDs: []string{"A"}, Kinds: []event.Kind{event.Data}}, []uint64{3, 7}},
		{"listener and foreign connection", hub.Filter{ListenerIDs: []string{"B"}, ConnectionIDs: []string{"c1"}}, nil},
		{"listener, connection and kinds", hub.Filter{
			ListenerIDs:   []string{"A"},
			ConnectionIDs: []string{"c1"},
			Kinds:         []event.Kind{event.Data, event.ConnectionClosed},
		}, []uint64{3, 7, 8}},
		{"connections exclude listener events", hub.Filter{ConnectionIDs: []string{"c1", "c2"}}, []uint64{2, 3, 5, 6, 7, 8, 9}},
		{"accepted origin", hub.Filter{Origins: []event.Origin{event.Accepted}}, []uint64{2, 3, 7, 8}},
		{"outbound origin", hub.Filter{Origins: []event.Origin{event.Outbound}}, []uint64{5, 6, 9}},
		{"both origins exclude listener events", hub.Filter{Origins: []event.Origin{event.Outbound, event.Accepted, event.Outbound}}, []uint64{2, 3, 5, 6, 7, 8, 9}},
		{"an undefined origin matches nothing", hub.Filter{Origins: []event.Origin{event.OriginNone, 9}}, nil},
		{"listener and origin", hub.Filter{ListenerIDs: []string{"B"}, Origins: []event.Origin{event.Accepted}}, nil},
		{"origin and kind", hub.Filter{Origins: []event.Origin{event.Outbound}, Kinds: []event.Kind{event.Data}}, []uint64{6, 9}},
	}
	for _, mode := range []string{"live", "replay"} {
		for _, tt := range tests {
			t.Run(mode+"/"+tt.name, func(t *testing.T) {
				h := hub.New(hub.Config{Now: fixedNow})
				var s *hub.Subscriber
				if mode == "live" {
					s = subscribe(t, h, hub.SubscribeOptions{Filter: tt.filter})
				}
				publish(h, filterFixture()...)
				if mode == "replay" {
					s = subscribe(t, h, hub.SubscribeOptions{Filter: tt.filter, Since: 1})
				}
				h.Close()
				got := drainClosed(t, s)
				if !equal(seqs(got), tt.want) {
					t.Fatalf("got %s, want %v", describe(got), tt.want)
				}
				for _, e := range got {
					if !tt.filter.Match(e) {
						t.Fatalf("event %d (%v on %s/%s) does not match the filter", e.Sequence, e.Kind, e.ListenerID, e.ConnectionID)
					}
				}
			})
		}
	}
}

// TestMarkersIgnoreFilters: whatever a subscriber filters on, it is told
// when it missed events.
func TestMarkersIgnoreFilters(t *testing.T) {
	filters := []struct {
		name   string
		filter hub.Filter
	}{
		{"kinds Data", hub.Filter{Kinds: []event.Kind{event.Data}}},
		{"kinds ConnectionOpened and Data", hub.Filter{Kinds: []event.Kind{event.ConnectionOpened, event.Data}}},
		{"listener", hub.Filter{ListenerIDs: []string{"l1"}}},
		{"listener, connection, kind", hub.Filter{ListenerIDs: []string{"l1"}, ConnectionIDs: []string{"c1"}, Kinds: []event.Kind{event.Data}}},
	}
	for _, f := range filters {
		t.Run("queue overflow/"+f.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			s := subscribe(t, h, hub.SubscribeOptions{Filter: f.filter, QueueBytes: 2 * sizeOf(10)})
			publish(h, events(10, 10)...)
			got := next(t, s)
			if want := "[drop(8) 9..10]"; describe(got) != want {
				t.Fatalf("got %s, want %s", describe(got), want)
			}
			if !got[0].Time.Equal(epoch) {
				t.Fatalf("marker stamped %v, want Config.Now %v", got[0].Time, epoch)
			}
		})
		t.Run("replay ring miss/"+f.name, func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow, ReplayBytes: 3 * sizeOf(10)})
			defer h.Close()
			publish(h, events(10, 10)...)
			s := subscribe(t, h, hub.SubscribeOptions{Filter: f.filter, Since: 1})
			got := next(t, s)
			if want := "[drop(7) 8..10]"; describe(got) != want {
				t.Fatalf("got %s, want %s", describe(got), want)
			}
		})
	}
}

func TestHubCloseDeliversQueuedThenErrClosed(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	queued := subscribe(t, h, hub.SubscribeOptions{})
	replaying := func() *hub.Subscriber {
		publish(h, events(3, 10)...) // 1..3
		return subscribe(t, h, hub.SubscribeOptions{Since: 2})
	}()
	publish(h, events(2, 10)...) // 4..5

	idle := subscribe(t, h, hub.SubscribeOptions{Filter: hub.Filter{ListenerIDs: []string{"none"}}})
	blocked := make(chan error, 1)
	go func() {
		_, err := idle.Next(context.Background(), nil)
		blocked <- err
	}()

	if got := h.Subscribers(); got != 3 {
		t.Fatalf("Subscribers() = %d, want 3", got)
	}
	h.Close()
	if err := within(t, "blocked Next returning after Close", blocked); !errors.Is(err, hub.ErrClosed) {
		t.Fatalf("blocked Next returned %v, want ErrClosed", err)
	}
	if got := drainClosed(t, queued); !equal(seqs(got), span(1, 5)) {
		t.Fatalf("queued subscriber got %s before ErrClosed, want 1..5", describe(got))
	}
	if got := drainClosed(t, replaying); !equal(seqs(got), span(2, 5)) {
		t.Fatalf("replaying subscriber got %s before ErrClosed, want 2..5", describe(got))
	}
	// Ended stays ended.
	if _, err := queued.Next(timeoutCtx(t), nil); !errors.Is(err, hub.ErrClosed) {
		t.Fatalf("Next after ErrClosed returned %v, want ErrClosed again", err)
	}
	select {
	case <-queued.Done():
	default:
		t.Fatal("Done() not closed after Hub.Close")
	}
	if got := h.Subscribers(); got != 0 {
		t.Fatalf("Subscribers() after Close = %d, want 0", got)
	}
	if s, err := h.Subscribe(hub.SubscribeOptions{}); !errors.Is(err, hub.ErrClosed) || s != nil {
		t.Fatalf("Subscribe after Close = %v, %v; want nil, ErrClosed", s, err)
	}
	publish(h, events(1, 10)...)
	if err := h.Publish(timeoutCtx(t), events(1, 10)...); err != nil {
		t.Fatalf("PublishWait after Close: %v", err)
	}
	if got := h.LastSequence(); got != 5 {
		t.Fatalf("LastSequence after publishing on a closed hub = %d, want 5", got)
	}
	h.Close() // idempotent
}

func TestSubscriberClose(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	closing := subscribe(t, h, hub.SubscribeOptions{})
	other := subscribe(t, h, hub.SubscribeOptions{})
	publish(h, events(3, 10)...)
	if got := h.Subscribers(); got != 2 {
		t.Fatalf("Subscribers() = %d, want 2", got)
	}

	closing.Close()
	closing.Close() // idempotent
	if got := h.Subscribers(); got != 1 {
		t.Fatalf("Subscribers() after one Close = %d, want 1", got)
	}
	evs, err := closing.Next(timeoutCtx(t), nil)
	if !errors.Is(err, hub.ErrClosed) || len(evs) != 0 {
		t.Fatalf("Next after Close = %s, %v; want nothing and ErrClosed", describe(evs), err)
	}
	select {
	case <-closing.Done():
	default:
		t.Fatal("Done() not closed after Close")
	}

	publish(h, events(2, 10)...)
	if got := collect(t, other, 5); !equal(seqs(got), span(1, 5)) {
		t.Fatalf("other subscriber got %s, want 1..5", describe(got))
	}

	t.Run("wakes a blocked Next", func(t *testing.T) {
		s := subscribe(t, h, hub.SubscribeOptions{})
		res := make(chan error, 1)
		go func() {
			_, err := s.Next(context.Background(), nil)
			res <- err
		}()
		s.Close()
		if err := within(t, "blocked Next returning after Close", res); !errors.Is(err, hub.ErrClosed) {
			t.Fatalf("Next returned %v, want ErrClosed", err)
		}
	})
	t.Run("after Hub.Close", func(t *testing.T) {
		h := hub.New(hub.Config{})
		s := subscribe(t, h, hub.SubscribeOptions{})
		h.Close()
		s.Close()
		h.Close()
		if _, err := s.Next(timeoutCtx(t), nil); !errors.Is(err, hub.ErrClosed) {
			t.Fatalf("Next = %v, want ErrClosed", err)
		}
	})
}

func TestNextReturnsContextError(t *testing.T) {
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"canceled while waiting", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(10*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"already canceled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 10*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hub.New(hub.Config{})
			defer h.Close()
			s := subscribe(t, h, hub.SubscribeOptions{})
			ctx, cancel := tt.ctx()
			defer cancel()
			res := make(chan error, 1)
			go func() {
				evs, err := s.Next(ctx, nil)
				if len(evs) != 0 {
					err = fmt.Errorf("got events %s", describe(evs))
				}
				res <- err
			}()
			if err := within(t, "Next returning", res); !errors.Is(err, tt.want) {
				t.Fatalf("Next returned %v, want %v", err, tt.want)
			}
			// The subscription survives a canceled Next.
			publish(h, events(1, 10)...)
			if got := next(t, s); !equal(seqs(got), []uint64{1}) {
				t.Fatalf("after the canceled Next got %s, want [1]", describe(got))
			}
		})
	}
}

func TestSubscribersCounts(t *testing.T) {
	h := hub.New(hub.Config{})
	defer h.Close()
	if got := h.Subscribers(); got != 0 {
		t.Fatalf("Subscribers() = %d, want 0", got)
	}
	var ss []*hub.Subscriber
	for i := 1; i <= 4; i++ {
		ss = append(ss, subscribe(t, h, hub.SubscribeOptions{}))
		if got := h.Subscribers(); got != i {
			t.Fatalf("Subscribers() = %d after %d Subscribe, want %d", got, i, i)
		}
	}
	ss[1].Close()
	ss[1].Close()
	if got := h.Subscribers(); got != 3 {
		t.Fatalf("Subscribers() = %d after closing one twice, want 3", got)
	}
	h.Close()
	if got := h.Subscribers(); got != 0 {
		t.Fatalf("Subscribers() = %d after Hub.Close, want 0", got)
	}
}

// CloseNow ends every subscription at once, queued events or not: a gateway
// shutting down must not wait for slow subscribers to drain.
func TestHubCloseNow(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	queued := subscribe(t, h, hub.SubscribeOptions{})
	publish(h, events(3, 10)...)
	replaying := subscribe(t, h, hub.SubscribeOptions{Since: 1})
	h.CloseNow()
	for name, s := range map[string]*hub.Subscriber{"queued": queued, "replaying": replaying} {
		if got := drainClosed(t, s); len(got) != 0 {
			t.Fatalf("%s subscriber got %s after CloseNow, want nothing", name, describe(got))
		}
	}
	if s, err := h.Subscribe(hub.SubscribeOptions{}); !errors.Is(err, hub.ErrClosed) || s != nil {
		t.Fatalf("Subscribe after CloseNow = %v, %v; want nil, ErrClosed", s, err)
	}
	h.Close() // still idempotent
}
