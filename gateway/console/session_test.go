package console_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/gateway/console"
)

// clock is a clock the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newSessions(t *testing.T, token string, ttl time.Duration, c *clock) *console.Sessions {
	t.Helper()
	s, err := console.NewSessions(console.Config{Token: token, TTL: ttl, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSessionLifetime: a session is good until its expiry and not a
// second after; a logout refuses it before then; the revocation is
// forgotten once the session has expired, so logouts never pile up.
func TestSessionLifetime(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := newSessions(t, "tok", time.Hour, c)
	v, sess := s.Issue()
	if !sess.Expires.Equal(c.t.Add(time.Hour)) {
		t.Fatalf("expires %s, want an hour from %s", sess.Expires, c.t)
	}
	if strings.Contains(v, "tok") || strings.ContainsAny(v, ";, =") {
		t.Fatalf("cookie value %q", v)
	}
	c.t = c.t.Add(time.Hour - time.Second)
	if got, err := s.Check(v); err != nil || !got.Expires.Equal(sess.Expires) {
		t.Fatalf("a second before expiry: %v, %v", got, err)
	}
	c.t = c.t.Add(time.Second)
	if _, err := s.Check(v); !errors.Is(err, console.ErrExpired) {
		t.Fatalf("at expiry: %v, want ErrExpired", err)
	}

	c.t = c.t.Add(-30 * time.Minute)
	v2, sess2 := s.Issue() // expires 90 minutes after the first's start
	s.Revoke(sess)
	s.Revoke(sess2)
	for _, v := range []string{v, v2} {
		if _, err := s.Check(v); !errors.Is(err, console.ErrRevoked) {
			t.Fatalf("after logout: %v, want ErrRevoked", err)
		}
	}
	if n := s.Revoked(); n != 2 {
		t.Fatalf("revoked = %d, want 2", n)
	}
	c.t = sess.Expires // the first has expired: the next logout forgets it
	_, sess3 := s.Issue()
	s.Revoke(sess3)
	if n := s.Revoked(); n != 2 {
		t.Fatalf("revoked = %d, want 2 (the expired one forgotten)", n)
	}
	if _, err := s.Check(v2); !errors.Is(err, console.ErrRevoked) {
		t.Fatalf("the second after the first was forgotten: %v, want ErrRevoked", err)
	}
}

// TestSessionSignature: only a value signed with the same token checks:
// another Sessions of that token (another node) accepts it; one of another
// token, a flipped bit anywhere, or a cut value does not.
func TestSessionSignature(t *testing.T) {
	c := &clock{t: time.Now()}
	s := newSessions(t, "tok", 0, c)
	v, sess := s.Issue()
	if d := sess.Expires.Sub(c.t); d <= console.DefaultTTL-time.Second || d > console.DefaultTTL {
		t.Fatalf("default lifetime %s, want %s", d, console.DefaultTTL)
	}
	if _, err := newSessions(t, "tok", time.Minute, c).Check(v); err != nil {
		t.Fatalf("another node of the same token: %v", err)
	}
	if _, err := newSessions(t, "tok2", 0, c).Check(v); !errors.Is(err, console.ErrSignature) {
		t.Fatalf("another token: %v, want ErrSignature", err)
	}
	for i := range v {
		b := []byte(v)
		b[i] = "AB"[b[i]&1^1] // a different base64url character
		if b[i] == v[i] {
			b[i] = 'C'
		}
		if _, err := s.Check(string(b)); err == nil {
			t.Fatalf("byte %d changed (%q): accepted", i, b)
		}
	}
	for _, bad := range []string{"", v[:len(v)-1], v + "A", "!" + v[1:]} {
		if _, err := s.Check(bad); !errors.Is(err, console.ErrMalformed) && !errors.Is(err, console.ErrSignature) {
			t.Fatalf("%q: %v, want refused as malformed", bad, err)
		}
	}
}

// TestSessionConfig: the TTL's bounds and the token are checked.
func TestSessionConfig(t *testing.T) {
	for _, tc := range []struct {
		ttl time.Duration
		ok  bool
	}{
		{0, true}, {time.Minute, true}, {30 * 24 * time.Hour, true},
		{time.Minute - 1, false}, {30*24*time.Hour + 1, false}, {-time.Hour, false},
	} {
		_, err := console.NewSessions(console.Config{Token: "tok", TTL: tc.ttl})
		if (err == nil) != tc.ok || (console.CheckTTL(tc.ttl) == nil) != tc.ok {
			t.Errorf("TTL %s: %v, want ok %v", tc.ttl, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--session-ttl") {
			t.Errorf("TTL %s: %v does not name the flag", tc.ttl, err)
		}
	}
	if _, err := console.NewSessions(console.Config{}); err == nil {
		t.Fatal("no token: accepted")
	}
}
