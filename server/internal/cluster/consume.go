package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// Sink takes the stream's events in order, each numbered with its stream
// sequence (hub.Hub.Ingest).
type Sink interface {
	Ingest(ctx context.Context, evs ...*event.Event) error
}

// Feed hands every event stored in the stream after StartSequence to
// sink, in stream order, until Close. An ordered consumer carries them:
// after a NATS outage it resumes right after the last event it delivered.
func (c *Cluster) Feed(sink Sink) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := c.js.OrderedConsumer(ctx, c.streamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   c.startSeq + 1,
	})
	if err != nil {
		return fmt.Errorf("cluster %q: consuming the event stream: %w", c.cfg.Name, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return fmt.Errorf("cluster %q: consuming the event stream: %w", c.cfg.Name, err)
	}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		<-c.closed
		it.Stop()
	}()
	go func() {
		defer c.wg.Done()
		c.feed(it, sink)
	}()
	return nil
}

// feedBatch bounds the events handed to the sink at once.
const feedBatch = 1024

// feed reads the stream in one goroutine and hands what arrived to sink
// in another, in batches of whatever is there (up to feedBatch): one
// Ingest, one lock of the hub, per batch rather than per event.
func (c *Cluster) feed(it jetstream.MessagesContext, sink Sink) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	evs := make(chan *event.Event, 4*feedBatch)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(evs)
		for {
			msg, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if err != nil {
				c.cfg.Log.Warn("cluster: reading the event stream", "error", err)
				continue
			}
			e, err := eventOf(msg)
			if err != nil {
				c.cfg.Log.Warn("cluster: an event of the stream is skipped", "error", err)
				continue
			}
			if e.Node != c.cfg.Node {
				c.view.track(e)
			}
			select {
			case evs <- e:
			case <-ctx.Done():
				return
			}
		}
	})
	defer wg.Wait()
	batch := make([]*event.Event, 0, feedBatch)
	for e := range evs {
		batch = append(batch[:0], e)
	more:
		for len(batch) < feedBatch {
			select {
			case e, ok := <-evs:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		if err := sink.Ingest(ctx, batch...); err != nil && ctx.Err() != nil {
			cancel()
			for range evs {
			}
			return
		}
		clear(batch)
	}
}

// eventOf decodes a message of the stream, numbered with its stream
// sequence.
func eventOf(msg jetstream.Msg) (*event.Event, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, err
	}
	return eventAt(msg.Data(), meta.Sequence.Stream)
}

func eventAt(data []byte, seq uint64) (*event.Event, error) {
	e, err := decodeEvent(data)
	if err != nil {
		return nil, fmt.Errorf("sequence %d: %w", seq, err)
	}
	e.Sequence = seq
	return e, nil
}

// Archive reads older events back from the stream (hub.Archive).
type Archive struct{ c *Cluster }

// Archive returns the stream as the hub's archive.
func (c *Cluster) Archive() *Archive { return &Archive{c: c} }

// archiveWait bounds one read of the archive beyond ctx.
const archiveWait = 5 * time.Second

// Read returns the stream's events of sequences [from, end), oldest
// first, sealed: at most limit of them and maxBytes by Event.Size (one
// larger event goes alone), and the sequence after the last returned
// (hub.Archive). When the stream no longer holds from (its retention
// dropped it), Read returns no event and next = the oldest sequence it
// holds. An event that does not decode is skipped. A stream that cannot
// be read is placement.ErrClusterUnavailable.
func (a *Archive) Read(ctx context.Context, from, end uint64, limit, maxBytes int) ([]*event.Event, uint64, error) {
	c := a.c
	if from >= end || limit <= 0 {
		return nil, from, nil
	}
	ctx, cancel := context.WithTimeout(ctx, archiveWait)
	defer cancel()
	cons, err := c.js.OrderedConsumer(ctx, c.streamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return nil, from, a.unavailable(ctx, err)
	}
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.js.DeleteConsumer(dctx, c.streamName, info.Name)
			dcancel()
		}
	}()
	n := int(min(uint64(limit), end-from))
	wait := archiveWait
	if dl, ok := ctx.Deadline(); ok {
		wait = max(time.Until(dl), 10*time.Millisecond)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, from, a.unavailable(ctx, err)
	}
	var evs []*event.Event
	next, size := from, 0
	for msg := range batch.Messages() {
		meta, merr := msg.Metadata()
		if merr != nil {
			continue
		}
		seq := meta.Sequence.Stream
		if seq >= end {
			break
		}
		if len(evs) == 0 && seq > next && next == from {
			// The stream no longer holds [from, seq): the hub reports
			// it missed; the events from seq on come at the next read.
			return nil, seq, nil
		}
		e, err := eventAt(msg.Data(), seq)
		if err != nil {
			c.cfg.Log.Warn("cluster: an event of the stream is skipped", "error", err)
			next = seq + 1
			continue
		}
		e.Seal()
		if len(evs) > 0 && size+e.Size() > maxBytes {
			break
		}
		size += e.Size()
		evs = append(evs, e)
		next = seq + 1
	}
	if err := batch.Error(); err != nil && len(evs) == 0 && !errors.Is(err, jetstream.ErrNoMessages) {
		return nil, from, a.unavailable(ctx, err)
	}
	return evs, next, nil
}

func (a *Archive) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return fmt.Errorf("reading older events from the cluster's stream: %w: %v", placement.ErrClusterUnavailable, err)
}
