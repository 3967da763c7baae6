// Package registry holds every live connection of the gateway, whoever
// opened it: it names each one (an id unique among live connections),
// admits it under the gateway-wide limits, and answers the lookups of
// Send, ListConnections, GetConnection, CloseConnection and broadcast.
//
// Listeners add the connections they accept (Add). A managed outbound
// connection is one entry for its whole life (AddOutbound), from Connect
// until it is closed for good, while its sockets come and go: each
// generation's conn.Conn is attached while it lives (Handle.Attach). A
// connection's origin is data of its entry, not a type: the same
// conn.Conn serves both. Imports go one way: the registry holds conns,
// the listener and outbound packages use the registry, and conn imports
// neither.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/ids"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/page"
)

// Errors of the registry; callers test them with errors.Is.
var (
	// ErrNotFound means no live connection has the id.
	ErrNotFound = errors.New("connection not found")
	// ErrListenerNotFound means no running listener has the id whose
	// connections were asked for. The listener package's ErrNotFound is
	// this same error, so that one sentinel says it wherever it is found.
	ErrListenerNotFound = errors.New("listener not found")
	// ErrLimit means a connection limit refused a connection.
	ErrLimit = errors.New("limit reached")
	// ErrInvalidFilter means a Filter the registry does not take.
	ErrInvalidFilter = errors.New("invalid connection filter")
	// ErrExists means a connection id asked for is in use, by an accepted
	// or an outbound connection: they share one id space.
	ErrExists = errors.New("connection id in use")
)

// DefaultMaxWriteBufferBytes bounds the bytes queued for writing over every
// connection when Config.MaxWriteBufferBytes is 0: the queues of 256
// connections full at conn.DefaultMaxQueuedWriteBytes each. A peer that
// reads keeps its queue near empty, so the bound is reached only by peers
// that stop reading, which the write timeout closes; until then reads that
// would queue more wait, as for a full queue of their own.
const DefaultMaxWriteBufferBytes = 256 << 20

// MaxRemotePrefixBytes bounds Filter.RemotePrefix: the longest address
// ("[ffff:...:ffff%zone]:65535") fits, and a filter is compared with every
// connection it pages over.
const MaxRemotePrefixBytes = 64

// Origin says who opened a connection: the event package's, so that the
// origin the registry records is the one every event of the connection
// carries.
type Origin = event.Origin

// The origins of a connection.
const (
	// Accepted is a connection a listener accepted.
	Accepted = event.Accepted
	// Outbound is a connection the gateway opened.
	Outbound = event.Outbound
)

// State is where a live connection is in its life.
type State int

// The states of a connection. A half-closed connection of a draining
// listener is Draining: its end is the drain's.
const (
	// Open is open both ways.
	Open State = iota + 1
	// HalfClosed is a connection whose peer shut down its sending side,
	// kept writable for its listener's HalfCloseTimeout.
	HalfClosed
	// Draining is a connection whose listener is stopping: it closes by
	// the end of the drain.
	Draining
	// Connecting is an outbound connection dialing, or writing its
	// on_connect and awaiting its reply: not yet connected.
	Connecting
	// Waiting is an outbound connection that is down and dials again at
	// Info.NextAttemptAt.
	Waiting
	// Closed is an outbound connection closed for good: only in the final
	// Info that CloseConn and Handle.Remove return; never listed.
	Closed
)

// Info is a snapshot of a connection.
type Info struct {
	ID string
	// Node is the node the connection lives on (Config.Node).
	Node string
	// ListenerID is the listener that accepted it; empty for an outbound
	// connection.
	ListenerID  string
	Origin      Origin
	State       State
	RemoteAddr  string
	LocalAddr   string
	PeerSubject string
	OpenedAt    time.Time
	BytesIn     uint64
	BytesOut    uint64
	FramesIn    uint64
	FramesOut   uint64

	// Of an outbound connection only (see Handle's setters).

	// Address is what it dials, as given.
	Address string
	// Generation numbers its current (or last) socket; 0 before the first.
	Generation uint64
	// LastError says why the last attempt failed or the last socket ended.
	LastError string
	// Attempts counts its failed attempts in a row.
	Attempts uint32
	// NextAttemptAt is when a Waiting connection dials again.
	NextAttemptAt time.Time
	// Declared says the config file declares it: an outbound connection
	// that CloseConnection makes reconnect rather than closes for good.
	Declared bool
}

// Config configures a Registry.
type Config struct {
	// MaxConnections bounds the live sockets, whatever their origin: an
	// outbound connection counts while it holds one; 0 means no bound.
	MaxConnections int
	// MaxOutbound bounds the managed outbound connections, each counted
	// from AddOutbound until it is removed, connected or not; 0 means no
	// bound.
	MaxOutbound int
	// MaxConnectionsPerIP bounds the accepted connections of one peer IP
	// over all listeners, so that one host cannot take every slot; 0 means
	// no bound. Outbound connections are the gateway's own doing, not a
	// peer's, and are not counted.
	MaxConnectionsPerIP int
	// PerIPLoopback applies MaxConnectionsPerIP to loopback peers too;
	// false exempts them, so that benchmarks and local tools may open
	// every slot.
	PerIPLoopback bool
	// MaxWriteBufferBytes bounds the bytes queued for writing over every
	// connection; 0 means DefaultMaxWriteBufferBytes.
	MaxWriteBufferBytes int
	// Node is this gateway's node id (--node-id), reported on every
	// connection (Info.Node) and the node outbound connections are placed
	// on (see Node).
	Node string
	// Handler, when set, is every connection's conn.Config.Handler:
	// the remote handlers (package handler), which take the frames of the
	// connections they registered for.
	Handler conn.Handler
}

// Registry holds the live connections. Its zero value is not usable; call
// New.
type Registry struct {
	cfg    Config
	totals conn.Counters // over every connection ever
	writes *conn.WriteBudget
	closed [event.NumReasons]atomic.Uint64

	mu    sync.Mutex // guards the fields below, every Group's order and draining, and every outEntry's state
	conns map[string]*entry
	// sockets counts the entries that hold a socket: the accepted ones,
	// and the outbound ones while attached (MaxConnections).
	sockets int
	// outs are the outbound entries (MaxOutbound counts them), apart so
	// that Stats does not walk every connection.
	outs   map[*entry]struct{}
	perIP  map[netip.Addr]int // admitted connections by peer IP, of the peers MaxConnectionsPerIP counts
	groups map[string]*Group  // by listener id
	// serial is the creation serial last given to a connection as it was
	// admitted: lists are in its order.
	serial uint64
	order  page.Order[*entry]
}

// entry is an admitted connection.
type entry struct {
	id string
	// c is the connection's socket; for an outbound entry, its current
	// generation's, nil while it has none. Guarded by Registry.mu for
	// outbound entries; set once for accepted ones.
	c      *conn.Conn
	origin Origin
	group  *Group // its listener's; nil for none
	serial uint64
	out    *outEntry // set for an outbound entry
}

// outEntry is what the registry keeps of a managed outbound connection
// besides its socket. Its mutable fields are guarded by Registry.mu.
type outEntry struct {
	address  string
	framing  framing.Config
	declared bool
	managed  Managed
	created  time.Time
	// counters add up every generation's traffic.
	counters conn.Counters

	phase     State // Connecting, Waiting, or Open once connected
	gen       uint64
	lastError string
	attempts  uint32
	next      time.Time
	removed   bool
}

// Group is the connections of one listener, as the registry sees them: it
// counts them for the listener's own max_connections, lists them in
// acceptance order, and makes them Draining while the listener stops.
// Make one with AddGroup.
type Group struct {
	id string
	// max bounds its live connections (0: no bound of its own); an atomic,
	// so that UpdateListener changes it for the connections admitted next.
	max atomic.Int64
	// open counts its admitted connections, written under Registry.mu and
	// read without it, so that a listener's snapshot takes no lock of the
	// registry.
	open atomic.Int64

	// Guarded by Registry.mu.
	order    page.Order[*entry]
	draining bool
}

// Open returns how many of the group's connections are live. It takes no
// lock.
func (g *Group) Open() int { return int(g.open.Load()) }

// SetMax changes the bound of the group's live connections (0: none of its
// own) for the connections admitted from now on; those open stay open.
func (g *Group) SetMax(max int) { g.max.Store(int64(max)) }

// New returns an empty registry.
func New(cfg Config) *Registry {
	if cfg.MaxWriteBufferBytes <= 0 {
		cfg.MaxWriteBufferBytes = DefaultMaxWriteBufferBytes
	}
	return &Registry{
		cfg:    cfg,
		writes: conn.NewWriteBudget(cfg.MaxWriteBufferBytes),
		conns:  make(map[string]*entry),
		perIP:  make(map[netip.Addr]int),
		groups: make(map[string]*Group),
		outs:   make(map[*entry]struct{}),
	}
}

// AddGroup registers the listener id, whose connections may then be
// added, listed and broadcast to; max bounds its live connections (0: no
// bound of its own). The listener package keeps listener ids unique; a
// group of an id already registered replaces it.
func (r *Registry) AddGroup(id string, max int) *Group {
	g := &Group{id: id}
	g.max.Store(int64(max))
	r.mu.Lock()
	r.groups[id] = g
	r.mu.Unlock()
	return g
}

// DrainGroup makes the group's connections Draining, for the rest of their
// lives.
func (r *Registry) DrainGroup(g *Group) {
	r.mu.Lock()
	g.draining = true
	r.mu.Unlock()
}

// RemoveGroup forgets the group's listener id: lookups of it are
// ErrListenerNotFound from now on. Its connections must have closed.
func (r *Registry) RemoveGroup(g *Group) {
	r.mu.Lock()
	if r.groups[g.id] == g {
		delete(r.groups, g.id)
	}
	r.mu.Unlock()
}

// GroupConns returns the group's live connections.
func (r *Registry) GroupConns(g *Group) []*conn.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*conn.Conn, 0, g.Open())
	for _, e := range g.order.After(0) {
		out = append(out, e.c)
	}
	return out
}

// Spec describes a connection to add.
type Spec struct {
	Origin Origin
	// Group is the group of the listener that accepted it; nil for none.
	Group *Group
	// Conn configures the connection. The registry sets its ID, its
	// WriteBudget and its Closed hook, and adds the registry's totals to
	// its Aggregates; a Closed given here is called after the registry
	// has forgotten the connection.
	Conn conn.Config
}

// Add makes a connection of nc and admits it: it draws its id, counts it
// toward the limits and lists it. ctx bounds the connection's life (see
// conn.New). When a limit refuses it, Add returns the connection with a
// *limits.Error wrapping ErrLimit: the connection is then not listed and
// takes no slot, and the caller closes it with reason LIMIT_REACHED and
// serves it anyway, so that subscribers see why a client was turned away.
// The caller runs Serve in any case.
func (r *Registry) Add(ctx context.Context, nc net.Conn, s Spec) (*conn.Conn, error) {
	ip, perIP := r.peerIP(s.Origin, nc)
	e := &entry{origin: s.Origin, group: s.Group}
	// admitted is set under r.mu when the connection takes its slots, so
	// that the Closed hook gives back only what was taken.
	var admitted bool
	cfg := s.Conn
	cfg.Origin = s.Origin
	closed := cfg.Closed
	cfg.WriteBudget = r.writes
	if r.cfg.Handler != nil {
		cfg.Handler = r.cfg.Handler
	}
	cfg.Aggregates = append(cfg.Aggregates[:len(cfg.Aggregates):len(cfg.Aggregates)], &r.totals)
	cfg.Closed = func(reason event.CloseReason) {
		if int(reason) < len(r.closed) {
			r.closed[reason].Add(1)
		}
		r.mu.Lock()
		if admitted {
			r.sockets--
			delete(r.conns, cfg.ID)
			r.order.Remove(e.serial)
			if g := e.group; g != nil {
				g.order.Remove(e.serial)
				g.open.Add(-1)
			}
			if perIP {
				if r.perIP[ip]--; r.perIP[ip] <= 0 {
					delete(r.perIP, ip)
				}
			}
		}
		r.mu.Unlock()
		if closed != nil {
			closed(reason)
		}
	}

	// The id is drawn under r.mu, where it joins r.conns, so that no two
	// live connections share one; conn.New does no I/O.
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg.ID = r.newIDLocked()
	e.c = conn.New(ctx, nc, cfg)
	var err error
	g := s.Group
	switch {
	case g != nil && g.max.Load() > 0 && int64(g.Open()) >= g.max.Load():
		err = &limits.Error{Doing: "admitting connection", Name: "max_connections", Limit: int(g.max.Load()), Err: ErrLimit}
	case r.cfg.MaxConnections > 0 && r.sockets >= r.cfg.MaxConnections:
		err = &limits.Error{Doing: "admitting connection", Name: "max_connections", Flag: "--max-connections", Limit: r.cfg.MaxConnections, Err: ErrLimit}
	case perIP && r.perIP[ip] >= r.cfg.MaxConnectionsPerIP:
		err = &limits.Error{Doing: "admitting connection", Name: "max_connections_per_ip", Flag: "--max-connections-per-ip", Limit: r.cfg.MaxConnectionsPerIP, Err: ErrLimit}
	default:
		admitted = true
		r.sockets++
		e.id = cfg.ID
		r.conns[cfg.ID] = e
		r.serial++
		e.serial = r.serial
		r.order.Add(e.serial, e)
		if g != nil {
			g.order.Add(e.serial, e)
			g.open.Add(1)
		}
		if perIP {
			r.perIP[ip]++
		}
	}
	return e.c, err
}

// newIDLocked returns a random connection id that no live connection has.
// Random rather than counted: an id from before a restart, or of another
// node, never names a connection of now.
func (r *Registry) newIDLocked() string {
	for {
		if id := ids.New(ids.Connection); r.conns[id] == nil {
			return id
		}
	}
}

// peerIP returns the IP of nc's peer and whether MaxConnectionsPerIP
// counts it: only for accepted connections, whose peer chose to connect.
func (r *Registry) peerIP(origin Origin, nc net.Conn) (netip.Addr, bool) {
	if r.cfg.MaxConnectionsPerIP <= 0 || origin != Accepted {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(nc.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}, false
	}
	// An IPv4 peer of a dual-stack socket is one host, however spelled.
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() && !r.cfg.PerIPLoopback {
		return netip.Addr{}, false
	}
	return ip, true
}

// stateLocked is where e is in its life.
func stateLocked(e *entry) State {
	switch {
	case e.out != nil && e.out.removed:
		return Closed
	case e.out != nil && e.out.phase != Open:
		return e.out.phase
	case e.group != nil && e.group.draining:
		return Draining
	case e.c.HalfClosed():
		return HalfClosed
	}
	return Open
}

// Filter selects connections; every field set must hold.
type Filter struct {
	// ListenerID selects the connections of one listener; empty means
	// every connection. An unknown listener is ErrListenerNotFound.
	ListenerID string
	// State selects one state; 0 means every state.
	State State
	// RemotePrefix selects the connections whose remote address starts
	// with it ("127.0.0.1:", "[::1]:"); empty means every address.
	RemotePrefix string
	// Origins selects the connections of these origins; empty means every
	// origin. An origin that is neither Accepted nor Outbound is
	// ErrInvalidFilter.
	Origins []Origin
}

// originSet is Filter.Origins as a bit per origin; 0 matches every origin.
// A set rather than a list: its size is bounded by the origins there are,
// however long the list, and a test costs the same.
type originSet uint8

func newOriginSet(origins []Origin) (originSet, error) {
	var s originSet
	for i, o := range origins {
		if o != Accepted && o != Outbound {
			return 0, &page.FieldError{
				Field:  fmt.Sprintf("origins[%d]", i),
				Reason: fmt.Sprintf("%d is not an origin (accepted or outbound)", o),
				Err:    ErrInvalidFilter,
			}
		}
		s |= 1 << o
	}
	return s, nil
}

func (s originSet) has(o Origin) bool { return s == 0 || s&(1<<o) != 0 }

// digest is the set in a fixed spelling, whatever the list's order and
// repeats: the same set is the same filter for page tokens.
func (s originSet) digest() string { return strconv.Itoa(int(s)) }

// Digest is the filter's digest for page tokens (see page.Token).
func (f Filter) Digest() page.Filter {
	// An invalid list has no digest of its own: ListConns refuses it.
	origins, _ := newOriginSet(f.Origins)
	return page.FilterOf("connections", f.ListenerID, strconv.Itoa(int(f.State)), f.RemotePrefix, origins.digest())
}

// Page is a page of connections, in creation order.
type Page struct {
	Conns []Info
	// Last is the serial of the last connection of the page: the next
	// page starts after it.
	Last uint64
	// More says whether connections matching the filter follow the page.
	More bool
}

// ListConns returns a page of at most size connections (see page.Size)
// that match f, admitted after serial after (0 for the first page), in
// creation order. It walks the connections in order under the lock and
// snapshots only the page's, outside it.
func (r *Registry) ListConns(f Filter, size int, after uint64) (Page, error) {
	size, err := page.Size(size)
	if err != nil {
		return Page{}, fmt.Errorf("listing connections: %w", err)
	}
	if n := len(f.RemotePrefix); n > MaxRemotePrefixBytes {
		return Page{}, fmt.Errorf("listing connections: %w", &page.FieldError{
			Field:  "remote_address_prefix",
			Reason: fmt.Sprintf("%d bytes, more than %d (no address is that long)", n, MaxRemotePrefixBytes),
			Err:    ErrInvalidFilter,
		})
	}
	origins, err := newOriginSet(f.Origins)
	if err != nil {
		return Page{}, fmt.Errorf("listing connections: %w", err)
	}
	type hit struct {
		e  *entry
		st State
	}
	hits := make([]hit, 0, min(size, 64))
	var p Page
	r.mu.Lock()
	all := &r.order
	if f.ListenerID != "" {
		g := r.groups[f.ListenerID]
		if g == nil {
			r.mu.Unlock()
			return Page{}, fmt.Errorf("listing connections of %q: %w", f.ListenerID, ErrListenerNotFound)
		}
		all = &g.order
	}
	for serial, e := range all.After(after) {
		st := stateLocked(e)
		if (f.State != 0 && st != f.State) || !origins.has(e.origin) || !strings.HasPrefix(remoteLocked(e), f.RemotePrefix) {
			continue
		}
		if len(hits) == size {
			p.More = true
			break
		}
		hits = append(hits, hit{e, st})
		p.Last = serial
	}
	r.mu.Unlock()
	p.Conns = make([]Info, len(hits))
	for i, h := range hits {
		p.Conns[i] = r.info(h.e, h.st)
	}
	return p, nil
}

// remoteLocked is the address a remote prefix filters on: the peer's, or,
// for an outbound connection without a socket, the address it dials.
func remoteLocked(e *entry) string {
	if e.c == nil {
		return e.out.address
	}
	return e.c.RemoteAddr()
}

// Conns returns every live connection, of one listener when listenerID is
// not empty, oldest first.
func (r *Registry) Conns(listenerID string) ([]Info, error) {
	var out []Info
	for after := uint64(0); ; {
		p, err := r.ListConns(Filter{ListenerID: listenerID}, page.MaxSize, after)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Conns...)
		if !p.More {
			return out, nil
		}
		after = p.Last
	}
}

func (r *Registry) info(e *entry, st State) Info {
	if e.out != nil {
		return r.outInfo(e, st)
	}
	c := e.c
	n := c.Counters()
	return Info{
		ID:          c.ID(),
		Node:        r.cfg.Node,
		ListenerID:  c.ListenerID(),
		Origin:      e.origin,
		State:       st,
		RemoteAddr:  c.RemoteAddr(),
		LocalAddr:   c.LocalAddr(),
		PeerSubject: c.PeerSubject(),
		OpenedAt:    c.OpenedAt(),
		BytesIn:     n.BytesIn.Load(),
		BytesOut:    n.BytesOut.Load(),
		FramesIn:    n.FramesIn.Load(),
		FramesOut:   n.FramesOut.Load(),
	}
}

// Node returns this gateway's node id (Config.Node): the node its
// connections live on.
func (r *Registry) Node() string { return r.cfg.Node }

// Conn returns a live connection.
func (r *Registry) Conn(id string) (*conn.Conn, error) {
	e, _, err := r.lookup(id)
	if err != nil {
		return nil, err
	}
	if e.out != nil {
		r.mu.Lock()
		c := e.c
		r.mu.Unlock()
		if c == nil {
			return nil, fmt.Errorf("connection %q: not connected now: %w", id, ErrNotFound)
		}
		return c, nil
	}
	return e.c, nil
}

// lookup returns a live connection's entry and its state.
func (r *Registry) lookup(id string) (*entry, State, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.conns[id]
	if e == nil {
		return nil, 0, fmt.Errorf("connection %q: %w", id, ErrNotFound)
	}
	return e, stateLocked(e), nil
}

// GetConn returns a snapshot of one live connection.
func (r *Registry) GetConn(id string) (Info, error) {
	e, st, err := r.lookup(id)
	if err != nil {
		return Info{}, fmt.Errorf("getting %w", err)
	}
	return r.info(e, st), nil
}

// CloseConn closes one connection with reason CLOSED_BY_API and returns its
// final snapshot once it is closed: an accepted one with the state it had
// before, an outbound one closed for good (no reconnect), with state
// Closed. An outbound one the config file declares is not closed for
// good: its socket closes, it reconnects, and CloseConn returns at once.
func (r *Registry) CloseConn(ctx context.Context, id string) (Info, error) {
	e, st, err := r.lookup(id)
	if err != nil {
		return Info{}, err
	}
	if e.out != nil {
		if !e.out.managed.Close() {
			// Declared: its socket closed, it reconnects.
			r.mu.Lock()
			st = stateLocked(e)
			r.mu.Unlock()
			return r.outInfo(e, st), nil
		}
		select {
		case <-e.out.managed.Done():
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
		return r.info(e, Closed), nil
	}
	e.c.Close(event.ReasonClosedByAPI)
	select {
	case <-e.c.Done():
	case <-ctx.Done():
		return Info{}, ctx.Err()
	}
	return r.info(e, st), nil
}

// Broadcast writes p to every live connection of a listener concurrently
// and returns the bytes written in all and how many connections took the
// write.
func (r *Registry) Broadcast(ctx context.Context, listenerID string, p []byte) (uint64, int, error) {
	r.mu.Lock()
	g := r.groups[listenerID]
	if g == nil {
		r.mu.Unlock()
		return 0, 0, fmt.Errorf("sending to listener %q: %w", listenerID, ErrListenerNotFound)
	}
	conns := make([]*conn.Conn, 0, g.Open())
	for _, e := range g.order.After(0) {
		conns = append(conns, e.c)
	}
	r.mu.Unlock()

	var reached atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			if _, err := c.Send(ctx, p, conn.Await{}); err == nil {
				reached.Add(1)
			}
		})
	}
	wg.Wait()
	n := int(reached.Load())
	return uint64(n) * uint64(len(p)), n, nil
}

// Stats are figures over every connection since the registry started.
type Stats struct {
	// ConnectionsOpen counts the sockets held now, accepted and outbound.
	ConnectionsOpen int
	// Outbound counts the managed outbound connections by state.
	Outbound map[State]int
	// Closed counts closed connections by reason, refused ones included.
	Closed                                 map[event.CloseReason]uint64
	BytesIn, BytesOut, FramesIn, FramesOut uint64
	// WriteQueued is the bytes queued for writing to connections now
	// (bounded by Config.MaxWriteBufferBytes).
	WriteQueued int
}

// Stats returns the figures.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	st := Stats{ConnectionsOpen: r.sockets, Outbound: make(map[State]int)}
	for e := range r.outs {
		st.Outbound[stateLocked(e)]++
	}
	r.mu.Unlock()
	st.Closed = make(map[event.CloseReason]uint64, len(r.closed))
	for i := range r.closed {
		if n := r.closed[i].Load(); n > 0 {
			st.Closed[event.CloseReason(i)] = n
		}
	}
	st.BytesIn, st.BytesOut = r.totals.BytesIn.Load(), r.totals.BytesOut.Load()
	st.FramesIn, st.FramesOut = r.totals.FramesIn.Load(), r.totals.FramesOut.Load()
	st.WriteQueued = r.writes.Used()
	return st
}

// CloseSockets closes every socket the registry holds with reason: each
// accepted connection, and each outbound connection's current socket
// (the connection itself stays, and reconnects as after any drop). It
// returns how many sockets it closed, without waiting for them to end. A
// cluster node that learns the cluster declared it lost calls it: the
// cluster reported its connections closed, so they must be.
func (r *Registry) CloseSockets(reason event.CloseReason) int {
	r.mu.Lock()
	var cs []*conn.Conn
	for _, e := range r.conns {
		if e.c != nil {
			cs = append(cs, e.c)
		}
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.Close(reason)
	}
	return len(cs)
}
