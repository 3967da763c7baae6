package policy_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// FuzzParseRule checks that ParseRule never panics, that its errors quote
// the text, and that a rule's canonical text parses back to the same rule
// and the same text, alone or in a list. The seed corpus is under
// testdata/fuzz.
func FuzzParseRule(f *testing.F) {
	f.Add("10.0.0.0/8")
	f.Add("[fd00::/8]:443")
	f.Add("*.example.com:8000-9000")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = policy.ParseRules(s)
		r, err := policy.ParseRule(s)
		if err != nil {
			if want := "rule " + strconv.Quote(strings.TrimSpace(s)) + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("ParseRule(%q) error %q does not start with %q", s, err, want)
			}
			return
		}
		text := r.String()
		again, err := policy.ParseRule(text)
		if err != nil {
			t.Fatalf("ParseRule(%q) = %q, which does not parse: %v", s, text, err)
		}
		if again != r || again.String() != text {
			t.Fatalf("ParseRule(%q) = %q, which parses to %q: not the same rule", s, text, again)
		}
		list, err := policy.ParseRules(text + "," + text)
		if err != nil || len(list) != 2 || list[0] != r || list[1] != r {
			t.Fatalf("ParseRules(%q) = %v, %v; want the rule twice", text+","+text, list, err)
		}
	})
}
