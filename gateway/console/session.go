// Package console holds what the coming web console needs of the gateway:
// for now its session login, browser sessions signed with a key derived
// from the control plane's token.
package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultTTL is how long a session lasts when --session-ttl is not
	// set: a working day, so a console left open logs in again once a day.
	DefaultTTL = 12 * time.Hour
	// MinTTL is the shortest --session-ttl: shorter would log a person out
	// while they read a page.
	MinTTL = time.Minute
	// MaxTTL is the longest --session-ttl: a stolen cookie stops working
	// within a month even if no one logs out.
	MaxTTL = 30 * 24 * time.Hour
)

// keyLabel is what the signing key is derived from, with the token as the
// HMAC key: every node with the same token derives the same key, and the
// token itself never signs anything.
const keyLabel = "tcpgate session signing key v1"

const (
	idBytes    = 16 // a random session id: 128 bits, never guessed
	expBytes   = 8  // the expiry, Unix seconds, big endian
	macBytes   = sha256.Size
	valueBytes = idBytes + expBytes + macBytes
)

// Errors of Check, each a reason to log in again.
var (
	ErrMalformed = errors.New("malformed session cookie")
	ErrSignature = errors.New("session cookie not signed by this gateway's token")
	ErrExpired   = errors.New("session expired")
	ErrRevoked   = errors.New("session logged out")
)

// CheckTTL returns why ttl is not a session lifetime, or nil; 0 means
// DefaultTTL.
func CheckTTL(ttl time.Duration) error {
	if ttl == 0 || (ttl >= MinTTL && ttl <= MaxTTL) {
		return nil
	}
	return fmt.Errorf("--session-ttl %s: must be %s to %s (0 means %s)", ttl, MinTTL, MaxTTL, DefaultTTL)
}

// Config configures Sessions.
type Config struct {
	// Token is the control plane's bearer token; required.
	Token string
	// TTL is how long a session lasts; 0 means DefaultTTL (see CheckTTL).
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Session is one checked session.
type Session struct {
	id      [idBytes]byte
	Expires time.Time
}

// Sessions mints and checks session cookie values. A value carries a random
// id, its expiry and an HMAC-SHA256 of both, so checking one needs no
// state but the revocations of logouts.
type Sessions struct {
	// signer is the current token's key and bearer header, replaced
	// whole by SetToken.
	signer atomic.Pointer[signer]
	ttl    time.Duration
	now    func() time.Time

	mu sync.Mutex // guards revoked
	// revoked holds the ids of sessions logged out before their expiry,
	// with that expiry. An id is forgotten once it has expired, since its
	// cookie is refused from then on anyway, so the map holds at most the
	// logouts of one TTL; and only callers with the token can mint a
	// session to log out.
	revoked map[[idBytes]byte]time.Time
}

// NewSessions returns the Sessions of cfg.Token.
func NewSessions(cfg Config) (*Sessions, error) {
	if cfg.Token == "" {
		return nil, errors.New("browser sessions need the control plane's token")
	}
	if err := CheckTTL(cfg.TTL); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sessions{
		ttl:     cfg.TTL,
		now:     cfg.Now,
		revoked: make(map[[idBytes]byte]time.Time),
	}
	if err := s.SetToken(cfg.Token); err != nil {
		return nil, err
	}
	return s, nil
}

// signer is what Sessions derive from one token.
type signer struct {
	key    []byte
	bearer string
}

// SetToken replaces the control plane's token: sessions are signed and
// checked under the new token's key from now on, so every cookie issued
// under the old one is refused (ErrSignature), and requests a session
// authenticates carry the new token on.
func (s *Sessions) SetToken(token string) error {
	if token == "" {
		return errors.New("browser sessions need the control plane's token")
	}
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(keyLabel))
	s.signer.Store(&signer{key: m.Sum(nil), bearer: "Bearer " + token})
	return nil
}

// TTL is how long a new session lasts.
func (s *Sessions) TTL() time.Duration { return s.ttl }

// Authorization is the bearer header a request authenticated by a session
// carries on to the gRPC server, which checks the token again.
func (s *Sessions) Authorization() string { return s.signer.Load().bearer }

// Issue mints a new session and returns its cookie value.
func (s *Sessions) Issue() (string, Session) {
	var b [valueBytes]byte
	_, _ = rand.Read(b[:idBytes]) // crypto/rand never fails
	sess := Session{Expires: s.now().Add(s.ttl).Truncate(time.Second)}
	copy(sess.id[:], b[:idBytes])
	binary.BigEndian.PutUint64(b[idBytes:], uint64(sess.Expires.Unix()))
	copy(b[idBytes+expBytes:], s.signer.Load().sign(b[:idBytes+expBytes]))
	return base64.RawURLEncoding.EncodeToString(b[:]), sess
}

func (s *signer) sign(msg []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write(msg)
	return m.Sum(nil)
}

// Check returns the session of a cookie value, or why it is refused.
func (s *Sessions) Check(value string) (Session, error) {
	// Strict: one value per session, with no unused bits to vary.
	b, err := base64.RawURLEncoding.Strict().DecodeString(value)
	if err != nil || len(b) != valueBytes {
		return Session{}, ErrMalformed
	}
	if !hmac.Equal(b[idBytes+expBytes:], s.signer.Load().sign(b[:idBytes+expBytes])) { // constant time
		return Session{}, ErrSignature
	}
	var sess Session
	copy(sess.id[:], b[:idBytes])
	exp := binary.BigEndian.Uint64(b[idBytes:])
	if exp > uint64(s.now().Add(MaxTTL).Unix()) {
		return Session{}, ErrMalformed // signed, but not by a New that checks its TTL
	}
	sess.Expires = time.Unix(int64(exp), 0)
	if !s.now().Before(sess.Expires) {
		return Session{}, ErrExpired
	}
	s.mu.Lock()
	_, revoked := s.revoked[sess.id]
	s.mu.Unlock()
	if revoked {
		return Session{}, ErrRevoked
	}
	return sess, nil
}

// Revoke logs sess out: its cookie is refused from now on.
func (s *Sessions) Revoke(sess Session) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, exp := range s.revoked {
		if !now.Before(exp) {
			delete(s.revoked, id)
		}
	}
	if now.Before(sess.Expires) {
		s.revoked[sess.id] = sess.Expires
	}
}

// Revoked is how many logged-out sessions are remembered: those that have
// not expired yet.
func (s *Sessions) Revoked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.revoked)
}
