package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// NodeInfo is what a node tells its peers about itself.
type NodeInfo struct {
	Node     string    `json:"node"`
	Boot     string    `json:"boot"`
	GRPCAddr string    `json:"grpc_addr,omitempty"`
	HTTPAddr string    `json:"http_addr,omitempty"`
	Host     string    `json:"host,omitempty"`
	Started  time.Time `json:"started"`
	// Seen is when the node last renewed its presence, by its clock.
	Seen time.Time `json:"seen"`
}

// Keys of the nodes bucket: "node.ID" holds a node's NodeInfo, renewed
// every Detection/3; "open.ID" the connections open on it, written when
// they change (at most once a second), read when the node is lost.
const (
	nodeKey = "node."
	openKey = "open."
)

// presence keeps this node's entry in the nodes bucket, watches the
// others', and declares lost a node that stops renewing its entry.
type presence struct {
	c    *Cluster
	kv   jetstream.KeyValue
	self NodeInfo

	mu    sync.Mutex
	peers map[string]*peer // by node id, this node included
	// leaving is set once the node deletes its own entry as it leaves.
	leaving bool
}

type peer struct {
	info NodeInfo
	rev  uint64
	seen time.Time // by this node's clock: when the entry last changed
}

func newPresence(ctx context.Context, c *Cluster) (*presence, error) {
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      c.streamName + "_NODES",
		Description: "tcpgate cluster " + c.cfg.Name + ": its nodes and their open connections",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("joining cluster %q: the nodes bucket: %w", c.cfg.Name, err)
	}
	now := time.Now()
	self := c.cfg.Info
	self.Node, self.Boot, self.Started, self.Seen = c.cfg.Node, c.boot, now, now
	if self.Host == "" {
		self.Host, _ = os.Hostname() // names the machine in a "node id in use" error
	}
	p := &presence{c: c, kv: kv, self: self, peers: map[string]*peer{}}
	c.presence = p
	if err := p.claim(ctx); err != nil {
		return nil, err
	}
	// Not ctx: that bounds the join; the watch lasts as long as the node
	// (the client waits on its context's Done: it must be cancellable).
	wctx, wcancel := context.WithCancel(context.Background())
	w, err := kv.Watch(wctx, nodeKey+"*")
	if err != nil {
		wcancel()
		return nil, fmt.Errorf("joining cluster %q: watching the nodes bucket: %w", c.cfg.Name, err)
	}
	// The watch first delivers every current entry, then nil.
	for e := range w.Updates() {
		if e == nil {
			break
		}
		p.apply(e)
	}
	c.wg.Add(2)
	go p.watch(w, wcancel)
	go p.renew()
	return p, nil
}

// claim puts this node's entry. An entry of the same node id renewed less
// than Detection ago by another run means the id is in use: Join fails.
// An older one is a run of this node that ended without leaving (it
// crashed): this node declares it lost itself.
func (p *presence) claim(ctx context.Context) error {
	key := nodeKey + p.self.Node
	e, err := p.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("joining cluster %q: reading the nodes bucket: %w", p.c.cfg.Name, err)
	default:
		var old NodeInfo
		if json.Unmarshal(e.Value(), &old) == nil && old.Boot != p.self.Boot {
			if age := time.Since(old.Seen); age < p.c.cfg.Detection {
				return fmt.Errorf("%w: node id %q is live in cluster %q (it renewed its presence %v ago, from %s): give each node its own --node-id; a node that is gone is taken for lost %v after its last renewal",
					ErrConfig, p.self.Node, p.c.cfg.Name, age.Round(time.Millisecond), old.Host, p.c.cfg.Detection)
			}
			if p.declare(ctx, old, e.Revision()) {
				p.c.cfg.Log.Warn("an earlier run of this node ended without leaving the cluster: its connections are reported closed", "node", old.Node, "last_seen", old.Seen)
			}
		}
	}
	return p.put(ctx)
}

func (p *presence) put(ctx context.Context) error {
	p.mu.Lock()
	p.self.Seen = time.Now()
	b, _ := json.Marshal(p.self)
	p.mu.Unlock()
	if _, err := p.kv.Put(ctx, nodeKey+p.self.Node, b); err != nil {
		return fmt.Errorf("cluster %q: renewing this node's presence: %w", p.c.cfg.Name, err)
	}
	return nil
}

func (p *presence) apply(e jetstream.KeyValueEntry) {
	node := strings.TrimPrefix(e.Key(), nodeKey)
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(p.peers, node)
		if node == p.self.Node && !p.leaving {
			p.c.cfg.Log.Error("the cluster declared this node lost (it did not renew its presence in time); closing its connections, which the cluster reported closed", "node", node)
			if f := p.c.cfg.OnSelfLost; f != nil {
				go f()
			}
		}
		return
	}
	var info NodeInfo
	if err := json.Unmarshal(e.Value(), &info); err != nil {
		p.c.cfg.Log.Warn("cluster: a node entry does not decode", "key", e.Key(), "error", err)
		return
	}
	p.peers[node] = &peer{info: info, rev: e.Revision(), seen: time.Now()}
}

func (p *presence) watch(w jetstream.KeyWatcher, cancel context.CancelFunc) {
	defer p.c.wg.Done()
	defer cancel()
	defer w.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				p.apply(e)
			}
		case <-p.c.closed:
			return
		}
	}
}

// renew puts this node's entry every Detection/3, and declares lost every
// peer whose entry did not change for Detection.
func (p *presence) renew() {
	defer p.c.wg.Done()
	t := time.NewTicker(p.c.cfg.Detection / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-p.c.closed:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.c.cfg.Detection/3)
		if err := p.put(ctx); err != nil {
			p.c.cfg.Log.Warn("cluster presence not renewed", "error", err)
		}
		p.c.open.flush(ctx)
		for _, pe := range p.stale() {
			if p.declare(ctx, pe.info, pe.rev) {
				p.c.cfg.Log.Warn("cluster node lost: its connections are reported closed", "node", pe.info.Node, "last_seen", pe.info.Seen)
			}
		}
		cancel()
	}
}

func (p *presence) stale() []*peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*peer
	for id, pe := range p.peers {
		if id != p.self.Node && time.Since(pe.seen) > p.c.cfg.Detection {
			out = append(out, pe)
		}
	}
	return out
}

// declare deletes a lost node's entry if it is still at rev: of all the
// nodes that saw it go silent, exactly one succeeds, and that one reports
// the lost node's connections closed. It returns whether this node did.
func (p *presence) declare(ctx context.Context, info NodeInfo, rev uint64) bool {
	if err := p.kv.Delete(ctx, nodeKey+info.Node, jetstream.LastRevision(rev)); err != nil {
		return false
	}
	p.mu.Lock()
	if pe := p.peers[info.Node]; pe != nil && pe.rev == rev {
		delete(p.peers, info.Node)
	}
	p.mu.Unlock()
	p.closeLost(ctx, info)
	return true
}

// closeLost publishes CONNECTION_CLOSED with reason NODE_LOST for every
// connection the lost node had open, as its last snapshot says, and
// removes the snapshot.
func (p *presence) closeLost(ctx context.Context, info NodeInfo) {
	var snapshot []openConn
	e, err := p.kv.Get(ctx, openKey+info.Node)
	if err == nil {
		for _, oc := range decodeOpen(e.Value()) {
			if oc.boot == info.Boot {
				snapshot = append(snapshot, oc)
			}
		}
	}
	conns := p.c.view.lost(info.Node, snapshot)
	now := time.Now()
	evs := make([]*event.Event, 0, len(conns))
	for _, oc := range conns {
		evs = append(evs, &event.Event{Kind: event.ConnectionClosed, Time: now, Node: info.Node,
			ConnectionID: oc.id, ListenerID: oc.listener, Origin: oc.origin, CloseReason: event.ReasonNodeLost,
			Error: fmt.Sprintf("node %s was lost: it did not renew its presence for %v", info.Node, p.c.cfg.Detection)})
	}
	if len(evs) > 0 {
		_ = p.c.pub.Publish(ctx, evs...)
	}
	if e != nil {
		_ = p.kv.Delete(ctx, openKey+info.Node, jetstream.LastRevision(e.Revision()))
	}
}

// Nodes returns the live nodes, this one included, sorted by id.
func (p *presence) nodes() []NodeInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]NodeInfo, 0, len(p.peers)+1)
	seenSelf := false
	for id, pe := range p.peers {
		if id == p.self.Node {
			seenSelf = true
			out = append(out, p.self)
			continue
		}
		out = append(out, pe.info)
	}
	if !seenSelf {
		out = append(out, p.self)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// leave removes this node's entries: it left, so it is not lost.
func (p *presence) leave(ctx context.Context) {
	p.mu.Lock()
	p.leaving = true
	p.mu.Unlock()
	_ = p.kv.Delete(ctx, nodeKey+p.self.Node)
	_ = p.kv.Delete(ctx, openKey+p.self.Node)
}

// kill ends the node as a crash would: it stops renewing and publishing
// and drops its NATS connection without leaving. For tests.
func (c *Cluster) kill() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.nc.Close()
		close(c.pub.done)
		c.pub.wg.Wait()
		c.wg.Wait()
	})
}
