// Package listener owns the gateway's TCP listeners and the connections they
// accept: binding, the accept loop, limits, drain and stop, and the registry
// that Send, ListConnections and CloseConnection look connections up in.
package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	ErrExists           = errors.New("listener id already in use")
	ErrNotFound         = errors.New("listener not found")
	ErrConnNotFound     = errors.New("connection not found")
	ErrAddressInUse     = errors.New("address already in use")
	ErrAddressNotUsable = errors.New("address cannot be bound")
	ErrLimit            = errors.New("limit reached")
	ErrClosed           = errors.New("gateway shutting down")
	// ErrDrainTooLong means a drain_timeout above Config.MaxDrainTimeout.
	ErrDrainTooLong = errors.New("drain timeout too long")
	// ErrInvalidFilter means a ConnFilter the registry does not take.
	ErrInvalidFilter = errors.New("invalid connection filter")
)

// DefaultMaxWriteBufferBytes bounds the bytes queued for writing over every
// connection when Config.MaxWriteBufferBytes is 0: the queues of 256
// connections full at conn.DefaultMaxQueuedWriteBytes each. A peer that
// reads keeps its queue near empty, so the bound is reached only by peers
// that stop reading, which the write timeout closes; until then reads that
// would queue more wait, as for a full queue of their own.
const DefaultMaxWriteBufferBytes = 256 << 20

// DefaultHost is bound when Spec.Host is empty: every IPv4 interface, as
// kn-sock's servers do.
const DefaultHost = "0.0.0.0"

// DefaultMaxDrainTimeout bounds a drain when Config.MaxDrainTimeout is 0:
// long enough for a peer to finish a transfer, short enough that a
// forgotten drain does not keep a listener id and its connections for
// hours.
const DefaultMaxDrainTimeout = 10 * time.Minute

// State is where a listener is in its life.
type State int

// The states of a listener.
const (
	Listening State = iota + 1
	Draining
	Stopped
)

// Spec describes a listener to start.
type Spec struct {
	// ID is the listener's id; one is generated when empty.
	ID string
	// Host to bind; empty means DefaultHost.
	Host string
	// Port to bind; 0 picks a free one.
	Port      int
	Framing   framing.Config
	AutoReply conn.AutoReply
	// MaxConnections bounds its open connections; 0 means no bound of its own.
	MaxConnections int
	// IdleTimeout closes silent connections; 0 means never.
	IdleTimeout time.Duration
	// HalfCloseTimeout keeps a connection writable this long after its
	// peer half-closes (see conn.Config); 0 closes it at once.
	HalfCloseTimeout time.Duration
	// TLS, when set, makes the listener speak TLS; its ClientAuth says
	// whether client certificates are required.
	TLS *tls.Config
}

// Info is a snapshot of a listener.
type Info struct {
	Spec
	Address           string
	State             State
	CreatedAt         time.Time
	ConnectionsActive int
	ConnectionsTotal  uint64
	BytesIn           uint64
	BytesOut          uint64
	FramesIn          uint64
	FramesOut         uint64
}

// ConnState is where an open connection is in its life.
type ConnState int

// The states of a connection. A half-closed connection of a draining
// listener is Draining: its end is the drain's.
const (
	// ConnOpen is open both ways.
	ConnOpen ConnState = iota + 1
	// ConnHalfClosed is a connection whose peer shut down its sending
	// side, kept writable for its listener's HalfCloseTimeout.
	ConnHalfClosed
	// ConnDraining is a connection whose listener is stopping: it closes
	// by the end of the drain.
	ConnDraining
)

// ConnInfo is a snapshot of a connection.
type ConnInfo struct {
	ID          string
	ListenerID  string
	State       ConnState
	RemoteAddr  string
	LocalAddr   string
	PeerSubject string
	OpenedAt    time.Time
	BytesIn     uint64
	BytesOut    uint64
	FramesIn    uint64
	FramesOut   uint64
}

// Config configures a Registry.
type Config struct {
	// Publisher receives every listener and connection event. Required.
	Publisher conn.Publisher
	// MaxListeners bounds running listeners; 0 means no bound.
	MaxListeners int
	// MaxConnections bounds open connections over all listeners; 0 means no bound.
	MaxConnections int
	// MaxConnectionsPerIP bounds the open connections of one peer IP over
	// all listeners, so that one host cannot take every slot; 0 means no
	// bound.
	MaxConnectionsPerIP int
	// PerIPLoopback applies MaxConnectionsPerIP to loopback peers too;
	// false exempts them, so that benchmarks and local tools may open
	// every slot.
	PerIPLoopback bool
	// WriteTimeout bounds each write to a connection; 0 means conn.DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxDrainTimeout bounds Stop's drain; 0 means DefaultMaxDrainTimeout.
	MaxDrainTimeout time.Duration
	// MaxWriteBufferBytes bounds the bytes queued for writing over every
	// connection; 0 means DefaultMaxWriteBufferBytes.
	MaxWriteBufferBytes int
	// Logger logs listener starts and stops; nil means slog.Default().
	Logger *slog.Logger
}

// Registry runs listeners. Its zero value is not usable; call New.
type Registry struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends every connection's waits at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and connection goroutines
	totals conn.Counters  // over every connection ever
	// accepted counts every accepted connection, refused ones included.
	accepted atomic.Uint64
	writes   *conn.WriteBudget
	closed   [event.ReasonReplyTimeout + 1]atomic.Uint64
	// refusedLog is when a refusal was last logged (unix nanoseconds), so
	// that a flood of refused connections logs one line a second.
	refusedLog atomic.Int64

	// quit is closed when the shutdown begins (StopAccepting or Close):
	// drains in progress are cut.
	quit     chan struct{}
	quitOnce sync.Once

	mu        sync.Mutex // guards the fields below and every listener's conns, state and drainEnd
	listeners map[string]*listener
	conns     map[string]*conn.Conn
	perIP     map[netip.Addr]int // open connections by peer IP, of the peers MaxConnectionsPerIP counts
	shut      bool               // Start is refused: StopAccepting or Close was called
	closing   bool               // Close was called: it stops every listener, Stop starts no stop of its own

	// serial is the creation serial last given to a listener or a
	// connection as it became visible: lists are in its order.
	serial    uint64
	byCreated order[*listener] // the visible listeners
	connOrder order[connEntry] // the admitted connections
}

type listener struct {
	spec       Spec
	ln         net.Listener
	addr       string
	createdAt  time.Time
	counters   conn.Counters
	total      atomic.Uint64
	acceptDone chan struct{} // closed when the accept loop returned
	stopped    chan struct{} // closed when Stop finished
	final      Info          // the snapshot at stop, valid once stopped is closed

	// drainCut wakes the drain after a Stop moved drainEnd closer; one
	// token is enough, as the drain rereads drainEnd.
	drainCut chan struct{}

	// Guarded by Registry.mu.
	state     State
	conns     map[string]*conn.Conn
	serial    uint64            // its place in Registry.byCreated, once visible
	connOrder order[*conn.Conn] // conns in acceptance order
	// drainEnd is when a drain in progress closes what is still open.
	drainEnd time.Time
}

// New returns an empty registry.
func New(cfg Config) *Registry {
	ctx, cancel := context.WithCancel(context.Background())
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.MaxDrainTimeout <= 0 {
		cfg.MaxDrainTimeout = DefaultMaxDrainTimeout
	}
	if cfg.MaxWriteBufferBytes <= 0 {
		cfg.MaxWriteBufferBytes = DefaultMaxWriteBufferBytes
	}
	return &Registry{
		writes:    conn.NewWriteBudget(cfg.MaxWriteBufferBytes),
		cfg:       cfg,
		log:       log,
		ctx:       ctx,
		cancel:    cancel,
		quit:      make(chan struct{}),
		listeners: make(map[string]*listener),
		conns:     make(map[string]*conn.Conn),
		perIP:     make(map[netip.Addr]int),
	}
}

// Start binds spec's address and starts accepting. spec.Framing must be
// valid; it is normalized here. ctx bounds how long the LISTENER_STARTED
// event waits for a lossless subscriber to have room (see conn.Publisher).
func (r *Registry) Start(ctx context.Context, spec Spec) (Info, error) {
	fc, err := spec.Framing.Normalize()
	if err != nil {
		return Info{}, err
	}
	spec.Framing = fc
	if spec.Host == "" {
		spec.Host = DefaultHost
	}

	r.mu.Lock()
	switch {
	case r.shut:
		r.mu.Unlock()
		return Info{}, ErrClosed
	case r.cfg.MaxListeners > 0 && len(r.listeners) >= r.cfg.MaxListeners:
		r.mu.Unlock()
		return Info{}, &limits.Error{Doing: "starting listener", Name: "max_listeners", Flag: "--max-listeners", Limit: r.cfg.MaxListeners, Err: ErrLimit}
	case spec.ID == "":
		spec.ID = r.newIDLocked()
	case r.listeners[spec.ID] != nil:
		r.mu.Unlock()
		return Info{}, fmt.Errorf("starting listener %q: %w", spec.ID, ErrExists)
	}
	l := &listener{
		spec:       spec,
		createdAt:  time.Now(),
		acceptDone: make(chan struct{}),
		stopped:    make(chan struct{}),
		drainCut:   make(chan struct{}, 1),
		state:      Listening,
		conns:      make(map[string]*conn.Conn),
	}
	// Reserve the id while binding, outside the lock.
	r.listeners[spec.ID] = l
	r.mu.Unlock()

	addr := net.JoinHostPort(spec.Host, strconv.Itoa(spec.Port))
	ln, err := net.Listen(network(spec.Host), addr)
	if err != nil {
		r.mu.Lock()
		delete(r.listeners, spec.ID)
		r.mu.Unlock()
		return Info{}, bindError(addr, err)
	}
	if spec.TLS != nil {
		ln = tls.NewListener(ln, spec.TLS)
	}
	r.mu.Lock()
	if r.shut {
		delete(r.listeners, spec.ID)
		r.mu.Unlock()
		_ = ln.Close()
		return Info{}, ErrClosed
	}
	l.ln = ln
	l.addr = ln.Addr().String()
	// Numbered as it becomes visible, not as its id was reserved, so a
	// list that has paged past every serial sees it on its next page.
	r.serial++
	l.serial = r.serial
	r.byCreated.add(l.serial, l)
	r.mu.Unlock()

	_ = r.cfg.Publisher.Publish(ctx, &event.Event{Kind: event.ListenerStarted, ListenerID: spec.ID, LocalAddr: l.addr})
	r.log.Info("listener started", "listener_id", spec.ID, "address", l.addr, "framing", spec.Framing.Mode.String())
	r.wg.Add(1)
	go r.accept(l)

	r.mu.Lock()
	defer r.mu.Unlock()
	return r.infoLocked(l), nil
}

// network keeps an IP literal to its own family: Go binds "0.0.0.0" on
// "tcp" as a dual-stack [::] socket, which is not what was asked for.
func network(host string) string {
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return "tcp"
	case ip.Is4():
		return "tcp4"
	}
	return "tcp6"
}

func bindError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("binding %s: %w", addr, ErrAddressInUse)
	default:
		var ae *net.AddrError
		var de *net.DNSError
		if errors.As(err, &ae) || errors.As(err, &de) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("binding %s: %w: %w", addr, ErrAddressNotUsable, err)
		}
		return fmt.Errorf("binding %s: %w", addr, err)
	}
}

// newIDLocked returns a random listener id that no listener has. Random
// rather than counted: an id from before a restart, or of another node,
// never names a listener of now.
func (r *Registry) newIDLocked() string {
	for {
		if id := ids.New(ids.Listener); r.listeners[id] == nil {
			return id
		}
	}
}

// newConnIDLocked returns a random connection id that no open connection
// has.
func (r *Registry) newConnIDLocked() string {
	for {
		if id := ids.New(ids.Connection); r.conns[id] == nil {
			return id
		}
	}
}

// accept runs the accept loop of l until its socket is closed.
func (r *Registry) accept(l *listener) {
	defer r.wg.Done()
	defer close(l.acceptDone)
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does,
			// from 5 ms to 1 s, and give the system time to recover.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			r.log.Warn("accept failed", "listener_id", l.spec.ID, "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-r.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		r.serve(l, nc)
	}
}

func (r *Registry) serve(l *listener, nc net.Conn) {
	r.accepted.Add(1)
	ip, perIP := r.peerIP(nc)
	// admitted is set under r.mu when the connection takes its slots, so
	// that Closed gives back only what was taken.
	var admitted bool
	var serial uint64 // its place in the lists once admitted, under r.mu
	// The id is drawn under r.mu, where it joins r.conns, so that no two
	// open connections share one; conn.New does no I/O.
	r.mu.Lock()
	id := r.newConnIDLocked()
	c := conn.New(r.ctx, nc, conn.Config{
		ID:               id,
		ListenerID:       l.spec.ID,
		Framing:          l.spec.Framing,
		AutoReply:        l.spec.AutoReply,
		IdleTimeout:      l.spec.IdleTimeout,
		HalfCloseTimeout: l.spec.HalfCloseTimeout,
		WriteTimeout:     r.cfg.WriteTimeout,
		WriteBudget:      r.writes,
		Publisher:        r.cfg.Publisher,
		Aggregates:       []*conn.Counters{&l.counters, &r.totals},
		Closed: func(reason event.CloseReason) {
			if int(reason) < len(r.closed) {
				r.closed[reason].Add(1)
			}
			r.mu.Lock()
			delete(l.conns, id)
			delete(r.conns, id)
			if admitted {
				l.connOrder.remove(serial)
				r.connOrder.remove(serial)
			}
			if admitted && perIP {
				if r.perIP[ip]--; r.perIP[ip] <= 0 {
					delete(r.perIP, ip)
				}
			}
			r.mu.Unlock()
		},
	})
	l.total.Add(1)

	var limit string
	switch {
	case l.spec.MaxConnections > 0 && len(l.conns) >= l.spec.MaxConnections:
		limit = fmt.Sprintf("the listener's max_connections (%d)", l.spec.MaxConnections)
	case r.cfg.MaxConnections > 0 && len(r.conns) >= r.cfg.MaxConnections:
		limit = fmt.Sprintf("--max-connections (%d)", r.cfg.MaxConnections)
	case perIP && r.perIP[ip] >= r.cfg.MaxConnectionsPerIP:
		limit = fmt.Sprintf("--max-connections-per-ip (%d)", r.cfg.MaxConnectionsPerIP)
	default:
		admitted = true
		l.conns[id] = c
		r.conns[id] = c
		r.serial++
		serial = r.serial
		l.connOrder.add(serial, c)
		r.connOrder.add(serial, connEntry{c: c, l: l})
		if perIP {
			r.perIP[ip]++
		}
	}
	r.mu.Unlock()
	if !admitted {
		// Refused connections still get their opened and closed events, so a
		// subscriber sees why a client was turned away.
		c.Close(event.ReasonLimitReached)
		r.logRefused(l, nc, limit)
	}

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		c.Serve()
	}()
}

// peerIP returns the IP of nc's peer and whether MaxConnectionsPerIP
// counts it.
func (r *Registry) peerIP(nc net.Conn) (netip.Addr, bool) {
	if r.cfg.MaxConnectionsPerIP <= 0 {
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

// refusedLogInterval spaces the log lines of refused connections: a peer
// that floods a listener must not flood the log too.
const refusedLogInterval = time.Second

// logRefused logs a connection refused at limit, at most once every
// refusedLogInterval.
func (r *Registry) logRefused(l *listener, nc net.Conn, limit string) {
	now := time.Now().UnixNano()
	last := r.refusedLog.Load()
	if now-last < int64(refusedLogInterval) || !r.refusedLog.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn("connection refused: "+limit+" reached", "listener_id", l.spec.ID, "remote_address", nc.RemoteAddr().String())
}

// Stop stops accepting on the listener at once, waits up to drain for its
// connections to close by themselves, closes the rest with reason
// LISTENER_STOPPED, and returns the final snapshot once the port is free and
// every connection is closed. drain is at most Config.MaxDrainTimeout.
//
// The drain belongs to the listener, not to the call: when ctx ends, Stop
// returns ctx's error and the drain goes on. A Stop of a listener that is
// already draining moves the drain's end closer when its own drain ends
// sooner (never further), and returns, like the first, once the listener
// has stopped. A shutdown (StopAccepting or Close) cuts every drain: what is
// still open is closed at once with reason SHUTDOWN.
func (r *Registry) Stop(ctx context.Context, id string, drain time.Duration) (Info, error) {
	if drain > r.cfg.MaxDrainTimeout {
		return Info{}, fmt.Errorf("stopping listener %q: drain_timeout %s is more than --max-drain-timeout (%s): %w",
			id, drain, r.cfg.MaxDrainTimeout, ErrDrainTooLong)
	}
	end := time.Now().Add(drain)
	r.mu.Lock()
	l := r.listeners[id]
	if l == nil || l.ln == nil {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("stopping listener %q: %w", id, ErrNotFound)
	}
	switch {
	case l.state == Listening && !r.closing:
		l.state = Draining
		l.drainEnd = end
		// Added under mu before Close can see closing unset, so it
		// happens before Close's Wait.
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.stop(l, event.ReasonListenerStopped)
		}()
	case l.state == Draining && end.Before(l.drainEnd):
		l.drainEnd = end
		select {
		case l.drainCut <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
	select {
	case <-l.stopped:
		return l.final, nil
	case <-ctx.Done():
		return Info{}, fmt.Errorf("stopping listener %q: %w", id, ctx.Err())
	}
}

// stop closes l's socket, drains its connections until l.drainEnd, closes
// what is left with reason (SHUTDOWN when a shutdown cut the drain), and
// forgets l. l.state must already be Draining, so that nothing else stops it.
func (r *Registry) stop(l *listener, reason event.CloseReason) Info {
	_ = l.ln.Close()
	<-l.acceptDone

	r.mu.Lock()
	conns := make([]*conn.Conn, 0, len(l.conns))
	for _, c := range l.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()

	if r.drain(l, conns) {
		reason = event.ReasonShutdown
		r.mu.Lock()
		l.drainEnd = time.Time{} // cut: nothing waits any longer
		r.mu.Unlock()
	}
	for _, c := range conns {
		c.Close(reason)
	}
	for _, c := range conns {
		<-c.Done()
	}

	r.mu.Lock()
	l.state = Stopped
	info := r.infoLocked(l)
	l.final = info
	end := l.drainEnd
	delete(r.listeners, l.spec.ID)
	r.byCreated.remove(l.serial)
	r.mu.Unlock()

	// LISTENER_STOPPED waits for a full lossless subscriber no longer than
	// the drain was allowed to last: a drain cut short by a shutdown, or a
	// stop without one, ends such a subscriber at once (with where to
	// resume) rather than holding the listener's id and its Stop calls.
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	_ = r.cfg.Publisher.Publish(ctx, &event.Event{Kind: event.ListenerStopped, ListenerID: l.spec.ID, LocalAddr: l.addr})
	r.log.Info("listener stopped", "listener_id", l.spec.ID, "address", l.addr,
		"connections_total", info.ConnectionsTotal, "bytes_in", info.BytesIn, "bytes_out", info.BytesOut)
	close(l.stopped)
	return info
}

// drain waits until every one of conns has closed or l.drainEnd passes,
// rereading drainEnd whenever a Stop moves it. It reports whether a
// shutdown cut it short.
func (r *Registry) drain(l *listener, conns []*conn.Conn) (cut bool) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for _, c := range conns {
		for open := true; open; {
			r.mu.Lock()
			left := time.Until(l.drainEnd)
			r.mu.Unlock()
			if left <= 0 {
				return false
			}
			if timer == nil {
				timer = time.NewTimer(left)
			} else {
				timer.Reset(left)
			}
			select {
			case <-c.Done():
				open = false
			case <-timer.C: // drainEnd has passed: the next turn returns
			case <-l.drainCut: // drainEnd moved closer: reread it
			case <-r.quit:
				return true
			}
		}
	}
	return false
}

// Get returns a snapshot of one listener.
func (r *Registry) Get(id string) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.listeners[id]
	if l == nil || l.ln == nil {
		return Info{}, fmt.Errorf("getting listener %q: %w", id, ErrNotFound)
	}
	return r.infoLocked(l), nil
}

// List returns every listener, oldest first.
func (r *Registry) List() []Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Info, 0, len(r.listeners))
	for _, l := range r.byCreated.after(0) {
		out = append(out, r.infoLocked(l))
	}
	return out
}

// ListenerPage is a page of the listeners, oldest first.
type ListenerPage struct {
	Listeners []Info
	// Last is the serial of the last listener of the page: the next page
	// starts after it.
	Last uint64
	// More says whether listeners follow the page.
	More bool
}

// ListenersFilter is the digest of the listeners' list, for page tokens
// (see page.Token): it has no filters, but its tokens are its own.
var ListenersFilter = page.FilterOf("listeners")

// ListListeners returns a page of at most size listeners (see page.Size)
// created after serial after (0 for the first page).
func (r *Registry) ListListeners(size int, after uint64) (ListenerPage, error) {
	size, err := page.Size(size)
	if err != nil {
		return ListenerPage{}, fmt.Errorf("listing listeners: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var p ListenerPage
	for serial, l := range r.byCreated.after(after) {
		if len(p.Listeners) == size {
			p.More = true
			break
		}
		p.Listeners = append(p.Listeners, r.infoLocked(l))
		p.Last = serial
	}
	return p, nil
}

func (r *Registry) infoLocked(l *listener) Info {
	return Info{
		Spec:              l.spec,
		Address:           l.addr,
		State:             l.state,
		CreatedAt:         l.createdAt,
		ConnectionsActive: len(l.conns),
		ConnectionsTotal:  l.total.Load(),
		BytesIn:           l.counters.BytesIn.Load(),
		BytesOut:          l.counters.BytesOut.Load(),
		FramesIn:          l.counters.FramesIn.Load(),
		FramesOut:         l.counters.FramesOut.Load(),
	}
}

// MaxRemotePrefixBytes bounds ConnFilter.RemotePrefix: the longest address
// ("[ffff:...:ffff%zone]:65535") fits, and a filter is compared with every
// connection it pages over.
const MaxRemotePrefixBytes = 64

// ConnFilter selects connections; every field set must hold.
type ConnFilter struct {
	// ListenerID selects the connections of one listener; empty means
	// every listener. An unknown listener is ErrNotFound.
	ListenerID string
	// State selects one state; 0 means every state.
	State ConnState
	// RemotePrefix selects the connections whose remote address starts
	// with it ("127.0.0.1:", "[::1]:"); empty means every address.
	RemotePrefix string
}

// Digest is the filter's digest for page tokens (see page.Token).
func (f ConnFilter) Digest() page.Filter {
	return page.FilterOf("connections", f.ListenerID, strconv.Itoa(int(f.State)), f.RemotePrefix)
}

// ConnPage is a page of connections, in acceptance order.
type ConnPage struct {
	Conns []ConnInfo
	// Last is the serial of the last connection of the page: the next
	// page starts after it.
	Last uint64
	// More says whether connections matching the filter follow the page.
	More bool
}

// connEntry is an admitted connection and the listener that accepted it,
// whose state is part of the connection's.
type connEntry struct {
	c *conn.Conn
	l *listener
}

// connStateLocked is where c, accepted by l, is in its life.
func connStateLocked(c *conn.Conn, l *listener) ConnState {
	switch {
	case l.state != Listening:
		return ConnDraining
	case c.HalfClosed():
		return ConnHalfClosed
	}
	return ConnOpen
}

// ListConns returns a page of at most size connections (see page.Size)
// that match f, accepted after serial after (0 for the first page), in
// acceptance order. It walks the connections in order under the lock and
// snapshots only the page's, outside it.
func (r *Registry) ListConns(f ConnFilter, size int, after uint64) (ConnPage, error) {
	size, err := page.Size(size)
	if err != nil {
		return ConnPage{}, fmt.Errorf("listing connections: %w", err)
	}
	if n := len(f.RemotePrefix); n > MaxRemotePrefixBytes {
		return ConnPage{}, fmt.Errorf("listing connections: %w", &page.FieldError{
			Field:  "remote_address_prefix",
			Reason: fmt.Sprintf("%d bytes, more than %d (no address is that long)", n, MaxRemotePrefixBytes),
			Err:    ErrInvalidFilter,
		})
	}
	match := func(c *conn.Conn, l *listener) (ConnState, bool) {
		st := connStateLocked(c, l)
		return st, (f.State == 0 || st == f.State) && strings.HasPrefix(c.RemoteAddr(), f.RemotePrefix)
	}
	type hit struct {
		c  *conn.Conn
		st ConnState
	}
	hits := make([]hit, 0, min(size, 64))
	var p ConnPage
	r.mu.Lock()
	if f.ListenerID != "" {
		l := r.listeners[f.ListenerID]
		if l == nil || l.ln == nil {
			r.mu.Unlock()
			return ConnPage{}, fmt.Errorf("listing connections of %q: %w", f.ListenerID, ErrNotFound)
		}
		for serial, c := range l.connOrder.after(after) {
			if st, ok := match(c, l); ok {
				if len(hits) == size {
					p.More = true
					break
				}
				hits = append(hits, hit{c, st})
				p.Last = serial
			}
		}
	} else {
		for serial, e := range r.connOrder.after(after) {
			if st, ok := match(e.c, e.l); ok {
				if len(hits) == size {
					p.More = true
					break
				}
				hits = append(hits, hit{e.c, st})
				p.Last = serial
			}
		}
	}
	r.mu.Unlock()
	p.Conns = make([]ConnInfo, len(hits))
	for i, h := range hits {
		p.Conns[i] = connInfo(h.c, h.st)
	}
	return p, nil
}

// Conns returns every open connection, of one listener when listenerID is
// not empty, oldest first.
func (r *Registry) Conns(listenerID string) ([]ConnInfo, error) {
	var out []ConnInfo
	for after := uint64(0); ; {
		p, err := r.ListConns(ConnFilter{ListenerID: listenerID}, page.MaxSize, after)
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

func connInfo(c *conn.Conn, st ConnState) ConnInfo {
	n := c.Counters()
	return ConnInfo{
		ID:          c.ID(),
		ListenerID:  c.ListenerID(),
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

// Conn returns an open connection.
func (r *Registry) Conn(id string) (*conn.Conn, error) {
	c, _, err := r.connState(id)
	return c, err
}

// connState returns an open connection and its state.
func (r *Registry) connState(id string) (*conn.Conn, ConnState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.conns[id]
	if c == nil {
		return nil, 0, fmt.Errorf("connection %q: %w", id, ErrConnNotFound)
	}
	// Both maps change together: an admitted connection's listener is
	// there until the connection has closed.
	return c, connStateLocked(c, r.listeners[c.ListenerID()]), nil
}

// GetConn returns a snapshot of one open connection.
func (r *Registry) GetConn(id string) (ConnInfo, error) {
	c, st, err := r.connState(id)
	if err != nil {
		return ConnInfo{}, fmt.Errorf("getting %w", err)
	}
	return connInfo(c, st), nil
}

// CloseConn closes one connection with reason CLOSED_BY_API and returns its
// final snapshot once it is closed, with the state it had before.
func (r *Registry) CloseConn(ctx context.Context, id string) (ConnInfo, error) {
	c, st, err := r.connState(id)
	if err != nil {
		return ConnInfo{}, err
	}
	c.Close(event.ReasonClosedByAPI)
	select {
	case <-c.Done():
	case <-ctx.Done():
		return ConnInfo{}, ctx.Err()
	}
	return connInfo(c, st), nil
}

// Broadcast writes p to every open connection of a listener concurrently and
// returns the bytes written in all and how many connections took the write.
func (r *Registry) Broadcast(ctx context.Context, listenerID string, p []byte) (uint64, int, error) {
	return r.broadcast(ctx, listenerID, p, false)
}

// BroadcastFrame is Broadcast of frame encoded with the listener's framing,
// as conn.Conn.SendFrame encodes it. The frame is encoded once, before any
// connection is written to, so a frame the framing cannot encode is refused
// (a *framing.EncodeError) whether or not the listener has connections.
func (r *Registry) BroadcastFrame(ctx context.Context, listenerID string, frame []byte) (uint64, int, error) {
	return r.broadcast(ctx, listenerID, frame, true)
}

func (r *Registry) broadcast(ctx context.Context, listenerID string, p []byte, framed bool) (uint64, int, error) {
	r.mu.Lock()
	l := r.listeners[listenerID]
	if l == nil || l.ln == nil {
		r.mu.Unlock()
		return 0, 0, fmt.Errorf("sending to listener %q: %w", listenerID, ErrNotFound)
	}
	conns := make([]*conn.Conn, 0, len(l.conns))
	for _, c := range l.conns {
		conns = append(conns, c)
	}
	fc := l.spec.Framing
	r.mu.Unlock()

	if framed {
		var err error
		if p, err = fc.Encode(nil, p); err != nil {
			return 0, 0, fmt.Errorf("sending to listener %q: %w", listenerID, err)
		}
	}
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

// Stats are gateway-wide figures since the registry started.
type Stats struct {
	Listeners       int
	ConnectionsOpen int
	// Accepted counts every accepted connection, refused ones included.
	Accepted uint64
	// Closed counts closed connections by reason.
	Closed                                 map[event.CloseReason]uint64
	BytesIn, BytesOut, FramesIn, FramesOut uint64
	// WriteQueued is the bytes queued for writing to connections now
	// (bounded by Config.MaxWriteBufferBytes).
	WriteQueued int
}

// Stats returns gateway-wide figures.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	st := Stats{Listeners: len(r.listeners), ConnectionsOpen: len(r.conns)}
	r.mu.Unlock()
	st.Accepted = r.accepted.Load()
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

// StopAccepting begins a shutdown and returns at once: Start is refused from
// now on, every listening socket closes, so no client connects any more and
// every port is free, and drains in progress are cut: their connections
// close with reason SHUTDOWN and their Stops return. The connections of
// listeners that were not draining stay open until Close, so that calls
// still using them (a Send awaiting a reply) may finish.
func (r *Registry) StopAccepting() {
	r.mu.Lock()
	r.shutLocked()
	lns := make([]net.Listener, 0, len(r.listeners))
	for _, l := range r.listeners {
		if l.ln != nil {
			lns = append(lns, l.ln)
		}
	}
	r.mu.Unlock()
	// The accept loops return on their own; stop or Close waits for them.
	for _, ln := range lns {
		_ = ln.Close()
	}
}

// shutLocked refuses Start from now on and cuts every drain.
func (r *Registry) shutLocked() {
	r.shut = true
	r.quitOnce.Do(func() { close(r.quit) })
}

// Close stops every listener, closes every connection with reason SHUTDOWN
// (cutting drains in progress), and waits for all of their goroutines. It
// is idempotent.
func (r *Registry) Close() {
	r.mu.Lock()
	r.shutLocked()
	r.closing = true
	var running, all []*listener
	for _, l := range r.listeners {
		if l.ln == nil {
			continue // still binding: Start sees shut and gives up
		}
		all = append(all, l)
		if l.state == Listening {
			l.state = Draining
			l.drainEnd = time.Now()
			running = append(running, l)
		}
	}
	r.mu.Unlock()
	// drainEnd is now: at shutdown LISTENER_STOPPED waits for no subscriber.
	var wg sync.WaitGroup
	for _, l := range running {
		wg.Go(func() { r.stop(l, event.ReasonShutdown) })
	}
	wg.Wait()
	// Listeners some Stop was draining, cut by quit.
	for _, l := range all {
		<-l.stopped
	}
	r.cancel()
	r.wg.Wait()
}
