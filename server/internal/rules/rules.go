// Package rules answers frames by rules: each rule matches a frame by its
// bytes (exact, prefix, suffix, contains) or by an RE2 regex, and renders
// a reply from a template of the match's captures and the connection's
// variables. A Set is compiled once per listener or outbound connection
// and shared by all of its connections.
package rules

import (
	"bytes"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Kind is how a rule matches a frame.
type Kind uint8

// The kinds; the zero Kind is not one, so that a rule always names its own.
const (
	Exact Kind = iota + 1
	Prefix
	Suffix
	Contains
	Regex
)

func (k Kind) String() string {
	switch k {
	case Exact:
		return "EXACT"
	case Prefix:
		return "PREFIX"
	case Suffix:
		return "SUFFIX"
	case Contains:
		return "CONTAINS"
	case Regex:
		return "REGEX"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// The limits of a Set. They bound what one request may make every frame
// of a listener cost: the rules tried, the bytes compared, the regex
// program run and the reply rendered.
const (
	// MaxRules is the most rules of a Set: each frame may try them all.
	MaxRules = 64
	// MaxPatternBytes is the longest pattern of the byte kinds: a page of
	// a binary protocol, and a bound on each comparison.
	MaxPatternBytes = 4096
	// MaxRegexBytes is the longest regex; a regex's cost is its program,
	// bounded by MaxProgramInsts, but the text is parsed first.
	MaxRegexBytes = 1024
	// MaxProgramInsts is the most instructions of a regex's compiled
	// program (regexp/syntax): RE2 runs in time linear in the frame
	// times the program, so this bounds the work per byte.
	MaxProgramInsts = 4096
	// MaxReplyBytes is the longest reply_text or reply_data.
	MaxReplyBytes = 64 << 10
	// MaxReferences is the most {{...}} references of one template, which
	// bounds the rendering work besides the bytes copied.
	MaxReferences = 64
	// MaxDelay is the longest delay of a reply: a slow device, not a
	// parked connection.
	MaxDelay = time.Minute
	// maxNameBytes is the longest rule name, a metric label.
	maxNameBytes = 64
)

// Spec is one rule as given, before Compile.
type Spec struct {
	// Kind is how it matches; the zero Kind is invalid.
	Kind Kind
	// Pattern is the bytes for Exact, Prefix, Suffix and Contains, the
	// expression for Regex.
	Pattern []byte
	// PatternIsData says the pattern came as data rather than text; it
	// only names the field in errors (rules[i].data or rules[i].text).
	PatternIsData bool
	// Reply is the reply: a template, or bytes when ReplyIsData. Empty
	// means none.
	Reply []byte
	// ReplyIsData says Reply is bytes written as they are (reply_data);
	// otherwise it is a template (reply_text).
	ReplyIsData bool
	// Raw writes the reply without the connection's framing.
	Raw bool
	// CloseAfter closes the connection once the reply is written.
	CloseAfter bool
	// Delay is how long to wait before writing the reply; 0 means none.
	Delay time.Duration
	// Name labels the rule's hit counter; empty means its index.
	Name string
}

// FieldError is a Spec at fault, naming the field relative to the
// AutoReply message in the API's path form: "rules[3].regex".
type FieldError struct {
	// Field is the field's path: "rules", "rules[0].reply_text"; empty for
	// a template parsed alone (ParseTemplate).
	Field string
	// Msg says what is wrong with it.
	Msg string
}

// Error is Field + ": " + Msg, or Msg alone when Field is empty.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// rule is one compiled Spec.
type rule struct {
	index      int
	label      string
	kind       Kind
	pattern    []byte
	re         *regexp.Regexp
	reply      *Template // nil: no reply
	raw, close bool
	delay      time.Duration
	hits       atomic.Uint64
}

// Set is a compiled list of rules, tried in order. It is immutable but for
// its hit counters, and safe for concurrent use by every connection.
type Set struct {
	rules []rule
}

// Compile checks specs and compiles them into a Set. It returns (nil, nil)
// for no specs; its errors are *FieldError.
func Compile(specs []Spec) (*Set, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	if len(specs) > MaxRules {
		return nil, &FieldError{Field: "rules", Msg: fmt.Sprintf("%d rules, over the limit of %d", len(specs), MaxRules)}
	}
	s := &Set{rules: make([]rule, len(specs))}
	labels := make(map[string]int, len(specs))
	for i := range specs {
		if err := s.rules[i].compile(i, &specs[i]); err != nil {
			return nil, err
		}
	}
	// Names, and the indexes of the unnamed, are metric labels: unique,
	// so that no two rules share a counter.
	for i := range s.rules {
		if specs[i].Name == "" {
			labels[s.rules[i].label] = i
		}
	}
	for i := range s.rules {
		if specs[i].Name == "" {
			continue
		}
		if j, ok := labels[specs[i].Name]; ok {
			msg := fmt.Sprintf("%q is also the name of rules[%d]", specs[i].Name, j)
			if specs[j].Name == "" {
				msg = fmt.Sprintf("%q is the label of the unnamed rules[%d]", specs[i].Name, j)
			}
			return nil, &FieldError{Field: fmt.Sprintf("rules[%d].name", i), Msg: msg}
		}
		labels[specs[i].Name] = i
	}
	return s, nil
}

func (r *rule) compile(i int, sp *Spec) *FieldError {
	field := func(name string) string { return fmt.Sprintf("rules[%d].%s", i, name) }
	patField := "text"
	if sp.PatternIsData {
		patField = "data"
	}
	r.index, r.kind = i, sp.Kind
	r.raw, r.close, r.delay = sp.Raw, sp.CloseAfter, sp.Delay
	r.label = sp.Name
	if r.label == "" {
		r.label = strconv.Itoa(i)
	} else if msg := checkName(sp.Name); msg != "" {
		return &FieldError{Field: field("name"), Msg: msg}
	}
	scope := captureScope{}
	switch sp.Kind {
	case Exact, Prefix, Suffix, Contains:
		switch n := len(sp.Pattern); {
		case n == 0:
			return &FieldError{Field: field(patField), Msg: fmt.Sprintf("a %s rule needs text or data to match, 1 to %d bytes", sp.Kind, MaxPatternBytes)}
		case n > MaxPatternBytes:
			return &FieldError{Field: field(patField), Msg: fmt.Sprintf("%d bytes, over the limit of %d", n, MaxPatternBytes)}
		}
		r.pattern = bytes.Clone(sp.Pattern)
	case Regex:
		if sp.PatternIsData {
			return &FieldError{Field: field("data"), Msg: "a REGEX rule takes a regex; data is for EXACT, PREFIX, SUFFIX and CONTAINS"}
		}
		re, msg := compileRegex(string(sp.Pattern))
		if msg != "" {
			return &FieldError{Field: field("regex"), Msg: msg}
		}
		r.re = re
		scope = captureScope{allowed: true, groups: re.NumSubexp(), names: map[string]int{}}
		for g, name := range re.SubexpNames() {
			if name != "" {
				scope.names[name] = g
			}
		}
	default:
		return &FieldError{Field: field("kind"), Msg: "a rule needs its kind: EXACT, PREFIX, SUFFIX, CONTAINS or REGEX"}
	}
	if sp.Delay < 0 || sp.Delay > MaxDelay {
		return &FieldError{Field: field("delay"), Msg: fmt.Sprintf("%v is not between 0 and %v", sp.Delay, MaxDelay)}
	}
	replyField := "reply_text"
	if sp.ReplyIsData {
		replyField = "reply_data"
	}
	if n := len(sp.Reply); n > MaxReplyBytes {
		return &FieldError{Field: field(replyField), Msg: fmt.Sprintf("%d bytes, over the limit of %d", n, MaxReplyBytes)}
	}
	switch {
	case len(sp.Reply) == 0:
	case sp.ReplyIsData:
		b := bytes.Clone(sp.Reply)
		r.reply = &Template{segs: []segment{{lit: b}}, static: b, isStatic: true}
	default:
		t, err := parseTemplate(string(sp.Reply), scope)
		if err != nil {
			err.Field = field(replyField)
			return err
		}
		r.reply = t
	}
	return nil
}

// compileRegex compiles expr as regexp.Compile does, checking its length
// and the size of its program first; msg is empty when it compiles.
func compileRegex(expr string) (re *regexp.Regexp, msg string) {
	switch n := len(expr); {
	case n == 0:
		return nil, fmt.Sprintf("a REGEX rule needs a regex, 1 to %d bytes", MaxRegexBytes)
	case n > MaxRegexBytes:
		return nil, fmt.Sprintf("%d bytes, over the limit of %d", n, MaxRegexBytes)
	}
	parsed, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil, err.Error()
	}
	// Simplify expands counted repeats; a regex whose program would be
	// far over the limit is refused before it is expanded, so that a
	// refused request costs little memory.
	if n := progEstimate(parsed); n > 4*MaxProgramInsts {
		return nil, fmt.Sprintf("the compiled program would have about %d instructions, over the limit of %d", n, MaxProgramInsts)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return nil, err.Error()
	}
	if n := len(prog.Inst); n > MaxProgramInsts {
		return nil, fmt.Sprintf("the compiled program has %d instructions, over the limit of %d", n, MaxProgramInsts)
	}
	re, err = regexp.Compile(expr)
	if err != nil {
		return nil, err.Error()
	}
	return re, ""
}

// progEstimate is about the size of re's compiled program, without
// compiling it; it saturates well past the limit.
func progEstimate(re *syntax.Regexp) int {
	const ceiling = 1 << 30
	sum := func(subs []*syntax.Regexp) int {
		n := 0
		for _, s := range subs {
			n = min(n+progEstimate(s), ceiling)
		}
		return n
	}
	switch re.Op {
	case syntax.OpLiteral:
		return len(re.Rune)
	case syntax.OpCapture:
		return 2 + sum(re.Sub)
	case syntax.OpConcat:
		return sum(re.Sub)
	case syntax.OpAlternate:
		return len(re.Sub) + sum(re.Sub)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest:
		return 1 + sum(re.Sub)
	case syntax.OpRepeat:
		times := max(re.Min, re.Max)
		if re.Max < 0 {
			times = re.Min + 1
		}
		return min(times*(sum(re.Sub)+1), ceiling)
	}
	return 1
}

func checkName(name string) string {
	if len(name) > maxNameBytes {
		return fmt.Sprintf("%d bytes, over the limit of %d", len(name), maxNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '~' || c == '-') {
			return fmt.Sprintf("%q at byte %d: a name is made of A-Z a-z 0-9 . _ ~ -", c, i)
		}
	}
	return ""
}

// Len is the number of rules; 0 for a nil Set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// Name is rule i's metric label: its name, or its index in decimal when
// it has none.
func (s *Set) Name(i int) string { return s.rules[i].label }

// Hits is how many frames rule i has answered.
func (s *Set) Hits(i int) uint64 { return s.rules[i].hits.Load() }

// Hit is the rule that matched one frame. It is a small value; its
// captures refer to the frame given to Match, which AppendReply takes
// again.
type Hit struct {
	r   *rule
	loc []int // the regex's submatch index, when the reply has captures
}

// Match tries the rules in order on frame and returns the first that
// matches, counting its hit. It allocates nothing but for a REGEX rule
// whose reply has captures.
func (s *Set) Match(frame []byte) (Hit, bool) {
	if s == nil {
		return Hit{}, false
	}
	for i := range s.rules {
		r := &s.rules[i]
		var loc []int
		switch r.kind {
		case Exact:
			if !bytes.Equal(frame, r.pattern) {
				continue
			}
		case Prefix:
			if !bytes.HasPrefix(frame, r.pattern) {
				continue
			}
		case Suffix:
			if !bytes.HasSuffix(frame, r.pattern) {
				continue
			}
		case Contains:
			if !bytes.Contains(frame, r.pattern) {
				continue
			}
		case Regex:
			if !utf8.Valid(frame) {
				continue
			}
			if r.reply != nil && r.reply.captures {
				if loc = r.re.FindSubmatchIndex(frame); loc == nil {
					continue
				}
			} else if !r.re.Match(frame) {
				continue
			}
		}
		r.hits.Add(1)
		return Hit{r: r, loc: loc}, true
	}
	return Hit{}, false
}

// Index is the rule's index in its Set.
func (h Hit) Index() int { return h.r.index }

// Raw says the reply is written without the connection's framing.
func (h Hit) Raw() bool { return h.r.raw }

// CloseAfter says the connection closes once the reply is written.
func (h Hit) CloseAfter() bool { return h.r.close }

// Delay is how long to wait before writing the reply.
func (h Hit) Delay() time.Duration { return h.r.delay }

// HasReply says the rule has a reply to write; without one it only
// closes, or swallows the frame.
func (h Hit) HasReply() bool { return h.r.reply != nil }

// AppendReply appends the rule's reply for frame, the frame given to
// Match, to dst: reply_data as it is, reply_text's template rendered with
// the match's captures, v and now.
func (h Hit) AppendReply(dst, frame []byte, v *Vars, now time.Time) []byte {
	if h.r.reply == nil {
		return dst
	}
	return h.r.reply.render(dst, frame, h.loc, v, now)
}
