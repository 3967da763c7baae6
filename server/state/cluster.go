package state

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/cluster"
	"github.com/tcpgate/tcpgate/server/rpc"
)

var _ rpc.State = (*Cluster)(nil)

// Bucket is where a cluster keeps its desired state (cluster.StateBucket):
// one value per key, each change acknowledged before it returns.
type Bucket interface {
	Put(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	// Objects is every listener and connection record, by key.
	Objects(ctx context.Context) (map[string][]byte, error)
}

// Leases are the take-over leases of a cluster (cluster.Cluster): an
// outbound connection made with take_over is held by one node at a time.
type Leases interface {
	HoldLease(ctx context.Context, id string, request []byte) error
	ReleaseLease(ctx context.Context, id string) error
}

// bucketTimeout bounds reading the whole bucket, at a restore and for
// ExportConfig, when the caller's context has no deadline.
const bucketTimeout = 30 * time.Second

// Cluster is the desired state of a cluster, in the cluster's state
// bucket: one key per API-made object, whose value is the record the
// state file would hold and the node that runs it (none for a listener on
// every node). Every node records what it runs itself (a call routed to
// another node is recorded there), and restores at start what is its own
// and every listener on every node.
type Cluster struct {
	b          Bucket
	leases     Leases // nil: take_over is not held (tests of the bucket alone)
	node       string
	inlineKeys bool
	log        *slog.Logger

	// flushMu orders the writes to the bucket by version: Save holds it
	// while it writes (I/O: nothing else takes it).
	flushMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	version uint64
	pending []*clusterOp     // not written yet, by version
	results map[uint64]error // written, until their Save reads them
	// recs are the records of what this node runs, by key: for
	// RecordedListener (UpdateListener runs on the listener's node).
	recs map[string]Record
}

// clusterOp is one change of the bucket, or of a lease.
type clusterOp struct {
	version uint64
	apply   func(ctx context.Context) error
}

// clusterValue is a key's value in the bucket.
type clusterValue struct {
	// Node runs the object; empty for a listener on every node.
	Node string `json:"node,omitempty"`
	// Record is the record as a line of the state file (Encode).
	Record json.RawMessage `json:"record"`
}

// NewCluster is the desired state of the cluster in b, for node. With
// inlineKeys, inline private keys are stored (they are left out
// otherwise, as with a state file).
func NewCluster(b Bucket, leases Leases, node string, inlineKeys bool, log *slog.Logger) *Cluster {
	if log == nil {
		log = slog.Default()
	}
	return &Cluster{b: b, leases: leases, node: node, inlineKeys: inlineKeys, log: log,
		results: map[uint64]error{}, recs: map[string]Record{}}
}

func recordKey(rec Record) string {
	if rec.Listener != nil {
		return cluster.ObjectKey(cluster.ListenerKeyPrefix, rec.ID())
	}
	return cluster.ObjectKey(cluster.ConnectionKeyPrefix, rec.ID())
}

// owner is the node that runs rec: none for a listener on every node.
func (c *Cluster) owner(rec Record) string {
	if rec.Listener != nil && rec.Listener.GetEveryNode() {
		return ""
	}
	return c.node
}

// EncodeClusterValue is rec's value in the bucket, run by node (empty:
// every node).
func EncodeClusterValue(rec Record, node string) ([]byte, error) {
	line, err := Encode(rec)
	if err != nil {
		return nil, err
	}
	return json.Marshal(clusterValue{Node: node, Record: line})
}

// DecodeClusterValue parses a value of the bucket.
func DecodeClusterValue(b []byte) (Record, string, error) {
	var v clusterValue
	if err := json.Unmarshal(b, &v); err != nil {
		return Record{}, "", fmt.Errorf("decoding a cluster state record: %w", err)
	}
	rec, err := Decode(v.Record)
	if err != nil {
		return Record{}, "", err
	}
	return rec, v.Node, nil
}

// put queues rec, run by this node (or every node), and returns its
// version. A connection with take_over is held too (its lease, after
// its record).
func (c *Cluster) put(rec Record) uint64 {
	key := recordKey(rec)
	value, err := EncodeClusterValue(rec, c.owner(rec))
	if err != nil {
		// A request the API took always encodes; should one not, the
		// old record stays rather than a broken one.
		c.log.Error("encoding a cluster state record", "key", key, "error", err)
		return 0
	}
	hold := c.leases != nil && rec.Connection.GetTakeOver()
	id := rec.ID()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.recs[key] = rec
	return c.queueLocked(func(ctx context.Context) error {
		if err := c.b.Put(ctx, key, value); err != nil {
			return err
		}
		if hold {
			return c.leases.HoldLease(ctx, id, value)
		}
		return nil
	})
}

// del queues the removal of key. The record may be another node's (a
// listener on every node, stopped here), so it is removed whether or not
// this node recorded it. The lease of a take_over connection goes with
// it (the connection is closed on its node, which recorded it).
func (c *Cluster) del(key string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, known := c.recs[key]
	delete(c.recs, key)
	release := known && c.leases != nil && rec.Connection.GetTakeOver()
	id := rec.ID()
	return c.queueLocked(func(ctx context.Context) error {
		if err := c.b.Delete(ctx, key); err != nil {
			return err
		}
		if release {
			return c.leases.ReleaseLease(ctx, id)
		}
		return nil
	})
}

func (c *Cluster) queueLocked(apply func(ctx context.Context) error) uint64 {
	c.version++
	c.pending = append(c.pending, &clusterOp{version: c.version, apply: apply})
	return c.version
}

// PutListener implements rpc.State.
func (c *Cluster) PutListener(req *tcpgatev1.StartListenerRequest, l *tcpgatev1.Listener) uint64 {
	return c.put(listenerRecord(req, l, c.inlineKeys, c.log))
}

// RecordedListener implements rpc.State: the record of a listener this
// node runs.
func (c *Cluster) RecordedListener(id string) (*tcpgatev1.StartListenerRequest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.recs[cluster.ObjectKey(cluster.ListenerKeyPrefix, id)]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(rec.Listener), true
}

// DeleteListener implements rpc.State.
func (c *Cluster) DeleteListener(id string) uint64 {
	return c.del(cluster.ObjectKey(cluster.ListenerKeyPrefix, id))
}

// PutConnection implements rpc.State.
func (c *Cluster) PutConnection(req *tcpgatev1.ConnectRequest, id string) uint64 {
	return c.put(connectionRecord(req, id, c.inlineKeys, c.log))
}

// DeleteConnection implements rpc.State.
func (c *Cluster) DeleteConnection(id string) uint64 {
	return c.del(cluster.ObjectKey(cluster.ConnectionKeyPrefix, id))
}

// Save implements rpc.State: it writes the changes queued up to version,
// in order, and returns once the bucket acknowledged version's.
func (c *Cluster) Save(ctx context.Context, version uint64) error {
	if version == 0 {
		return nil
	}
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	for {
		c.mu.Lock()
		if err, ok := c.results[version]; ok {
			delete(c.results, version)
			c.mu.Unlock()
			return err
		}
		if len(c.pending) == 0 || c.pending[0].version > version {
			c.mu.Unlock()
			return nil // written by a Save that has read its result
		}
		op := c.pending[0]
		c.pending = c.pending[1:]
		c.mu.Unlock()
		err := op.apply(ctx)
		c.mu.Lock()
		if op.version == version {
			c.mu.Unlock()
			return err
		}
		c.results[op.version] = err
		c.mu.Unlock()
		if err != nil && ctx.Err() != nil {
			// The rest waits for a Save whose context is alive.
			return fmt.Errorf("saving to the cluster's state bucket: %w", ctx.Err())
		}
	}
}

// Export implements rpc.State: the records of every node, read from the
// bucket, listeners then connections, each by id; inline private keys
// left out.
func (c *Cluster) Export(ctx context.Context) (*tcpgatev1.Config, error) {
	recs, err := c.all(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Record, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.Record)
	}
	return exportRecords(out), nil
}

// ownedRecord is a record of the bucket and the node that runs it.
type ownedRecord struct {
	Record
	node string
}

// all reads every record of the bucket, sorted: listeners first, then by
// id. A record that does not decode is logged and left out.
func (c *Cluster) all(ctx context.Context) ([]ownedRecord, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, bucketTimeout)
		defer cancel()
	}
	vals, err := c.b.Objects(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ownedRecord, 0, len(vals))
	for key, v := range vals {
		rec, node, err := DecodeClusterValue(v)
		if err != nil {
			c.log.Error("a record of the cluster's state bucket does not decode: it is left out", "key", key, "error", err)
			continue
		}
		out = append(out, ownedRecord{Record: rec, node: node})
	}
	slices.SortFunc(out, func(a, b ownedRecord) int {
		if a.Kind() != b.Kind() {
			return cmp.Compare(a.Kind(), b.Kind()) * -1 // "listener" before "connection"
		}
		return cmp.Compare(a.ID(), b.ID())
	})
	return out, nil
}

// Restore makes this node's share of the cluster's state again through
// r, keeping ids: the objects recorded for this node, and every listener
// on every node (so a node that joins later starts them too). What the
// config file declares is left to the config. A listener of this node
// that had to move to a new port is recorded on it.
func (c *Cluster) Restore(ctx context.Context, r Restorer, declared func(kind, id string) bool) Report {
	var rep Report
	all, err := c.all(ctx)
	if err != nil {
		rep.Lines = append(rep.Lines, "reading the cluster's state: "+err.Error())
		c.log.Error("cluster state not restored", "error", err)
		return rep
	}
	var mine []Record
	for _, r := range all {
		if r.node == c.node || (r.node == "" && r.Listener.GetEveryNode()) {
			if !c.holdForRestore(ctx, r.Record, &rep) {
				continue
			}
			mine = append(mine, r.Record)
		}
	}
	var moved []uint64
	restoreRecords(ctx, r, declared, mine, c.log, &rep, func(rec Record, l *tcpgatev1.Listener, m bool) {
		if m && c.owner(rec) != "" {
			moved = append(moved, c.PutListener(rec.Listener, l))
			return
		}
		c.mu.Lock()
		c.recs[recordKey(rec)] = rec
		c.mu.Unlock()
	})
	for _, v := range moved {
		if err := c.Save(ctx, v); err != nil {
			rep.Lines = append(rep.Lines, "saving a moved listener's new port: "+err.Error())
			c.log.Error("saving a moved listener's new port", "error", err)
		}
	}
	c.log.Info("cluster state restored", "node", c.node, "restored", rep.Restored, "report", rep.Lines)
	return rep
}

// Close implements the server's state: the bucket is the cluster's, which
// the server closes.
func (c *Cluster) Close() error { return nil }

// holdForRestore takes the lease of a take_over connection before this
// node makes it again: false (with a report line) when another node
// holds it, having taken it over while this node was away.
func (c *Cluster) holdForRestore(ctx context.Context, rec Record, rep *Report) bool {
	if c.leases == nil || !rec.Connection.GetTakeOver() {
		return true
	}
	value, err := EncodeClusterValue(rec, c.node)
	if err == nil {
		err = c.leases.HoldLease(ctx, rec.ID(), value)
	}
	if err != nil {
		rep.Lines = append(rep.Lines, fmt.Sprintf("connection %s not restored: %v", rec.ID(), err))
		c.log.Warn("cluster connection not restored: its take-over lease is not this node's", "id", rec.ID(), "error", err)
		return false
	}
	return true
}

// TakeOver makes connection id again on this node, which has just won
// its take-over lease from a node that stopped renewing it; request is
// the lease's (the connection's record). The connection keeps its id;
// its generations start again at 1. Its record names this node from now
// on, so that this node's restart restores it.
func (c *Cluster) TakeOver(ctx context.Context, r Restorer, id string, request []byte) error {
	rec, _, err := DecodeClusterValue(request)
	if err != nil || rec.Connection == nil {
		return fmt.Errorf("taking connection %s over: its lease does not hold its request: %v", id, err)
	}
	if _, err := r.RestoreConnection(ctx, rec.Connection); err != nil {
		return fmt.Errorf("taking connection %s over: %w", id, err)
	}
	key := recordKey(rec)
	value, err := EncodeClusterValue(rec, c.node)
	if err != nil {
		return fmt.Errorf("taking connection %s over: %w", id, err)
	}
	c.mu.Lock()
	c.recs[key] = rec
	v := c.queueLocked(func(ctx context.Context) error { return c.b.Put(ctx, key, value) })
	c.mu.Unlock()
	return c.Save(ctx, v)
}
