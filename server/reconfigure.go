package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
)

// ErrNeedsRestart is wrapped by a Reconfigure that asks for a change only
// a restart can make: turning the token or TLS on or off.
var ErrNeedsRestart = errors.New("needs a restart")

// Reloadable are the settings of a Config that change while the server
// runs (Reconfigure). Each takes effect for what comes next: the next
// call, handshake, bind or dial; what is already open is left alone, but
// for browser sessions, which a new token ends.
//
// The other limits stay as the server started: the control plane's
// connection caps, gRPC streams and message size (MaxSendBytes) are fixed
// in the gRPC and HTTP servers and their listeners, and checked together
// against the open-file limit at start; MaxConnections and the per-IP
// bound are checked against that reserve too; the queue, ring and frame
// sizes are allocated and handed to connections at start.
type Reloadable struct {
	// AuthToken is the bearer token every call needs. It can be replaced,
	// not set or removed: the interceptors that check it are installed at
	// start (ErrNeedsRestart).
	AuthToken string
	// TLSCert and TLSKey are the control plane's PEM files. They are read
	// again at every Reconfigure, so that a certificate renewed in place
	// is picked up; TLS cannot be turned on or off (ErrNeedsRestart).
	TLSCert, TLSKey string
	// AllowListen, AllowDial and DenyDial are the policy's rule lists, as
	// in Config.
	AllowListen, AllowDial, DenyDial string
	// CORSOrigins are the REST gateway's allowed browser origins.
	CORSOrigins []string
	// MaxListeners and MaxSubscribers are as in Config; a lower bound than
	// what is running closes nothing, it admits no more until under it.
	MaxListeners, MaxSubscribers int
}

// reloadableOf returns the reloadable part of cfg.
func reloadableOf(cfg Config) Reloadable {
	return Reloadable{
		AuthToken: cfg.AuthToken, TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey,
		AllowListen: cfg.AllowListen, AllowDial: cfg.AllowDial, DenyDial: cfg.DenyDial,
		CORSOrigins:  slices.Clone(cfg.CORSOrigins),
		MaxListeners: cfg.MaxListeners, MaxSubscribers: cfg.MaxSubscribers,
	}
}

// Reconfigure makes r the settings in force. It checks and loads all of r
// first (the policy rules, the certificate and key files) and changes
// nothing when any of it fails; otherwise it applies every part, each
// atomically for the request paths that read it, and returns the names of
// the serve flags whose value changed ("allow-dial", "tls-cert",
// "auth-token", ...), in a fixed order. A renewed certificate counts as a
// change even under the same file names.
func (s *Server) Reconfigure(r Reloadable) (applied []string, err error) {
	s.reconf.Lock()
	defer s.reconf.Unlock()
	old := s.live

	if (old.AuthToken == "") != (r.AuthToken == "") {
		return nil, fmt.Errorf("turning the bearer token on or off: %w", ErrNeedsRestart)
	}
	if (old.TLSCert == "") != (r.TLSCert == "" && r.TLSKey == "") {
		return nil, fmt.Errorf("turning TLS on or off: %w", ErrNeedsRestart)
	}
	var cert *tls.Certificate
	if r.TLSCert != "" || r.TLSKey != "" {
		if r.TLSCert == "" || r.TLSKey == "" {
			return nil, errors.New("--tls-cert and --tls-key go together")
		}
		if cert, err = loadKeyPair(Config{TLSCert: r.TLSCert, TLSKey: r.TLSKey}); err != nil {
			return nil, err
		}
	}
	pol, err := newPolicy(Config{AllowListen: r.AllowListen, AllowDial: r.AllowDial, DenyDial: r.DenyDial, DialResolver: s.cfg.DialResolver})
	if err != nil {
		return nil, err
	}
	for _, l := range []struct {
		flag string
		v    int
	}{{"--max-listeners", r.MaxListeners}, {"--max-subscribers", r.MaxSubscribers}} {
		if l.v < 0 {
			return nil, fmt.Errorf("%s %d: must not be negative (0 means no limit)", l.flag, l.v)
		}
	}

	// Everything is checked: from here on nothing fails.
	if r.AuthToken != old.AuthToken {
		s.auth.SetToken(r.AuthToken)
		if s.sessions != nil {
			_ = s.sessions.SetToken(r.AuthToken) // not empty: checked above
		}
		applied = append(applied, "auth-token")
	}
	if cert != nil {
		if cur := s.cert.Load(); r.TLSCert != old.TLSCert || r.TLSKey != old.TLSKey || !sameCertificate(cur, cert) {
			applied = append(applied, "tls-cert")
		}
		s.cert.Store(cert)
	}
	if r.AllowListen != old.AllowListen || r.AllowDial != old.AllowDial || r.DenyDial != old.DenyDial {
		s.listeners.SetPolicy(pol)
		s.dialer.SetPolicy(pol)
		for _, p := range []struct{ flag, old, new string }{
			{"allow-listen", old.AllowListen, r.AllowListen},
			{"allow-dial", old.AllowDial, r.AllowDial},
			{"deny-dial", old.DenyDial, r.DenyDial},
		} {
			if p.old != p.new {
				applied = append(applied, p.flag)
			}
		}
	}
	if !slices.Equal(r.CORSOrigins, old.CORSOrigins) {
		if s.rest != nil {
			s.rest.SetCORSOrigins(r.CORSOrigins)
		}
		applied = append(applied, "cors-origins")
	}
	if r.MaxListeners != old.MaxListeners {
		s.listeners.SetMaxListeners(r.MaxListeners)
		applied = append(applied, "max-listeners")
	}
	if r.MaxSubscribers != old.MaxSubscribers {
		s.hub.SetMaxSubscribers(r.MaxSubscribers)
		applied = append(applied, "max-subscribers")
	}
	r.CORSOrigins = slices.Clone(r.CORSOrigins)
	s.live = r
	if len(applied) > 0 {
		s.log.Info("settings reloaded", "applied", applied)
	}
	return applied, nil
}

// sameCertificate reports whether a and b are the same certificate chain.
func sameCertificate(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Certificate, b.Certificate, bytes.Equal)
}
