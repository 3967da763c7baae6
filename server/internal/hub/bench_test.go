package hub_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

func BenchmarkPublish1Sub(b *testing.B)   { benchPublish(b, 1) }
func BenchmarkPublish10Subs(b *testing.B) { benchPublish(b, 10) }

// BenchmarkIngest1Sub and BenchmarkIngest10Subs are the Publish benchmarks
// on a cluster node's hub: the events come numbered, as a consumer of the
// cluster's stream hands them to Ingest.
func BenchmarkIngest1Sub(b *testing.B)   { benchIngest(b, 1) }
func BenchmarkIngest10Subs(b *testing.B) { benchIngest(b, 10) }

// benchPublish publishes batches of 64 events of 100 bytes, as a read loop
// would, while subs goroutines drain their subscriptions with Next. It
// reports events per second from the first publish until every consumer has
// drained its queue, and how many events the consumers received and lost
// (DropOldest, default queue) per published event and subscriber.
func benchPublish(b *testing.B, subs int) { bench(b, subs, false) }

// benchIngest is benchPublish with Ingest, each event numbered before.
func benchIngest(b *testing.B, subs int) { bench(b, subs, true) }

func bench(b *testing.B, subs int, ingest bool) {
	const batch, payload = 64, 100
	h := hub.New(hub.Config{External: ingest})
	data := make([]byte, payload)

	var received, dropped atomic.Uint64
	var consumers sync.WaitGroup
	for range subs {
		s, err := h.Subscribe(hub.SubscribeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		consumers.Go(func() {
			var buf []*event.Event
			for {
				var err error
				buf, err = s.Next(context.Background(), buf[:0])
				for _, e := range buf {
					if e.Kind == event.EventsDropped {
						dropped.Add(e.Dropped)
					} else {
						received.Add(1)
					}
				}
				if err != nil {
					return
				}
			}
		})
	}

	b.ReportAllocs()
	b.ResetTimer()
	var seq uint64
	for range b.N {
		evs := make([]event.Event, batch)
		ptrs := make([]*event.Event, batch)
		for i := range evs {
			evs[i] = event.Event{Kind: event.Data, ListenerID: "l1", ConnectionID: "c1", Data: data}
			ptrs[i] = &evs[i]
		}
		if !ingest {
			publish(h, ptrs...)
			continue
		}
		for _, e := range ptrs {
			seq++
			e.Sequence = seq
		}
		if err := h.Ingest(context.Background(), ptrs...); err != nil {
			b.Fatal(err)
		}
	}
	h.Close()
	consumers.Wait() // consumers drain what was queued: part of the cost
	b.StopTimer()

	events := float64(b.N * batch)
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(received.Load())/events/float64(subs), "delivered/event/sub")
	b.ReportMetric(float64(dropped.Load())/events/float64(subs), "dropped/event/sub")
}
