package rules

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Vars are the connection's values a template may name.
type Vars struct{ ConnectionID, RemoteAddress, ListenerID string }

type segKind uint8

const (
	segLit segKind = iota
	segCapture
	segConnectionID
	segRemoteAddress
	segListenerID
	segTime
	segUnixMS
)

var variables = map[string]segKind{
	"connection_id":  segConnectionID,
	"remote_address": segRemoteAddress,
	"listener_id":    segListenerID,
	"time":           segTime,
	"unix_ms":        segUnixMS,
}

// segment is a run of literal bytes, one capture group, or one variable.
type segment struct {
	kind  segKind
	lit   []byte
	group int
}

// Template is a parsed reply or banner: literal text and references.
// It is immutable and safe for concurrent use.
type Template struct {
	segs     []segment
	static   []byte // the rendering when there is no reference
	isStatic bool
	captures bool // some segment is a capture
}

// captureScope says which captures a template may name: none (a banner,
// a rule that is not REGEX) or the groups of one regex.
type captureScope struct {
	allowed bool
	groups  int            // groups besides the whole match
	names   map[string]int // named groups
}

// ParseTemplate parses a banner: variables only, no captures. Its error is
// a *FieldError with an empty Field whose Msg says what is wrong and at
// which byte.
func ParseTemplate(text string) (*Template, error) {
	t, err := parseTemplate(text, captureScope{})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func parseTemplate(text string, scope captureScope) (*Template, *FieldError) {
	t := &Template{}
	var lit []byte
	refs := 0
	flush := func() {
		if len(lit) > 0 {
			t.segs = append(t.segs, segment{kind: segLit, lit: lit})
			lit = nil
		}
	}
	for i := 0; i < len(text); {
		j := strings.Index(text[i:], "{{")
		if j < 0 {
			lit = append(lit, text[i:]...)
			break
		}
		lit = append(lit, text[i:i+j]...)
		at := i + j
		if strings.HasPrefix(text[at+2:], "{{") {
			lit = append(lit, "{{"...)
			i = at + 4
			continue
		}
		end := strings.Index(text[at+2:], "}}")
		if end < 0 {
			return nil, &FieldError{Msg: fmt.Sprintf("unclosed {{ at byte %d", at)}
		}
		ref := text[at+2 : at+2+end]
		seg, err := parseRef(ref, at, scope)
		if err != nil {
			return nil, err
		}
		if refs++; refs > MaxReferences {
			return nil, &FieldError{Msg: fmt.Sprintf("{{%s}} at byte %d is reference %d, over the limit of %d", ref, at, refs, MaxReferences)}
		}
		flush()
		t.segs = append(t.segs, seg)
		if seg.kind == segCapture {
			t.captures = true
		}
		i = at + 2 + end + 2
	}
	flush()
	if refs == 0 {
		t.isStatic = true
		if len(t.segs) == 1 {
			t.static = t.segs[0].lit
		}
	}
	return t, nil
}

func parseRef(ref string, at int, scope captureScope) (segment, *FieldError) {
	if ref == "" {
		return segment{}, &FieldError{Msg: fmt.Sprintf("empty {{}} at byte %d (write {{{{ for a literal {{)", at)}
	}
	if name, ok := strings.CutPrefix(ref, "."); ok {
		k, ok := variables[name]
		if !ok {
			return segment{}, &FieldError{Msg: fmt.Sprintf("unknown variable {{%s}} at byte %d: the variables are .connection_id, .remote_address, .listener_id, .time and .unix_ms", ref, at)}
		}
		return segment{kind: k}, nil
	}
	if !isDigits(ref) && !isWord(ref) {
		return segment{}, &FieldError{Msg: fmt.Sprintf("unknown reference {{%s}} at byte %d: write {{.variable}}, or {{N}} or {{name}} for a REGEX rule's groups (no spaces inside the braces)", ref, at)}
	}
	if !scope.allowed {
		return segment{}, &FieldError{Msg: fmt.Sprintf("capture {{%s}} at byte %d: only a REGEX rule's reply has captures", ref, at)}
	}
	if isDigits(ref) {
		n, err := strconv.Atoi(ref)
		if err != nil || n > scope.groups {
			return segment{}, &FieldError{Msg: fmt.Sprintf("capture {{%s}} at byte %d: the regex has %d groups", ref, at, scope.groups)}
		}
		return segment{kind: segCapture, group: n}, nil
	}
	n, ok := scope.names[ref]
	if !ok {
		return segment{}, &FieldError{Msg: fmt.Sprintf("capture {{%s}} at byte %d: the regex has no group named %q", ref, at, ref)}
	}
	return segment{kind: segCapture, group: n}, nil
}

// isWord says s could name a group: RE2's names are word characters.
func isWord(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// Static reports whether t has no reference, so that it renders the same
// every time and may be rendered once.
func (t *Template) Static() bool { return t.isStatic }

// Append appends t rendered with v and now to dst. A nil v renders its
// variables empty.
func (t *Template) Append(dst []byte, v *Vars, now time.Time) []byte {
	return t.render(dst, nil, nil, v, now)
}

// render appends t to dst; loc is the regex's submatch index over frame,
// for captures.
func (t *Template) render(dst, frame []byte, loc []int, v *Vars, now time.Time) []byte {
	if t.static != nil {
		return append(dst, t.static...)
	}
	for _, s := range t.segs {
		switch s.kind {
		case segLit:
			dst = append(dst, s.lit...)
		case segCapture:
			// A group that did not take part in the match renders empty.
			if 2*s.group+1 < len(loc) && loc[2*s.group] >= 0 {
				dst = append(dst, frame[loc[2*s.group]:loc[2*s.group+1]]...)
			}
		case segConnectionID:
			if v != nil {
				dst = append(dst, v.ConnectionID...)
			}
		case segRemoteAddress:
			if v != nil {
				dst = append(dst, v.RemoteAddress...)
			}
		case segListenerID:
			if v != nil {
				dst = append(dst, v.ListenerID...)
			}
		case segTime:
			dst = now.UTC().AppendFormat(dst, time.RFC3339Nano)
		case segUnixMS:
			dst = strconv.AppendInt(dst, now.UnixMilli(), 10)
		}
	}
	return dst
}
