package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

var (
	exactKind    = tcpgatev1.MatchKind_MATCH_KIND_EXACT
	prefixKind   = tcpgatev1.MatchKind_MATCH_KIND_PREFIX
	suffixKind   = tcpgatev1.MatchKind_MATCH_KIND_SUFFIX
	containsKind = tcpgatev1.MatchKind_MATCH_KIND_CONTAINS
	regexKind    = tcpgatev1.MatchKind_MATCH_KIND_REGEX
)

func textRule(kind tcpgatev1.MatchKind, match, reply string) *tcpgatev1.ReplyRule {
	r := &tcpgatev1.ReplyRule{Kind: kind, Match: &tcpgatev1.ReplyRule_Text{Text: match}}
	if kind == regexKind {
		r.Match = &tcpgatev1.ReplyRule_Regex{Regex: match}
	}
	if reply != "" {
		r.Reply = &tcpgatev1.ReplyRule_ReplyText{ReplyText: reply}
	}
	return r
}

func TestParseRule(t *testing.T) {
	with := func(r *tcpgatev1.ReplyRule, f func(*tcpgatev1.ReplyRule)) *tcpgatev1.ReplyRule { f(r); return r }
	tests := []struct {
		spec string
		want *tcpgatev1.ReplyRule
		out  string // formatRule's rendering; spec when empty
	}{
		{"PING=PONG", textRule(exactKind, "PING", "PONG"), ""},
		{"exact:PING=PONG", textRule(exactKind, "PING", "PONG"), "PING=PONG"},
		{"prefix:GET =200 OK", textRule(prefixKind, "GET ", "200 OK"), ""},
		{"suffix:?=yes", textRule(suffixKind, "?", "yes"), ""},
		{"contains:error=sorry, {{.remote_address}}", textRule(containsKind, "error", "sorry, {{.remote_address}}"), ""},
		{`re:^GET (\S+)$=you asked for {{1}}`, textRule(regexKind, `^GET (\S+)$`, "you asked for {{1}}"), ""},
		{`re:^(?P<k>\w+)\=(?P<v>\w+)$={{k}} is {{v}}`, textRule(regexKind, `^(?P<k>\w+)=(?P<v>\w+)$`, "{{k}} is {{v}}"), ""},
		{`re:a\\\\b=x`, textRule(regexKind, `a\\b`, "x"), `re:a\\\b=x`},
		{`re:a\b=x`, textRule(regexKind, `a\b`, "x"), ""},
		{"hex:0200=hex:06", &tcpgatev1.ReplyRule{Kind: exactKind, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{2, 0}},
			Reply: &tcpgatev1.ReplyRule_ReplyData{ReplyData: []byte{6}}}, ""},
		{"prefix-hex:02 ff=ok", &tcpgatev1.ReplyRule{Kind: prefixKind, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{2, 0xff}},
			Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: "ok"}}, "prefix-hex:02ff=ok"},
		{"suffix-hex:0d0a=", &tcpgatev1.ReplyRule{Kind: suffixKind, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{13, 10}}}, ""},
		{"contains-hex:00=", &tcpgatev1.ReplyRule{Kind: containsKind, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{0}}}, ""},
		{"QUIT=bye;close", with(textRule(exactKind, "QUIT", "bye"), func(r *tcpgatev1.ReplyRule) { r.CloseAfter = true }), ""},
		{"QUIT=;close", with(textRule(exactKind, "QUIT", ""), func(r *tcpgatev1.ReplyRule) { r.CloseAfter = true }), ""},
		{"noise=", textRule(exactKind, "noise", ""), ""},
		{"slow=ok;delay=250ms;raw;name=slow-ok", with(textRule(exactKind, "slow", "ok"), func(r *tcpgatev1.ReplyRule) {
			r.Raw, r.Delay, r.Name = true, durationpb.New(250*time.Millisecond), "slow-ok"
		}), "slow=ok;raw;delay=250ms;name=slow-ok"},
		{`a\=b=c\;d\\e`, textRule(exactKind, "a=b", `c;d\e`), `a\=b=c\;d\e`},
		{`x=trailing\\`, textRule(exactKind, "x", `trailing\`), ""},
		{"x=a=b", textRule(exactKind, "x", "a=b"), `x=a\=b`},
		{"exact:prefix:x=y", textRule(exactKind, "prefix:x", "y"), ""},
		{"x=text:hex:00", textRule(exactKind, "x", "hex:00"), ""},
		{"x=text:", &tcpgatev1.ReplyRule{Kind: exactKind, Match: &tcpgatev1.ReplyRule_Text{Text: "x"}, Reply: &tcpgatev1.ReplyRule_ReplyText{}}, ""},
		{"GET:x=y", textRule(exactKind, "GET:x", "y"), ""},
	}
	for _, tt := range tests {
		got, err := parseRule(tt.spec)
		if err != nil {
			t.Errorf("parseRule(%q): %v", tt.spec, err)
			continue
		}
		if !proto.Equal(got, tt.want) {
			t.Errorf("parseRule(%q)\n = %v\nwant %v", tt.spec, got, tt.want)
		}
		want := tt.out
		if want == "" {
			want = tt.spec
		}
		if out := formatRule(got); out != want {
			t.Errorf("formatRule(parseRule(%q)) = %q, want %q", tt.spec, out, want)
		}
	}
}

func TestParseRuleErrors(t *testing.T) {
	for spec, want := range map[string]string{
		"PING":             "no = between the match",
		`PING\=PONG`:       "no = between the match",
		"=PONG":            "the match is empty",
		"prefix:=x":        "the match is empty",
		"hex:=x":           "the match is empty",
		"re:=x":            "the regex is empty",
		"hex:zz=x":         "hex: encoding/hex: invalid byte",
		"x=hex:0":          "reply hex: encoding/hex: odd length hex string",
		"x=y;shout":        `unknown option "shout"`,
		"x=y;close;close":  "option close given twice",
		"x=y;delay=soon":   "delay: time: invalid duration",
		"x=y;name=":        "name is empty",
		"x=y;close=1":      `unknown option "close=1"`,
		"\xff=x":           "not UTF-8",
		"re:\xff=x":        "the regex is not UTF-8",
		"x=\xff":           "the reply is not UTF-8",
		"prefix:\xff\xfe=": "give bytes as hex:HEX or KIND-hex:HEX",
	} {
		_, err := parseRule(spec)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "--rule ") {
			t.Errorf("parseRule(%q) error = %v, want --rule ... %q", spec, err, want)
		}
	}
}

// FuzzParseRule: --rule never panics, and a rule it accepts prints back
// (formatRule) to a spec that parses to the same rule.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"PING=PONG", `re:^(\w+)\=(\d+)$={{1}}`, "hex:00ff=hex:01;close", "a\\=b=c\\;d;raw;delay=1s;name=n", "x=text:hex:", "exact:re:x=", `x=\\`, `\\=\\`, "=", ";=;", "prefix-hex:0d 0a=ok;delay=-1ms"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := parseRule(spec)
		if err != nil {
			return
		}
		out := formatRule(r)
		again, err := parseRule(out)
		if err != nil {
			t.Fatalf("%q parsed, but its rendering %q does not: %v", spec, out, err)
		}
		if !proto.Equal(r, again) {
			t.Fatalf("%q -> %v -> %q -> %v", spec, r, out, again)
		}
		if _, err := proto.Marshal(r); err != nil {
			t.Fatalf("%q makes a rule that does not marshal: %v", spec, err)
		}
	})
}

func TestListenRequest(t *testing.T) {
	line := &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
	closing := textRule(exactKind, "QUIT", "bye")
	closing.CloseAfter = true
	tests := []struct {
		name string
		args []string
		want *tcpgatev1.StartListenerRequest
	}{
		{"defaults", nil, &tcpgatev1.StartListenerRequest{Port: 9000}},
		{"rules in order", []string{"--framing", "line", "--rule", "PING=PONG", "--rule", "QUIT=bye;close", "--rule", "a,b=c,d"},
			&tcpgatev1.StartListenerRequest{Port: 9000, Framing: line, AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{
				textRule(exactKind, "PING", "PONG"), closing, textRule(exactKind, "a,b", "c,d")}}}},
		{"rules and a fallback", []string{"--echo", "--rule", "re:^x=y"},
			&tcpgatev1.StartListenerRequest{Port: 9000, AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO,
				Rules: []*tcpgatev1.ReplyRule{textRule(regexKind, "^x", "y")}}}},
		{"rules and a fixed reply", []string{"--reply", "?", "--rule", "a=b"},
			&tcpgatev1.StartListenerRequest{Port: 9000, AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
				Payload: &tcpgatev1.AutoReply_Text{Text: "?"}, Rules: []*tcpgatev1.ReplyRule{textRule(exactKind, "a", "b")}}}},
		{"banner", []string{"--banner", "hello {{.remote_address}}\n"},
			&tcpgatev1.StartListenerRequest{Port: 9000, OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "hello {{.remote_address}}\n"}}}},
		{"empty banner is a banner", []string{"--banner", ""},
			&tcpgatev1.StartListenerRequest{Port: 9000, OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{}}}},
		{"proxy protocol v1", []string{"--proxy-protocol", "v1"}, &tcpgatev1.StartListenerRequest{Port: 9000, ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1}},
		{"proxy protocol v2", []string{"--proxy-protocol", "v2"}, &tcpgatev1.StartListenerRequest{Port: 9000, ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2}},
		{"proxy protocol any", []string{"--proxy-protocol", "ANY"}, &tcpgatev1.StartListenerRequest{Port: 9000, ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_ANY}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o listenOptions
			fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.request("9000", fs.Changed)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("request(%q)\n = %v\nwant %v", tt.args, got, tt.want)
			}
		})
	}
	for args, want := range map[string]string{
		"--rule x":                          "no = between",
		"--banner hi --forward 127.0.0.1:1": "--banner and --forward exclude each other",
		"--echo --reply x":                  "--echo and --reply exclude each other",
		"--proxy-protocol v3":               "want v1, v2 or any",
	} {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(strings.Fields(args)); err != nil {
			t.Fatal(err)
		}
		if _, err := o.request("9000", fs.Changed); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", args, err, want)
		}
	}
}

func TestConnectRequestRules(t *testing.T) {
	var o connectOptions
	fs := pflag.NewFlagSet("connect", pflag.ContinueOnError)
	o.addFlags(fs)
	if err := fs.Parse([]string{"--framing", "line", "--rule", "PING=PONG;name=keepalive", "--rule", "contains-hex:00=;close"}); err != nil {
		t.Fatal(err)
	}
	got, err := o.request("a:1", fs.Changed)
	if err != nil {
		t.Fatal(err)
	}
	ping := textRule(exactKind, "PING", "PONG")
	ping.Name = "keepalive"
	want := &tcpgatev1.ConnectRequest{Address: "a:1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{ping,
			{Kind: containsKind, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{0}}, CloseAfter: true}}}}
	if !proto.Equal(got, want) {
		t.Errorf("request\n = %v\nwant %v", got, want)
	}
	o = connectOptions{}
	fs = pflag.NewFlagSet("connect", pflag.ContinueOnError)
	o.addFlags(fs)
	if err := fs.Parse([]string{"--rule", "=x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := o.request("a:1", fs.Changed); err == nil || !strings.Contains(err.Error(), "the match is empty") {
		t.Errorf("a bad --rule: error %v", err)
	}
}

func TestListenerRows(t *testing.T) {
	closing := textRule(exactKind, "QUIT", "bye")
	closing.CloseAfter = true
	l := &tcpgatev1.Listener{ListenerId: "demo", Address: "127.0.0.1:9000", State: tcpgatev1.ListenerState_LISTENER_STATE_LISTENING,
		Framing:          &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply:        &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO, Rules: []*tcpgatev1.ReplyRule{textRule(regexKind, `^GET (\S+)$`, "{{1}}"), closing}},
		OnConnect:        &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "hello {{.remote_address}}\n"}},
		ConnectionsTotal: 3, BytesIn: 10}
	var b strings.Builder
	for _, row := range listenerRows(l) {
		b.WriteString(row[0] + ": " + row[1] + "\n")
	}
	want := "id: demo\naddress: 127.0.0.1:9000\nstate: listening\nframing: line\nauto reply: echo\n" +
		`banner: "hello {{.remote_address}}\n"` + "\n" +
		"rule 0: re:^GET (\\S+)$={{1}}\nrule 1: QUIT=bye;close\n" +
		"open: 0\ntotal: 3\nbytes in: 10\nbytes out: 0\nframes in: 0\nframes out: 0\n"
	if b.String() != want {
		t.Errorf("rows\n%s\nwant\n%s", b.String(), want)
	}
}

// TestReadmeRules: every --rule of the README's "Reply rules" section
// parses, and prints back as it is written there.
func TestReadmeRules(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Reply rules\n")
	if !ok {
		t.Fatal(`README.md has no "Reply rules" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	found := regexp.MustCompile(`--rule '([^']*)'`).FindAllStringSubmatch(section, -1)
	if len(found) < 8 {
		t.Fatalf("%d --rule examples in the section, want at least 8", len(found))
	}
	for _, m := range found {
		r, err := parseRule(m[1])
		if err != nil {
			t.Errorf("README: %v", err)
			continue
		}
		if out := formatRule(r); out != m[1] {
			t.Errorf("README: --rule '%s' prints back as %q", m[1], out)
		}
	}
}
