package listener

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/page"
)

// Errors of Update; callers test them with errors.Is.
var (
	// ErrNotUpdatable means a field that cannot change in place (host,
	// port, framing, tls, forward, proxy_protocol) or one that is not a field; the error is
	// a *page.FieldError naming it.
	ErrNotUpdatable = errors.New("field cannot be updated in place")
	// ErrDeclared means a change through the API to a listener the config
	// file declares: the file is the truth, and a reload changes it.
	ErrDeclared = errors.New("listener is declared in the config file")
)

// The fields Update changes in place, by their API names.
const (
	// FieldAutoReply is the auto reply with its rules and handler timeout.
	FieldAutoReply = "auto_reply"
	// FieldOnConnect is the banner.
	FieldOnConnect         = "on_connect"
	FieldMaxConnections    = "max_connections"
	FieldIdleTimeout       = "idle_timeout"
	FieldHalfCloseTimeout  = "half_close_timeout"
	fieldHost, fieldPort   = "host", "port"
	fieldFraming, fieldTLS = "framing", "tls"
	fieldForward           = "forward"
	fieldProxyProtocol     = "proxy_protocol"
)

// UpdatableFields are the fields Update takes, in the order Diff lists
// them.
var UpdatableFields = []string{FieldAutoReply, FieldOnConnect, FieldMaxConnections, FieldIdleTimeout, FieldHalfCloseTimeout}

// live returns what the connections of a started listener read, frame by
// frame, from its spec.
func live(spec Spec) conn.Live {
	return conn.Live{
		AutoReply:           spec.AutoReply,
		Rules:               spec.ruleSet,
		Banner:              spec.banner,
		IdleTimeout:         spec.IdleTimeout,
		HalfCloseTimeout:    spec.HalfCloseTimeout,
		HandlerTimeout:      spec.HandlerTimeout,
		HandlerTimeoutClose: spec.HandlerTimeoutClose,
	}
}

// InPlace reports whether a listener started from spec a can become spec
// b by Update, without a new socket; when it cannot, it names the first
// field that differs (host, port, framing, tls, forward or
// proxy_protocol). TLS configs are compared by pointer: a caller that
// built b's anew from the same files must compare those itself.
func InPlace(a, b Spec) (bool, string) {
	hostA, hostB := a.Host, b.Host
	if hostA == "" {
		hostA = DefaultHost
	}
	if hostB == "" {
		hostB = DefaultHost
	}
	fa, errA := a.Framing.Normalize()
	fb, errB := b.Framing.Normalize()
	switch {
	case a.Source != b.Source:
		return false, "source"
	case hostA != hostB:
		return false, fieldHost
	case a.Port != b.Port:
		return false, fieldPort
	case errA != nil || errB != nil || !reflect.DeepEqual(fa, fb):
		return false, fieldFraming
	case a.TLS != b.TLS:
		return false, fieldTLS
	case (a.Forward == nil) != (b.Forward == nil),
		a.Forward != nil && (a.Forward.Address != b.Forward.Address || a.Forward.TLS != b.Forward.TLS):
		return false, fieldForward
	case a.ProxyProtocol != b.ProxyProtocol:
		return false, fieldProxyProtocol
	}
	return true, ""
}

// Diff returns the updatable fields (UpdatableFields) whose values differ
// between specs a and b: the update mask that makes a listener of a into
// one of b, when InPlace says it can be.
func Diff(a, b Spec) []string {
	var out []string
	if !reflect.DeepEqual(a.AutoReply, b.AutoReply) || !reflect.DeepEqual(a.Rules, b.Rules) ||
		a.HandlerTimeout != b.HandlerTimeout || a.HandlerTimeoutClose != b.HandlerTimeoutClose {
		out = append(out, FieldAutoReply)
	}
	if !reflect.DeepEqual(a.Banner, b.Banner) {
		out = append(out, FieldOnConnect)
	}
	if a.MaxConnections != b.MaxConnections {
		out = append(out, FieldMaxConnections)
	}
	if a.IdleTimeout != b.IdleTimeout {
		out = append(out, FieldIdleTimeout)
	}
	if a.HalfCloseTimeout != b.HalfCloseTimeout {
		out = append(out, FieldHalfCloseTimeout)
	}
	return out
}

// Update changes the fields of listener id named by fields (of
// UpdatableFields) to their values in spec, in place: the socket stays
// bound, and every connection open now reads the new auto reply, rules and
// timeouts at its next frame (the banner and max_connections count for the
// connections accepted next). FieldAutoReply takes spec's AutoReply,
// Rules, HandlerTimeout and HandlerTimeoutClose together. Zero values get
// the defaults Start gives them. Another field is ErrNotUpdatable; the
// checks of Start refuse bad values, and nothing changes unless every
// field is good.
//
// by is who asks: a listener declared in the config file (SourceConfig)
// is changed only by its reload (by SourceConfig); the API's change of it
// is ErrDeclared. ctx bounds how long the LISTENER_UPDATED event waits for
// a lossless subscriber to have room.
func (r *Registry) Update(ctx context.Context, id string, spec Spec, fields []string, by Source) (Info, error) {
	for _, f := range fields {
		if !slices.Contains(UpdatableFields, f) {
			return Info{}, fmt.Errorf("updating listener %q: %w", id, &page.FieldError{Field: f, Reason: "cannot be changed in place: stop the listener and start it anew", Err: ErrNotUpdatable})
		}
	}
	r.mu.Lock()
	l := r.listeners[id]
	if l == nil || l.ln == nil || l.state != Listening {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("updating listener %q: %w", id, ErrNotFound)
	}
	if l.spec.Source == SourceConfig && by != SourceConfig {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("updating listener %q: %w", id, ErrDeclared)
	}
	next := l.spec
	r.mu.Unlock()

	// Checked outside the lock: compiling rules takes a while.
	for _, f := range fields {
		switch f {
		case FieldAutoReply:
			next.AutoReply, next.Rules = spec.AutoReply, spec.Rules
			next.HandlerTimeout, next.HandlerTimeoutClose = spec.HandlerTimeout, spec.HandlerTimeoutClose
		case FieldOnConnect:
			next.Banner = spec.Banner
		case FieldMaxConnections:
			next.MaxConnections = spec.MaxConnections
			if limit := r.cfg.ListenerMaxConnections; limit > 0 {
				if next.MaxConnections > limit {
					return Info{}, &limits.FieldError{Field: FieldMaxConnections, Flag: "--listener-max-connections", Limit: limit, Got: next.MaxConnections, Err: ErrInvalidSpec}
				}
				if next.MaxConnections == 0 {
					next.MaxConnections = limit
				}
			}
		case FieldIdleTimeout:
			if next.IdleTimeout = spec.IdleTimeout; next.IdleTimeout == 0 {
				next.IdleTimeout = r.cfg.IdleTimeout
			}
		case FieldHalfCloseTimeout:
			next.HalfCloseTimeout = spec.HalfCloseTimeout
		}
	}
	if err := r.checkForward(next); err != nil {
		return Info{}, err
	}
	var err error
	if next.ruleSet, next.banner, err = replies(next.Framing, next.Rules, next.HandlerTimeout, next.Banner); err != nil {
		return Info{}, err
	}
	if next.HandlerTimeout == 0 {
		next.HandlerTimeout = r.cfg.HandlerTimeout
	}

	r.mu.Lock()
	if r.listeners[id] != l || l.state != Listening {
		r.mu.Unlock()
		return Info{}, fmt.Errorf("updating listener %q: %w", id, ErrNotFound)
	}
	// Only the fields named go in, onto the spec of now: an update made
	// meanwhile keeps the fields it changed and this one does not name.
	cur := l.spec
	for _, f := range fields {
		switch f {
		case FieldAutoReply:
			cur.AutoReply, cur.Rules, cur.ruleSet = next.AutoReply, next.Rules, next.ruleSet
			cur.HandlerTimeout, cur.HandlerTimeoutClose = next.HandlerTimeout, next.HandlerTimeoutClose
		case FieldOnConnect:
			cur.Banner, cur.banner = next.Banner, next.banner
		case FieldMaxConnections:
			cur.MaxConnections = next.MaxConnections
		case FieldIdleTimeout:
			cur.IdleTimeout = next.IdleTimeout
		case FieldHalfCloseTimeout:
			cur.HalfCloseTimeout = next.HalfCloseTimeout
		}
	}
	next = cur
	l.spec = next
	l.shared.Store(live(next))
	l.group.SetMax(next.MaxConnections)
	info := r.infoLocked(l)
	r.mu.Unlock()

	_ = r.cfg.Publisher.Publish(ctx, &event.Event{Kind: event.ListenerUpdated, ListenerID: id, LocalAddr: l.addr})
	r.log.Info("listener updated", "listener_id", id, "address", l.addr, "fields", fields)
	return info, nil
}
