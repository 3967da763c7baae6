package rules

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	testNow  = time.Date(2026, 3, 4, 5, 6, 7, 890123456, time.FixedZone("X", 3600))
	testVars = &Vars{ConnectionID: "c-1", RemoteAddress: "127.0.0.1:4000", ListenerID: "l-1"}
)

func text(kind Kind, pattern, reply string) Spec {
	return Spec{Kind: kind, Pattern: []byte(pattern), Reply: []byte(reply)}
}

// TestMatchAndReply compiles one or more rules, matches a frame and renders
// the reply a connection would write.
func TestMatchAndReply(t *testing.T) {
	tests := []struct {
		name  string
		specs []Spec
		frame string
		hit   int // -1: no rule matches
		reply string
	}{
		{"exact", []Spec{text(Exact, "PING", "PONG")}, "PING", 0, "PONG"},
		{"exact is whole", []Spec{text(Exact, "PING", "PONG")}, "PING!", -1, ""},
		{"exact data", []Spec{{Kind: Exact, Pattern: []byte{0, 0xff}, PatternIsData: true, Reply: []byte{1, 2}, ReplyIsData: true}}, "\x00\xff", 0, "\x01\x02"},
		{"prefix", []Spec{text(Prefix, "GET ", "200")}, "GET /x", 0, "200"},
		{"prefix misses", []Spec{text(Prefix, "GET ", "200")}, "PUT /x", -1, ""},
		{"suffix", []Spec{text(Suffix, "?", "yes")}, "ready?", 0, "yes"},
		{"suffix misses", []Spec{text(Suffix, "?", "yes")}, "?ready", -1, ""},
		{"contains", []Spec{text(Contains, "err", "sorry")}, "an error", 0, "sorry"},
		{"contains misses", []Spec{text(Contains, "err", "sorry")}, "fine", -1, ""},
		{"byte kinds match invalid utf-8", []Spec{text(Prefix, "\xff", "bin")}, "\xff\xfe", 0, "bin"},
		{"first match wins", []Spec{text(Prefix, "A", "first"), text(Exact, "AB", "second")}, "AB", 0, "first"},
		{"later rule", []Spec{text(Prefix, "X", "first"), text(Exact, "AB", "second")}, "AB", 1, "second"},
		{"regex unanchored", []Spec{text(Regex, `\d+`, "num")}, "abc 42", 0, "num"},
		{"regex anchored misses", []Spec{text(Regex, `^\d+$`, "num")}, "abc 42", -1, ""},
		{"regex needs utf-8", []Spec{text(Regex, `.*`, "any")}, "a\xffb", -1, ""},
		{"regex needs utf-8, captures too", []Spec{text(Regex, `(.*)`, "{{1}}")}, "a\xffb", -1, ""},
		{"capture by number", []Spec{text(Regex, `^SET (\w+)=(\w+)$`, "OK {{1}} is {{2}}")}, "SET a=b", 0, "OK a is b"},
		{"capture by name", []Spec{text(Regex, `^HELLO (?P<who>\w+)`, "hi {{who}}")}, "HELLO bob!", 0, "hi bob"},
		{"whole match", []Spec{text(Regex, `b+`, "[{{0}}]")}, "abbbc", 0, "[bbb]"},
		{"group that did not take part", []Spec{text(Regex, `^(a)|(b)$`, "<{{1}}|{{2}}>")}, "b", 0, "<|b>"},
		{"variables", []Spec{text(Exact, "who", "{{.connection_id}} {{.remote_address}} {{.listener_id}}")}, "who", 0, "c-1 127.0.0.1:4000 l-1"},
		{"time", []Spec{text(Exact, "t", "{{.time}}")}, "t", 0, "2026-03-04T04:06:07.890123456Z"},
		{"unix_ms", []Spec{text(Exact, "t", "{{.unix_ms}}")}, "t", 0, "1772597167890"},
		{"escaped braces", []Spec{text(Exact, "b", "{{{{.time}} }} {{{{{{{{")}, "b", 0, "{{.time}} }} {{{{"},
		{"lone closing braces", []Spec{text(Exact, "b", "a}}b}")}, "b", 0, "a}}b}"},
		{"single brace", []Spec{text(Exact, "b", "{x} {")}, "b", 0, "{x} {"},
		{"reply data is no template", []Spec{{Kind: Exact, Pattern: []byte("d"), Reply: []byte("{{.time}}"), ReplyIsData: true}}, "d", 0, "{{.time}}"},
		{"no reply", []Spec{{Kind: Exact, Pattern: []byte("quiet")}}, "quiet", 0, ""},
		{"captures and variables", []Spec{text(Regex, `id=(?P<id>\d+)`, "{{.listener_id}}:{{id}}:{{0}}")}, "x id=7 y", 0, "l-1:7:id=7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Compile(tt.specs)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			h, ok := s.Match([]byte(tt.frame))
			if tt.hit < 0 {
				if ok {
					t.Fatalf("Match(%q) hit rule %d, want none", tt.frame, h.Index())
				}
				for i := range s.Len() {
					if s.Hits(i) != 0 {
						t.Errorf("Hits(%d) = %d after a miss", i, s.Hits(i))
					}
				}
				return
			}
			if !ok || h.Index() != tt.hit {
				t.Fatalf("Match(%q) = %v, %v; want rule %d", tt.frame, h.r != nil, ok, tt.hit)
			}
			if got := string(h.AppendReply([]byte("pre:"), []byte(tt.frame), testVars, testNow)); got != "pre:"+tt.reply {
				t.Errorf("AppendReply = %q, want %q", got, "pre:"+tt.reply)
			}
			if h.HasReply() != (len(tt.specs[tt.hit].Reply) > 0) {
				t.Errorf("HasReply = %v", h.HasReply())
			}
			if s.Hits(tt.hit) != 1 {
				t.Errorf("Hits(%d) = %d, want 1", tt.hit, s.Hits(tt.hit))
			}
		})
	}
}

func TestHitOptions(t *testing.T) {
	s, err := Compile([]Spec{
		{Kind: Exact, Pattern: []byte("a"), Raw: true, Delay: 200 * time.Millisecond, Name: "slow"},
		{Kind: Exact, Pattern: []byte("b"), CloseAfter: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := s.Match([]byte("a"))
	if !h.Raw() || h.CloseAfter() || h.Delay() != 200*time.Millisecond || h.HasReply() {
		t.Errorf("rule 0: raw %v close %v delay %v reply %v", h.Raw(), h.CloseAfter(), h.Delay(), h.HasReply())
	}
	h, _ = s.Match([]byte("b"))
	if h.Raw() || !h.CloseAfter() || h.Delay() != 0 {
		t.Errorf("rule 1: raw %v close %v delay %v", h.Raw(), h.CloseAfter(), h.Delay())
	}
	s.Match([]byte("b"))
	if s.Name(0) != "slow" || s.Name(1) != "1" {
		t.Errorf("names %q %q", s.Name(0), s.Name(1))
	}
	if s.Hits(0) != 1 || s.Hits(1) != 2 {
		t.Errorf("hits %d %d, want 1 2", s.Hits(0), s.Hits(1))
	}
}

func TestCompileNone(t *testing.T) {
	s, err := Compile(nil)
	if s != nil || err != nil {
		t.Fatalf("Compile(nil) = %v, %v", s, err)
	}
	if s.Len() != 0 {
		t.Error("nil Set has rules")
	}
	if _, ok := s.Match([]byte("x")); ok {
		t.Error("nil Set matched")
	}
}

// TestReplyIsCopied checks that a Set keeps its own bytes: a caller may
// reuse the buffers of its specs.
func TestReplyIsCopied(t *testing.T) {
	sp := Spec{Kind: Exact, Pattern: []byte("p"), Reply: []byte("r"), ReplyIsData: true}
	s, err := Compile([]Spec{sp})
	if err != nil {
		t.Fatal(err)
	}
	sp.Pattern[0], sp.Reply[0] = 'x', 'x'
	h, ok := s.Match([]byte("p"))
	if !ok || string(h.AppendReply(nil, nil, nil, testNow)) != "r" {
		t.Error("the Set changed with its spec's buffers")
	}
}

func TestMatchAllocatesNothing(t *testing.T) {
	s, err := Compile([]Spec{
		text(Exact, "x", "a"), text(Prefix, "y", "{{.connection_id}}"), text(Suffix, "z", ""),
		text(Contains, "needle", "b"), text(Regex, `^\d+$`, "static"),
	})
	if err != nil {
		t.Fatal(err)
	}
	frames := [][]byte{[]byte("x"), []byte("yy"), []byte("zz"), []byte("haystack needle"), []byte("123"), []byte("none")}
	dst := make([]byte, 0, 64)
	allocs := testing.AllocsPerRun(100, func() {
		for _, f := range frames {
			if h, ok := s.Match(f); ok {
				dst = h.AppendReply(dst[:0], f, testVars, testNow)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("Match and AppendReply allocate %v times per run", allocs)
	}
}

func TestConcurrentHits(t *testing.T) {
	s, err := Compile([]Spec{text(Regex, `^(\w+)$`, "{{1}}")})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 4, 200
	done := make(chan string, workers)
	for w := range workers {
		go func() {
			f := []byte(strings.Repeat("w", w+1))
			got := ""
			for range each {
				h, ok := s.Match(f)
				if !ok {
					got = "no match"
					break
				}
				if r := string(h.AppendReply(nil, f, nil, testNow)); r != string(f) {
					got = r
					break
				}
			}
			done <- got
		}()
	}
	for range workers {
		if got := <-done; got != "" {
			t.Errorf("a worker got %q", got)
		}
	}
	if s.Hits(0) != workers*each {
		t.Errorf("Hits = %d, want %d", s.Hits(0), workers*each)
	}
}

// TestCompileErrors names the field of every error, and checks each limit
// exactly at and one past.
func TestCompileErrors(t *testing.T) {
	many := func(n int) []Spec {
		s := make([]Spec, n)
		for i := range s {
			s[i] = text(Exact, "x", "")
		}
		return s
	}
	bigRegex := func(n int) string { return strings.Repeat("a", n) }
	refs := func(n int) string { return strings.Repeat("{{.time}}", n) }
	one := func(sp Spec) []Spec { return []Spec{text(Exact, "first", ""), sp} }
	tests := []struct {
		name  string
		specs []Spec
		field string // "" when it compiles
		msg   string // part of the message
	}{
		{"rules at limit", many(MaxRules), "", ""},
		{"rules over", many(MaxRules + 1), "rules", "65 rules, over the limit of 64"},
		{"kind unspecified", one(Spec{Pattern: []byte("x")}), "rules[1].kind", "EXACT, PREFIX"},
		{"kind unknown", one(Spec{Kind: 9, Pattern: []byte("x")}), "rules[1].kind", "needs its kind"},
		{"text missing", one(Spec{Kind: Prefix}), "rules[1].text", "PREFIX rule needs text or data"},
		{"data empty", one(Spec{Kind: Suffix, PatternIsData: true, Pattern: []byte{}}), "rules[1].data", "SUFFIX rule needs"},
		{"pattern at limit", one(text(Contains, strings.Repeat("p", MaxPatternBytes), "")), "", ""},
		{"pattern over", one(text(Contains, strings.Repeat("p", MaxPatternBytes+1), "")), "rules[1].text", "4097 bytes, over the limit of 4096"},
		{"data pattern over", one(Spec{Kind: Exact, PatternIsData: true, Pattern: make([]byte, MaxPatternBytes+1)}), "rules[1].data", "over the limit"},
		{"regex missing", one(Spec{Kind: Regex}), "rules[1].regex", "needs a regex"},
		{"regex as data", one(Spec{Kind: Regex, Pattern: []byte("a"), PatternIsData: true}), "rules[1].data", "takes a regex"},
		{"regex at limit", one(text(Regex, bigRegex(MaxRegexBytes), "")), "", ""},
		{"regex over", one(text(Regex, bigRegex(MaxRegexBytes+1), "")), "rules[1].regex", "1025 bytes, over the limit of 1024"},
		{"regex invalid", one(text(Regex, `(a`, "")), "rules[1].regex", "missing closing ): `(a`"},
		{"regex invalid utf-8", one(text(Regex, "a\xff", "")), "rules[1].regex", "invalid UTF-8"},
		{"regex program at limit", one(text(Regex, progOf(t, MaxProgramInsts), "")), "", ""},
		{"regex program over", one(text(Regex, progOf(t, MaxProgramInsts+1), "")), "rules[1].regex", "4097 instructions, over the limit of 4096"},
		{"regex repeat too large", one(text(Regex, `a{1001}`, "")), "rules[1].regex", "invalid repeat count"},
		{"delay at limit", one(Spec{Kind: Exact, Pattern: []byte("x"), Delay: MaxDelay}), "", ""},
		{"delay over", one(Spec{Kind: Exact, Pattern: []byte("x"), Delay: MaxDelay + 1}), "rules[1].delay", "not between 0 and 1m0s"},
		{"delay negative", one(Spec{Kind: Exact, Pattern: []byte("x"), Delay: -1}), "rules[1].delay", "-1ns"},
		{"reply text at limit", one(text(Exact, "x", strings.Repeat("r", MaxReplyBytes))), "", ""},
		{"reply text over", one(text(Exact, "x", strings.Repeat("r", MaxReplyBytes+1))), "rules[1].reply_text", "65537 bytes, over the limit of 65536"},
		{"reply data over", one(Spec{Kind: Exact, Pattern: []byte("x"), Reply: make([]byte, MaxReplyBytes+1), ReplyIsData: true}), "rules[1].reply_data", "65537 bytes"},
		{"references at limit", one(text(Exact, "x", refs(MaxReferences))), "", ""},
		{"references over", one(text(Exact, "x", refs(MaxReferences+1))), "rules[1].reply_text", "reference 65, over the limit of 64"},
		{"unknown variable", one(text(Exact, "x", "ab{{.host}}")), "rules[1].reply_text", "unknown variable {{.host}} at byte 2"},
		{"unclosed", one(text(Exact, "x", "a {{.time")), "rules[1].reply_text", "unclosed {{ at byte 2"},
		{"empty reference", one(text(Exact, "x", "{{}}")), "rules[1].reply_text", "empty {{}} at byte 0"},
		{"capture in a byte rule", one(text(Prefix, "x", "{{1}}")), "rules[1].reply_text", "capture {{1}} at byte 0: only a REGEX rule"},
		{"whole match in a byte rule", one(text(Exact, "x", "{{0}}")), "rules[1].reply_text", "only a REGEX rule"},
		{"group at limit", one(text(Regex, `(a)(b)`, "{{2}}")), "", ""},
		{"group past", one(text(Regex, `(a)(b)`, "x {{3}}")), "rules[1].reply_text", "capture {{3}} at byte 2: the regex has 2 groups"},
		{"group huge", one(text(Regex, `(a)`, "{{99999999999999999999}}")), "rules[1].reply_text", "the regex has 1 groups"},
		{"unknown group name", one(text(Regex, `(?P<a>x)`, "{{b}}")), "rules[1].reply_text", `no group named "b"`},
		{"name at limit", one(Spec{Kind: Exact, Pattern: []byte("x"), Name: strings.Repeat("n", 64)}), "", ""},
		{"name over", one(Spec{Kind: Exact, Pattern: []byte("x"), Name: strings.Repeat("n", 65)}), "rules[1].name", "65 bytes, over the limit of 64"},
		{"name charset", one(Spec{Kind: Exact, Pattern: []byte("x"), Name: "A-z.0_9~"}), "", ""},
		{"name bad byte", one(Spec{Kind: Exact, Pattern: []byte("x"), Name: "a b"}), "rules[1].name", `' ' at byte 1`},
		{"name twice", []Spec{{Kind: Exact, Pattern: []byte("x"), Name: "n"}, {Kind: Exact, Pattern: []byte("y"), Name: "n"}}, "rules[1].name", `"n" is also the name of rules[0]`},
		{"name is another's index", []Spec{{Kind: Exact, Pattern: []byte("x")}, {Kind: Exact, Pattern: []byte("y"), Name: "0"}}, "rules[1].name", `label of the unnamed rules[0]`},
		{"name is its own index", []Spec{{Kind: Exact, Pattern: []byte("x"), Name: "0"}}, "", ""},
		{"neither reply nor close", one(Spec{Kind: Exact, Pattern: []byte("x")}), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Compile(tt.specs)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Compile: %v", err)
				}
				if s.Len() != len(tt.specs) {
					t.Fatalf("Len = %d, want %d", s.Len(), len(tt.specs))
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Compile error = %v (%T), want a *FieldError", err, err)
			}
			if s != nil {
				t.Error("Compile returned a Set with its error")
			}
			if fe.Field != tt.field || !strings.Contains(fe.Msg, tt.msg) {
				t.Errorf("error = %q, want field %q and %q", err, tt.field, tt.msg)
			}
			if err.Error() != fe.Field+": "+fe.Msg {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

// progOf is a regex whose compiled program has exactly n instructions:
// n-2 literal runes (and the program's fail and match), as counted
// repeats, each at most RE2's 1000.
func progOf(t *testing.T, n int) string {
	t.Helper()
	var b strings.Builder
	for left := n - 2; left > 0; left -= 1000 {
		b.WriteString("x{" + strconv.Itoa(min(left, 1000)) + "}")
	}
	if got := progLen(t, b.String()); got != n {
		t.Fatalf("the program of %q has %d instructions, want %d", b.String(), got, n)
	}
	return b.String()
}

// TestRegexTooLargeEarly: a regex whose program is far past the limit is
// refused by its estimate, and the estimate never refuses a program
// within the limit.
func TestRegexTooLargeEarly(t *testing.T) {
	_, err := Compile([]Spec{text(Regex, strings.Repeat(`[a-z]{1000}`, 90), "")})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "rules[0].regex" || !strings.Contains(fe.Msg, "would have about") {
		t.Fatalf("error %v, want the estimate's", err)
	}
	for _, expr := range []string{progOf(t, MaxProgramInsts), `(?:(a|b|c)+x{10}){10}`, `(?i)hello{1,1000}`, `[^x]{100}(?P<n>\d{0,1000})`, `(a*)*b+c?`} {
		if got, exact := progEstimate(mustParse(t, expr)), progLen(t, expr); exact <= MaxProgramInsts && got > 4*MaxProgramInsts {
			t.Errorf("%q: estimate %d for a program of %d", expr, got, exact)
		}
	}
}

// BenchmarkMatch is one frame against a listener's rules: eight byte
// rules that miss, then a regex with a capture that answers.
func BenchmarkMatch(b *testing.B) {
	specs := []Spec{}
	for i := range 8 {
		specs = append(specs, text(Kind(1+i%4), "NOPE"+strconv.Itoa(i), "x"))
	}
	specs = append(specs, text(Regex, `^GET (\S+) HTTP/1\.[01]$`, "you asked for {{1}}"))
	s, err := Compile(specs)
	if err != nil {
		b.Fatal(err)
	}
	frame := []byte("GET /index.html HTTP/1.1")
	dst := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		h, ok := s.Match(frame)
		if !ok {
			b.Fatal("no match")
		}
		dst = h.AppendReply(dst[:0], frame, testVars, testNow)
	}
}

// BenchmarkMatchBytes is the same with byte rules only: the answer is a
// prefix rule with a static reply.
func BenchmarkMatchBytes(b *testing.B) {
	specs := []Spec{}
	for i := range 8 {
		specs = append(specs, text(Kind(1+i%4), "NOPE"+strconv.Itoa(i), "x"))
	}
	specs = append(specs, text(Prefix, "GET ", "200 OK"))
	s, err := Compile(specs)
	if err != nil {
		b.Fatal(err)
	}
	frame := []byte("GET /index.html HTTP/1.1")
	dst := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		h, _ := s.Match(frame)
		dst = h.AppendReply(dst[:0], frame, testVars, testNow)
	}
}
