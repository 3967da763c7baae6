package cluster

import (
	"regexp"
	"testing"
)

// natsKey is what a key of a NATS key-value bucket may be.
var natsKey = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$`)

// TestObjectKey: every id the API takes makes a valid key, and two ids
// never make the same one.
func TestObjectKey(t *testing.T) {
	ids := []string{"a", "A", "l-1", "l_1", "l.1", "l..1", ".", "..", "~", "a~b", "a.b", "a=2Eb", "x=7E", "-_~.", "end."}
	seen := map[string]string{}
	for _, id := range ids {
		k := ObjectKey(ListenerKeyPrefix, id)
		if !natsKey.MatchString(k) {
			t.Errorf("ObjectKey(%q) = %q: not a valid key", id, k)
		}
		if other, ok := seen[k]; ok {
			t.Errorf("ObjectKey(%q) = ObjectKey(%q) = %q", id, other, k)
		}
		seen[k] = id
	}
}

// FuzzObjectKey: any id makes a valid key with the prefix.
func FuzzObjectKey(f *testing.F) {
	f.Add("l.1~x")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		if k := ObjectKey(ConnectionKeyPrefix, id); id != "" && !natsKey.MatchString(k) {
			t.Fatalf("ObjectKey(%q) = %q: not a valid key", id, k)
		}
	})
}
