package cluster

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// The publisher's bounds. A connection has at most PublishWindow events
// that JetStream has not stored yet; all connections together at most
// PublishBytes of them. A read loop whose connection reached its window
// waits: during a NATS outage TCP pushes back on the peers.
const (
	PublishWindow = 1024
	PublishBytes  = 64 << 20
	// hardBytes is how far a publisher whose wait was cut (its context
	// ended: a shutdown, a Send's deadline) may go past PublishBytes
	// before its events are lost rather than queued.
	hardBytes = 2 * PublishBytes
)

// msgIDHeader carries the node's run and the message's number in it:
// after an outage the node reads the last message it stored to know
// where to resume.
const msgIDHeader = "Nats-Msg-Id"

// Publisher stores the node's events in the cluster's stream, in the
// order they are published, without a round trip per event: messages go
// out asynchronously, JetStream's acknowledgements come back in order, and
// a connection waits only when its window is full.
//
// When a publish fails (NATS unreachable, JetStream not answering), the
// publisher stops sending, lets every message in flight settle, asks the
// stream for the last message this run of the node stored, and sends
// again from the one after it. The NATS client does not buffer while
// disconnected (nats.ReconnectBufSize(-1)), so what JetStream stored of a
// node's messages is always a prefix of what it sent: nothing is stored
// twice and nothing out of order. Events that could not be queued at all
// (a publisher whose wait was cut while the queue was over its hard
// bound) are lost: counted per connection and reported in an
// EventsLost event once the stream takes messages again.
type Publisher struct {
	c       *Cluster
	subject string
	prefix  string // of message ids: the node's run

	mu      sync.Mutex
	queue   []*pending // in publish order; unsettled ones
	next    int        // queue[next:] are not sent
	bytes   int
	perConn map[string]int
	counter uint64
	healthy bool
	closed  bool
	lost    map[string]uint64 // events lost per connection, not reported yet
	room    chan struct{}     // closed when a message settles, if someone waits

	wake   chan struct{}
	acks   chan *pending
	done   chan struct{}
	wg     sync.WaitGroup
	failed chan struct{} // has a value when a publish failed
	// inflight counts messages handed to settle and not settled yet.
	inflight atomic.Int64

	stats PublishStats
	// hard is hardBytes; tests lower it.
	hard int
}

// PublishStats are the publisher's figures, for the metrics.
type PublishStats struct {
	Stored  atomic.Uint64 // messages JetStream acknowledged
	Lost    atomic.Uint64 // events lost (reported in EventsLost)
	Retries atomic.Uint64 // recoveries after a failed publish
	Pending atomic.Int64  // events queued and not stored
}

type pending struct {
	counter uint64
	conn    string
	msg     *nats.Msg
	size    int
	fut     jetstream.PubAckFuture
	stored  bool
}

func newPublisher(c *Cluster) *Publisher {
	p := &Publisher{
		c:       c,
		subject: c.subject("ev", c.cfg.Node),
		prefix:  c.boot + "-",
		perConn: map[string]int{},
		lost:    map[string]uint64{},
		healthy: true,
		wake:    make(chan struct{}, 1),
		acks:    make(chan *pending, 4096),
		done:    make(chan struct{}),
		failed:  make(chan struct{}, 1),
		hard:    hardBytes,
	}
	p.wg.Add(2)
	go p.send()
	go p.settle()
	return p
}

// Stats returns the publisher's figures.
func (p *Publisher) Stats() *PublishStats { return &p.stats }

// Publish queues evs for the stream, in order, after stamping them with
// the node. It waits while their connection's window or the publisher's
// bytes are full; once ctx ends it waits no more, queues them anyway up to
// the hard bound, counts what is past it as lost, and returns ctx's error.
func (p *Publisher) Publish(ctx context.Context, evs ...*event.Event) error {
	ms := p.encode(evs)
	var cut error
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(ms) > 0 {
		if p.closed {
			p.loseLocked(ms)
			return cut
		}
		m := ms[0]
		if p.fitsLocked(m) || cut != nil && p.bytes+m.size <= p.hard {
			p.queueLocked(m)
			ms = ms[1:]
			continue
		}
		if cut != nil {
			p.loseLocked(ms)
			return cut
		}
		if p.room == nil {
			p.room = make(chan struct{})
		}
		room := p.room
		p.mu.Unlock()
		// What this call queued so far must go out for room to come.
		p.signal()
		select {
		case <-room:
		case <-ctx.Done():
			cut = ctx.Err()
		}
		p.mu.Lock()
	}
	p.signal()
	return cut
}

// TryPublish queues evs and returns true when they all fit now; else it
// queues none and returns false (conn.TryPublisher).
func (p *Publisher) TryPublish(evs ...*event.Event) bool {
	ms := p.encode(evs)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.loseLocked(ms)
		return true
	}
	size := 0
	for i, m := range ms {
		size += m.size
		// This call's events of m's connection so far, m included: calls
		// carry one event or a few, so a scan beats a map.
		mine := 1
		for _, o := range ms[:i] {
			if o.conn == m.conn {
				mine++
			}
		}
		if p.perConn[m.conn]+mine > PublishWindow || p.bytes+size > PublishBytes && size > m.size {
			return false
		}
	}
	for _, m := range ms {
		p.queueLocked(m)
	}
	p.signal()
	return true
}

func (p *Publisher) encode(evs []*event.Event) []*pending {
	ms := make([]*pending, len(evs))
	for i, e := range evs {
		if e.Node == "" {
			e.Node = p.c.cfg.Node
			p.c.open.track(e)
		}
		data := appendEvent(make([]byte, 0, 64+len(e.Data)), e)
		ms[i] = &pending{conn: e.ConnectionID, msg: &nats.Msg{Subject: p.subject, Data: data, Header: nats.Header{}}, size: len(data) + 128}
	}
	return ms
}

// fitsLocked reports whether m has room: its connection's window and the
// bytes of all (an empty queue takes any one message).
func (p *Publisher) fitsLocked(m *pending) bool {
	return p.perConn[m.conn] < PublishWindow && (p.bytes == 0 || p.bytes+m.size <= PublishBytes)
}

func (p *Publisher) queueLocked(m *pending) {
	p.counter++
	m.counter = p.counter
	m.msg.Header.Set(msgIDHeader, p.prefix+strconv.FormatUint(m.counter, 10))
	p.queue = append(p.queue, m)
	p.bytes += m.size
	p.perConn[m.conn]++
	p.stats.Pending.Add(1)
}

func (p *Publisher) loseLocked(ms []*pending) {
	for _, m := range ms {
		p.lost[m.conn]++
	}
	p.stats.Lost.Add(uint64(len(ms)))
}

func (p *Publisher) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// send publishes what is queued and not sent, while the stream takes
// messages; after a failure it recovers first.
func (p *Publisher) send() {
	defer p.wg.Done()
	defer close(p.acks)
	for {
		select {
		case <-p.wake:
		case <-p.failed:
			if !p.recover() {
				return
			}
		case <-p.done:
			return
		}
		p.reportLost()
		for {
			p.mu.Lock()
			if !p.healthy || p.next >= len(p.queue) {
				p.mu.Unlock()
				break
			}
			m := p.queue[p.next]
			p.next++
			p.mu.Unlock()
			fut, err := p.c.js.PublishMsgAsync(m.msg)
			if errors.Is(err, nats.ErrMaxPayload) {
				// Never storable: lost, not retried. Join refused a
				// max_payload below the gateway's limits, so this is a
				// server whose setting changed since.
				p.c.cfg.Log.Error("cluster event larger than the NATS server's max_payload: lost", "bytes", len(m.msg.Data))
				p.mu.Lock()
				m.stored = true // settled: nothing will store it
				p.lost[m.conn]++
				p.stats.Lost.Add(1)
				p.mu.Unlock()
				p.inflight.Add(1)
				p.acks <- m
				continue
			}
			if err != nil {
				p.fail()
				break
			}
			m.fut = fut
			p.inflight.Add(1)
			p.acks <- m
		}
	}
}

// reportLost queues an EventsLost event for every connection that lost
// events since the last report.
func (p *Publisher) reportLost() {
	p.mu.Lock()
	if len(p.lost) == 0 || !p.healthy || p.closed {
		p.mu.Unlock()
		return
	}
	lost := p.lost
	p.lost = map[string]uint64{}
	p.mu.Unlock()
	now := time.Now()
	evs := make([]*event.Event, 0, len(lost))
	for conn, n := range lost {
		evs = append(evs, &event.Event{Kind: event.EventsLost, Time: now, ConnectionID: conn, Dropped: n})
	}
	ms := p.encode(evs)
	p.mu.Lock()
	for _, m := range ms {
		p.queueLocked(m)
	}
	p.mu.Unlock()
}

func (p *Publisher) fail() {
	p.mu.Lock()
	p.healthy = false
	p.mu.Unlock()
	select {
	case p.failed <- struct{}{}:
	default:
	}
}

// settle takes JetStream's answers in publish order.
func (p *Publisher) settle() {
	defer p.wg.Done()
	for m := range p.acks {
		p.settleOne(m)
		p.inflight.Add(-1)
	}
}

// settleOne waits for m's answer (none for a message that was never
// sent) and releases what is settled.
func (p *Publisher) settleOne(m *pending) {
	if m.fut != nil {
		select {
		case <-m.fut.Ok():
			p.mu.Lock()
			m.stored = true
			p.mu.Unlock()
			p.stats.Stored.Add(1)
		case err := <-m.fut.Err():
			p.c.cfg.Log.Debug("cluster publish failed", "error", err)
			p.fail()
		}
	}
	p.release()
}

// release drops the settled messages at the head of the queue and wakes
// waiting publishers.
func (p *Publisher) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for n < len(p.queue) && n < p.next && p.queue[n].stored {
		m := p.queue[n]
		p.bytes -= m.size
		if p.perConn[m.conn]--; p.perConn[m.conn] == 0 {
			delete(p.perConn, m.conn)
		}
		p.queue[n] = nil
		n++
	}
	if n == 0 {
		return
	}
	p.stats.Pending.Add(int64(-n))
	p.queue = p.queue[n:]
	p.next -= n
	if p.room != nil {
		close(p.room)
		p.room = nil
	}
}

// recover waits until every message in flight has settled and the stream
// answers, learns from the stream the last message this run stored, and
// resumes sending after it. It returns false once the publisher closes.
func (p *Publisher) recover() bool {
	p.stats.Retries.Add(1)
	wait := 100 * time.Millisecond
	for {
		// Everything sent has an answer (or timed out: the async
		// publish timeout bounds it) before the stream is asked.
		select {
		case <-p.c.js.PublishAsyncComplete():
		case <-p.done:
			return false
		}
		for p.inflight.Load() > 0 {
			select {
			case <-time.After(5 * time.Millisecond):
			case <-p.done:
				return false
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last, err := p.lastStored(ctx)
		cancel()
		if err == nil {
			p.mu.Lock()
			for _, m := range p.queue[:p.next] {
				if m.counter <= last {
					m.stored = true
				}
			}
			// Send again everything not stored, from the first.
			first := 0
			for first < p.next && p.queue[first].stored {
				first++
			}
			for _, m := range p.queue[first:p.next] {
				m.stored, m.fut = false, nil
			}
			p.mu.Unlock()
			p.release()
			p.mu.Lock()
			p.next = 0
			for p.next < len(p.queue) && p.queue[p.next].stored {
				p.next++
			}
			p.healthy = true
			p.mu.Unlock()
			p.c.cfg.Log.Info("cluster publishing resumed", "stored_up_to", last)
			p.signal()
			return true
		}
		select {
		case <-time.After(wait):
		case <-p.done:
			return false
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// lastStored returns the number of the last message of this run that
// the stream holds, 0 when none.
func (p *Publisher) lastStored(ctx context.Context) (uint64, error) {
	msg, err := p.c.stream.GetLastMsgForSubject(ctx, p.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	id, ok := strings.CutPrefix(msg.Header.Get(msgIDHeader), p.prefix)
	if !ok {
		return 0, nil // a message of an earlier run of the node
	}
	return strconv.ParseUint(id, 10, 64)
}

// close waits within ctx for what is queued to be stored, then stops.
// What is still queued is lost: logged with its count.
func (p *Publisher) close(ctx context.Context) error {
	p.signal()
	for {
		p.mu.Lock()
		left := len(p.queue)
		if left == 0 || ctx.Err() != nil {
			p.closed = true
			p.mu.Unlock()
			break
		}
		room := p.room
		if room == nil {
			p.room = make(chan struct{})
			room = p.room
		}
		p.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
		}
	}
	close(p.done)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.queue); n > 0 {
		p.stats.Lost.Add(uint64(n))
		p.c.cfg.Log.Error("cluster events not stored at shutdown: lost", "events", n)
		return context.Cause(ctx)
	}
	return nil
}
