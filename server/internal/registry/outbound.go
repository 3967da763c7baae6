package registry

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/limits"
)

// Managed is what the registry calls of a managed outbound connection's
// supervisor (package outbound), which decides what a Send does while the
// connection is down and how it closes for good.
type Managed interface {
	// Send writes p as aw says: to the current socket while connected;
	// while down, it queues p or refuses it.
	Send(ctx context.Context, p []byte, aw conn.Await) ([]byte, error)
	// Close closes the connection for good, with reason CLOSED_BY_API: no
	// reconnect follows. It returns at once; Done tells when it is over.
	// A connection the config file declares cannot be closed for good
	// through the API: Close closes its socket only, it reconnects, and
	// Close returns false.
	Close() (final bool)
	// Done is closed once the connection is closed for good: its entry
	// removed, its last CONNECTION_CLOSED published.
	Done() <-chan struct{}
}

// OutboundSpec describes a managed outbound connection to add.
type OutboundSpec struct {
	// ID is the id asked for; empty draws one.
	ID string
	// Address is what it dials, as given (Info.Address, and what a remote
	// prefix filters on while it has no socket).
	Address string
	// Framing is its sockets' framing, which a framed Send encodes with;
	// it must be normalized.
	Framing framing.Config
	// Managed makes its supervisor, given the entry's handle. It is
	// called with the registry's lock held, before the entry is listed, so
	// that no lookup finds a supervisor without its handle: it must only
	// keep the handle.
	Managed func(*Handle) Managed
	// Declared says the config file declares it (Info.Declared).
	Declared bool
}

// Handle is the registry's handle of a managed outbound connection's
// entry, for its supervisor: it attaches each generation's socket and
// says where the connection is in its life.
type Handle struct {
	r *Registry
	e *entry
}

// AddOutbound lists a managed outbound connection, in state Connecting
// and without a socket, under the id asked for or a drawn one. An id in
// use is ErrExists; MaxOutbound refuses with a *limits.Error wrapping
// ErrLimit. The entry counts toward MaxOutbound until Remove, or until a
// generation's close is final (see Attach).
func (r *Registry) AddOutbound(s OutboundSpec) (*Handle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := s.ID
	switch {
	case id != "" && r.conns[id] != nil:
		return nil, fmt.Errorf("connecting %q: %w", id, ErrExists)
	case r.cfg.MaxOutbound > 0 && len(r.outs) >= r.cfg.MaxOutbound:
		return nil, &limits.Error{Doing: "connecting", Name: "max_outbound_connections", Flag: "--max-outbound-connections", Limit: r.cfg.MaxOutbound, Err: ErrLimit}
	case id == "":
		id = r.newIDLocked()
	}
	e := &entry{id: id, origin: Outbound, out: &outEntry{
		address: s.Address, framing: s.Framing, created: time.Now(), phase: Connecting, declared: s.Declared,
	}}
	h := &Handle{r: r, e: e}
	e.out.managed = s.Managed(h)
	r.conns[id] = e
	r.outs[e] = struct{}{}
	r.serial++
	e.serial = r.serial
	r.order.Add(e.serial, e)
	return h, nil
}

// ID returns the connection's id.
func (o *Handle) ID() string { return o.e.id }

// Attach makes a connection of nc, the socket of generation gen, and
// attaches it to the entry: it counts toward MaxConnections while it
// lives (a *limits.Error wrapping ErrLimit refuses it, and the caller
// closes nc). The registry sets cfg's ID, Origin, Generation, WriteBudget
// and Closed hook, and adds the entry's and the registry's counters to its
// Aggregates. When the socket closes, closed is called with its reason
// before anything else and says whether the close is final (the
// connection closed for good): a final close removes the entry before the
// socket's CONNECTION_CLOSED is published, as an accepted connection's
// does; otherwise the entry stays, Waiting. The caller runs Serve.
func (o *Handle) Attach(ctx context.Context, nc net.Conn, gen uint64, cfg conn.Config, closed func(event.CloseReason) bool) (*conn.Conn, error) {
	r, e := o.r, o.e
	cfg.ID = e.id
	cfg.Origin = Outbound
	cfg.Generation = gen
	cfg.WriteBudget = r.writes
	if r.cfg.Handler != nil {
		cfg.Handler = r.cfg.Handler
	}
	cfg.Aggregates = append(cfg.Aggregates[:len(cfg.Aggregates):len(cfg.Aggregates)], &e.out.counters, &r.totals)
	var c *conn.Conn
	cfg.Closed = func(reason event.CloseReason) {
		if int(reason) < len(r.closed) {
			r.closed[reason].Add(1)
		}
		final := closed(reason)
		r.mu.Lock()
		if e.c == c {
			e.c = nil
			r.sockets--
		}
		e.out.phase = Waiting
		if final {
			r.removeLocked(e)
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case e.out.removed:
		return nil, fmt.Errorf("connecting %q: %w", e.id, conn.ErrClosed)
	case r.cfg.MaxConnections > 0 && r.sockets >= r.cfg.MaxConnections:
		return nil, &limits.Error{Doing: "connecting", Name: "max_connections", Flag: "--max-connections", Limit: r.cfg.MaxConnections, Err: ErrLimit}
	}
	// conn.New does no I/O.
	c = conn.New(ctx, nc, cfg)
	e.c = c
	e.out.gen = gen
	e.out.phase = Connecting
	r.sockets++
	return c, nil
}

// removeLocked forgets an outbound entry: lookups of its id fail from now
// on, and it no longer counts toward MaxOutbound.
func (r *Registry) removeLocked(e *entry) {
	if e.out.removed {
		return
	}
	e.out.removed = true
	delete(r.conns, e.id)
	r.order.Remove(e.serial)
	delete(r.outs, e)
}

// Remove forgets the entry of a connection closed for good while it holds
// no socket, and returns its final snapshot, state Closed. A reason
// other than Unspecified is counted among the closes (Stats.Closed), as a
// socket's close is: the CONNECTION_CLOSED its supervisor publishes for
// it. Unspecified removes a connection that never was (a failed first
// attempt without reconnect), counted nowhere.
func (o *Handle) Remove(reason event.CloseReason) Info {
	if reason != event.ReasonUnspecified && int(reason) < len(o.r.closed) {
		o.r.closed[reason].Add(1)
	}
	o.r.mu.Lock()
	o.r.removeLocked(o.e)
	o.r.mu.Unlock()
	return o.Info()
}

// Info returns a snapshot of the connection (state Closed once removed).
func (o *Handle) Info() Info {
	o.r.mu.Lock()
	st := stateLocked(o.e)
	o.r.mu.Unlock()
	return o.r.info(o.e, st)
}

// SetConnecting says the connection dials (or writes its on_connect).
func (o *Handle) SetConnecting() {
	o.r.mu.Lock()
	o.e.out.phase = Connecting
	o.e.out.next = time.Time{}
	o.r.mu.Unlock()
}

// SetConnected says the attached socket is connected: its on_connect is
// written and answered, and Sends go to it. attempts is the count of
// failed attempts in a row, kept until a connection stays up (see
// package outbound).
func (o *Handle) SetConnected(attempts uint32) {
	o.r.mu.Lock()
	if o.e.c != nil {
		o.e.out.phase = Open
	}
	o.e.out.attempts = attempts
	o.r.mu.Unlock()
}

// SetWaiting says the connection is down and dials again at next, after
// attempts failed attempts in a row, the last failure being lastError.
func (o *Handle) SetWaiting(lastError string, attempts uint32, next time.Time) {
	o.r.mu.Lock()
	o.e.out.phase = Waiting
	o.e.out.lastError = lastError
	o.e.out.attempts = attempts
	o.e.out.next = next
	o.r.mu.Unlock()
}

// outInfo is info of an outbound entry: the current socket's addresses,
// the traffic of every generation together.
func (r *Registry) outInfo(e *entry, st State) Info {
	o := e.out
	n := &o.counters
	i := Info{
		ID:        e.id,
		Node:      r.cfg.Node,
		Origin:    e.origin,
		State:     st,
		OpenedAt:  o.created,
		BytesIn:   n.BytesIn.Load(),
		BytesOut:  n.BytesOut.Load(),
		FramesIn:  n.FramesIn.Load(),
		FramesOut: n.FramesOut.Load(),
		Address:   o.address,
		Declared:  o.declared,
	}
	r.mu.Lock()
	c := e.c
	i.Generation, i.LastError, i.Attempts = o.gen, o.lastError, o.attempts
	if st == Waiting {
		i.NextAttemptAt = o.next
	}
	r.mu.Unlock()
	if c != nil {
		i.RemoteAddr, i.LocalAddr, i.PeerSubject, i.OpenedAt = c.RemoteAddr(), c.LocalAddr(), c.PeerSubject(), c.OpenedAt()
	}
	return i
}

// Send writes p to the connection id, whatever its origin, and waits for
// the reply as aw says: an accepted connection's socket takes it at once;
// a managed outbound connection's supervisor decides (its current socket
// while connected; its queue, or a refusal, while down). framed encodes p
// with the connection's framing first (see conn.Conn.SendFrame). It
// returns the reply and the bytes written, the encoding included.
func (r *Registry) Send(ctx context.Context, id string, p []byte, framed bool, aw conn.Await) ([]byte, int, error) {
	e, _, err := r.lookup(id)
	if err != nil {
		return nil, 0, err
	}
	if e.out == nil {
		if framed {
			return e.c.SendFrame(ctx, p, aw)
		}
		reply, err := e.c.Send(ctx, p, aw)
		return reply, len(p), err
	}
	if framed {
		if p, err = e.out.framing.Encode(nil, p); err != nil {
			return nil, 0, fmt.Errorf("writing to %s: %w", id, err)
		}
	}
	reply, err := e.out.managed.Send(ctx, p, aw)
	return reply, len(p), err
}
