// Package outbound keeps the gateway's managed outbound connections (the
// Connect RPC): each has a supervisor, one goroutine that dials through
// the dialer (and so through the dial policy, at every attempt), attaches
// every socket it gets to the connection's one registry entry as a new
// generation, writes on_connect first and awaits its reply, flushes the
// Sends it held while down, writes heartbeats, and reconnects with a
// jittered exponential backoff when the socket drops, until the
// connection is closed for good (CloseConnection, max_attempts reached,
// reconnect disabled, or shutdown).
//
// It owns what a Send to a managed connection does while it is down (a
// bounded FIFO, or a refusal), the backoff and when it starts over, and
// the events of a connection's life between its sockets
// (RECONNECT_SCHEDULED, and the CONNECTION_CLOSED of a connection closed
// for good while it holds no socket). Each socket is a conn.Conn like an
// accepted connection's, so everything else (framing, events, Sends and
// their replies) is the same code.
//
// The Manager owns every supervisor: Close stops them all and waits for
// them.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/placement"
	"github.com/tcpgate/tcpgate/server/internal/policy"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// Config configures a Manager.
type Config struct {
	// Conns is the registry that lists the connections, and counts them
	// toward its limits.
	Conns *registry.Registry
	// Dialer dials every attempt, resolving and checking the policy.
	Dialer *dialer.Dialer
	// Publisher receives the connections' events.
	Publisher conn.Publisher
	// MaxQueueWhileDownBytes bounds a Spec's QueueBytes
	// (--max-queue-while-down-bytes); 0 means
	// DefaultMaxQueueWhileDownBytes.
	MaxQueueWhileDownBytes int
	// MaxSendBytes bounds on_connect and heartbeat payloads
	// (--max-send-bytes); 0 means 4 MiB.
	MaxSendBytes int
	// WriteTimeout bounds each write to a socket; 0 means
	// conn.DefaultWriteTimeout.
	WriteTimeout time.Duration
	// HandlerTimeout (--handler-timeout) is the HandlerTimeout of a Spec
	// that sets none; 0 means conn.DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// Rand returns a random int64 in [0, n), for the backoff's jitter; nil
	// means math/rand/v2's.
	Rand func(n int64) int64
}

// Manager owns the supervisors of the managed outbound connections.
type Manager struct {
	cfg    Config
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the supervisors

	reconnects atomic.Uint64 // reconnects scheduled
	queued     atomic.Int64  // bytes held while down, over every connection

	mu       sync.Mutex // guards the fields below
	sups     map[*supervisor]struct{}
	closed   bool
	failures map[string]uint64 // failed dials by kind
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.MaxQueueWhileDownBytes <= 0 {
		cfg.MaxQueueWhileDownBytes = DefaultMaxQueueWhileDownBytes
	}
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = 4 << 20
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = conn.DefaultWriteTimeout
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Int64N
	}
	m := &Manager{cfg: cfg, sups: make(map[*supervisor]struct{}), failures: make(map[string]uint64)}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Stats are the manager's figures.
type Stats struct {
	// Reconnects counts the reconnects scheduled (RECONNECT_SCHEDULED).
	Reconnects uint64
	// DialFailures counts failed attempts by kind: refused, unreachable,
	// host_not_found, policy_denied, tls_handshake, timeout, limit, other.
	DialFailures map[string]uint64
	// QueuedBytes is the bytes of Sends held while down now.
	QueuedBytes int64
}

// Stats returns the figures.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	f := make(map[string]uint64, len(m.failures))
	for k, v := range m.failures {
		f[k] = v
	}
	m.mu.Unlock()
	return Stats{Reconnects: m.reconnects.Load(), DialFailures: f, QueuedBytes: m.queued.Load()}
}

// RuleSets calls fn with the id and the compiled rules of every managed
// connection that has rules, for their hit counters.
func (m *Manager) RuleSets(fn func(id string, set *rules.Set)) {
	type withRules struct {
		id  string
		set *rules.Set
	}
	var out []withRules
	m.mu.Lock()
	for s := range m.sups {
		if s.spec.ruleSet != nil {
			out = append(out, withRules{s.h.ID(), s.spec.ruleSet})
		}
	}
	m.mu.Unlock()
	for _, w := range out {
		fn(w.id, w.set)
	}
}

func (m *Manager) dialFailed(err error) {
	kind := "other"
	var dns *net.DNSError
	switch {
	case errors.Is(err, policy.ErrDenied):
		kind = "policy_denied"
	case errors.Is(err, dialer.ErrRefused):
		kind = "refused"
	case errors.Is(err, dialer.ErrHandshake):
		kind = "tls_handshake"
	case errors.As(err, &dns):
		kind = "host_not_found"
	case errors.Is(err, dialer.ErrUnreachable):
		kind = "unreachable"
	case errors.Is(err, registry.ErrLimit):
		kind = "limit"
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	}
	m.mu.Lock()
	m.failures[kind]++
	m.mu.Unlock()
}

// Close closes every managed connection for good, with reason SHUTDOWN
// (no reconnect), and waits for their supervisors. Connect fails with
// ErrClosed from now on. Idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	sups := make([]*supervisor, 0, len(m.sups))
	for s := range m.sups {
		sups = append(sups, s)
	}
	m.mu.Unlock()
	for _, s := range sups {
		s.stop(event.ReasonShutdown)
	}
	m.wg.Wait()
	m.cancel()
}

// outcome is the first attempt's, which Connect returns.
type outcome struct {
	info registry.Info
	err  error
}

// Connect validates spec, fills in its defaults, lists the connection and
// starts its supervisor, then waits for the first attempt's outcome, at
// most spec.Timeout: it returns the connection connected (Open), waiting
// to dial again (with its last error), or still connecting when the
// timeout passed first. With reconnect disabled, a failed first dial is
// its error and nothing is left listed (nor any event published); a dial
// that connects but whose on_connect fails leaves that socket's OPENED
// and CLOSED events, and fails with ErrOnConnect. An IP address the dial
// policy denies can never be dialed and is refused at once, whatever
// reconnect says; a name is checked at every attempt.
func (m *Manager) Connect(ctx context.Context, spec Spec) (registry.Info, error) {
	if err := placement.Check("node_id", spec.Node, m.cfg.Conns.Node()); err != nil {
		return registry.Info{}, fmt.Errorf("connecting to %s: %w", spec.Address, err)
	}
	if err := spec.normalize(&m.cfg); err != nil {
		return registry.Info{}, fmt.Errorf("connecting to %s: %w", spec.Address, err)
	}
	if host, _, err := net.SplitHostPort(spec.Address); err == nil {
		if _, err := netip.ParseAddr(host); err == nil {
			// An IP literal resolves to itself: this checks the policy
			// without a lookup.
			if _, err := m.cfg.Dialer.Policy.ResolveDial(ctx, spec.Address); errors.Is(err, policy.ErrDenied) {
				return registry.Info{}, err
			}
		}
	}
	s := &supervisor{m: m, spec: spec, done: make(chan struct{}), first: make(chan outcome, 1), stopCh: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(m.ctx)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		s.cancel()
		return registry.Info{}, fmt.Errorf("connecting to %s: %w", spec.Address, ErrClosed)
	}
	h, err := m.cfg.Conns.AddOutbound(registry.OutboundSpec{ID: spec.ID, Address: spec.Address, Framing: spec.Framing, Declared: spec.Declared,
		Managed: func(h *registry.Handle) registry.Managed { s.h = h; return s }})
	if err != nil {
		m.mu.Unlock()
		s.cancel()
		return registry.Info{}, err
	}
	m.sups[s] = struct{}{}
	m.wg.Add(1)
	m.mu.Unlock()
	go s.run()

	t := time.NewTimer(spec.Timeout)
	defer t.Stop()
	select {
	case o := <-s.first:
		return o.info, o.err
	case <-t.C:
		return h.Info(), nil
	case <-ctx.Done():
		return h.Info(), ctx.Err()
	}
}

// queued is a Send held while the connection is down.
type queued struct {
	ctx   context.Context
	p     []byte
	aw    conn.Await
	ready chan struct{} // closed once handed to a socket, or failed
	pend  *conn.Pending // set before ready is closed, or
	err   error         // this
	// gaveUp is set, under supervisor.mu, when its caller's context ended
	// while it was being handed over: it is not put back in the queue.
	gaveUp bool
}

// supervisor keeps one managed connection.
type supervisor struct {
	m      *Manager
	spec   Spec
	h      *registry.Handle
	ctx    context.Context // canceled once it is closed for good
	cancel context.CancelFunc
	done   chan struct{} // closed once closed for good and its last event published
	first  chan outcome  // the first attempt's outcome, sent once
	stopCh chan struct{} // closed by stop: no more attempts
	once   sync.Once     // closes stopCh

	// Of the run goroutine only.
	reported bool   // the first outcome was sent
	gen      uint64 // the last socket's generation
	retry    uint32 // the number of the last retry scheduled since the connection last stayed up
	failed   uint32 // failed attempts in a row

	mu sync.Mutex // guards the fields below
	// reason is why the connection is closed for good, set by stop;
	// Unspecified until then. why says it in words, or is empty.
	reason event.CloseReason
	why    string
	sock   *conn.Conn // the attached socket; nil without one
	ready  *conn.Conn // sock once connected: Sends go to it
	queue  []*queued
	bytes  int       // of queue
	next   time.Time // when a waiting connection dials again
	ended  bool      // closed for good: Sends fail
}

var _ registry.Managed = (*supervisor)(nil)

// Done implements registry.Managed.
func (s *supervisor) Done() <-chan struct{} { return s.done }

// Close implements registry.Managed: CloseConnection. A declared
// connection's socket closes and it reconnects, as when its peer closes.
func (s *supervisor) Close() bool {
	if !s.spec.Declared {
		s.stop(event.ReasonClosedByAPI)
		return true
	}
	s.mu.Lock()
	c := s.sock
	s.mu.Unlock()
	if c != nil {
		c.Close(event.ReasonClosedByAPI)
	}
	return false
}

// CloseDeclared closes the managed connection id for good, declared in
// the config file or not, and returns once it is closed: a reload that no
// longer declares it, or declares it differently.
func (m *Manager) CloseDeclared(ctx context.Context, id string) error {
	return m.Abandon(ctx, id, event.ReasonClosedByAPI, "")
}

// Abandon closes the managed connection id for good with reason, and
// returns once it is closed: in a cluster, a node that lost the
// connection's take-over lease gives it up (NODE_LOST) before another
// node dials it. why is the CONNECTION_CLOSED event's error.
func (m *Manager) Abandon(ctx context.Context, id string, reason event.CloseReason, why string) error {
	m.mu.Lock()
	var found *supervisor
	for s := range m.sups {
		if s.h.ID() == id {
			found = s
		}
	}
	m.mu.Unlock()
	if found == nil {
		return fmt.Errorf("closing %q: %w", id, registry.ErrNotFound)
	}
	found.stopWith(reason, why)
	select {
	case <-found.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("closing %q: %w", id, ctx.Err())
	}
}

// stop closes the connection for good with reason (the first reason
// given wins): the socket it holds closes with it, a wait or a dial in
// progress ends.
func (s *supervisor) stop(reason event.CloseReason) { s.stopWith(reason, "") }

// stopWith is stop saying why, in words the CONNECTION_CLOSED event
// carries as its error.
func (s *supervisor) stopWith(reason event.CloseReason, why string) {
	s.mu.Lock()
	if s.reason == event.ReasonUnspecified {
		s.reason, s.why = reason, why
	}
	reason, why, c := s.reason, s.why, s.sock
	s.mu.Unlock()
	if c != nil {
		c.CloseWith(reason, why)
	}
	s.once.Do(func() { close(s.stopCh) })
	s.cancel()
}

func (s *supervisor) stopped() event.CloseReason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

func (s *supervisor) report(o outcome) {
	if !s.reported {
		s.reported = true
		s.first <- o
	}
}

func (s *supervisor) publish(e *event.Event) {
	e.ConnectionID, e.Origin, e.Generation = s.h.ID(), event.Outbound, s.gen
	_ = s.m.cfg.Publisher.Publish(s.ctx, e)
}

// run is the supervisor's goroutine: attempt after attempt until the
// connection is closed for good.
func (s *supervisor) run() {
	defer func() {
		s.m.mu.Lock()
		delete(s.m.sups, s)
		s.m.mu.Unlock()
		s.cancel()
		close(s.done)
		s.m.wg.Done()
	}()
	for {
		if reason := s.stopped(); reason != event.ReasonUnspecified {
			s.mu.Lock()
			why := s.why
			s.mu.Unlock()
			s.end(reason, why)
			return
		}
		s.h.SetConnecting()
		c, err := s.attempt()
		if err != nil {
			if s.stopped() != event.ReasonUnspecified {
				continue // the dial was cut by the close
			}
			s.m.dialFailed(err)
			s.failed++
			if s.spec.Reconnect.Disabled {
				// Nothing was published of the connection: it leaves no
				// trace but the error.
				s.mu.Lock()
				s.ended = true
				q := s.takeQueueLocked()
				s.mu.Unlock()
				failAll(q, fmt.Errorf("writing to %s: its first attempt failed and reconnect is disabled: %w", s.h.ID(), ErrDisconnected))
				s.h.Remove(event.ReasonUnspecified)
				s.report(outcome{err: err})
				return
			}
			if !s.waitRetry(err.Error()) {
				return
			}
			continue
		}
		s.gen++
		connected, up, why := s.serve(c)
		if s.final() {
			// The socket's CONNECTION_CLOSED was the last event, and the
			// registry forgot the connection before it.
			if !s.reported {
				if why == "" || s.stopped() != event.ReasonUnspecified {
					s.report(outcome{info: s.h.Info()})
				} else {
					s.report(outcome{err: fmt.Errorf("connecting to %s: %w: %s", s.spec.Address, ErrOnConnect, why)})
				}
			}
			return
		}
		if why == "" {
			why = "connection closed: " + c.Reason().String()
		}
		if connected && up >= s.spec.Reconnect.stableAfter() {
			s.retry, s.failed = 0, 0
		} else {
			s.failed++
		}
		if !s.waitRetry(why) {
			return
		}
	}
}

// final reports whether the last socket's close was final (see closed).
func (s *supervisor) final() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// attempt dials once and attaches the socket as the next generation.
func (s *supervisor) attempt() (*conn.Conn, error) {
	// Each attempt's dial and TLS handshake within the Connect timeout:
	// an address that drops SYNs would otherwise hold it for minutes.
	ctx, cancel := context.WithTimeout(s.ctx, s.spec.Timeout)
	defer cancel()
	nc, err := s.m.cfg.Dialer.Dial(ctx, dialer.DialRequest{
		Address: s.spec.Address, TLS: s.spec.TLS, KeepAlive: s.spec.KeepAlive, NoKeepAlive: s.spec.NoKeepAlive, UserTimeout: s.spec.UserTimeout,
	})
	if err != nil {
		return nil, err
	}
	// The manager's context, not the supervisor's: stop closes the socket
	// itself, with its own reason, which a canceled context would race.
	c, err := s.h.Attach(s.m.ctx, nc, s.gen+1, conn.Config{
		Framing: s.spec.Framing, IdleTimeout: s.spec.IdleTimeout, WriteTimeout: s.m.cfg.WriteTimeout, Publisher: s.m.cfg.Publisher,
		AutoReply: s.spec.AutoReply, Rules: s.spec.ruleSet,
		HandlerTimeout: s.spec.HandlerTimeout, HandlerTimeoutClose: s.spec.HandlerTimeoutClose,
	}, s.closed)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// closed is the socket's Closed hook, called before its CONNECTION_CLOSED
// is published: it says whether the close is final, so that the registry
// forgets the connection before that event.
func (s *supervisor) closed(event.CloseReason) bool {
	s.mu.Lock()
	s.sock, s.ready = nil, nil
	final := s.reason != event.ReasonUnspecified || s.spec.Reconnect.Disabled
	var q []*queued
	if final {
		s.ended = true
		q = s.takeQueueLocked()
	}
	s.mu.Unlock()
	failAll(q, fmt.Errorf("writing to %s: closed for good while the send was held: %w", s.h.ID(), ErrDisconnected))
	return final
}

// serve runs one socket until it closes: on_connect and its reply, the
// queued Sends, then heartbeats. It reports whether the socket got
// connected and for how long, and what went wrong in words when the
// gateway closed it.
func (s *supervisor) serve(c *conn.Conn) (connected bool, up time.Duration, why string) {
	go c.Serve()
	defer func() { <-c.Done() }()
	s.mu.Lock()
	s.sock = c
	reason, why := s.reason, s.why
	s.mu.Unlock()
	if reason != event.ReasonUnspecified {
		c.CloseWith(reason, why) // closed for good while it dialed
		return false, 0, ""
	}
	// Nothing is written before the socket's CONNECTION_OPENED is out, and
	// Connect's header is then past it.
	select {
	case <-c.Opened():
	case <-c.Done():
		return false, 0, ""
	}
	if oc := s.spec.OnConnect; oc != nil {
		if _, err := s.exchange(c, oc); err != nil {
			why = fmt.Sprintf("on_connect: %v", err)
			c.CloseWith(event.ReasonOnConnectFailed, why)
			return false, 0, why
		}
	}
	if !s.flush(c) {
		return false, 0, ""
	}
	s.h.SetConnected(s.failed)
	s.report(outcome{info: s.h.Info()})
	at := time.Now()
	why = s.heartbeats(c)
	<-c.Done()
	return true, time.Since(at), why
}

// exchange writes x on c through the same path as a Send, awaiting its
// expected reply within its timeout.
func (s *supervisor) exchange(c *conn.Conn, x *Exchange) ([]byte, error) {
	aw, timeout := conn.Await{}, s.m.cfg.WriteTimeout
	if x.Expect != nil {
		aw, timeout = conn.Await{Mode: await.Frame, MaxBytes: expectReplyBytes, Match: x.Expect}, x.Timeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	return c.Send(ctx, x.Payload, aw)
}

// heartbeats writes the heartbeat after each interval without a write,
// until c closes; a missing expected reply closes c with HEARTBEAT_FAILED.
// It returns what went wrong, in words, when it closed c.
func (s *supervisor) heartbeats(c *conn.Conn) string {
	hb := s.spec.Heartbeat
	if hb == nil {
		return ""
	}
	t := time.NewTimer(hb.Interval)
	defer t.Stop()
	for {
		select {
		case <-c.Done():
			return ""
		case <-t.C:
		}
		if wait := hb.Interval - time.Since(c.LastWrite()); wait > 0 {
			t.Reset(wait)
			continue
		}
		_, err := s.exchange(c, &hb.Exchange)
		if err != nil && hb.Expect != nil && errors.Is(err, context.DeadlineExceeded) {
			why := fmt.Sprintf("heartbeat: no expected reply within %s", hb.Timeout)
			c.CloseWith(event.ReasonHeartbeatFailed, why)
			return why
		}
		t.Reset(hb.Interval)
	}
}

// flush hands the Sends held while down to c, in order, each queued
// before the next, then makes c the socket Sends go to. It reports false
// when c closed first.
func (s *supervisor) flush(c *conn.Conn) bool {
	for {
		s.mu.Lock()
		if s.sock != c {
			s.mu.Unlock()
			return false
		}
		if len(s.queue) == 0 {
			s.ready = c
			s.queue = nil
			s.mu.Unlock()
			return true
		}
		q := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.bytes -= len(q.p)
		s.m.queued.Add(-int64(len(q.p)))
		s.mu.Unlock()
		q.pend, q.err = c.Begin(q.ctx, q.p, q.aw)
		if errors.Is(q.err, conn.ErrClosed) && s.requeue(q) {
			return false // nothing of it was queued: it waits for the next socket
		}
		if q.err != nil {
			q.err = s.cut(q.err)
		}
		close(q.ready)
	}
}

// requeue puts q back at the head of the queue, when its socket closed
// before it was queued there, unless its caller gave up or the connection
// is closed for good meanwhile.
func (s *supervisor) requeue(q *queued) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.gaveUp || s.ended {
		return false
	}
	q.err = nil
	s.queue = slices.Insert(s.queue, 0, q)
	s.bytes += len(q.p)
	s.m.queued.Add(int64(len(q.p)))
	return true
}

// waitRetry schedules the next attempt after a failure (why), or gives up
// when max_attempts failed in a row, and waits for it. It reports false
// when the connection is closed for good.
func (s *supervisor) waitRetry(why string) bool {
	if n := s.spec.Reconnect.MaxAttempts; n > 0 && s.failed >= n {
		s.end(event.ReasonReconnectGaveUp, why)
		return false
	}
	s.retry++
	d := s.spec.Reconnect.Delay(s.retry, s.m.cfg.Rand)
	next := time.Now().Add(d)
	s.mu.Lock()
	s.next = next
	s.mu.Unlock()
	s.h.SetWaiting(why, s.failed, next)
	s.m.reconnects.Add(1)
	s.publish(&event.Event{Kind: event.ReconnectScheduled, Attempt: s.retry, Delay: d, Error: why})
	s.report(outcome{info: s.h.Info()})
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.stopCh:
	}
	return true
}

// end closes the connection for good while it holds no socket: the queue
// fails, the registry forgets it, and a CONNECTION_CLOSED of its own says
// why.
func (s *supervisor) end(reason event.CloseReason, why string) {
	s.mu.Lock()
	s.ended = true
	q := s.takeQueueLocked()
	s.mu.Unlock()
	failAll(q, fmt.Errorf("writing to %s: closed for good (%s) while the send was held: %w", s.h.ID(), reason, ErrDisconnected))
	info := s.h.Remove(reason)
	s.publish(&event.Event{Kind: event.ConnectionClosed, CloseReason: reason, Error: why})
	s.report(outcome{info: info})
}

func (s *supervisor) takeQueueLocked() []*queued {
	q := s.queue
	s.queue = nil
	s.m.queued.Add(-int64(s.bytes))
	s.bytes = 0
	return q
}

func failAll(q []*queued, err error) {
	for _, it := range q {
		it.err = err
		close(it.ready)
	}
}

// cut is a Send's error of a socket that closed under it: Unavailable, not
// retried.
func (s *supervisor) cut(err error) error {
	if errors.Is(err, conn.ErrClosed) {
		return fmt.Errorf("%w (the send was not retried): %w", err, ErrDisconnected)
	}
	return err
}

// Send implements registry.Managed: while connected, p goes to the
// socket; while down, it is held in the queue (within QueueBytes) until a
// socket takes it, or refused. A socket that closed before anything of p
// was queued on it takes nothing: p then goes as it would have after the
// close, so only a write the close cut fails with ErrDisconnected.
func (s *supervisor) Send(ctx context.Context, p []byte, aw conn.Await) ([]byte, error) {
	for {
		c, q, err := s.admit(ctx, p, aw)
		switch {
		case err != nil:
			return nil, err
		case q != nil:
			return s.waitHeld(ctx, q)
		}
		pend, err := c.Begin(ctx, p, aw)
		if errors.Is(err, conn.ErrClosed) {
			// Once the socket's close is told (Done comes after its Closed
			// hook), the Send finds the connection as it is then.
			select {
			case <-c.Done():
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("writing to %s: %w", s.h.ID(), ctx.Err())
			}
		}
		if err != nil {
			return nil, err
		}
		reply, err := pend.Wait(ctx)
		return reply, s.cut(err)
	}
}

// admit decides where p goes: the connected socket, or the queue (held,
// returned), or an error when it is refused.
func (s *supervisor) admit(ctx context.Context, p []byte, aw conn.Await) (*conn.Conn, *queued, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.ended:
		return nil, nil, fmt.Errorf("writing to %s: closed for good: %w", s.h.ID(), ErrDisconnected)
	case s.ready != nil:
		return s.ready, nil, nil
	case s.spec.QueueBytes == 0:
		return nil, nil, &NotConnectedError{ID: s.h.ID(), RetryAfter: max(time.Until(s.next), 0)}
	case s.bytes+len(p) > s.spec.QueueBytes:
		return nil, nil, fmt.Errorf("writing to %s: %d bytes held while down, %d more exceed queue_while_down_bytes (%d): %w", s.h.ID(), s.bytes, len(p), s.spec.QueueBytes, ErrQueueFull)
	}
	q := &queued{ctx: ctx, p: p, aw: aw, ready: make(chan struct{})}
	s.queue = append(s.queue, q)
	s.bytes += len(p)
	s.m.queued.Add(int64(len(p)))
	return nil, q, nil
}

// waitHeld waits for a held Send to be handed to a socket, then for its
// write and reply; ctx ending first takes it out of the queue unwritten.
func (s *supervisor) waitHeld(ctx context.Context, q *queued) ([]byte, error) {
	select {
	case <-q.ready:
	case <-ctx.Done():
		s.mu.Lock()
		if i := slices.Index(s.queue, q); i >= 0 {
			s.queue = slices.Delete(s.queue, i, i+1)
			s.bytes -= len(q.p)
			s.m.queued.Add(-int64(len(q.p)))
			s.mu.Unlock()
			return nil, fmt.Errorf("writing to %s: held while down, not written: %w", s.h.ID(), ctx.Err())
		}
		q.gaveUp = true
		s.mu.Unlock()
		<-q.ready // being handed to a socket, within ctx
	}
	if q.err != nil {
		return nil, q.err
	}
	reply, err := q.pend.Wait(ctx)
	return reply, s.cut(err)
}
