// Package hub fans events out to subscribers: it numbers every event with a
// gateway-wide sequence, keeps recent events in a replay ring bounded in bytes,
// and gives each subscriber its own queue, bounded in bytes, with a policy for
// when it falls behind.
//
// A published event and its payload are shared by every subscriber and by the
// ring; nothing is copied per subscriber. One mutex guards the whole hub: every
// operation under it is a few slice appends, never I/O, and a connection's read
// loop publishes all frames of one read in one call.
package hub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// DefaultReplayBytes bounds the replay ring when Config.ReplayBytes is 0:
// enough for a dashboard that reconnects after a few seconds of a busy
// gateway, small next to the memory of the machines it runs on.
const DefaultReplayBytes = 64 << 20

// DefaultQueueBytes bounds a subscriber's queue when SubscribeOptions.QueueBytes
// is 0: several hundred milliseconds of a fast stream, so a subscriber on a
// healthy network never drops, while a stuck one costs a bounded amount.
const DefaultQueueBytes = 16 << 20

// maxBatchBytes bounds one batch returned by Next, counted by Event.Size
// (which exceeds an event's encoded size), so a batch stays well inside
// gRPC's default 4 MiB message limit of clients.
const maxBatchBytes = 1 << 20

// Policy says what happens when a subscriber's queue is full.
type Policy int

const (
	// DropOldest drops the oldest queued events and tells the subscriber how
	// many with an EventsDropped marker. Publishers never wait.
	DropOldest Policy = iota
	// Disconnect ends the subscription with a *SlowConsumerError.
	Disconnect
	// Backpressure makes publishers of events the subscriber watches wait
	// until it has room again: nothing is lost.
	Backpressure
)

// ErrClosed is returned by Next and Subscribe once the hub is closed.
var ErrClosed = errors.New("event hub closed")

// ErrTooManySubscribers is returned by Subscribe at Config.MaxSubscribers.
var ErrTooManySubscribers = errors.New("too many subscribers")

// SlowConsumerError ends a subscription whose queue overflowed under the
// Disconnect policy.
type SlowConsumerError struct {
	// QueueBytes is the limit that was exceeded.
	QueueBytes int
	// Resume is the sequence to pass as Since to continue without a gap, as
	// long as the replay ring still holds it.
	Resume uint64
}

func (e *SlowConsumerError) Error() string {
	return fmt.Sprintf("subscriber queue exceeded %d bytes (--subscriber-queue-bytes) under SLOW_CONSUMER_POLICY_DISCONNECT; resume with since_sequence=%d", e.QueueBytes, e.Resume)
}

// Config configures a Hub.
type Config struct {
	// ReplayBytes bounds the replay ring; 0 means DefaultReplayBytes, a
	// negative value disables replay.
	ReplayBytes int
	// Now returns the time stamped on events that have none; nil means time.Now.
	Now func() time.Time
	// MaxSubscribers bounds open subscriptions; 0 means no bound.
	MaxSubscribers int
}

// Filter selects events. An empty field matches everything.
type Filter struct {
	ListenerIDs   []string
	ConnectionIDs []string
	Kinds         []event.Kind
}

// Match reports whether e passes the filter.
func (f *Filter) Match(e *event.Event) bool {
	return matchString(f.ListenerIDs, e.ListenerID) &&
		matchString(f.ConnectionIDs, e.ConnectionID) &&
		matchKind(f.Kinds, e.Kind)
}

func matchString(set []string, v string) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

func matchKind(set []event.Kind, k event.Kind) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == k {
			return true
		}
	}
	return false
}

// SubscribeOptions describe one subscription.
type SubscribeOptions struct {
	Filter Filter
	// Since, when not 0, replays the events still in the ring whose sequence
	// is at least Since before the live ones.
	Since  uint64
	Policy Policy
	// QueueBytes bounds the live queue; 0 means DefaultQueueBytes.
	QueueBytes int
}

// Hub numbers events and fans them out. The zero value is not usable; call New.
type Hub struct {
	now            func() time.Time
	maxSubscribers int

	mu     sync.Mutex // guards every field below, and the queues of all subscribers
	seq    uint64     // last sequence assigned
	ring   ring
	subs   []*Subscriber // a slice: walked for every event, changed rarely
	closed bool
	done   chan struct{} // closed by Close and CloseNow; never changes
	// dropped and disconnected count, per policy, events dropped from
	// queues and subscriptions ended for falling behind.
	dropped      [Backpressure + 1]uint64
	disconnected uint64
}

// New returns a hub.
func New(cfg Config) *Hub {
	limit := cfg.ReplayBytes
	if limit == 0 {
		limit = DefaultReplayBytes
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Hub{now: now, maxSubscribers: cfg.MaxSubscribers, ring: ring{limit: limit}, done: make(chan struct{})}
}

// Publish numbers evs, records them in the replay ring and queues them for
// every subscriber they match. It never waits. Events published after Close
// are dropped.
func (h *Hub) Publish(evs ...*event.Event) {
	seal(evs)
	h.mu.Lock()
	h.publishLocked(evs, nil)
	h.mu.Unlock()
}

// PublishWait publishes evs like Publish, then waits until every
// Backpressure subscriber that received one of them has room again, the
// subscriber goes away, or ctx is done (its error is returned). A read loop
// calls it so that a lossless subscriber slows the TCP sender instead of
// growing the gateway's memory.
func (h *Hub) PublishWait(ctx context.Context, evs ...*event.Event) error {
	var waits []wait
	seal(evs)
	h.mu.Lock()
	waits = h.publishLocked(evs, waits)
	h.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w.room:
		case <-w.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// seal prepares events outside the lock (see event.Seal).
func seal(evs []*event.Event) {
	for _, e := range evs {
		e.Seal()
	}
}

// wait is a full Backpressure subscriber a publisher must wait for.
type wait struct {
	room <-chan struct{}
	done <-chan struct{}
}

func (h *Hub) publishLocked(evs []*event.Event, waits []wait) []wait {
	if h.closed {
		return waits
	}
	var now time.Time
	for _, e := range evs {
		h.seq++
		e.Sequence = h.seq
		if e.Time.IsZero() {
			if now.IsZero() {
				now = h.now()
			}
			e.Time = now
		}
		h.ring.push(e)
	}
	// Each subscriber's lock is taken once for the whole batch; a
	// subscriber taking its events in Next contends only with this.
	for i := 0; i < len(h.subs); i++ {
		s := h.subs[i]
		var room <-chan struct{}
		s.mu.Lock()
		for _, e := range evs {
			if s.filter.Match(e) {
				if r := s.enqueueLocked(e); r != nil {
					room = r
				}
			}
		}
		s.mu.Unlock()
		if room != nil {
			waits = append(waits, wait{room: room, done: s.done})
		}
		if i < len(h.subs) && h.subs[i] != s {
			i-- // a Disconnect subscriber removed itself: its successor moved here
		}
	}
	return waits
}

// LastSequence returns the sequence of the newest event, 0 before any.
func (h *Hub) LastSequence() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Subscribe starts a subscription. Events still in the replay ring from
// opts.Since on come first, then live events, with no gap and no duplicate
// between them.
func (h *Hub) Subscribe(opts SubscribeOptions) (*Subscriber, error) {
	limit := opts.QueueBytes
	if limit <= 0 {
		limit = DefaultQueueBytes
	}
	s := &Subscriber{
		h:      h,
		filter: opts.Filter,
		policy: opts.Policy,
		limit:  limit,
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if h.maxSubscribers > 0 && len(h.subs) >= h.maxSubscribers {
		return nil, fmt.Errorf("subscribing: max_subscribers (%d, --max-subscribers) reached: %w", h.maxSubscribers, ErrTooManySubscribers)
	}
	if opts.Since > 0 && opts.Since <= h.seq {
		first := h.ring.firstSeq()
		if first == 0 || first > opts.Since {
			// The ring no longer holds the start of what was asked for.
			end := h.seq + 1
			if first != 0 {
				end = first
			}
			s.gap = end - opts.Since
		}
		h.ring.each(opts.Since, func(e *event.Event) {
			if s.filter.Match(e) {
				s.replay = append(s.replay, e)
			}
		})
		if s.gap > 0 || len(s.replay) > 0 {
			s.signal()
		}
	}
	h.subs = append(h.subs, s)
	return s, nil
}

// Subscribers returns how many subscriptions are open.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// PolicyStats are the figures of the subscribers of one policy.
type PolicyStats struct {
	Subscribers int
	QueuedBytes int
	// Dropped counts events dropped from their queues since the hub started.
	Dropped uint64
}

// Stats are the hub's figures.
type Stats struct {
	// LastSequence is the newest sequence: how many events were published.
	LastSequence uint64
	RingEvents   int
	RingBytes    int
	Policies     map[Policy]PolicyStats
	// Disconnected counts subscriptions ended under the Disconnect policy.
	Disconnected uint64
}

// Stats returns the hub's figures.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := Stats{
		LastSequence: h.seq,
		RingEvents:   h.ring.n,
		RingBytes:    h.ring.bytes,
		Policies:     make(map[Policy]PolicyStats, 3),
		Disconnected: h.disconnected,
	}
	for _, p := range []Policy{DropOldest, Disconnect, Backpressure} {
		st.Policies[p] = PolicyStats{Dropped: h.dropped[p]}
	}
	for _, s := range h.subs {
		ps := st.Policies[s.policy]
		ps.Subscribers++
		s.mu.Lock()
		ps.QueuedBytes += s.queued
		s.mu.Unlock()
		st.Policies[s.policy] = ps
	}
	return st
}

// String returns the policy's lowercase name, as metrics label it.
func (p Policy) String() string {
	switch p {
	case Disconnect:
		return "disconnect"
	case Backpressure:
		return "backpressure"
	}
	return "drop_oldest"
}

// Close ends every subscription with ErrClosed, after each has received what
// was already queued for it, and refuses new ones. It is idempotent.
func (h *Hub) Close() { h.close(false) }

// CloseNow is Close without the delivery of what is queued: every
// subscription ends at its next Next, so a shutdown never waits for slow
// subscribers to drain.
func (h *Hub) CloseNow() { h.close(true) }

func (h *Hub) close(discard bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range slices.Clone(h.subs) {
		s.mu.Lock()
		s.endLocked(ErrClosed)
		if discard {
			s.discardLocked()
		}
		s.mu.Unlock()
	}
	if !h.closed {
		close(h.done)
	}
	h.closed = true
}

// Closed is closed once the hub is closed (Close or CloseNow): streams
// learn that the gateway shuts down, as opposed to one subscription
// ending.
func (h *Hub) Closed() <-chan struct{} { return h.done }

// Subscriber is one subscription. Next is called from one goroutine; Close
// may be called from any.
type Subscriber struct {
	h      *Hub
	filter Filter
	policy Policy
	limit  int
	notify chan struct{} // has a value when there may be something to read
	done   chan struct{} // closed when the subscription ends

	// mu guards the fields below. Lock order: Hub.mu, then Subscriber.mu;
	// Next takes only the latter.
	mu     sync.Mutex
	replay []*event.Event // events from the ring, delivered before queue
	// gap counts sequences the ring no longer held at Subscribe; its marker
	// goes before replay.
	gap    uint64
	queue  []*event.Event // live events; queue[head:] are undelivered
	head   int
	queued int // bytes in queue[head:]
	// dropped counts live events dropped from the head of the queue since
	// the last marker, which goes right before queue[head].
	dropped uint64
	room    chan struct{} // non-nil while a Backpressure queue is full; closed when it has room
	err     error         // why the subscription ended; set once
}

// enqueueLocked queues e and applies the policy; h.mu and s.mu are held.
// It returns the channel a publisher must wait on when a Backpressure queue
// is full.
func (s *Subscriber) enqueueLocked(e *event.Event) <-chan struct{} {
	if s.err != nil {
		return nil
	}
	s.queue = append(s.queue, e)
	s.queued += e.Size()
	s.signal()
	if s.queued <= s.limit {
		return nil
	}
	switch s.policy {
	case Disconnect:
		resume := s.queue[s.head].Sequence
		if len(s.replay) > 0 {
			resume = s.replay[0].Sequence
		}
		s.endLocked(&SlowConsumerError{QueueBytes: s.limit, Resume: resume})
		s.h.disconnected++
		s.discardLocked()
	case Backpressure:
		if s.room == nil {
			s.room = make(chan struct{})
		}
		return s.room
	default:
		// Keep the newest event even when it alone exceeds the limit.
		for s.queued > s.limit && len(s.queue)-s.head > 1 {
			old := s.queue[s.head]
			s.queue[s.head] = nil
			s.head++
			s.queued -= old.Size()
			s.dropped++
			s.h.dropped[s.policy]++
		}
		// A subscriber that stopped calling Next must not keep a slot for
		// every event ever dropped.
		s.compactLocked()
	}
	return nil
}

func (s *Subscriber) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// endLocked ends the subscription with err and removes it from the hub.
// Both h.mu and s.mu are held.
func (s *Subscriber) endLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	if i := slices.Index(s.h.subs, s); i >= 0 {
		s.h.subs = slices.Delete(s.h.subs, i, i+1)
	}
	close(s.done)
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
}

// Next appends to buf the events ready for this subscriber, waiting until
// there is at least one. A batch holds about 1 MiB at most (one larger
// event goes alone); the rest waits for the next call. An EventsDropped
// marker stands where events were missed. Next returns ctx's error when
// ctx is done, and once the subscription has ended and what remained for it
// was returned, why it ended: ErrClosed or a *SlowConsumerError.
func (s *Subscriber) Next(ctx context.Context, buf []*event.Event) ([]*event.Event, error) {
	for {
		s.mu.Lock()
		buf, ok := s.takeLocked(buf)
		err := s.err
		s.mu.Unlock()
		if ok {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
		select {
		case <-s.notify:
		case <-s.done:
		case <-ctx.Done():
			return buf, ctx.Err()
		}
	}
}

func (s *Subscriber) takeLocked(buf []*event.Event) ([]*event.Event, bool) {
	start := len(buf)
	size := 0
	if s.gap > 0 {
		buf = append(buf, s.marker(s.gap))
		s.gap = 0
	}
	n := 0
	for n < len(s.replay) && (n == 0 || size+s.replay[n].Size() <= maxBatchBytes) {
		size += s.replay[n].Size()
		n++
	}
	buf = append(buf, s.replay[:n]...)
	clear(s.replay[:n])
	s.replay = s.replay[n:]
	if len(s.replay) > 0 {
		s.signal()
		return buf, true
	}
	s.replay = nil
	if s.dropped > 0 {
		// Live drops happen at the head of the queue, so their marker
		// stands right where the gap is: after the replay, before the rest.
		buf = append(buf, s.marker(s.dropped))
		s.dropped = 0
	}
	i := s.head
	for i < len(s.queue) && (size == 0 || size+s.queue[i].Size() <= maxBatchBytes) {
		e := s.queue[i]
		size += e.Size()
		s.queued -= e.Size()
		buf = append(buf, e)
		s.queue[i] = nil
		i++
	}
	s.head = i
	if s.head == len(s.queue) {
		s.queue, s.head = s.queue[:0], 0
	} else {
		s.signal()
		s.compactLocked()
	}
	if s.room != nil && s.queued <= s.limit/2 {
		// Wake publishers only once half the queue is free, so a slow reader
		// is not woken for every event.
		close(s.room)
		s.room = nil
	}
	return buf, len(buf) > start
}

func (s *Subscriber) marker(n uint64) *event.Event {
	return &event.Event{Kind: event.EventsDropped, Time: s.h.now(), Dropped: n}
}

// compactLocked moves the undelivered events to the front of the queue once
// the delivered or dropped ones take more than half of it, so the queue's
// memory follows what it holds, at an amortized constant cost per event.
func (s *Subscriber) compactLocked() {
	if s.head < 64 || s.head <= len(s.queue)/2 {
		return
	}
	n := copy(s.queue, s.queue[s.head:])
	clear(s.queue[n:])
	s.queue, s.head = s.queue[:n], 0
	if cap(s.queue) > 1024 && n < cap(s.queue)/4 {
		// Give back a backing array far larger than what is left.
		s.queue = append(make([]*event.Event, 0, 2*n), s.queue...)
	}
}

// discardLocked forgets everything the subscriber had not received.
func (s *Subscriber) discardLocked() {
	s.replay, s.queue, s.head, s.queued, s.gap, s.dropped = nil, nil, 0, 0, 0, 0
}

// Done is closed when the subscription has ended.
func (s *Subscriber) Done() <-chan struct{} { return s.done }

// Close ends the subscription; Next then returns ErrClosed. It is idempotent.
func (s *Subscriber) Close() {
	s.h.mu.Lock()
	s.mu.Lock()
	s.endLocked(ErrClosed)
	s.discardLocked()
	s.mu.Unlock()
	s.h.mu.Unlock()
}
