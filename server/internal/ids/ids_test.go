package ids

import (
	"regexp"
	"testing"
)

var apiID = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

func TestNew(t *testing.T) {
	shape := regexp.MustCompile(`^c-[a-z2-7]{10}$`)
	seen := make(map[string]bool)
	for range 10000 {
		id := New(Connection)
		if !shape.MatchString(id) || !apiID.MatchString(id) {
			t.Fatalf("New(Connection) = %q, want c- and 10 of [a-z2-7]", id)
		}
		if seen[id] {
			t.Fatalf("New(Connection) returned %q twice in 10000 ids", id)
		}
		seen[id] = true
	}
	if id := New(Listener); !regexp.MustCompile(`^l-[a-z2-7]{10}$`).MatchString(id) {
		t.Fatalf("New(Listener) = %q", id)
	}
}

func TestIncarnation(t *testing.T) {
	a, b := Incarnation(), Incarnation()
	shape := regexp.MustCompile(`^[a-z2-7]{16}$`)
	if !shape.MatchString(a) || !shape.MatchString(b) {
		t.Fatalf("Incarnation() = %q, %q, want 16 of [a-z2-7]", a, b)
	}
	if a == b {
		t.Fatalf("two incarnations alike: %q", a)
	}
}
