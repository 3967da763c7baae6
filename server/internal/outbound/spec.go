package outbound

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// Defaults and bounds of a Spec, decided here so that every way of making
// a managed connection (the API, a config file, a state restore) meets
// the same ones.
const (
	// DefaultInitialBackoff is the first delay before a reconnect: short
	// enough that a restarted server is found again at once.
	DefaultInitialBackoff = 100 * time.Millisecond
	// DefaultMaxBackoff is the longest delay: a server down for long is
	// tried twice a minute.
	DefaultMaxBackoff = 30 * time.Second
	// MinBackoff is the floor of a backoff: below it a refused server is
	// redialled in a busy loop.
	MinBackoff = 10 * time.Millisecond
	// MaxBackoffLimit bounds max_backoff: a connection waits at most an
	// hour to try again.
	MaxBackoffLimit = time.Hour
	// MinStableTime is the least a connection must stay up for its backoff
	// to start over (or initial_backoff when longer): a server that
	// accepts and closes at once is not redialled at the initial backoff
	// for ever.
	MinStableTime = time.Second
	// DefaultConnectTimeout is how long Connect waits for its first
	// attempt's outcome when the request sets no timeout.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultExpectTimeout is how long on_connect's expected reply may
	// take when its timeout is unset.
	DefaultExpectTimeout = 10 * time.Second
	// MinHeartbeatInterval is the shortest heartbeat interval.
	MinHeartbeatInterval = 10 * time.Millisecond
	// MaxUserTimeout bounds tcp_user_timeout.
	MaxUserTimeout = time.Hour
	// MaxKeepAliveCount and MaxKeepAliveTime are Linux's bounds of
	// TCP_KEEPCNT and TCP_KEEPIDLE/TCP_KEEPINTVL: past them every dial
	// would fail setting the socket up.
	MaxKeepAliveCount = 127
	MaxKeepAliveTime  = 32767 * time.Second
	// DefaultMaxQueueWhileDownBytes bounds queue_while_down_bytes when
	// Config.MaxQueueWhileDownBytes is 0: a few seconds of commands at
	// a busy rate for each of a few connections, far from the daemon's
	// memory.
	DefaultMaxQueueWhileDownBytes = 64 << 20
	// expectReplyBytes bounds the reply awaited by on_connect and
	// heartbeats: a login banner or a pong is short.
	expectReplyBytes = 64 << 10
)

// Spec describes a managed outbound connection; Manager.Connect
// validates it and fills in its defaults.
type Spec struct {
	// ID is the connection's id; empty draws one.
	ID string
	// Declared says the config file declares it: CloseConnection closes
	// its socket and it reconnects; only CloseDeclared (a reload that no
	// longer declares it) closes it for good. The zero value is a
	// connection made by the API.
	Declared bool
	// Address is host:port, resolved and checked by the dial policy at
	// every attempt.
	Address string
	// Framing cuts what the connection receives into frames; it must be
	// normalized.
	Framing framing.Config
	// TLS, when set, makes every socket TLS; its ServerName must be set.
	TLS       *tls.Config
	Reconnect Reconnect
	// OnConnect, when set, is written first on every socket.
	OnConnect *Exchange
	// Heartbeat, when set, is written after Interval without a write.
	Heartbeat *Heartbeat
	// IdleTimeout closes a socket that receives nothing for that long
	// (IDLE_TIMEOUT), then reconnects; 0 means never.
	IdleTimeout time.Duration
	// KeepAlive and NoKeepAlive set the TCP keep-alive probes (see
	// dialer.DialRequest); UserTimeout sets TCP_USER_TIMEOUT, 0 the
	// kernel's default, at most MaxUserTimeout.
	KeepAlive   net.KeepAliveConfig
	NoKeepAlive bool
	UserTimeout time.Duration
	// QueueBytes bounds the bytes of Sends held while down, flushed in
	// order once connected again; 0 refuses a Send while down
	// (ErrNotConnected). At most Config.MaxQueueWhileDownBytes.
	QueueBytes int
	// Timeout bounds Connect's wait for the first attempt's outcome; 0
	// means DefaultConnectTimeout.
	Timeout time.Duration
	// AutoReply answers what the peer sends, after Rules (package rules),
	// as on a listener's connections; normalize compiles the rules.
	AutoReply conn.AutoReply
	Rules     []rules.Spec
	// HandlerTimeout bounds a Handle stream's answer to a frame; 0 means
	// Config.HandlerTimeout, at most MaxHandlerTimeout.
	HandlerTimeout time.Duration
	// HandlerTimeoutClose closes the socket (and reconnects) when its
	// handler did not answer a frame in time, instead of answering it with
	// AutoReply.
	HandlerTimeoutClose bool
	// Node is the node asked to run the connection, by its id; empty means
	// the node called. A single gateway runs only its own (the connection
	// registry's Node): Connect refuses another with a *placement.NodeError.
	Node string
	// TakeOver lets another node of a cluster dial the connection afresh
	// when its node is lost; it needs reconnect (the API refuses it
	// without). A single gateway has no other node and ignores it.
	TakeOver bool

	ruleSet *rules.Set // compiled by normalize
}

// MaxHandlerTimeout bounds a connection's handler timeout.
const MaxHandlerTimeout = time.Hour

// Reconnect says how a connection dials again. The delay before attempt
// n (1 after a drop or a first failure) is random in [d/2, d], d =
// min(Initial·2^(n-1), Max).
type Reconnect struct {
	// Disabled never reconnects: a failed first attempt fails Connect and
	// the first drop closes the connection for good.
	Disabled bool
	// Initial is the first delay; 0 means DefaultInitialBackoff, at least
	// MinBackoff.
	Initial time.Duration
	// Max is the longest delay; 0 means DefaultMaxBackoff, at least
	// Initial, at most MaxBackoffLimit.
	Max time.Duration
	// MaxAttempts closes the connection for good (RECONNECT_GAVE_UP) after
	// that many failed attempts in a row; 0 means never.
	MaxAttempts uint32
}

// Delay returns the delay before attempt n (n ≥ 1): random in [d/2, d],
// d = min(Initial·2^(n-1), Max). rnd returns a random int64 in [0, n).
func (r Reconnect) Delay(n uint32, rnd func(n int64) int64) time.Duration {
	d := r.Initial
	for i := uint32(1); i < n && d < r.Max; i++ {
		d *= 2
	}
	d = min(d, r.Max)
	half := d / 2
	return half + time.Duration(rnd(int64(d-half)+1))
}

// stableAfter is how long a socket must stay connected for the backoff to
// start over.
func (r Reconnect) stableAfter() time.Duration { return max(r.Initial, MinStableTime) }

// Exchange is a payload the gateway writes of its own accord (on_connect,
// a heartbeat) and, optionally, the reply it awaits.
type Exchange struct {
	// Payload is written as it is; Framed encodes it with the connection's
	// framing first.
	Payload []byte
	Framed  bool
	// PayloadField names the payload's field in errors: "text" or "data".
	PayloadField string
	// Expect, when set, says which frame is the reply; it must come within
	// Timeout. Nil awaits no reply.
	Expect func(frame []byte) bool
	// Timeout bounds the wait for Expect; 0 means the default (see
	// Heartbeat and DefaultExpectTimeout). Only with Expect.
	Timeout time.Duration
}

// Heartbeat is written after Interval without a write.
type Heartbeat struct {
	// Interval is required, at least MinHeartbeatInterval.
	Interval time.Duration
	// Exchange's Timeout defaults to Interval.
	Exchange
}

// Errors of the package; callers test them with errors.Is.
var (
	// ErrInvalidSpec means a Spec field the engine does not take; the
	// error is a *page.FieldError or a *limits.FieldError naming it.
	ErrInvalidSpec = errors.New("invalid outbound connection")
	// ErrNotConnected means a Send while the connection is down, which
	// queues nothing (queue_while_down_bytes 0); a *NotConnectedError
	// says when it dials again.
	ErrNotConnected = errors.New("not connected")
	// ErrQueueFull means a Send while down that the queue has no room for.
	ErrQueueFull = errors.New("queue while down is full")
	// ErrDisconnected means a Send whose write the connection's end cut,
	// or that was queued when it closed for good: it was not retried.
	ErrDisconnected = errors.New("connection closed")
	// ErrOnConnect means on_connect could not be written, or its expected
	// reply did not come in time.
	ErrOnConnect = errors.New("on_connect failed")
	// ErrClosed means the manager has shut down.
	ErrClosed = errors.New("outbound connections are shut down")
)

// NotConnectedError is ErrNotConnected with the time until the next
// attempt, for a caller's retry.
type NotConnectedError struct {
	ID string
	// RetryAfter is the time until the next attempt; 0 while one is in
	// progress.
	RetryAfter time.Duration
}

func (e *NotConnectedError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("writing to %s: %v (it dials again in %s; set queue_while_down_bytes to hold sends while down)", e.ID, ErrNotConnected, e.RetryAfter.Round(time.Millisecond))
	}
	return fmt.Sprintf("writing to %s: %v (it is dialing; set queue_while_down_bytes to hold sends while down)", e.ID, ErrNotConnected)
}

func (e *NotConnectedError) Unwrap() error { return ErrNotConnected }

func fieldErr(field, format string, args ...any) error {
	return &page.FieldError{Field: field, Reason: fmt.Sprintf(format, args...), Err: ErrInvalidSpec}
}

// normalize checks s and fills in its defaults, against cfg's bounds.
func (s *Spec) normalize(cfg *Config) error {
	r := &s.Reconnect
	switch {
	case r.Initial == 0:
		r.Initial = DefaultInitialBackoff
	case r.Initial < MinBackoff:
		return fieldErr("reconnect.initial_backoff", "must be at least %s, got %s", MinBackoff, r.Initial)
	case r.Initial > MaxBackoffLimit:
		return fieldErr("reconnect.initial_backoff", "must be at most %s, got %s", MaxBackoffLimit, r.Initial)
	}
	switch {
	case r.Max == 0:
		r.Max = max(DefaultMaxBackoff, r.Initial)
	case r.Max < r.Initial:
		return fieldErr("reconnect.max_backoff", "must be at least initial_backoff (%s), got %s", r.Initial, r.Max)
	}
	if r.Max > MaxBackoffLimit {
		return fieldErr("reconnect.max_backoff", "must be at most %s, got %s", MaxBackoffLimit, r.Max)
	}
	if oc := s.OnConnect; oc != nil {
		if err := oc.check("on_connect", cfg.MaxSendBytes, DefaultExpectTimeout, s.Framing); err != nil {
			return err
		}
	}
	if hb := s.Heartbeat; hb != nil {
		switch {
		case hb.Interval == 0:
			return fieldErr("heartbeat.interval", "required: the heartbeat is written after this long without a write")
		case hb.Interval < MinHeartbeatInterval:
			return fieldErr("heartbeat.interval", "must be at least %s, got %s", MinHeartbeatInterval, hb.Interval)
		}
		if err := hb.check("heartbeat", cfg.MaxSendBytes, hb.Interval, s.Framing); err != nil {
			return err
		}
	}
	switch ka := s.KeepAlive; {
	case ka.Count > MaxKeepAliveCount:
		return fieldErr("keep_alive.count", "must be at most %d, got %d", MaxKeepAliveCount, ka.Count)
	case ka.Idle > MaxKeepAliveTime:
		return fieldErr("keep_alive.idle", "must be at most %s, got %s", MaxKeepAliveTime, ka.Idle)
	case ka.Interval > MaxKeepAliveTime:
		return fieldErr("keep_alive.interval", "must be at most %s, got %s", MaxKeepAliveTime, ka.Interval)
	}
	if s.UserTimeout > MaxUserTimeout {
		return fieldErr("tcp_user_timeout", "must be at most %s, got %s", MaxUserTimeout, s.UserTimeout)
	}
	if s.QueueBytes > cfg.MaxQueueWhileDownBytes {
		return &limits.FieldError{Field: "queue_while_down_bytes", Flag: "--max-queue-while-down-bytes", Limit: cfg.MaxQueueWhileDownBytes, Got: s.QueueBytes, Err: ErrInvalidSpec}
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultConnectTimeout
	}
	set, err := rules.Compile(s.Rules)
	if err != nil {
		return err // a *rules.FieldError, named under auto_reply by the API
	}
	s.ruleSet = set
	switch {
	case s.HandlerTimeout < 0 || s.HandlerTimeout > MaxHandlerTimeout:
		return fieldErr("auto_reply.handler_timeout", "must be 0 (the gateway's --handler-timeout) to %s, got %s", MaxHandlerTimeout, s.HandlerTimeout)
	case s.HandlerTimeout == 0:
		s.HandlerTimeout = cfg.HandlerTimeout
	}
	return nil
}

// check validates an exchange named field and fills in its timeout; a
// framed payload is encoded once here, so that a payload the framing
// cannot encode is refused at Connect.
func (x *Exchange) check(field string, maxBytes int, defTimeout time.Duration, f framing.Config) error {
	pf := field + "." + x.PayloadField
	if x.PayloadField == "" {
		pf = field + ".data"
	}
	if len(x.Payload) == 0 {
		return fieldErr(pf, "empty: there would be nothing to write")
	}
	if len(x.Payload) > maxBytes {
		return &limits.FieldError{Field: pf, Flag: "--max-send-bytes", Limit: maxBytes, Got: len(x.Payload), Err: ErrInvalidSpec}
	}
	if x.Timeout != 0 && x.Expect == nil {
		return fieldErr(field+".timeout", "only with expect: it bounds the wait for the expected reply")
	}
	if x.Timeout == 0 {
		x.Timeout = defTimeout
	}
	if x.Framed {
		p, err := f.Encode(nil, x.Payload)
		if err != nil {
			return fieldErr(pf, "cannot be sent framed: %v", err)
		}
		x.Payload, x.Framed = p, false
	}
	return nil
}
