package cluster

import (
	"sync"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// recentClosedCap bounds the closes of other nodes' connections a node
// remembers, to tell which connections of a lost node's last snapshot
// closed after it was written (a snapshot is at most a renewal old).
const recentClosedCap = 1 << 16

// view is what a node knows of the other nodes' open connections from the
// stream since it joined: with the lost node's last snapshot, it tells
// which connections to report closed. A connection opened before this
// node joined and not in the snapshot is not known to it.
type view struct {
	mu     sync.Mutex
	open   map[string]map[string]openConn // by node, then connection id
	closed map[string]struct{}            // node + " " + id, recently closed
	order  []string                       // of closed, oldest first
}

func newView() *view {
	return &view{open: map[string]map[string]openConn{}, closed: map[string]struct{}{}}
}

func (v *view) track(e *event.Event) {
	if e.Node == "" || e.ConnectionID == "" {
		return
	}
	switch e.Kind {
	case event.ConnectionOpened:
		v.mu.Lock()
		m := v.open[e.Node]
		if m == nil {
			m = map[string]openConn{}
			v.open[e.Node] = m
		}
		m[e.ConnectionID] = openConn{id: e.ConnectionID, listener: e.ListenerID, origin: e.Origin}
		v.mu.Unlock()
	case event.ConnectionClosed:
		v.mu.Lock()
		delete(v.open[e.Node], e.ConnectionID)
		key := e.Node + " " + e.ConnectionID
		if _, ok := v.closed[key]; !ok {
			v.closed[key] = struct{}{}
			v.order = append(v.order, key)
			if len(v.order) > recentClosedCap {
				delete(v.closed, v.order[0])
				v.order = v.order[1:]
			}
		}
		v.mu.Unlock()
	}
}

// lost returns the connections of node to report closed: those of its
// snapshot that this node did not see close, and those this node saw
// open; and forgets the node.
func (v *view) lost(node string, snapshot []openConn) []openConn {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]openConn, 0, len(snapshot)+len(v.open[node]))
	seen := map[string]bool{}
	for _, c := range v.open[node] {
		out = append(out, c)
		seen[c.id] = true
	}
	for _, c := range snapshot {
		if _, closed := v.closed[node+" "+c.id]; !closed && !seen[c.id] {
			out = append(out, c)
			seen[c.id] = true
		}
	}
	delete(v.open, node)
	return out
}
