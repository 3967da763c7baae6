package hub_test

import (
	"context"
	"sort"
	"strconv"
	"sync"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// memArchive is an in-memory hub.Archive: the events a cluster's stream
// holds, as its Read contract says. The real one, on JetStream, is the
// cluster package's; this one tests the hub's side of the interface.
type memArchive struct {
	mu sync.Mutex
	// evs are the events stored, by increasing sequence, sealed.
	evs []*event.Event
	// first is the oldest sequence held: older ones aged out.
	first uint64
	// err, when set, is returned by every read from the failAfter-th on.
	err       error
	failAfter int
	// block makes reads wait for their ctx; started is told of each read.
	block   bool
	started chan struct{}
	// reads counts the calls of Read.
	reads int
	// corrupt, when set, replaces what Read returns.
	corrupt func(evs []*event.Event, next uint64) ([]*event.Event, uint64)
}

var _ hub.Archive = (*memArchive)(nil)

// store adds an event the stream numbered; the hub gets an event of its own
// (made again by mk), as a stream consumer decodes a message of its own.
func (a *memArchive) store(e *event.Event) {
	e.Seal()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, e)
	if a.first == 0 {
		a.first = e.Sequence
	}
}

// ageOut makes the archive hold nothing older than first.
func (a *memArchive) ageOut(first uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.first = first
}

func (a *memArchive) setErr(err error, after int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.err, a.failAfter = err, after
}

func (a *memArchive) setBlock(block bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.block = block
}

func (a *memArchive) readCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reads
}

func (a *memArchive) Read(ctx context.Context, from, end uint64, limit, maxBytes int) ([]*event.Event, uint64, error) {
	a.mu.Lock()
	a.reads++
	block, started := a.block, a.started
	if a.err != nil && a.reads > a.failAfter {
		err := a.err
		a.mu.Unlock()
		return nil, 0, err
	}
	if block {
		a.mu.Unlock()
		if started != nil {
			started <- struct{}{}
		}
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}
	defer a.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if from < a.first {
		return nil, min(a.first, end), nil
	}
	i := sort.Search(len(a.evs), func(i int) bool { return a.evs[i].Sequence >= from })
	var out []*event.Event
	size := 0
	next := end
	for ; i < len(a.evs) && a.evs[i].Sequence < end; i++ {
		e := a.evs[i]
		if len(out) == limit || len(out) > 0 && size+e.Size() > maxBytes {
			next = e.Sequence
			break
		}
		size += e.Size()
		out = append(out, e)
	}
	if a.corrupt != nil {
		out, next = a.corrupt(out, next)
	}
	return out, next, nil
}

// mk makes the event of sequence seq of a test stream: a Data event of
// listener l whose payload is the decimal seq, of size bytes at least.
func mk(l string, seq uint64, size int) *event.Event {
	data := []byte(strconv.FormatUint(seq, 10))
	if len(data) < size {
		data = append(data, make([]byte, size-len(data))...)
	}
	return &event.Event{Sequence: seq, Time: epoch, Kind: event.Data, ListenerID: l, ConnectionID: l + "-c", Data: data, Node: "n1"}
}

// cluster is a test stream: an archive and the External hub that ingests it.
type cluster struct {
	a *memArchive
	h *hub.Hub
}

// newCluster returns a hub over an empty stream whose ring holds about
// ringEvents events of mk(_, _, size).
func newCluster(ringEvents, size int) *cluster {
	a := &memArchive{}
	replay := ringEvents * mk("l1", 1, size).Size()
	if ringEvents < 0 {
		replay = -1
	}
	h := hub.New(hub.Config{External: true, Archive: a, ReplayBytes: replay, Incarnation: "stream1", Now: fixedNow})
	return &cluster{a: a, h: h}
}

// ingest stores the events of sequences from..to in the stream, then hands
// them to the hub in batches of batch, as a stream consumer would.
func (c *cluster) ingest(ctx context.Context, l string, from, to uint64, size, batch int) error {
	var evs []*event.Event
	flush := func() error {
		err := c.h.Ingest(ctx, evs...)
		evs = evs[:0]
		return err
	}
	for seq := from; seq <= to; seq++ {
		c.a.store(mk(l, seq, size))
		evs = append(evs, mk(l, seq, size))
		if len(evs) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
