package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// The state bucket, TCPGATE_<NAME>_STATE, holds the cluster's desired
// state: one key per object that the API made ("listener.ID",
// "conn.ID"), whose value the caller encodes (server/state: the request
// and the node that runs it), and the take-over leases ("lease.ID", see
// lease.go). It keeps the last value of each key only.

// Key prefixes of the state bucket.
const (
	ListenerKeyPrefix   = "listener."
	ConnectionKeyPrefix = "conn."
	leaseKeyPrefix      = "lease."
)

// StateBucket is the cluster's desired state in its key-value bucket.
type StateBucket struct {
	c  *Cluster
	kv jetstream.KeyValue
}

func newStateBucket(ctx context.Context, c *Cluster) (*StateBucket, error) {
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      c.streamName + "_STATE",
		Description: "tcpgate cluster " + c.cfg.Name + ": the listeners and connections made through the API, and take-over leases",
		History:     1,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("joining cluster %q: the state bucket: %w", c.cfg.Name, err)
	}
	return &StateBucket{c: c, kv: kv}, nil
}

// State is the cluster's state bucket.
func (c *Cluster) State() *StateBucket { return c.state }

// ObjectKey is the key of object id under prefix (ListenerKeyPrefix or
// ConnectionKeyPrefix). Ids may hold characters a key may not ('~', and
// '.' where it would make an empty token), so every byte but A-Z a-z 0-9
// _ - is written as =XX; '=' is not an id character, so keys stay
// distinct.
func ObjectKey(prefix, id string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for i := 0; i < len(id); i++ {
		ch := id[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '_', ch == '-':
			b.WriteByte(ch)
		default:
			fmt.Fprintf(&b, "=%02X", ch)
		}
	}
	return b.String()
}

// Put stores value under key and returns once NATS acknowledged it.
func (b *StateBucket) Put(ctx context.Context, key string, value []byte) error {
	if _, err := b.kv.Put(ctx, key, value); err != nil {
		return fmt.Errorf("storing %s in the cluster's state bucket: %w", key, err)
	}
	return nil
}

// Delete removes key (a key that is not there is no error) and returns
// once NATS acknowledged it.
func (b *StateBucket) Delete(ctx context.Context, key string) error {
	if err := b.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("removing %s from the cluster's state bucket: %w", key, err)
	}
	return nil
}

// Objects returns the value of every listener and connection key, by key.
func (b *StateBucket) Objects(ctx context.Context) (map[string][]byte, error) {
	w, err := b.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("reading the cluster's state bucket: %w", err)
	}
	defer w.Stop()
	out := map[string][]byte{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("reading the cluster's state bucket: the watch ended early")
			}
			if e == nil { // every current value was delivered
				return out, nil
			}
			k := e.Key()
			if strings.HasPrefix(k, ListenerKeyPrefix) || strings.HasPrefix(k, ConnectionKeyPrefix) {
				out[k] = e.Value()
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("reading the cluster's state bucket: %w", ctx.Err())
		}
	}
}
