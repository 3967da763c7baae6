// Package hub fans events out to subscribers: it numbers every event with a
// gateway-wide sequence, keeps recent events in a replay ring bounded in bytes,
// and gives each subscriber its own queue, bounded in bytes, with a policy for
// when it falls behind. All queues together are bounded too
// (Config.MaxQueuedBytes).
//
// A published event and its payload are shared by every subscriber and by the
// ring; nothing is copied per subscriber. One mutex guards the whole hub: every
// operation under it is a few slice appends and set lookups, never I/O and
// never work proportional to a filter's size, and a connection's read loop
// publishes all frames of one read in one call.
//
// Nothing is queued past a bound. A publisher finds room for its events in
// every Backpressure subscriber they match before it numbers them, and waits
// for it otherwise; lossy subscribers make room by their policy. A publisher
// whose wait is cut short ends the Backpressure subscribers it waits for
// (with a *SlowConsumerError naming their resume sequence) and publishes to
// everyone else: an event is never skipped, and a stuck subscriber never
// holds up the gateway past the publisher's context.
//
// In a cluster the hub numbers nothing (Config.External): the cluster's
// stream numbers every node's events, and the node's consumer of the
// stream hands them to Ingest, which delivers them as Publish does, with
// the same waits, under the stream's sequences. The ring then keeps the
// newest of them, and a replay older than the ring reads the stream back
// through Config.Archive.
package hub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/ids"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// DefaultReplayBytes bounds the replay ring when Config.ReplayBytes is 0:
// enough for a dashboard that reconnects after a few seconds of a busy
// gateway, small next to the memory of the machines it runs on.
const DefaultReplayBytes = 64 << 20

// DefaultQueueBytes bounds a subscriber's queue when SubscribeOptions.QueueBytes
// is 0: several hundred milliseconds of a fast stream, so a subscriber on a
// healthy network never drops, while a stuck one costs a bounded amount.
const DefaultQueueBytes = 16 << 20

// DefaultMaxQueuedBytes bounds all subscriber queues together when
// Config.MaxQueuedBytes is 0: 32 stuck subscribers at DefaultQueueBytes,
// far fewer than the subscribers a gateway allows, so that their sum, and
// not their count, bounds the memory they hold.
const DefaultMaxQueuedBytes = 512 << 20

// MaxFilterIDs bounds each id list of a Filter: far more connections or
// listeners than one dashboard watches by name, small enough that a filter
// costs little to build and nothing per event (it is a set).
const MaxFilterIDs = 1024

// MaxFilterIDBytes bounds each id of a Filter: generated ids are a few
// bytes, and caller-chosen listener ids are short names.
const MaxFilterIDBytes = 64

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
	// until it has room again: nothing is lost. A publisher that cannot wait
	// any longer ends the subscription with a *SlowConsumerError instead.
	Backpressure
)

// ErrClosed is returned by Next and Subscribe once the hub is closed.
var ErrClosed = errors.New("event hub closed")

// SetMaxSubscribers replaces the bound on open subscriptions (0: none)
// for every Subscribe from now on. Subscriptions open over a lower bound
// stay open; no new one is admitted until they are under it.
func (h *Hub) SetMaxSubscribers(n int) {
	h.mu.Lock()
	h.maxSubscribers = n
	h.mu.Unlock()
}

// ErrExternal is returned by Publish (and makes TryPublish return false)
// on a hub whose events are numbered elsewhere (Config.External): they go
// to the cluster's stream, whose consumer hands them to Ingest.
var ErrExternal = errors.New("publishing to the hub: its events are numbered by the cluster's stream; publish them to the stream, which the hub ingests")

// ErrNotExternal is returned by Ingest on a hub that numbers its own
// events (Config.External is false): publish them with Publish.
var ErrNotExternal = errors.New("ingesting into the hub: it numbers its own events (Config.External is false); publish them with Publish")

// ErrUnnumbered is returned, wrapped, by Ingest for an event with no
// sequence: the stream numbers every event it stores.
var ErrUnnumbered = errors.New("event without a sequence")

// ArchiveError ends a subscription whose replay could not be read from the
// archive (Config.Archive): the cluster's stream is out of reach. It is
// placement.ErrClusterUnavailable to errors.Is, so the API answers
// Unavailable; the client resumes from Resume once the cluster is back.
// The subscription is not retried in place: its live events went on
// meanwhile, and a client that resumes gets them in order with no gap.
type ArchiveError struct {
	// Resume is the first sequence the subscriber did not receive: the
	// since_sequence to resume with.
	Resume uint64
	// Err is what the archive returned. It is not unwrapped: a timeout
	// inside the archive is the cluster's, not the caller's deadline.
	Err error
}

func (e *ArchiveError) Error() string {
	return fmt.Sprintf("replaying events from sequence %d out of the cluster's stream: %v; resume with since_sequence=%d once the cluster is reachable", e.Resume, e.Err, e.Resume)
}

// Unwrap returns placement.ErrClusterUnavailable.
func (e *ArchiveError) Unwrap() error { return placement.ErrClusterUnavailable }

// ErrTooManySubscribers is returned by Subscribe at Config.MaxSubscribers.
var ErrTooManySubscribers = errors.New("too many subscribers")

// ErrSequenceOutOfRange is returned by Subscribe, wrapped in a
// *SequenceError, for a Since the hub has not reached.
var ErrSequenceOutOfRange = errors.New("sequence out of range")

// SequenceError refuses a Since past the newest sequence + 1 of the hub's
// own incarnation: a client cannot have seen what was never published, so
// it holds a sequence of another sequence space and would silently miss
// every event until the hub caught up.
type SequenceError struct {
	Since, Last uint64
	Incarnation string
}

func (e *SequenceError) Error() string {
	return fmt.Sprintf("subscribing: since_sequence %d is past the newest sequence, %d, of incarnation %s: "+
		"resume with since_sequence at most %d (the newest + 1), or 0 for live events only; "+
		"a sequence seen before the gateway restarted goes with since_incarnation set to the incarnation it belongs to",
		e.Since, e.Last, e.Incarnation, e.Last+1)
}

// Unwrap returns ErrSequenceOutOfRange.
func (e *SequenceError) Unwrap() error { return ErrSequenceOutOfRange }

// ErrFilterTooLarge is returned by Subscribe for a filter with more than
// MaxFilterIDs ids in a list, or an id longer than MaxFilterIDBytes.
var ErrFilterTooLarge = errors.New("subscribe filter too large")

// SlowConsumerError ends a subscription that fell behind: its queue
// overflowed under the Disconnect policy, or, under Backpressure, a
// publisher could not wait for room in it any longer.
type SlowConsumerError struct {
	// Policy is the subscription's policy: Disconnect or Backpressure.
	Policy Policy
	// QueueBytes is the bound that was reached: the subscriber's own, or,
	// when Global is set, that of all queues together.
	QueueBytes int
	// Global reports that the bound of all queues together
	// (Config.MaxQueuedBytes) was reached rather than the subscriber's own.
	Global bool
	// Resume is the sequence to pass as Since to continue without a gap, as
	// long as the replay ring (or the archive) still holds it.
	Resume uint64
	// Kind is, under Backpressure, the kind of the event whose publisher
	// stopped waiting, and Cause why it stopped (its context's cause: a
	// closed connection, a stop, a call's deadline, shutdown).
	Kind  event.Kind
	Cause error
}

func (e *SlowConsumerError) Error() string {
	bound := fmt.Sprintf("its queue reached %d bytes (--subscriber-queue-bytes)", e.QueueBytes)
	if e.Global {
		bound = fmt.Sprintf("the queues of all subscribers together reached %d bytes (--max-queued-bytes)", e.QueueBytes)
	}
	if e.Policy == Backpressure {
		return fmt.Sprintf("subscriber fell behind under SLOW_CONSUMER_POLICY_BACKPRESSURE: %s and a %s event could wait for room no longer (%v); resume with since_sequence=%d",
			bound, e.Kind, e.Cause, e.Resume)
	}
	return fmt.Sprintf("subscriber fell behind under SLOW_CONSUMER_POLICY_DISCONNECT: %s; resume with since_sequence=%d", bound, e.Resume)
}

// Unwrap returns the cause of a Backpressure subscription's end.
func (e *SlowConsumerError) Unwrap() error { return e.Cause }

// Config configures a Hub.
type Config struct {
	// ReplayBytes bounds the replay ring; 0 means DefaultReplayBytes, a
	// negative value disables replay.
	ReplayBytes int
	// MaxQueuedBytes bounds the bytes queued for all subscribers together;
	// 0 means DefaultMaxQueuedBytes, a negative value no bound. At the
	// bound each subscriber's policy applies as if its own queue were full.
	MaxQueuedBytes int
	// Now returns the time stamped on events that have none; nil means time.Now.
	Now func() time.Time
	// MaxSubscribers bounds open subscriptions; 0 means no bound.
	MaxSubscribers int
	// Incarnation names the hub's sequence space; empty means a new random
	// one (ids.Incarnation), as every start of the embedded gateway has.
	// A cluster node passes its stream's identity, so that a node restart
	// is not a new sequence space.
	Incarnation string
	// StartSequence is the newest sequence before the hub's first event:
	// LastSequence returns it until an event comes, and the first event
	// is numbered (Publish) or must be (Ingest) StartSequence+1 or later.
	// 0, the default, starts at 1. A cluster node passes its stream's last
	// sequence as it joins.
	StartSequence uint64
	// External means that the hub numbers nothing: its events come
	// numbered through Ingest (a cluster's stream numbers them), and
	// Publish and TryPublish refuse them (ErrExternal). False, the
	// default, is the embedded gateway: Publish numbers, Ingest refuses.
	External bool
	// Archive, when set, holds the events older than the ring (a cluster's
	// stream): a replay reads from it what the ring no longer holds,
	// instead of reporting it missed. nil means the ring is all there is.
	Archive Archive
	// Node is this gateway's node id (--node-id), stamped on every event
	// published without one; empty stamps none. Markers made for one
	// subscriber (EVENTS_DROPPED) concern no node and carry none.
	Node string
}

// Archive is where a replay finds the events the ring no longer holds: a
// cluster's stream, numbered by the same sequences as the hub's events.
type Archive interface {
	// Read returns the events of sequences [from, end) that the archive
	// holds, oldest first: at most max of them, and no more than maxBytes
	// by Event.Size (one larger event goes alone). next is the sequence
	// after the last event returned, or end when none is left before it.
	// When from is older than anything the archive holds, Read returns no
	// event and next = its oldest sequence (at most end): the hub reports
	// [from, next) to the subscriber as missed, with an EventsDropped
	// marker. Holes in the archive above its oldest sequence (messages
	// deleted or never stored) are skipped: the events returned may jump;
	// a read that finds nothing but holes returns no event and next = end,
	// which the hub cannot tell from a part no longer held and reports as
	// missed too.
	// The events are sealed (event.Seal) and never changed afterwards: the
	// hub hands the same ones to the subscriber and may share them. Read
	// must return once ctx is done, with ctx's error. It is called with no
	// lock of the hub held, from the Next of a subscriber.
	Read(ctx context.Context, from, end uint64, max, maxBytes int) (evs []*event.Event, next uint64, err error)
}

// Filter selects events. An empty field matches everything. Each id list
// holds at most MaxFilterIDs ids of at most MaxFilterIDBytes bytes.
type Filter struct {
	ListenerIDs   []string
	ConnectionIDs []string
	Kinds         []event.Kind
	// Origins selects the events of connections of these origins: listener
	// events and markers, which concern no connection, match none. Like
	// Kinds it compiles to a set with a bit per origin, bounded by the
	// origins there are however long the list; an origin the event package
	// does not define matches nothing.
	Origins []event.Origin
	// IncludeSent also selects the Data events of what the gateway wrote
	// (event.Sent); without it only received data matches, as before sent
	// data was published. It holds for the replay too.
	IncludeSent bool
}

// Match reports whether e passes the filter.
func (f *Filter) Match(e *event.Event) bool {
	m, err := f.compile()
	return err == nil && m.match(e)
}

// compile checks the filter's bounds and turns it into sets.
func (f *Filter) compile() (matcher, error) {
	m := matcher{sent: f.IncludeSent}
	var err error
	if m.listeners, err = newIDSet("listener_ids", f.ListenerIDs); err != nil {
		return m, err
	}
	if m.conns, err = newIDSet("connection_ids", f.ConnectionIDs); err != nil {
		return m, err
	}
	for _, k := range f.Kinds {
		if k >= 0 && k < 64 {
			m.kinds |= 1 << uint(k)
		}
	}
	if len(f.Kinds) > 0 && m.kinds == 0 {
		m.kinds = 1 // matches no published kind, as such a list does
	}
	for _, o := range f.Origins {
		if o == event.Accepted || o == event.Outbound {
			m.origins |= 1 << o
		}
	}
	if len(f.Origins) > 0 && m.origins == 0 {
		m.origins = 1 // the bit of OriginNone: matches no connection event, as such a list does
	}
	return m, nil
}

// matcher is a compiled Filter: each test costs the same whatever the
// filter's size.
type matcher struct {
	listeners, conns idSet
	kinds            uint64 // a bit per kind; 0 matches every kind
	origins          uint8  // a bit per origin but OriginNone; 0 matches every event
	sent             bool   // Data the gateway wrote matches too
}

func (m *matcher) match(e *event.Event) bool {
	return (e.Direction != event.Sent || m.sent) && (m.kinds == 0 || m.kinds&(1<<uint(e.Kind&63)) != 0) &&
		(m.origins == 0 || (e.Origin != event.OriginNone && m.origins&(1<<(e.Origin&7)) != 0)) &&
		m.listeners.has(e.ListenerID) && m.conns.has(e.ConnectionID)
}

// smallSet is the size up to which a list is searched rather than hashed:
// comparing a few short strings beats hashing one.
const smallSet = 8

// idSet matches ids: every id when empty.
type idSet struct {
	list []string
	set  map[string]struct{}
}

func newIDSet(field string, ids []string) (idSet, error) {
	if len(ids) > MaxFilterIDs {
		return idSet{}, fmt.Errorf("subscribing: %s has %d ids, at most %d are allowed: %w", field, len(ids), MaxFilterIDs, ErrFilterTooLarge)
	}
	for i, id := range ids {
		if len(id) > MaxFilterIDBytes {
			return idSet{}, fmt.Errorf("subscribing: %s[%d] is %d bytes long, at most %d are allowed: %w", field, i, len(id), MaxFilterIDBytes, ErrFilterTooLarge)
		}
	}
	if len(ids) <= smallSet {
		return idSet{list: slices.Clone(ids)}, nil
	}
	s := idSet{set: make(map[string]struct{}, len(ids))}
	for _, id := range ids {
		s.set[id] = struct{}{}
	}
	return s, nil
}

func (s *idSet) has(v string) bool {
	if s.set != nil {
		_, ok := s.set[v]
		return ok
	}
	if len(s.list) == 0 {
		return true
	}
	return slices.Contains(s.list, v)
}

// SubscribeOptions describe one subscription.
type SubscribeOptions struct {
	Filter Filter
	// Since, when not 0, replays the events still in the ring whose sequence
	// is at least Since before the live ones; with an Archive, those older
	// than the ring come first from the archive. Past the newest
	// sequence + 1 it is a *SequenceError, unless Lenient.
	Since uint64
	// Incarnation is the incarnation Since belongs to; empty means the
	// hub's. Another one means the hub is not the one the client saw:
	// the subscription replays the ring from its start (with an Archive,
	// the archive from its start: the whole sequence space), whatever
	// Since, and its Start is Changed.
	Incarnation string
	// Lenient takes a Since past the newest sequence + 1 as one of another
	// incarnation rather than refusing it: for a client that cannot
	// survive an error (a browser's EventSource stops for good).
	Lenient bool
	// Resync replays the ring from its start, with Start Changed, whatever
	// Since and Incarnation: the client's position is unknown (an SSE
	// Last-Event-ID this gateway did not make).
	Resync bool
	Policy Policy
	// QueueBytes bounds the live queue; 0 means DefaultQueueBytes.
	QueueBytes int
}

// Hub numbers events and fans them out. The zero value is not usable; call New.
type Hub struct {
	incarnation string // immutable
	node        string // immutable: Config.Node
	now         func() time.Time
	external    bool    // events come numbered, through Ingest; immutable
	archive     Archive // nil: none; immutable
	maxQueued   int     // bound of all queues together; 0 means none

	// queued is the bytes queued for all subscribers together. It grows
	// only under mu (with the subscriber's mu) and shrinks under a
	// subscriber's mu alone as Next takes events, so room a publisher saw
	// under mu is still there when it queues.
	queued atomic.Int64
	// room, when set, is closed once queued falls to half of maxQueued:
	// publishers waiting for room within the global bound wait on it.
	room atomic.Pointer[chan struct{}]

	mu sync.Mutex // guards every field below, and the queues of all subscribers
	// maxSubscribers bounds open subscriptions (Config.MaxSubscribers
	// until SetMaxSubscribers); 0 means no bound.
	maxSubscribers int
	seq            uint64 // last sequence assigned, or ingested
	ring           ring
	subs           []*Subscriber // a slice: walked for every event, changed rarely
	closed         bool
	done           chan struct{} // closed by Close and CloseNow; never changes
	// lossless holds the Backpressure subscribers of subs, in which a
	// publisher finds room before it publishes.
	lossless []*Subscriber
	// dropped and disconnected count, per policy, events dropped from
	// queues and subscriptions ended for falling behind.
	dropped      [Backpressure + 1]uint64
	disconnected [Backpressure + 1]uint64
	// duplicates counts events Ingest skipped as already delivered.
	duplicates uint64
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
	maxQueued := cfg.MaxQueuedBytes
	switch {
	case maxQueued == 0:
		maxQueued = DefaultMaxQueuedBytes
	case maxQueued < 0:
		maxQueued = 0
	}
	inc := cfg.Incarnation
	if inc == "" {
		inc = ids.Incarnation()
	}
	return &Hub{
		incarnation: inc, node: cfg.Node, now: now, external: cfg.External, archive: cfg.Archive,
		maxSubscribers: cfg.MaxSubscribers, maxQueued: maxQueued,
		seq: cfg.StartSequence, ring: ring{limit: limit}, done: make(chan struct{}),
	}
}

// Incarnation returns the name of the hub's sequence space: sequences of
// another incarnation are not this hub's, whatever their numbers.
func (h *Hub) Incarnation() string { return h.incarnation }

// Publish numbers evs in order, records them in the replay ring and queues
// them for every subscriber they match. Before it numbers an event it waits
// until every Backpressure subscriber the event matches has room for it,
// within its own bound and that of all queues; a read loop thus slows its
// TCP sender instead of growing the gateway's memory. When ctx ends first,
// Publish ends those subscribers with a *SlowConsumerError, publishes to
// everyone else, and returns ctx's error once every event is published.
// Events published after Close are dropped. On an External hub Publish
// publishes nothing and returns ErrExternal.
func (h *Hub) Publish(ctx context.Context, evs ...*event.Event) error {
	if h.external {
		return ErrExternal
	}
	h.seal(evs)
	return h.deliver(ctx, evs, true)
}

// Ingest delivers events numbered elsewhere, a cluster's stream, on an
// External hub (else it returns ErrNotExternal): each event keeps its
// Sequence, which becomes LastSequence. It records them in the ring and
// queues them as Publish does, with the same waits for Backpressure
// subscribers and the global bound, and the same end of those it can no
// longer wait for when ctx ends; it returns ctx's error then, once every
// event is delivered.
//
// Sequences must be above LastSequence and strictly increasing. An event
// at or below the last one delivered (LastSequence, or the event before
// it in evs) is a duplicate of one already delivered, as a consumer of
// the stream re-created after a reconnect sends again: Ingest skips it
// and counts it in Stats.Duplicates. A sequence past LastSequence+1 is a
// gap (the stream holds nothing there, or lost it): live subscribers see
// the sequence jump, with no marker. The ring holds events across a gap,
// and a replay through it gives what was ingested, as live subscribers
// got it. The Archive is read only for what is older than the ring, a
// gap there included: it gives what it holds of it, and a part it holds
// no event of is reported missed, since the hub cannot tell a gap from
// events the stream no longer holds (the usual cause of a gap). An event with
// no sequence (0) is an error wrapping ErrUnnumbered, and nothing of evs
// is delivered. Events ingested after Close are dropped.
func (h *Hub) Ingest(ctx context.Context, evs ...*event.Event) error {
	if !h.external {
		return ErrNotExternal
	}
	for i, e := range evs {
		if e.Sequence == 0 {
			return fmt.Errorf("ingesting event %d of %d (%s of connection %q): %w", i+1, len(evs), e.Kind, e.ConnectionID, ErrUnnumbered)
		}
	}
	evs, dups := increasing(evs)
	if dups > 0 {
		h.mu.Lock()
		h.duplicates += dups
		h.mu.Unlock()
	}
	h.seal(evs)
	return h.deliver(ctx, evs, false)
}

// increasing returns evs without the events at or below one before them,
// and how many it left out; evs itself is not changed.
func increasing(evs []*event.Event) ([]*event.Event, uint64) {
	for i := 1; i < len(evs); i++ {
		if evs[i].Sequence > evs[i-1].Sequence {
			continue
		}
		kept := slices.Clone(evs[:i])
		for _, e := range evs[i:] {
			if e.Sequence > kept[len(kept)-1].Sequence {
				kept = append(kept, e)
			}
		}
		return kept, uint64(len(evs) - len(kept))
	}
	return evs, 0
}

// skipDeliveredLocked returns evs from its first event above the last
// sequence delivered, counting those before it as duplicates; evs is
// strictly increasing.
func (h *Hub) skipDeliveredLocked(evs []*event.Event) []*event.Event {
	n := 0
	for n < len(evs) && evs[n].Sequence <= h.seq {
		n++
	}
	h.duplicates += uint64(n)
	return evs[n:]
}

// deliver is Publish and Ingest once the events are sealed: it records and
// queues evs, waiting for room as Publish documents. number says whether
// the hub numbers them (Publish) or they come numbered (Ingest).
func (h *Hub) deliver(ctx context.Context, evs []*event.Event, number bool) error {
	var cut error // set once ctx is done: the publisher waits no more
	for len(evs) > 0 {
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return cut
		}
		if !number {
			// Under the lock that advances the sequence: another Ingest
			// may have delivered some of evs since the last look.
			if evs = h.skipDeliveredLocked(evs); len(evs) == 0 {
				h.mu.Unlock()
				break
			}
		}
		n, blockers, global := h.fitLocked(evs)
		if n == 0 && cut == nil {
			if err := ctx.Err(); err != nil {
				cut = context.Cause(ctx)
			}
		}
		if n == 0 && cut != nil {
			h.abandonLocked(blockers, global, evs[0], cut)
			n, _, _ = h.fitLocked(evs)
		}
		if n > 0 {
			h.publishLocked(evs[:n], number)
			evs = evs[n:]
			h.mu.Unlock()
			continue
		}
		waits := h.waitsLocked(blockers, global)
		// Next may have made room since fitLocked, before there was a
		// channel to close: look again now that there is one.
		if n, _, _ = h.fitLocked(evs); n > 0 {
			h.publishLocked(evs[:n], number)
			evs = evs[n:]
			h.mu.Unlock()
			continue
		}
		h.mu.Unlock()
		for _, w := range waits {
			select {
			case <-w.room:
			case <-w.done:
			case <-ctx.Done():
			}
		}
	}
	if cut != nil {
		return ctx.Err()
	}
	return nil
}

// TryPublish is Publish when it need not wait: it publishes evs, all of
// them, and returns true when every Backpressure subscriber they match has
// room for them now (at once, then, when there is none); otherwise it
// publishes none and returns false, and the caller calls Publish with the
// context that bounds the wait. A caller that would make a context only to
// bound a wait that rarely comes (a write's DATA event bounded by a
// Send's deadline) thus makes it only when the wait comes. Events are
// numbered and kept in the ring as Publish keeps them; after Close they are
// dropped, and TryPublish returns true. On an External hub it publishes
// nothing and returns false, so that the caller's Publish says why
// (ErrExternal).
func (h *Hub) TryPublish(evs ...*event.Event) bool {
	if h.external {
		return false
	}
	h.seal(evs)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return true
	}
	if n, _, _ := h.fitLocked(evs); n < len(evs) {
		return false
	}
	h.publishLocked(evs, true)
	return true
}

// seal prepares events outside the lock (see event.Seal), stamping the
// hub's node on those that name none first, so that their size counts it.
func (h *Hub) seal(evs []*event.Event) {
	for _, e := range evs {
		if e.Node == "" {
			e.Node = h.node
		}
		e.Seal()
	}
}

// wait is what a publisher waits on: room in a full Backpressure queue
// (done is then closed if the subscriber goes away), or room within the
// global bound.
type wait struct {
	room <-chan struct{}
	done <-chan struct{}
}

// fits reports whether size more bytes fit in a queue holding queued
// under limit: an event larger than the whole limit may go alone into an
// empty queue.
func fits(queued, size, limit int) bool {
	return queued == 0 || queued+size <= limit
}

// fitLocked returns how many of evs, from the first, every Backpressure
// subscriber has room for now, in its own queue and within the global
// bound. When that is none, it returns the subscribers that have no room
// for evs[0] (every one it matches when the global bound is what lacks
// room, then global is set).
func (h *Hub) fitLocked(evs []*event.Event) (int, []*Subscriber, bool) {
	if len(h.lossless) == 0 {
		return len(evs), nil, false
	}
	for _, s := range h.lossless {
		// A snapshot: Next only ever shrinks it, so room seen stays.
		s.mu.Lock()
		s.fit = s.queued
		s.mu.Unlock()
	}
	total := int(h.queued.Load())
	for i, e := range evs {
		size := e.Size()
		var blockers []*Subscriber
		add := 0
		for _, s := range h.lossless {
			if !s.filter.match(e) {
				continue
			}
			if !fits(s.fit, size, s.limit) {
				blockers = append(blockers, s)
			}
			add += size
		}
		global := h.maxQueued > 0 && add > 0 && !fits(total, add, h.maxQueued)
		if global || len(blockers) > 0 {
			if i > 0 {
				return i, nil, false
			}
			if global {
				blockers = blockers[:0]
				for _, s := range h.lossless {
					if s.filter.match(e) {
						blockers = append(blockers, s)
					}
				}
			}
			return 0, blockers, global
		}
		for _, s := range h.lossless {
			if s.filter.match(e) {
				s.fit += size
			}
		}
		total += add
	}
	return len(evs), nil, false
}

// waitsLocked returns what a publisher blocked by blockers waits on.
func (h *Hub) waitsLocked(blockers []*Subscriber, global bool) []wait {
	if global {
		ch := make(chan struct{})
		if !h.room.CompareAndSwap(nil, &ch) {
			ch = *h.room.Load()
		}
		return []wait{{room: ch}}
	}
	waits := make([]wait, 0, len(blockers))
	for _, s := range blockers {
		s.mu.Lock()
		if s.room == nil && s.err == nil {
			s.room = make(chan struct{})
		}
		if s.room != nil {
			waits = append(waits, wait{room: s.room, done: s.done})
		}
		s.mu.Unlock()
	}
	return waits
}

// release wakes the publishers waiting for room within the global bound
// once the queues hold half of it or less, so they are not woken for every
// event taken.
func (h *Hub) release() {
	if p := h.room.Load(); p != nil && int(h.queued.Load()) <= h.maxQueued/2 {
		if p := h.room.Swap(nil); p != nil {
			close(*p)
		}
	}
}

// abandonLocked ends the Backpressure subscribers a publisher of e can no
// longer wait for, each with the sequence it can resume from.
func (h *Hub) abandonLocked(blockers []*Subscriber, global bool, e *event.Event, cause error) {
	for _, s := range blockers {
		s.mu.Lock()
		limit := s.limit
		if global {
			limit = h.maxQueued
		}
		s.endLocked(&SlowConsumerError{Policy: Backpressure, QueueBytes: limit, Global: global, Resume: s.resumeLocked(h.seq + 1), Kind: e.Kind, Cause: cause})
		s.discardLocked()
		s.mu.Unlock()
		h.disconnected[Backpressure]++
	}
}

// publishLocked records evs in the ring and queues them. number says
// whether it numbers them; otherwise they come numbered, above h.seq and
// strictly increasing (Ingest).
func (h *Hub) publishLocked(evs []*event.Event, number bool) {
	var now time.Time
	for _, e := range evs {
		if number {
			e.Sequence = h.seq + 1
		}
		h.seq = e.Sequence
		if e.Time.IsZero() {
			if now.IsZero() {
				now = h.now()
			}
			e.Time = now
		}
		h.ring.push(e)
	}
	// Backpressure subscribers first: fitLocked found them room within the
	// global bound, which lossy subscribers then share by their policy.
	// Each subscriber's lock is taken once for the whole batch; a
	// subscriber taking its events in Next contends only with this.
	for _, s := range h.lossless {
		s.enqueueAll(evs)
	}
	for i := 0; i < len(h.subs); i++ {
		s := h.subs[i]
		if s.policy == Backpressure {
			continue
		}
		s.enqueueAll(evs)
		if i < len(h.subs) && h.subs[i] != s {
			i-- // a Disconnect subscriber removed itself: its successor moved here
		}
	}
}

// LastSequence returns the sequence of the newest event; before any,
// Config.StartSequence (0 by default).
func (h *Hub) LastSequence() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Subscribe starts a subscription. Events still in the replay ring from
// opts.Since on come first, then live events, with no gap and no duplicate
// between them. Next takes the replay from the ring a batch at a time, and
// matches it outside the hub's lock: a replay never holds up publishers,
// and pins no more than a batch beyond what the ring holds. With an
// Archive, the part of the replay older than the ring is read from it
// first, a batch at a time too.
func (h *Hub) Subscribe(opts SubscribeOptions) (*Subscriber, error) {
	m, err := opts.Filter.compile()
	if err != nil {
		return nil, err
	}
	limit := opts.QueueBytes
	if limit <= 0 {
		limit = DefaultQueueBytes
	}
	s := &Subscriber{
		h:      h,
		filter: m,
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
	if h.maxSubscribers > 0 && len(h.subs) >= h.maxSubscribers { // read under mu: SetMaxSubscribers
		return nil, &limits.Error{Doing: "subscribing", Name: "max_subscribers", Flag: "--max-subscribers", Limit: h.maxSubscribers, Err: ErrTooManySubscribers}
	}
	// Where the subscription starts is decided here, under the lock that
	// numbers events, so no event falls between the check and the start.
	since := opts.Since
	changed := opts.Resync || opts.Incarnation != "" && opts.Incarnation != h.incarnation
	if !changed && since > h.seq+1 {
		if !opts.Lenient {
			return nil, &SequenceError{Since: since, Last: h.seq, Incarnation: h.incarnation}
		}
		changed = true
	}
	if changed {
		since = 1 // sequences start again: the whole ring is new to the client
	}
	s.start = Start{LastSequence: h.seq, From: h.seq + 1, Changed: changed}
	if since > 0 && since <= h.seq {
		// Live events from here on go to the queue; the replay ends right
		// before them. What the ring no longer holds comes from the
		// archive, or is a gap without one (fetchReplay).
		s.replayNext, s.replayEnd = since, h.seq+1
		s.start.From = since
		s.signal()
	}
	h.subs = append(h.subs, s)
	if s.policy == Backpressure {
		h.lossless = append(h.lossless, s)
	}
	return s, nil
}

// Start is where a subscription began, decided atomically with it.
type Start struct {
	// LastSequence is the newest sequence when the subscription went live:
	// every later event it matches reaches it (as its policy allows).
	LastSequence uint64
	// From is the first sequence the subscription can carry: where its
	// replay begins, or LastSequence + 1 without one.
	From uint64
	// Changed reports that the position the client gave is not in the
	// hub's sequence space (Incarnation, Lenient, Resync): the
	// subscription replays the ring from its start.
	Changed bool
}

// Start returns where the subscription began.
func (s *Subscriber) Start() Start { return s.start }

// replayChunk bounds the events fetchReplay takes from the ring under the
// hub's lock at once, whatever their size.
const replayChunk = 4096

// fetchReplay takes the next part of the replay, when the last one was
// delivered: at most a batch, so that what it holds beyond the ring stays
// small. The part older than the ring's oldest event comes from the
// archive, read with no lock held and bounded by ctx; the rest is copied
// from the ring under the hub's lock. Either is matched outside the hub's
// lock. It returns ctx's error when ctx ended a read of the archive (the
// replay is left as it was, for the next Next); any other error of the
// archive ends the subscription with an *ArchiveError. Only Next calls it.
func (s *Subscriber) fetchReplay(ctx context.Context) error {
	s.mu.Lock()
	from, end := s.replayNext, s.replayEnd
	// After Close, too: a closed hub still delivers what it had for the
	// subscriber (discardLocked ends the replay when it must not).
	due := len(s.replay) == 0 && from < end
	s.mu.Unlock()
	if !due {
		return nil
	}
	h := s.h
	h.mu.Lock()
	if first := h.ring.firstSeq(); h.archive != nil && (first == 0 || from < first) {
		h.mu.Unlock()
		if first != 0 && first < end {
			end = first // the ring has the rest: the next fetch takes it
		}
		return s.fetchArchive(ctx, from, end)
	}
	chunk, next, missed := h.ring.chunk(from, end, replayChunk, maxBatchBytes)
	h.mu.Unlock()
	// The ring's oldest events left it before they were replayed.
	s.replayed(from, s.matching(chunk), next, missed)
	return nil
}

// fetchArchive reads the events of [from, end) from the archive, the next
// part of the replay. Whatever the archive answers, the replay advances:
// an archive that returns events outside [from, end), out of order, or
// no progress, is an error.
func (s *Subscriber) fetchArchive(ctx context.Context, from, end uint64) error {
	evs, next, err := s.h.archive.Read(ctx, from, end, replayChunk, maxBatchBytes)
	if err == nil {
		err = checkArchived(evs, from, end, next)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.archiveFailed(from, err)
		return nil
	}
	var missed uint64
	if len(evs) == 0 {
		missed = next - from // older than anything the archive holds
	}
	s.replayed(from, s.matching(evs), next, missed)
	return nil
}

// checkArchived checks what Archive.Read returned for [from, end).
func checkArchived(evs []*event.Event, from, end, next uint64) error {
	low := from
	for i, e := range evs {
		if e.Sequence < low || e.Sequence >= end {
			return fmt.Errorf("archive returned sequence %d as event %d of a read of [%d, %d): out of order or out of range", e.Sequence, i, from, end)
		}
		low = e.Sequence + 1
	}
	if next < low || next > end || next == from {
		return fmt.Errorf("archive read of [%d, %d) returned next sequence %d after %d events: want one in [%d, %d]", from, end, next, len(evs), max(low, from+1), end)
	}
	return nil
}

// archiveFailed ends the subscription because the archive could not give
// the part of the replay from from on; what was queued live is dropped
// with it, since it follows what the subscriber could not get.
func (s *Subscriber) archiveFailed(from uint64, err error) {
	h := s.h
	h.mu.Lock()
	s.mu.Lock()
	if s.replayNext == from && s.err == nil { // else discarded or ended meanwhile
		s.endLocked(&ArchiveError{Resume: s.resumeLocked(from), Err: err})
		s.discardLocked()
	}
	s.mu.Unlock()
	h.mu.Unlock()
}

// matching returns the events of evs the subscriber's filter matches, in
// evs's own array.
func (s *Subscriber) matching(evs []*event.Event) []*event.Event {
	matched := evs[:0]
	for _, e := range evs {
		if replayMatching != nil {
			replayMatching()
		}
		if s.filter.match(e) {
			matched = append(matched, e)
		}
	}
	clear(evs[len(matched):])
	return matched
}

// replayed stores a part of the replay taken from from on: the matched
// events, the sequence after the part, and how many sequences of it were
// missed (the gap its marker reports).
func (s *Subscriber) replayed(from uint64, matched []*event.Event, next, missed uint64) {
	s.mu.Lock()
	if s.replayNext == from { // else discarded meanwhile
		s.gap += missed
		s.replay, s.replayNext = matched, next
	}
	s.mu.Unlock()
}

// replayMatching, when set by a test, runs before a replay matches each
// event against the filter.
var replayMatching func()

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
	// LastSequence is the newest sequence: how many events were published
	// (past Config.StartSequence), or the newest one ingested.
	LastSequence uint64
	// Duplicates counts events Ingest skipped because one of their
	// sequence was already delivered (a re-created stream consumer sends
	// again what it had sent).
	Duplicates uint64
	RingEvents int
	RingBytes  int
	Policies   map[Policy]PolicyStats
	// Disconnected counts subscriptions ended under the Disconnect policy,
	// and Abandoned those under Backpressure a publisher could no longer
	// wait for.
	Disconnected uint64
	Abandoned    uint64
	// QueuedBytes is what all queues hold together, and MaxQueuedBytes its
	// bound (0: none).
	QueuedBytes    int
	MaxQueuedBytes int
}

// Stats returns the hub's figures.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := Stats{
		LastSequence:   h.seq,
		RingEvents:     h.ring.n,
		RingBytes:      h.ring.bytes,
		Policies:       make(map[Policy]PolicyStats, 3),
		Disconnected:   h.disconnected[Disconnect],
		Abandoned:      h.disconnected[Backpressure],
		QueuedBytes:    int(h.queued.Load()),
		MaxQueuedBytes: h.maxQueued,
		Duplicates:     h.duplicates,
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
	filter matcher
	policy Policy
	limit  int
	notify chan struct{} // has a value when there may be something to read
	done   chan struct{} // closed when the subscription ends
	start  Start         // set by Subscribe; immutable after

	// fit is fitLocked's tally of the queue; guarded by Hub.mu.
	fit int

	// mu guards the fields below. Lock order: Hub.mu, then Subscriber.mu;
	// Next takes only the latter.
	mu sync.Mutex
	// The replay covers the sequences [replayNext, replayEnd) still to be
	// taken from the ring, after replay, the part taken and not delivered;
	// all of it goes before queue.
	replay                []*event.Event
	replayNext, replayEnd uint64
	// gap counts sequences the ring no longer held when the replay reached
	// them; its marker goes before replay.
	gap    uint64
	queue  []*event.Event // live events; queue[head:] are undelivered
	head   int
	queued int // bytes in queue[head:], counted in Hub.queued too
	// dropped counts live events dropped from the head of the queue since
	// the last marker, which goes right before queue[head].
	dropped uint64
	room    chan struct{} // non-nil while a publisher waits for room; closed when there is
	err     error         // why the subscription ended; set once
}

// enqueueAll queues the events of evs the subscriber matches; h.mu is held.
// The hub's total and the reader's wake-up are updated once for evs, not
// once per event: the total is an atomic that the subscriber's reader
// subtracts from on another CPU. Publishers read it under h.mu, so none
// sees it before it is whole.
func (s *Subscriber) enqueueAll(evs []*event.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	added := 0 // bytes queued here and not yet in h.queued
	for _, e := range evs {
		if s.err != nil {
			break
		}
		if s.filter.match(e) {
			added += s.enqueueLocked(e, added)
		}
	}
	if added > 0 {
		s.h.queued.Add(int64(added))
		s.signal()
	}
}

// addQueuedLocked changes the bytes queued, here and in the hub's total.
func (s *Subscriber) addQueuedLocked(n int) {
	s.queued += n
	s.h.queued.Add(int64(n))
	if n < 0 {
		s.h.release()
	}
}

// overGlobal reports whether size more bytes would pass the bound of all
// queues together, with pending bytes queued but not yet added to the
// total.
func (h *Hub) overGlobal(pending, size int) bool {
	return h.maxQueued > 0 && !fits(int(h.queued.Load())+pending, size, h.maxQueued)
}

// enqueueLocked queues e and applies the policy where there is no room for
// it, in the subscriber's own queue or within the global bound; h.mu and
// s.mu are held. A Backpressure subscriber always has room: its publisher
// found it first (fitLocked). pending is what the caller queued and has
// not added to h.queued yet; enqueueLocked returns the bytes it queued,
// for the caller to add.
func (s *Subscriber) enqueueLocked(e *event.Event, pending int) int {
	size := e.Size()
	h := s.h
	switch s.policy {
	case Disconnect:
		own := !fits(s.queued, size, s.limit)
		if own || h.overGlobal(pending, size) {
			limit := s.limit
			if !own {
				limit = h.maxQueued
			}
			s.endLocked(&SlowConsumerError{Policy: Disconnect, QueueBytes: limit, Global: !own, Resume: s.resumeLocked(e.Sequence)})
			h.disconnected[Disconnect]++
			// Takes all of s.queued, pending included, from h.queued,
			// which the caller's add of pending then squares.
			s.discardLocked()
			return 0
		}
	case DropOldest:
		// Keep the newest event even when it alone exceeds the limit.
		// A dropped event queued in this call leaves h.queued before
		// pending, which holds it, is added: the sum stays right.
		for s.queued > 0 && !fits(s.queued, size, s.limit) {
			s.dropOldestLocked()
		}
		for s.queued > 0 && h.overGlobal(pending, size) {
			s.dropOldestLocked()
		}
		// A subscriber that stopped calling Next must not keep a slot for
		// every event ever dropped.
		s.compactLocked()
		if h.overGlobal(pending, size) {
			// Other queues hold the whole global bound: this event is the
			// oldest this subscriber has to drop.
			s.dropped++
			h.dropped[s.policy]++
			s.signal()
			return 0
		}
	}
	s.queue = append(s.queue, e)
	s.queued += size
	return size
}

func (s *Subscriber) dropOldestLocked() {
	old := s.queue[s.head]
	s.queue[s.head] = nil
	s.head++
	s.addQueuedLocked(-old.Size())
	s.dropped++
	s.h.dropped[s.policy]++
}

// resumeLocked returns the first sequence the subscriber has not received;
// next is the sequence after what it was given.
func (s *Subscriber) resumeLocked(next uint64) uint64 {
	switch {
	case len(s.replay) > 0:
		return s.replay[0].Sequence
	case s.replayNext < s.replayEnd:
		return s.replayNext
	case s.head < len(s.queue):
		return s.queue[s.head].Sequence
	}
	return next
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
	if i := slices.Index(s.h.lossless, s); i >= 0 {
		s.h.lossless = slices.Delete(s.h.lossless, i, i+1)
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
// was returned, why it ended: ErrClosed, a *SlowConsumerError, or an
// *ArchiveError. ctx also bounds the reads of the archive a replay makes.
func (s *Subscriber) Next(ctx context.Context, buf []*event.Event) ([]*event.Event, error) {
	for {
		if err := s.fetchReplay(ctx); err != nil {
			return buf, err
		}
		s.mu.Lock()
		buf, ok := s.takeLocked(buf)
		err := s.err
		replaying := s.replayNext < s.replayEnd
		s.mu.Unlock()
		if ok {
			return buf, nil
		}
		if replaying {
			continue // a part of the replay that the filter left empty
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
	if len(s.replay) > 0 || s.replayNext < s.replayEnd {
		s.signal()
		return buf, len(buf) > start
	}
	s.replay = nil
	if s.dropped > 0 {
		// Live drops happen at the head of the queue, so their marker
		// stands right where the gap is: after the replay, before the rest.
		buf = append(buf, s.marker(s.dropped))
		s.dropped = 0
	}
	i := s.head
	taken := 0
	for i < len(s.queue) && (size == 0 || size+s.queue[i].Size() <= maxBatchBytes) {
		e := s.queue[i]
		size += e.Size()
		taken += e.Size()
		buf = append(buf, e)
		s.queue[i] = nil
		i++
	}
	// Once per batch, not per event: the hub's total is an atomic that
	// every publisher reads and adds to, on other CPUs.
	if taken > 0 {
		s.addQueuedLocked(-taken)
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
	s.addQueuedLocked(-s.queued)
	s.replay, s.queue, s.head, s.gap, s.dropped = nil, nil, 0, 0, 0
	s.replayNext, s.replayEnd = 0, 0
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
