// Package listener owns the gateway's TCP listeners: the port a listener
// takes under the listen policy, binding, the accept loop, the listener's
// own limits, drain and stop. The connections it accepts live in the
// connection registry (package registry), where Send, ListConnections,
// CloseConnection and broadcast look them up.
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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/ids"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/placement"
	"github.com/tcpgate/tcpgate/server/internal/policy"
	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// Errors of the registry; callers test them with errors.Is.
var (
	ErrExists = errors.New("listener id already in use")
	// ErrNotFound is the registry's ErrListenerNotFound: a listener's
	// connections are looked up there, and one sentinel says it either way.
	ErrNotFound         = registry.ErrListenerNotFound
	ErrAddressInUse     = errors.New("address already in use")
	ErrAddressNotUsable = errors.New("address cannot be bound")
	ErrLimit            = errors.New("limit reached")
	ErrClosed           = errors.New("gateway shutting down")
	// ErrDrainTooLong means a drain_timeout above Config.MaxDrainTimeout.
	ErrDrainTooLong = errors.New("drain timeout too long")
	// ErrInvalidSpec means a Spec over a bound of Config
	// (ListenerMaxConnections); the error is a *limits.FieldError naming
	// the field.
	ErrInvalidSpec = errors.New("invalid listener")
)

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

// Source says where a listener was defined.
type Source int

// The sources of a listener.
const (
	// SourceAPI is a listener started by a call to the API.
	SourceAPI Source = iota
	// SourceConfig is a listener defined in the gateway's config file.
	SourceConfig
)

// Spec describes a listener to start.
type Spec struct {
	// Source is where the listener was defined; the zero value is
	// SourceAPI.
	Source Source
	// ID is the listener's id; one is generated when empty.
	ID string
	// Host to bind; empty means DefaultHost.
	Host string
	// Port to bind; 0 picks a free one: the kernel's, or, when the policy
	// narrows the ports, one of those it allows (see Registry.Start).
	Port      int
	Framing   framing.Config
	AutoReply conn.AutoReply
	// MaxConnections bounds its open connections; 0 means
	// Config.ListenerMaxConnections, which it may not exceed.
	MaxConnections int
	// IdleTimeout closes silent connections; 0 means Config.IdleTimeout.
	IdleTimeout time.Duration
	// HalfCloseTimeout keeps a connection writable this long after its
	// peer half-closes (see conn.Config); 0 closes it at once.
	HalfCloseTimeout time.Duration
	// TLS, when set, makes the listener speak TLS; its ClientAuth says
	// whether client certificates are required.
	TLS *tls.Config
	// Forward, when set, relays every accepted connection to a target
	// dialed for it (see conn.Forward); not with an AutoReply, rules or a
	// banner.
	Forward *Forward
	// Rules answer frames before AutoReply (package rules). Start compiles
	// them, and refuses bad ones with a *rules.FieldError naming the rule.
	Rules []rules.Spec
	// HandlerTimeout bounds a Handle stream's answer to a frame; 0 means
	// Config.HandlerTimeout. At most MaxHandlerTimeout.
	HandlerTimeout time.Duration
	// HandlerTimeoutClose closes a connection whose handler did not answer
	// a frame in time, instead of answering it with AutoReply.
	HandlerTimeoutClose bool
	// Banner, when set, is written to every accepted connection first.
	Banner *Banner
	// Node is the node asked to run the listener, by its id; empty means
	// the node called. A single gateway runs only its own (Config.Node):
	// Start refuses another with a *placement.NodeError.
	Node string
	// EveryNode asks for the listener on every node of the cluster; a
	// single gateway, the cluster of one node, starts it on itself. Not
	// with Node (the API refuses both).
	EveryNode bool
	// ProxyProtocol, unless proxyproto.None (the zero value), makes every
	// accepted connection begin with a PROXY protocol header of the
	// versions it takes, read before the TLS handshake and before the
	// connection is admitted: the connection's remote address, the
	// per-IP limit and the templates see the client the header names (see
	// proxied.go).
	ProxyProtocol proxyproto.Mode

	// What Start made of the above, for every connection.
	ruleSet *rules.Set
	banner  func(*conn.Conn) []byte
}

// RuleSet returns the compiled rules of a started listener's Spec, with
// their hit counters; nil when it has none.
func (s Spec) RuleSet() *rules.Set { return s.ruleSet }

// MaxHandlerTimeout bounds a listener's or connection's handler timeout.
const MaxHandlerTimeout = time.Hour

// Banner is what a listener writes to every connection it accepts, before
// anything else.
type Banner struct {
	// Payload is written as it is, or rendered first when Template is set
	// (rules.ParseTemplate: the connection's variables, no captures).
	Payload  []byte
	Template bool
	// Framed encodes it with the listener's framing.
	Framed bool
}

// replies checks and compiles what answers a listener's frames: its rules,
// its handler timeout and its banner. It returns the compiled rules and
// the banner's writer (nil for none).
func replies(fc framing.Config, specs []rules.Spec, handlerTimeout time.Duration, b *Banner) (*rules.Set, func(*conn.Conn) []byte, error) {
	set, err := rules.Compile(specs)
	if err != nil {
		return nil, nil, err // a *rules.FieldError, named under auto_reply by the API
	}
	if handlerTimeout < 0 || handlerTimeout > MaxHandlerTimeout {
		return nil, nil, &page.FieldError{Field: "auto_reply.handler_timeout", Reason: fmt.Sprintf("%s is out of range: 0 (the gateway's --handler-timeout) to %s", handlerTimeout, MaxHandlerTimeout), Err: ErrInvalidSpec}
	}
	if b == nil || len(b.Payload) == 0 {
		return set, nil, nil
	}
	encode := func(p []byte) []byte {
		if !b.Framed {
			return p
		}
		out, err := fc.Encode(nil, p)
		if err != nil {
			return nil
		}
		return out
	}
	if !b.Template {
		p := encode(b.Payload)
		if p == nil {
			return nil, nil, &page.FieldError{Field: "on_connect.framed", Reason: "the framing cannot encode the payload as one frame", Err: ErrInvalidSpec}
		}
		return set, func(*conn.Conn) []byte { return p }, nil
	}
	t, err := rules.ParseTemplate(string(b.Payload))
	if err != nil {
		var fe *rules.FieldError
		msg := err.Error()
		if errors.As(err, &fe) {
			msg = fe.Msg
		}
		return nil, nil, &page.FieldError{Field: "on_connect.text", Reason: msg, Err: ErrInvalidSpec}
	}
	if t.Static() {
		p := encode(t.Append(nil, &rules.Vars{}, time.Time{}))
		if p == nil {
			return nil, nil, &page.FieldError{Field: "on_connect.framed", Reason: "the framing cannot encode the payload as one frame", Err: ErrInvalidSpec}
		}
		return set, func(*conn.Conn) []byte { return p }, nil
	}
	return set, func(c *conn.Conn) []byte { return encode(t.Append(nil, c.Vars(), time.Now())) }, nil
}

// Forward is the target of a forwarding listener.
type Forward struct {
	// Address is host:port, resolved and checked against the dial policy
	// at every dial.
	Address string
	// TLS, when set, makes the target's side TLS; its ServerName must be
	// set.
	TLS *tls.Config
}

// Dialer dials the targets of forwarding listeners: dialer.Dialer, which
// resolves and checks the dial policy in the same call.
type Dialer interface {
	Dial(ctx context.Context, req dialer.DialRequest) (net.Conn, error)
}

// Info is a snapshot of a listener.
type Info struct {
	Spec
	// Node is the node the listener runs on (Config.Node); it shadows
	// Spec.Node, which is the node asked for, empty for the node called.
	Node              string
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

// Config configures a Registry.
type Config struct {
	// Publisher receives every listener and connection event. Required.
	Publisher conn.Publisher
	// Conns holds the accepted connections, and decides the limits over
	// every connection (--max-connections, --max-connections-per-ip).
	// Required.
	Conns *registry.Registry
	// Policy decides what may be bound; nil means the default policy (see
	// policy.Policy), never "anything goes". SetPolicy replaces it.
	Policy *policy.Policy
	// MaxListeners bounds running listeners; 0 means no bound.
	// SetMaxListeners replaces it.
	MaxListeners int
	// ListenerMaxConnections (--listener-max-connections) is the
	// MaxConnections of a listener that sets none, and the most one may
	// set; 0 means no bound of a listener's own (Conns' total bound still
	// holds). Decided here, so that the API, a config file and a state
	// restore meet the same bound.
	ListenerMaxConnections int
	// IdleTimeout (--idle-timeout) is the IdleTimeout of a listener that
	// sets none; 0 means never.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to a connection; 0 means conn.DefaultWriteTimeout.
	WriteTimeout time.Duration
	// HandlerTimeout (--handler-timeout) is the HandlerTimeout of a
	// listener that sets none; 0 means conn.DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// MaxDrainTimeout bounds Stop's drain; 0 means DefaultMaxDrainTimeout.
	MaxDrainTimeout time.Duration
	// Logger logs listener starts and stops; nil means slog.Default().
	Logger *slog.Logger
	// Node is this gateway's node id (--node-id), reported on every
	// listener; Start accepts a Spec.Node that is empty or this.
	Node string
	// Dialer dials the targets of forwarding listeners; nil refuses a
	// Spec with Forward.
	Dialer Dialer
}

// Registry runs listeners. Its zero value is not usable; call New.
type Registry struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // ends every connection's waits at Close
	cancel context.CancelFunc
	conns  *registry.Registry
	wg     sync.WaitGroup // accept loops and connection goroutines
	// accepted counts every accepted connection, refused ones included.
	accepted atomic.Uint64
	// refusedLog is when a refusal was last logged (unix nanoseconds), so
	// that a flood of refused connections logs one line a second.
	refusedLog atomic.Int64
	// badHeaderLog is when a bad PROXY header was last logged, likewise.
	badHeaderLog atomic.Int64
	// forwarded is what the relays of every forwarding listener moved.
	forwarded conn.ForwardStats
	// policy is the listen policy in force: Config.Policy until SetPolicy.
	policy atomic.Pointer[policy.Policy]

	// quit is closed when the shutdown begins (StopAccepting or Close):
	// drains in progress are cut.
	quit     chan struct{}
	quitOnce sync.Once

	// mu guards the fields below and every listener's state and drainEnd.
	// It is taken before registry.Registry.mu, never after.
	mu        sync.Mutex
	listeners map[string]*listener
	// maxListeners bounds running listeners (Config.MaxListeners until
	// SetMaxListeners); 0 means no bound.
	maxListeners int
	shut         bool // Start is refused: StopAccepting or Close was called
	closing      bool // Close was called: it stops every listener, Stop starts no stop of its own

	// serial is the creation serial last given to a listener as it became
	// visible: lists are in its order.
	serial    uint64
	byCreated page.Order[*listener] // the visible listeners
}

type listener struct {
	// spec is guarded by Registry.mu: Update changes its updatable fields.
	// The accept loop reads id, framing, forward and shared instead.
	spec    Spec
	id      string
	framing framing.Config
	fwd     *conn.Forward
	// shared is what every connection of the listener reads its replies,
	// banner and timeouts from, frame by frame; Update stores new ones.
	shared     *conn.Shared
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

	// group is its connections in the connection registry, set as it
	// becomes visible.
	group *registry.Group

	// proxy is the spec's ProxyProtocol; tls, with it, is the TLS config
	// its connections get once their header is read (without proxy, ln
	// does the TLS).
	proxy proxyproto.Mode
	tls   *tls.Config
	// headers counts the connections whose PROXY header is being read;
	// cutHeaders ends their reads when the listener stops, with cutReason.
	headers    sync.WaitGroup
	cutHeaders context.CancelFunc
	headerCtx  context.Context
	cutReason  atomic.Int32

	// Guarded by Registry.mu.
	state  State
	serial uint64 // its place in Registry.byCreated, once visible
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
	r := &Registry{
		cfg:          cfg,
		conns:        cfg.Conns,
		log:          log,
		ctx:          ctx,
		cancel:       cancel,
		quit:         make(chan struct{}),
		listeners:    make(map[string]*listener),
		maxListeners: cfg.MaxListeners,
	}
	r.SetPolicy(cfg.Policy)
	return r
}

// SetPolicy replaces the listen policy for every Start from now on; the
// listeners already running keep their address. p nil means the default
// policy. A forwarding listener's dials follow the dialer's policy.
func (r *Registry) SetPolicy(p *policy.Policy) {
	if p == nil {
		p = &policy.Policy{}
	}
	r.policy.Store(p)
}

// SetMaxListeners replaces the bound on running listeners (0: none) for
// every Start from now on. Listeners already running over a lower bound
// run on; no new one starts until they are under it.
func (r *Registry) SetMaxListeners(n int) {
	r.mu.Lock()
	r.maxListeners = n
	r.mu.Unlock()
}

// portTries bounds the ports a listener asking for port 0 tries when the
// policy narrows its ports: enough that a range with a few ports in use
// still yields one, few enough that a full range fails fast.
const portTries = 64

// Start fills in spec's defaults (Config.ListenerMaxConnections,
// Config.IdleTimeout) and refuses a MaxConnections over its bound, checks
// spec's address against the listen policy, binds it and starts
// accepting. Port 0 under a policy that narrows the ports takes a
// free port of the allowed ranges, not the kernel's pick, which could lie
// outside them. spec.Framing must be valid; it is normalized here. ctx
// bounds how long the LISTENER_STARTED event waits for a lossless
// subscriber to have room (see conn.Publisher).
func (r *Registry) Start(ctx context.Context, spec Spec) (Info, error) {
	spec, err := r.prepare(spec)
	if err != nil {
		return Info{}, err
	}
	if spec.Port != 0 {
		return r.start(ctx, spec)
	}
	ports := r.policy.Load().ListenPorts(spec.Host, portTries)
	if ports == nil {
		return r.start(ctx, spec)
	}
	for _, port := range ports {
		spec.Port = port
		info, err := r.start(ctx, spec)
		if !errors.Is(err, ErrAddressInUse) {
			return info, err
		}
	}
	return Info{}, fmt.Errorf("binding %s: no free port among %d tried from --allow-listen: %w",
		net.JoinHostPort(spec.Host, "0"), len(ports), ErrAddressInUse)
}

// Check refuses spec as Start would, short of binding it: its bounds,
// forward, rules, banner and the listen policy. A config file's
// listeners are all checked before any starts.
func (r *Registry) Check(spec Spec) error {
	_, err := r.prepare(spec)
	return err
}

// prepare fills in spec's defaults, compiles its replies and checks it
// against the bounds and the policy.
func (r *Registry) prepare(spec Spec) (Spec, error) {
	if err := placement.Check("node_id", spec.Node, r.cfg.Node); err != nil {
		return spec, err
	}
	if limit := r.cfg.ListenerMaxConnections; limit > 0 {
		if spec.MaxConnections > limit {
			return spec, &limits.FieldError{Field: "max_connections", Flag: "--listener-max-connections", Limit: limit, Got: spec.MaxConnections, Err: ErrInvalidSpec}
		}
		if spec.MaxConnections == 0 {
			spec.MaxConnections = limit
		}
	}
	if spec.IdleTimeout == 0 {
		spec.IdleTimeout = r.cfg.IdleTimeout
	}
	if err := r.checkForward(spec); err != nil {
		return spec, err
	}
	var err error
	if spec.ruleSet, spec.banner, err = replies(spec.Framing, spec.Rules, spec.HandlerTimeout, spec.Banner); err != nil {
		return spec, err
	}
	if spec.HandlerTimeout == 0 {
		spec.HandlerTimeout = r.cfg.HandlerTimeout
	}
	if spec.Port < 0 || spec.Port > 65535 {
		return spec, fmt.Errorf("binding %s: %w: port must be 0 to 65535",
			net.JoinHostPort(spec.Host, strconv.Itoa(spec.Port)), ErrAddressNotUsable)
	}
	// The host as asked, before DefaultHost: "" is both families to the
	// policy, as it is to Go.
	if err := r.policy.Load().CheckListen(spec.Host, spec.Port); err != nil {
		return spec, err
	}
	return spec, nil
}

// checkForward refuses a forward that cannot work: without an address,
// with an auto reply (the target answers), or with no dialer to reach it.
func (r *Registry) checkForward(spec Spec) error {
	f := spec.Forward
	switch {
	case f == nil:
		return nil
	case f.Address == "":
		return &page.FieldError{Field: "forward.address", Reason: "is required: the host:port every accepted connection is relayed to", Err: ErrInvalidSpec}
	case spec.AutoReply.Mode != conn.NoAutoReply || len(spec.Rules) > 0:
		return &page.FieldError{Field: "forward", Reason: "not with auto_reply: a forwarding listener's target answers its clients; unset one of them", Err: ErrInvalidSpec}
	case spec.Banner != nil:
		return &page.FieldError{Field: "forward", Reason: "not with on_connect: a forwarding listener's target speaks first if anyone does; unset one of them", Err: ErrInvalidSpec}
	case r.cfg.Dialer == nil:
		return &page.FieldError{Field: "forward", Reason: "this gateway dials no targets", Err: ErrInvalidSpec}
	}
	return nil
}

// start binds spec's address, port 0 being the kernel's pick.
func (r *Registry) start(ctx context.Context, spec Spec) (Info, error) {
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
	case r.maxListeners > 0 && len(r.listeners) >= r.maxListeners:
		limit := r.maxListeners
		r.mu.Unlock()
		return Info{}, &limits.Error{Doing: "starting listener", Name: "max_listeners", Flag: "--max-listeners", Limit: limit, Err: ErrLimit}
	case spec.ID == "":
		spec.ID = r.newIDLocked()
	case r.listeners[spec.ID] != nil:
		r.mu.Unlock()
		return Info{}, fmt.Errorf("starting listener %q: %w", spec.ID, ErrExists)
	}
	l := &listener{
		spec:       spec,
		id:         spec.ID,
		framing:    spec.Framing,
		fwd:        r.forward(spec.Forward),
		shared:     conn.NewShared(live(spec)),
		createdAt:  time.Now(),
		acceptDone: make(chan struct{}),
		stopped:    make(chan struct{}),
		drainCut:   make(chan struct{}, 1),
		state:      Listening,
		proxy:      spec.ProxyProtocol,
	}
	if l.proxy != proxyproto.None {
		l.tls = spec.TLS
		l.headerCtx, l.cutHeaders = context.WithCancel(r.ctx)
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
	if spec.TLS != nil && l.proxy == proxyproto.None {
		// With a PROXY header, the handshake comes after it (proxied.go).
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
	r.byCreated.Add(l.serial, l)
	// Under r.mu, as the listener becomes visible: a GetListener that
	// finds it finds its connections too.
	l.group = r.conns.AddGroup(spec.ID, spec.MaxConnections)
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
			r.log.Warn("accept failed", "listener_id", l.id, "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-r.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if l.proxy != proxyproto.None {
			r.serveProxied(l, nc)
			continue
		}
		r.serve(l, nc)
	}
}

func (r *Registry) serve(l *listener, nc net.Conn) {
	r.accepted.Add(1)
	l.total.Add(1)
	r.admit(l, nc, event.ReasonUnspecified, "")
}

// admit adds nc to the connection registry, which admits it under the
// limits, and serves it. A reason other than ReasonUnspecified closes it
// with that reason (and why, its words) before anything is read from it,
// as a limit that refuses it does: it still gets its opened and closed
// events.
func (r *Registry) admit(l *listener, nc net.Conn, reason event.CloseReason, why string) {
	c, err := r.conns.Add(r.ctx, nc, registry.Spec{
		Origin: registry.Accepted,
		Group:  l.group,
		Conn: conn.Config{
			ListenerID:   l.id,
			Framing:      l.framing,
			Shared:       l.shared,
			WriteTimeout: r.cfg.WriteTimeout,
			Publisher:    r.cfg.Publisher,
			Aggregates:   []*conn.Counters{&l.counters},
			Forward:      l.fwd,
		},
	})
	if err != nil {
		// Refused connections still get their opened and closed events, so a
		// subscriber sees why a client was turned away.
		c.Close(event.ReasonLimitReached)
		r.logRefused(l, nc, err)
	} else if reason != event.ReasonUnspecified {
		c.CloseWith(reason, why)
	}

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		c.Serve()
	}()
}

// forward returns the relay of a forwarding listener's connections: each
// dials f through the dialer, so that the policy is checked on every dial.
func (r *Registry) forward(f *Forward) *conn.Forward {
	if f == nil {
		return nil
	}
	req := dialer.DialRequest{Address: f.Address, TLS: f.TLS}
	return &conn.Forward{
		Dial:  func(ctx context.Context) (net.Conn, error) { return r.cfg.Dialer.Dial(ctx, req) },
		Stats: &r.forwarded,
	}
}

// refusedLogInterval spaces the log lines of refused connections: a peer
// that floods a listener must not flood the log too.
const refusedLogInterval = time.Second

// logRefused logs a connection refused by the registry's err, at most once
// every refusedLogInterval.
func (r *Registry) logRefused(l *listener, nc net.Conn, err error) {
	now := time.Now().UnixNano()
	last := r.refusedLog.Load()
	if now-last < int64(refusedLogInterval) || !r.refusedLog.CompareAndSwap(last, now) {
		return
	}
	limit := err.Error()
	var lim *limits.Error
	switch {
	case !errors.As(err, &lim):
	case lim.Flag == "":
		// The listener's own bound, which no flag sets.
		limit = fmt.Sprintf("the listener's %s (%d)", lim.Name, lim.Limit)
	default:
		limit = fmt.Sprintf("%s (%d)", lim.Flag, lim.Limit)
	}
	r.log.Warn("connection refused: "+limit+" reached", "listener_id", l.id, "remote_address", nc.RemoteAddr().String())
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
	return r.stopAny(ctx, id, drain, false)
}

// StopDeclared stops a listener as Stop does, one that the config file
// declares included: a reload stops what the file no longer declares, or
// restarts what it declares differently.
func (r *Registry) StopDeclared(ctx context.Context, id string, drain time.Duration) (Info, error) {
	return r.stopAny(ctx, id, drain, true)
}

func (r *Registry) stopAny(ctx context.Context, id string, drain time.Duration, declared bool) (Info, error) {
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
	if l.spec.Source == SourceConfig && !declared {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("stopping listener %q: %w", id, ErrDeclared)
	}
	switch {
	case l.state == Listening && !r.closing:
		r.conns.DrainGroup(l.group)
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
	if l.cutHeaders != nil {
		// Connections still sending their PROXY header are not open yet:
		// they close with the stop's reason, and none joins the group
		// after the drain has taken its connections.
		l.cutReason.Store(int32(reason))
		l.cutHeaders()
		l.headers.Wait()
	}

	conns := r.conns.GroupConns(l.group)
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
	r.byCreated.Remove(l.serial)
	r.conns.RemoveGroup(l.group)
	r.mu.Unlock()

	// LISTENER_STOPPED waits for a full lossless subscriber no longer than
	// the drain was allowed to last: a drain cut short by a shutdown, or a
	// stop without one, ends such a subscriber at once (with where to
	// resume) rather than holding the listener's id and its Stop calls.
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	_ = r.cfg.Publisher.Publish(ctx, &event.Event{Kind: event.ListenerStopped, ListenerID: l.id, LocalAddr: l.addr})
	r.log.Info("listener stopped", "listener_id", l.id, "address", l.addr,
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
	for _, l := range r.byCreated.After(0) {
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
	for serial, l := range r.byCreated.After(after) {
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
		Node:              r.cfg.Node,
		Address:           l.addr,
		State:             l.state,
		CreatedAt:         l.createdAt,
		ConnectionsActive: l.group.Open(),
		ConnectionsTotal:  l.total.Load(),
		BytesIn:           l.counters.BytesIn.Load(),
		BytesOut:          l.counters.BytesOut.Load(),
		FramesIn:          l.counters.FramesIn.Load(),
		FramesOut:         l.counters.FramesOut.Load(),
	}
}

// BroadcastFrame writes frame, encoded with the listener's framing (as
// conn.Conn.SendFrame encodes it), to every open connection of the
// listener, through the connection registry's broadcast. The frame is
// encoded once, before any connection is written to, so a frame the
// framing cannot encode is refused (a *framing.EncodeError) whether or not
// the listener has connections.
func (r *Registry) BroadcastFrame(ctx context.Context, listenerID string, frame []byte) (uint64, int, error) {
	r.mu.Lock()
	l := r.listeners[listenerID]
	if l == nil || l.ln == nil {
		r.mu.Unlock()
		return 0, 0, fmt.Errorf("sending to listener %q: %w", listenerID, ErrNotFound)
	}
	fc := l.spec.Framing
	r.mu.Unlock()
	p, err := fc.Encode(nil, frame)
	if err != nil {
		return 0, 0, fmt.Errorf("sending to listener %q: %w", listenerID, err)
	}
	return r.conns.Broadcast(ctx, listenerID, p)
}

// Stats are the listeners' figures since the registry started; the
// connection registry has those of the connections.
type Stats struct {
	Listeners int
	// Accepted counts every accepted connection, refused ones included.
	Accepted uint64
	// ForwardedToTarget and ForwardedFromTarget count the bytes the relays
	// of forwarding listeners wrote to their targets and read from them;
	// ForwardDialFailures the targets that could not be dialed.
	ForwardedToTarget, ForwardedFromTarget, ForwardDialFailures uint64
}

// Stats returns the listeners' figures.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	n := len(r.listeners)
	r.mu.Unlock()
	return Stats{
		Listeners: n, Accepted: r.accepted.Load(),
		ForwardedToTarget:   r.forwarded.ToTarget.Load(),
		ForwardedFromTarget: r.forwarded.FromTarget.Load(),
		ForwardDialFailures: r.forwarded.DialFailures.Load(),
	}
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
			r.conns.DrainGroup(l.group)
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
