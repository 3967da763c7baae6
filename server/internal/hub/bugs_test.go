package hub_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// TestSubscriberCloseWithPendingMarker: "Close ends the subscription; Next
// then returns ErrClosed", also when the subscriber had lost events it was
// not yet told about.
func TestSubscriberCloseWithPendingMarker(t *testing.T) {
	h := hub.New(hub.Config{Now: fixedNow})
	defer h.Close()
	s := subscribe(t, h, hub.SubscribeOptions{QueueBytes: 1})
	publish(h, events(3, 10)...) // drops 2
	s.Close()
	evs, err := s.Next(timeoutCtx(t), nil)
	if !errors.Is(err, hub.ErrClosed) || len(evs) != 0 {
		t.Fatalf("Next after Close = %s, %v; want nothing and ErrClosed", describe(evs), err)
	}
}

// TestBatchBoundCountsWholeEvents: maxBatchBytes exists so that "a batch
// stays well inside gRPC's default 4 MiB message limit of clients". Events
// with little or no payload (connection lifecycle, 1-byte frames) still
// carry ids and addresses, so a batch bounded on Data alone is unbounded.
func TestBatchBoundCountsWholeEvents(t *testing.T) {
	const grpcDefaultMax = 4 << 20
	for _, kind := range []event.Kind{event.ConnectionOpened, event.Data} {
		t.Run(kind.String(), func(t *testing.T) {
			h := hub.New(hub.Config{Now: fixedNow})
			defer h.Close()
			s := subscribe(t, h, hub.SubscribeOptions{}) // DefaultQueueBytes
			var evs []*event.Event
			for i := range 79000 {
				e := &event.Event{
					Kind:         kind,
					ListenerID:   "listener-1",
					ConnectionID: fmt.Sprintf("conn-%06d", i),
					RemoteAddr:   "127.0.0.1:54321",
					LocalAddr:    "127.0.0.1:8080",
				}
				if kind == event.Data {
					e.Data = []byte{'x'}
				}
				evs = append(evs, e)
			}
			publish(h, evs...)
			batch := next(t, s)
			// A lower bound on the encoded size: the bytes of every field,
			// plus a few bytes for sequence, time, kind and tags.
			wire := 0
			for _, e := range batch {
				wire += len(e.ListenerID) + len(e.ConnectionID) + len(e.RemoteAddr) + len(e.LocalAddr) + len(e.Data) + 16
			}
			if wire > grpcDefaultMax {
				t.Fatalf("one batch of %d events carries at least %d bytes, over gRPC's default %d", len(batch), wire, grpcDefaultMax)
			}
		})
	}
}
