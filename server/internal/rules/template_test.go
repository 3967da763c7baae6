package rules

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		text, want string
		static     bool
		err        string
	}{
		{"welcome", "welcome", true, ""},
		{"", "", true, ""},
		{"id {{.connection_id}} from {{.remote_address}} on {{.listener_id}}", "id c-1 from 127.0.0.1:4000 on l-1", false, ""},
		{"{{.time}}|{{.unix_ms}}", "2026-03-04T04:06:07.890123456Z|1772597167890", false, ""},
		{"{{{{.time}}", "{{.time}}", true, ""},
		{"a }} b", "a }} b", true, ""},
		{"{{1}}", "", false, "capture {{1}} at byte 0: only a REGEX rule's reply has captures"},
		{"hi {{name}}", "", false, "capture {{name}} at byte 3"},
		{"x{{.nope}}", "", false, "unknown variable {{.nope}} at byte 1"},
		{"x {{", "", false, "unclosed {{ at byte 2"},
		{"{{}}", "", false, "empty {{}} at byte 0"},
		{"{{ .time }}", "", false, "unknown reference {{ .time }} at byte 0"},
		{"{{{a}}", "", false, "unknown reference {{{a}} at byte 0"},
		{strings.Repeat("{{.time}}", MaxReferences), strings.Repeat("2026-03-04T04:06:07.890123456Z", MaxReferences), false, ""},
		{strings.Repeat("{{.time}}", MaxReferences+1), "", false, "reference 65, over the limit of 64"},
	}
	for _, tt := range tests {
		tm, err := ParseTemplate(tt.text)
		if tt.err != "" {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "" || !strings.Contains(fe.Msg, tt.err) || err.Error() != fe.Msg {
				t.Errorf("ParseTemplate(%q) error = %v, want a *FieldError with no field and %q", tt.text, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.text, err)
			continue
		}
		if tm.Static() != tt.static {
			t.Errorf("ParseTemplate(%q).Static() = %v", tt.text, tm.Static())
		}
		if got := string(tm.Append([]byte(">"), testVars, testNow)); got != ">"+tt.want {
			t.Errorf("ParseTemplate(%q) renders %q, want %q", tt.text, got, ">"+tt.want)
		}
	}
}

func TestTemplateNilVars(t *testing.T) {
	tm, err := ParseTemplate("[{{.connection_id}}{{.remote_address}}{{.listener_id}}]")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(tm.Append(nil, nil, testNow)); got != "[]" {
		t.Errorf("nil Vars render %q", got)
	}
}

// FuzzParseTemplate: parsing never panics, and a template without
// references renders its text with every {{{{ read as {{.
func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{"", "plain", "{{{{", "{{.time}}", "{{", "}}", "{{}}", "{{{{{", "a{{.unix_ms}}b{{{{c}}", "{{1}}", "{{{{{{{{"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		tm, err := ParseTemplate(text)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "" || fe.Msg == "" {
				t.Fatalf("ParseTemplate(%q) error %v is no *FieldError with a message", text, err)
			}
			return
		}
		out := tm.Append(nil, testVars, testNow)
		if tm.Static() {
			if want := strings.ReplaceAll(text, "{{{{", "{{"); string(out) != want {
				t.Fatalf("ParseTemplate(%q) renders %q, want %q", text, out, want)
			}
		} else if !strings.Contains(text, "{{.") {
			t.Fatalf("ParseTemplate(%q) has references without a variable", text)
		}
		if !bytes.Equal(tm.Append(nil, testVars, testNow), out) {
			t.Fatal("two renderings differ")
		}
	})
}

// FuzzMatch matches random frames against a fixed Set: it never panics,
// a hit holds for its rule's kind, a miss holds for every rule, and
// captures render bytes of the frame.
func FuzzMatch(f *testing.F) {
	specs := []Spec{
		{Kind: Exact, Pattern: []byte("PING"), Reply: []byte("PONG")},
		{Kind: Prefix, Pattern: []byte{0x02, 0x00}, PatternIsData: true, Reply: []byte{0x06}, ReplyIsData: true},
		{Kind: Suffix, Pattern: []byte("?"), Reply: []byte("{{.connection_id}}")},
		{Kind: Regex, Pattern: []byte(`^SET (?P<k>\w+)=(\w*)$`), Reply: []byte("{{k}}<-{{2}}")},
		{Kind: Contains, Pattern: []byte("err"), Reply: []byte("sorry")},
		{Kind: Regex, Pattern: []byte(`(a)|(b)`), Reply: []byte("[{{0}}|{{1}}|{{2}}]")},
	}
	s, err := Compile(specs)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"PING", "\x02\x00x", "who?", "SET a=b", "an error", "b", "\xff", ""} {
		f.Add([]byte(seed))
	}
	holds := func(sp Spec, frame []byte) bool {
		switch sp.Kind {
		case Exact:
			return bytes.Equal(frame, sp.Pattern)
		case Prefix:
			return bytes.HasPrefix(frame, sp.Pattern)
		case Suffix:
			return bytes.HasSuffix(frame, sp.Pattern)
		case Contains:
			return bytes.Contains(frame, sp.Pattern)
		}
		return utf8.Valid(frame) && s.rules[indexOf(specs, sp)].re.Match(frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		h, ok := s.Match(frame)
		if !ok {
			for i, sp := range specs {
				if holds(sp, frame) {
					t.Fatalf("%q missed rule %d (%s)", frame, i, sp.Kind)
				}
			}
			return
		}
		i := h.Index()
		if !holds(specs[i], frame) {
			t.Fatalf("%q hit rule %d (%s) that does not hold", frame, i, specs[i].Kind)
		}
		for j := range i {
			if holds(specs[j], frame) {
				t.Fatalf("%q hit rule %d though rule %d matches first", frame, i, j)
			}
		}
		out := h.AppendReply(nil, frame, testVars, testNow)
		switch i {
		case 0:
			if string(out) != "PONG" {
				t.Fatalf("reply %q", out)
			}
		case 3:
			m := s.rules[3].re.FindSubmatch(frame)
			if want := string(m[1]) + "<-" + string(m[2]); string(out) != want {
				t.Fatalf("reply %q, want %q", out, want)
			}
		case 5:
			m := s.rules[5].re.FindSubmatch(frame)
			if want := "[" + string(m[0]) + "|" + string(m[1]) + "|" + string(m[2]) + "]"; string(out) != want {
				t.Fatalf("reply %q, want %q", out, want)
			}
		}
	})
}

func indexOf(specs []Spec, sp Spec) int {
	for i := range specs {
		if bytes.Equal(specs[i].Pattern, sp.Pattern) && specs[i].Kind == sp.Kind {
			return i
		}
	}
	return -1
}
