package rpc

import (
	"regexp"
	"strings"
	"testing"
)

// idPattern is the rule validID checks by hand, as a regexp.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

// idCorpus are ids at the edges of the rule: every accepted punctuation
// mark and its neighbours in ASCII, the length bound, bytes past ASCII,
// and what a regexp anchors on (newlines, a NUL).
var idCorpus = []string{
	"", "a", "Z", "0", "9", "c-0123456789", "plc.main_1~x", ".", "_", "~", "-",
	"/", ":", "@", "[", "`", "{", "}", "^", " ", "a b", "a/b", "a\n", "\na", "a\x00",
	"é", "a\xff", "\u00a0", "Ａ",
	strings.Repeat("x", 63), strings.Repeat("x", 64), strings.Repeat("x", 65),
	strings.Repeat("é", 32), strings.Repeat("-", 64) + "\n",
}

// FuzzValidID holds validID to idPattern: the same ids accepted, the same
// refused. Its seeds are idCorpus and testdata/fuzz/FuzzValidID.
func FuzzValidID(f *testing.F) {
	for _, id := range idCorpus {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := validID(id), idPattern.MatchString(id); got != want {
			t.Fatalf("validID(%q) = %v, the regexp says %v", id, got, want)
		}
	})
}

// TestValidIDEveryByte tries every byte value alone, first and last in a
// valid id, and in ids of the bound's length and one past it.
func TestValidIDEveryByte(t *testing.T) {
	for b := range 256 {
		c := string([]byte{byte(b)})
		for _, id := range []string{c, c + "ab", "ab" + c, strings.Repeat("a", 63) + c, strings.Repeat("a", 64) + c} {
			if got, want := validID(id), idPattern.MatchString(id); got != want {
				t.Errorf("validID(%q) = %v, the regexp says %v", id, got, want)
			}
		}
	}
}
