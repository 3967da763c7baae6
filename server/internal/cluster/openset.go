package cluster

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

// openSet is the connections open on this node, kept from the events it
// publishes and written to the nodes bucket when it changed, so that the
// node that declares this one lost knows which connections to report
// closed. A connection that opened or closed within the last renewal
// period before the loss may be missing or reported closed twice.
type openSet struct {
	c     *Cluster
	mu    sync.Mutex
	conns map[string]openConn
	dirty bool
}

type openConn struct {
	id, listener, boot string
	origin             event.Origin
}

func newOpenSet(c *Cluster) *openSet {
	return &openSet{c: c, conns: map[string]openConn{}}
}

// track notes what e changes of the set.
func (s *openSet) track(e *event.Event) {
	switch e.Kind {
	case event.ConnectionOpened:
		s.mu.Lock()
		s.conns[e.ConnectionID] = openConn{id: e.ConnectionID, listener: e.ListenerID, origin: e.Origin}
		s.dirty = true
		s.mu.Unlock()
	case event.ConnectionClosed:
		s.mu.Lock()
		if _, ok := s.conns[e.ConnectionID]; ok {
			delete(s.conns, e.ConnectionID)
			s.dirty = true
		}
		s.mu.Unlock()
	}
}

// flush writes the set when it changed since the last write.
func (s *openSet) flush(ctx context.Context) {
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return
	}
	s.dirty = false
	var b strings.Builder
	b.WriteString(s.c.boot)
	b.WriteByte('\n')
	for _, c := range s.conns {
		b.WriteString(c.id)
		b.WriteByte(' ')
		b.WriteString(c.listener)
		b.WriteByte(' ')
		b.WriteString(strconv.Itoa(int(c.origin)))
		b.WriteByte('\n')
	}
	s.mu.Unlock()
	if _, err := s.c.presence.kv.Put(ctx, openKey+s.c.cfg.Node, []byte(b.String())); err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		s.c.cfg.Log.Warn("cluster: open connections not saved", "error", err)
	}
}

// decodeOpen reads a set written by flush; lines that do not parse are
// skipped.
func decodeOpen(b []byte) []openConn {
	lines := strings.Split(string(b), "\n")
	if len(lines) == 0 {
		return nil
	}
	boot := lines[0]
	var out []openConn
	for _, l := range lines[1:] {
		f := strings.Split(l, " ")
		if len(f) != 3 || f[0] == "" {
			continue
		}
		o, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		out = append(out, openConn{id: f[0], listener: f[1], origin: event.Origin(o), boot: boot})
	}
	return out
}
