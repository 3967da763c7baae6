package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// ruleHelp is --rule's help, the syntax the README's "Reply rules"
// section shows with examples.
const ruleHelp = "reply rule MATCH=REPLY[;OPTION...], repeatable, tried in order; the first whose MATCH fits a frame answers it.\n" +
	"MATCH: TEXT (the whole frame), prefix:TEXT, suffix:TEXT, contains:TEXT, exact:TEXT, re:REGEX (RE2),\n" +
	"or hex:HEX, prefix-hex:HEX, suffix-hex:HEX, contains-hex:HEX for bytes.\n" +
	"REPLY: a template ({{1}} {{name}} {{0}}: a regex's captures; {{.connection_id}} {{.remote_address}}\n" +
	"{{.listener_id}} {{.time}} {{.unix_ms}}; {{{{ is a literal {{), hex:HEX for bytes, text:TEXT for a text that\n" +
	"starts with hex:, or empty for none. OPTION: close, raw, delay=DURATION, name=NAME.\n" +
	"\\= \\; and \\\\ stand for = ; and \\; any other backslash is itself (re:\\d+ needs no doubling)"

// matchKinds are MATCH's prefixes; a MATCH with none is exact text.
var matchKinds = []struct {
	prefix string
	kind   tcpgatev1.MatchKind
	data   bool
}{
	{"exact:", tcpgatev1.MatchKind_MATCH_KIND_EXACT, false},
	{"prefix:", tcpgatev1.MatchKind_MATCH_KIND_PREFIX, false},
	{"suffix:", tcpgatev1.MatchKind_MATCH_KIND_SUFFIX, false},
	{"contains:", tcpgatev1.MatchKind_MATCH_KIND_CONTAINS, false},
	{"re:", tcpgatev1.MatchKind_MATCH_KIND_REGEX, false},
	{"hex:", tcpgatev1.MatchKind_MATCH_KIND_EXACT, true},
	{"prefix-hex:", tcpgatev1.MatchKind_MATCH_KIND_PREFIX, true},
	{"suffix-hex:", tcpgatev1.MatchKind_MATCH_KIND_SUFFIX, true},
	{"contains-hex:", tcpgatev1.MatchKind_MATCH_KIND_CONTAINS, true},
}

// splitRule cuts s at its unescaped separators sep, unescaping each part:
// \= \; \\ are the separators and the backslash, any other backslash is
// itself. It cuts at most max-1 times; max <= 0 means no limit.
func splitRule(s string, seps string, max int) []string {
	var parts []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && strings.IndexByte(`\=;`, s[i+1]) >= 0 {
			b.WriteByte(s[i+1])
			i++
			continue
		}
		if strings.IndexByte(seps, c) >= 0 && (max <= 0 || len(parts) < max-1) {
			parts = append(parts, b.String())
			b.Reset()
			continue
		}
		b.WriteByte(c)
	}
	return append(parts, b.String())
}

// escapeRule escapes s for one part of a rule: = and ; always, and a
// backslash that would otherwise read as an escape (before \ = ; or at
// the end, before a separator).
func escapeRule(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '=' || c == ';':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\\' && (i+1 == len(s) || strings.IndexByte(`\=;`, s[i+1]) >= 0):
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// rawCut cuts s at its first unescaped c, leaving both sides escaped.
func rawCut(s string, c byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`\=;`, s[i+1]) >= 0:
			i++
		case s[i] == c:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// parseRule reads one --rule.
func parseRule(s string) (*tcpgatev1.ReplyRule, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("--rule %q: %s (want MATCH=REPLY[;OPTION...]; see --help)", s, fmt.Sprintf(format, args...))
	}
	match, rest, ok := rawCut(s, '=')
	if !ok {
		return nil, bad("no = between the match and the reply")
	}
	r := &tcpgatev1.ReplyRule{Kind: tcpgatev1.MatchKind_MATCH_KIND_EXACT}
kinds:
	for _, k := range matchKinds {
		if v, ok := strings.CutPrefix(match, k.prefix); ok {
			match, r.Kind = v, k.kind
			switch {
			case k.data:
				b, err := hex.DecodeString(strings.ReplaceAll(match, " ", ""))
				if err != nil {
					return nil, bad("%s: %v", strings.TrimSuffix(k.prefix, ":"), err)
				}
				r.Match = &tcpgatev1.ReplyRule_Data{Data: b}
			case k.kind == tcpgatev1.MatchKind_MATCH_KIND_REGEX:
				r.Match = &tcpgatev1.ReplyRule_Regex{Regex: splitRule(match, "", 1)[0]}
			}
			break kinds
		}
	}
	if r.Match == nil {
		r.Match = &tcpgatev1.ReplyRule_Text{Text: splitRule(match, "", 1)[0]}
	}
	switch m := r.Match.(type) {
	case *tcpgatev1.ReplyRule_Text:
		if m.Text == "" {
			return nil, bad("the match is empty")
		}
		if !utf8.ValidString(m.Text) {
			return nil, bad("the match is not UTF-8; give bytes as hex:HEX or KIND-hex:HEX")
		}
	case *tcpgatev1.ReplyRule_Data:
		if len(m.Data) == 0 {
			return nil, bad("the match is empty")
		}
	case *tcpgatev1.ReplyRule_Regex:
		if m.Regex == "" {
			return nil, bad("the regex is empty")
		}
		if !utf8.ValidString(m.Regex) {
			return nil, bad("the regex is not UTF-8")
		}
	}

	parts := splitRule(rest, ";", -1)
	reply, opts := parts[0], parts[1:]
	switch {
	case strings.HasPrefix(reply, "hex:"):
		b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimPrefix(reply, "hex:"), " ", ""))
		if err != nil {
			return nil, bad("reply hex: %v", err)
		}
		r.Reply = &tcpgatev1.ReplyRule_ReplyData{ReplyData: b}
	case reply == "":
	default:
		reply = strings.TrimPrefix(reply, "text:")
		if !utf8.ValidString(reply) {
			return nil, bad("the reply is not UTF-8; give bytes as hex:HEX")
		}
		r.Reply = &tcpgatev1.ReplyRule_ReplyText{ReplyText: reply}
	}
	seen := map[string]bool{}
	for _, o := range opts {
		name, value, hasValue := strings.Cut(o, "=")
		if seen[name] {
			return nil, bad("option %s given twice", name)
		}
		seen[name] = true
		switch {
		case o == "close":
			r.CloseAfter = true
		case o == "raw":
			r.Raw = true
		case name == "delay" && hasValue:
			d, err := time.ParseDuration(value)
			if err != nil {
				return nil, bad("delay: %v", err)
			}
			r.Delay = durationpb.New(d)
		case name == "name" && hasValue:
			if value == "" {
				return nil, bad("name is empty")
			}
			r.Name = value
		default:
			return nil, bad("unknown option %q: close, raw, delay=DURATION or name=NAME", o)
		}
	}
	return r, nil
}

// parseRules reads every --rule.
func parseRules(specs []string) ([]*tcpgatev1.ReplyRule, error) {
	var rs []*tcpgatev1.ReplyRule
	for _, s := range specs {
		r, err := parseRule(s)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// formatRule prints r as --rule takes it.
func formatRule(r *tcpgatev1.ReplyRule) string {
	var b strings.Builder
	kind := strings.ToLower(strings.TrimPrefix(r.GetKind().String(), "MATCH_KIND_"))
	switch m := r.GetMatch().(type) {
	case *tcpgatev1.ReplyRule_Data:
		if kind == "exact" {
			b.WriteString("hex:")
		} else {
			b.WriteString(kind + "-hex:")
		}
		b.WriteString(hex.EncodeToString(m.Data))
	case *tcpgatev1.ReplyRule_Regex:
		b.WriteString("re:" + escapeRule(m.Regex))
	default:
		text := r.GetText()
		if kind != "exact" || needsKind(text) {
			b.WriteString(kind + ":")
		}
		b.WriteString(escapeRule(text))
	}
	b.WriteByte('=')
	switch p := r.GetReply().(type) {
	case *tcpgatev1.ReplyRule_ReplyData:
		b.WriteString("hex:" + hex.EncodeToString(p.ReplyData))
	case *tcpgatev1.ReplyRule_ReplyText:
		if strings.HasPrefix(p.ReplyText, "hex:") || strings.HasPrefix(p.ReplyText, "text:") || p.ReplyText == "" {
			b.WriteString("text:")
		}
		b.WriteString(escapeRule(p.ReplyText))
	}
	if r.GetCloseAfter() {
		b.WriteString(";close")
	}
	if r.GetRaw() {
		b.WriteString(";raw")
	}
	if r.GetDelay() != nil {
		b.WriteString(";delay=" + r.GetDelay().AsDuration().String())
	}
	if r.GetName() != "" {
		b.WriteString(";name=" + escapeRule(r.GetName()))
	}
	return b.String()
}

// needsKind says exact text must be written exact:TEXT, since it starts
// like another kind.
func needsKind(text string) bool {
	for _, k := range matchKinds {
		if strings.HasPrefix(text, k.prefix) {
			return true
		}
	}
	return false
}

// autoReplyWithRules adds rules to ar, making one when there is none.
func autoReplyWithRules(ar *tcpgatev1.AutoReply, rules []*tcpgatev1.ReplyRule) *tcpgatev1.AutoReply {
	if len(rules) == 0 {
		return ar
	}
	if ar == nil {
		ar = &tcpgatev1.AutoReply{}
	}
	ar.Rules = rules
	return ar
}

var errBannerForward = errors.New("--banner and --forward exclude each other: a forwarding listener's client hears its target")
