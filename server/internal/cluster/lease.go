package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Take-over leases. An outbound connection made with take_over is owned
// through the key "lease.ID" of the state bucket, whose value names the
// owning node and carries the request that made the connection. The
// owner renews it every Detection/3 with a compare-and-set on its last
// revision. An owner that has not renewed it for Detection gives the
// connection up at once (the LeaseHooks' Lost closes it), and so does one
// whose compare-and-set fails (another node took it). Every other node
// watches the leases; one that has seen a lease unchanged for
// 2×Detection (by its own clock: the owner has given the connection up
// by then, after at most Detection, one check period and one write that
// failed, each Detection/3) takes it with a
// compare-and-set of the revision it saw: of all the nodes that try,
// exactly one wins, and it makes the connection (Take). The connection
// is never dialed by two nodes at once, as long as the nodes' clocks run
// at about the same rate and closing a socket takes less than the
// Detection/3 left as margin. A node that stops gracefully does not
// release its leases: its connections move too.

// ErrLeaseHeld is the cause when a lease is held by another node.
var ErrLeaseHeld = errors.New("the connection's take-over lease is held by another node")

// LeaseHooks are what the leases call of the gateway.
type LeaseHooks struct {
	// Take makes connection id, whose lease this node just won from a
	// node that stopped renewing it; request is what HoldLease was
	// given.
	Take func(id string, request []byte)
	// Lost gives connection id up at once: this node could not renew
	// its lease (err says why, such as "not renewed for 6s (...):
	// another node takes the connection over").
	Lost func(id string, err error)
}

// lease is a lease's value.
type lease struct {
	ID      string    `json:"id"`
	Node    string    `json:"node"`
	Boot    string    `json:"boot"`
	Renewed time.Time `json:"renewed"`
	Request []byte    `json:"request"`
}

// leases is this node's side of the take-over leases.
type leases struct {
	c     *Cluster
	kv    jetstream.KeyValue
	hooks LeaseHooks

	mu   sync.Mutex             // guards the fields below
	held map[string]*heldLease  // by key: the leases this node owns
	seen map[string]*otherLease // by key: the others', as the watch saw them
}

type heldLease struct {
	id      string
	request []byte
	rev     uint64
	renewed time.Time // by this node's clock: when the last renewal that succeeded was sent
}

type otherLease struct {
	rev  uint64
	seen time.Time // by this node's clock: when its entry last changed
	val  lease
}

// StartLeases starts renewing the leases this node holds and watching the
// others', with hooks. Call it once, before HoldLease.
func (c *Cluster) StartLeases(hooks LeaseHooks) error {
	l := &leases{c: c, kv: c.state.kv, hooks: hooks, held: map[string]*heldLease{}, seen: map[string]*otherLease{}}
	// The watch lasts as long as the node.
	wctx, wcancel := context.WithCancel(context.Background())
	w, err := l.kv.Watch(wctx, leaseKeyPrefix+">")
	if err != nil {
		wcancel()
		return fmt.Errorf("cluster %q: watching the take-over leases: %w", c.cfg.Name, err)
	}
	c.leases = l
	c.wg.Add(2)
	go l.watch(w, wcancel)
	go l.tick()
	return nil
}

func (l *leases) encode(id string, request []byte) []byte {
	b, _ := json.Marshal(lease{ID: id, Node: l.c.cfg.Node, Boot: l.c.boot, Renewed: time.Now(), Request: request})
	return b
}

// HoldLease makes this node the owner of connection id's lease, with the
// request that made it: a new lease, or one an earlier run of this node
// held. It fails with ErrLeaseHeld when another node holds it.
func (c *Cluster) HoldLease(ctx context.Context, id string, request []byte) error {
	l := c.leases
	if l == nil {
		return errors.New("take-over leases not started")
	}
	key := ObjectKey(leaseKeyPrefix, id)
	val := l.encode(id, request)
	start := time.Now()
	rev, err := l.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		var e jetstream.KeyValueEntry
		e, err = l.kv.Get(ctx, key)
		if err == nil {
			var cur lease
			if json.Unmarshal(e.Value(), &cur) == nil && cur.Node != c.cfg.Node {
				return fmt.Errorf("holding the take-over lease of %s: %w (node %s)", id, ErrLeaseHeld, cur.Node)
			}
			rev, err = l.kv.Update(ctx, key, val, e.Revision())
		}
	}
	if err != nil {
		return fmt.Errorf("holding the take-over lease of %s: %w", id, err)
	}
	l.mu.Lock()
	l.held[key] = &heldLease{id: id, request: request, rev: rev, renewed: start}
	l.mu.Unlock()
	return nil
}

// ReleaseLease removes connection id's lease: it was closed for good, and
// no node takes it over.
func (c *Cluster) ReleaseLease(ctx context.Context, id string) error {
	l := c.leases
	if l == nil {
		return nil
	}
	key := ObjectKey(leaseKeyPrefix, id)
	l.mu.Lock()
	delete(l.held, key)
	l.mu.Unlock()
	if err := l.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("releasing the take-over lease of %s: %w", id, err)
	}
	return nil
}

// Held returns the ids of the leases this node holds.
func (c *Cluster) Held() []string {
	l := c.leases
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.held))
	for _, h := range l.held {
		out = append(out, h.id)
	}
	return out
}

func (l *leases) watch(w jetstream.KeyWatcher, cancel context.CancelFunc) {
	defer l.c.wg.Done()
	defer cancel()
	defer w.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				l.apply(e)
			}
		case <-l.c.closed:
			return
		}
	}
}

func (l *leases) apply(e jetstream.KeyValueEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(l.seen, e.Key())
		return
	}
	var v lease
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		l.c.cfg.Log.Warn("cluster: a take-over lease does not decode", "key", e.Key(), "error", err)
		return
	}
	if o := l.seen[e.Key()]; o != nil && o.rev == e.Revision() {
		return
	}
	l.seen[e.Key()] = &otherLease{rev: e.Revision(), seen: time.Now(), val: v}
}

// tick renews, gives up and takes leases every Detection/3.
func (l *leases) tick() {
	defer l.c.wg.Done()
	t := time.NewTicker(l.c.cfg.Detection / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-l.c.closed:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.c.cfg.Detection/3)
		l.renew(ctx)
		l.takeExpired(ctx)
		cancel()
	}
}

// renew renews each held lease; one that fails because another node took
// it, or that has not been renewed for Detection, is given up.
func (l *leases) renew(ctx context.Context) {
	l.mu.Lock()
	held := make(map[string]heldLease, len(l.held))
	for k, h := range l.held {
		held[k] = *h
	}
	l.mu.Unlock()
	for key, h := range held {
		// Counted from before the write: the stored renewal, which the
		// others time their take-over from, is not older than this.
		now := time.Now()
		rev, err := l.kv.Update(ctx, key, l.encode(h.id, h.request), h.rev)
		var lost error
		switch {
		case err == nil:
		case errors.Is(err, jetstream.ErrKeyExists) || isWrongRevision(err):
			lost = fmt.Errorf("another node took the connection over (%w)", err)
		case time.Since(h.renewed) >= l.c.cfg.Detection:
			lost = fmt.Errorf("not renewed for %v (%w): another node takes the connection over", l.c.cfg.Detection, err)
		default:
			l.c.cfg.Log.Warn("cluster: take-over lease not renewed; retrying", "connection", h.id, "error", err)
			continue
		}
		l.mu.Lock()
		cur := l.held[key]
		if cur == nil || cur.rev != h.rev { // released or held anew meanwhile
			l.mu.Unlock()
			continue
		}
		if lost != nil {
			delete(l.held, key)
		} else {
			cur.rev, cur.renewed = rev, now
		}
		l.mu.Unlock()
		if lost != nil {
			l.c.cfg.Log.Warn("cluster: take-over lease lost: the connection is given up", "connection", h.id, "error", lost)
			l.hooks.Lost(h.id, lost)
		}
	}
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return strings.Contains(err.Error(), "wrong last sequence")
}

// takeOverAfter is how long a lease must stay unchanged before another
// node takes it: its owner gives it up after Detection without a
// renewal, checked every Detection/3 by a write that may take another
// Detection/3 to fail; the rest is margin.
func (l *leases) takeOverAfter() time.Duration { return 2 * l.c.cfg.Detection }

// takeExpired takes every lease of another node (or of an earlier run of
// this one) unchanged for takeOverAfter: one compare-and-set each, which
// one node wins.
func (l *leases) takeExpired(ctx context.Context) {
	type cand struct {
		key string
		rev uint64
		val lease
	}
	var cands []cand
	l.mu.Lock()
	for key, o := range l.seen {
		if _, mine := l.held[key]; mine || time.Since(o.seen) < l.takeOverAfter() {
			continue
		}
		cands = append(cands, cand{key, o.rev, o.val})
	}
	l.mu.Unlock()
	for _, c := range cands {
		id := c.val.ID
		start := time.Now()
		rev, err := l.kv.Update(ctx, c.key, l.encode(id, c.val.Request), c.rev)
		if err != nil {
			continue // another node won, or the owner renewed after all
		}
		l.mu.Lock()
		l.held[c.key] = &heldLease{id: id, request: c.val.Request, rev: rev, renewed: start}
		l.mu.Unlock()
		l.c.cfg.Log.Warn("cluster: connection taken over from a node that stopped renewing its lease", "connection", id, "from", c.val.Node, "last_renewed", c.val.Renewed)
		// Not on this goroutine: the dial may take its timeout, and the
		// renewals must go on.
		l.c.wg.Go(func() { l.hooks.Take(id, c.val.Request) })
	}
}
