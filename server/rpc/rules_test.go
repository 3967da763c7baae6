package rpc

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

func TestRulesFromProto(t *testing.T) {
	ar := &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{
		{Kind: tcpgatev1.MatchKind_MATCH_KIND_EXACT, Match: &tcpgatev1.ReplyRule_Text{Text: "PING"},
			Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: "PONG {{.connection_id}}"}, Name: "ping"},
		{Kind: tcpgatev1.MatchKind_MATCH_KIND_PREFIX, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{2, 0}},
			Reply: &tcpgatev1.ReplyRule_ReplyData{ReplyData: []byte{6}}, Raw: true},
		{Kind: tcpgatev1.MatchKind_MATCH_KIND_SUFFIX, Match: &tcpgatev1.ReplyRule_Text{Text: "bye"}, CloseAfter: true},
		{Kind: tcpgatev1.MatchKind_MATCH_KIND_CONTAINS, Match: &tcpgatev1.ReplyRule_Text{Text: "slow"},
			Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: "ok"}, Delay: durationpb.New(250 * time.Millisecond)},
		{Kind: tcpgatev1.MatchKind_MATCH_KIND_REGEX, Match: &tcpgatev1.ReplyRule_Regex{Regex: `^GET (\S+)`},
			Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: "{{1}}"}},
		{Kind: tcpgatev1.MatchKind(42), Match: &tcpgatev1.ReplyRule_Text{Text: "x"}},
	}}
	got, err := rulesFromProto(ar)
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.Spec{
		{Kind: rules.Exact, Pattern: []byte("PING"), Reply: []byte("PONG {{.connection_id}}"), Name: "ping"},
		{Kind: rules.Prefix, Pattern: []byte{2, 0}, PatternIsData: true, Reply: []byte{6}, ReplyIsData: true, Raw: true},
		{Kind: rules.Suffix, Pattern: []byte("bye"), CloseAfter: true},
		{Kind: rules.Contains, Pattern: []byte("slow"), Reply: []byte("ok"), Delay: 250 * time.Millisecond},
		{Kind: rules.Regex, Pattern: []byte(`^GET (\S+)`), Reply: []byte("{{1}}")},
		{Kind: 0, Pattern: []byte("x")},
	}
	if len(got) != len(want) {
		t.Fatalf("%d specs, want %d", len(got), len(want))
	}
	for i := range want {
		if g, w := fmt.Sprintf("%+v", got[i]), fmt.Sprintf("%+v", want[i]); g != w {
			t.Errorf("spec %d = %s, want %s", i, g, w)
		}
	}
	// The specs compile but for the unknown kind, which Compile names.
	if _, err := rules.Compile(got[:5]); err != nil {
		t.Errorf("Compile: %v", err)
	}
	_, err = rules.Compile(got)
	checkInvalid(t, toStatus(discardLogger(), err), "auto_reply.rules[5].kind")

	if specs, err := rulesFromProto(nil); specs != nil || err != nil {
		t.Errorf("rulesFromProto(nil) = %v, %v", specs, err)
	}
	if specs, err := rulesFromProto(&tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}); specs != nil || err != nil {
		t.Errorf("rulesFromProto(no rules) = %v, %v", specs, err)
	}
}

// TestRulesFromProtoShape: a match field the kind does not take, and a
// delay that is no duration, are refused on their field.
func TestRulesFromProtoShape(t *testing.T) {
	exact, regex := tcpgatev1.MatchKind_MATCH_KIND_EXACT, tcpgatev1.MatchKind_MATCH_KIND_REGEX
	tests := []struct {
		rule  *tcpgatev1.ReplyRule
		field string
		msg   string
	}{
		{&tcpgatev1.ReplyRule{Kind: exact, Match: &tcpgatev1.ReplyRule_Regex{Regex: "a"}}, "auto_reply.rules[1].regex", "only MATCH_KIND_REGEX takes a regex"},
		{&tcpgatev1.ReplyRule{Kind: regex, Match: &tcpgatev1.ReplyRule_Text{Text: "a"}}, "auto_reply.rules[1].text", "takes a regex"},
		{&tcpgatev1.ReplyRule{Kind: regex, Match: &tcpgatev1.ReplyRule_Data{Data: []byte("a")}}, "auto_reply.rules[1].data", "takes a regex"},
		{&tcpgatev1.ReplyRule{Kind: exact, Match: &tcpgatev1.ReplyRule_Text{Text: "a"}, Delay: &durationpb.Duration{Seconds: 1, Nanos: -1}}, "auto_reply.rules[1].delay", "duration"},
	}
	for _, tt := range tests {
		ok := &tcpgatev1.ReplyRule{Kind: exact, Match: &tcpgatev1.ReplyRule_Text{Text: "fine"}}
		_, err := rulesFromProto(&tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{ok, tt.rule}})
		checkInvalid(t, err, tt.field)
		if err != nil && !strings.Contains(status.Convert(err).Message(), tt.msg) {
			t.Errorf("%s: message %q, want %q", tt.field, status.Convert(err).Message(), tt.msg)
		}
	}
}

// TestRulesErrorStatus: a rule the engine refuses, however wrapped,
// becomes InvalidArgument naming its field under auto_reply.
func TestRulesErrorStatus(t *testing.T) {
	tests := []struct {
		specs []rules.Spec
		field string
	}{
		{make([]rules.Spec, rules.MaxRules+1), "auto_reply.rules"},
		{[]rules.Spec{{Kind: rules.Regex, Pattern: []byte("(")}}, "auto_reply.rules[0].regex"},
		{[]rules.Spec{{Kind: rules.Exact}}, "auto_reply.rules[0].text"},
		{[]rules.Spec{{Kind: rules.Exact, Pattern: []byte("x"), Reply: []byte("{{.nope}}")}}, "auto_reply.rules[0].reply_text"},
		{[]rules.Spec{{Kind: rules.Exact, Pattern: []byte("x"), Delay: -time.Second}}, "auto_reply.rules[0].delay"},
		{[]rules.Spec{{Kind: rules.Exact, Pattern: []byte("x"), Name: "a b"}}, "auto_reply.rules[0].name"},
	}
	for _, tt := range tests {
		_, err := rules.Compile(tt.specs)
		if err == nil {
			t.Fatalf("%s: Compile took it", tt.field)
		}
		st := toStatus(discardLogger(), fmt.Errorf("starting listener: %w: %w", listener.ErrInvalidSpec, err))
		checkInvalid(t, st, tt.field)
		if want := tt.field + ": " + strings.SplitN(err.Error(), ": ", 2)[1]; status.Convert(st).Message() != want {
			t.Errorf("message %q, want %q", status.Convert(st).Message(), want)
		}
	}
}

func TestTemplateError(t *testing.T) {
	_, err := rules.ParseTemplate("hello {{.who}}")
	if err == nil {
		t.Fatal("ParseTemplate took an unknown variable")
	}
	st := templateError("on_connect.text", err)
	checkInvalid(t, st, "on_connect.text")
	if got, want := status.Convert(st).Message(), "on_connect.text: "+err.Error(); got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

// checkInvalid checks that err is InvalidArgument with reason
// INVALID_ARGUMENT naming field in its ErrorInfo and its BadRequest.
func checkInvalid(t *testing.T, err error, field string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("%s: %v is no status", field, err)
	}
	if st.Code() != codes.InvalidArgument {
		t.Errorf("%s: code %v", field, st.Code())
	}
	if !strings.HasPrefix(st.Message(), field+": ") {
		t.Errorf("message %q does not start with %s", st.Message(), field)
	}
	var info, bad bool
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d.GetReason() == "INVALID_ARGUMENT" && d.GetDomain() == ErrorDomain && d.GetMetadata()[MetaField] == field
		case *errdetails.BadRequest:
			bad = len(d.GetFieldViolations()) == 1 && d.GetFieldViolations()[0].GetField() == field
		}
	}
	if !info || !bad {
		t.Errorf("%s: details %v lack the ErrorInfo or the BadRequest of the field", field, st.Details())
	}
}
