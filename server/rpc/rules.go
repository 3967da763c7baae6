package rpc

import (
	"errors"
	"fmt"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// kindOf maps the API's match kinds to the engine's; a kind it does not
// name maps to the zero Kind, which rules.Compile refuses on the field.
var kindOf = map[tcpgatev1.MatchKind]rules.Kind{
	tcpgatev1.MatchKind_MATCH_KIND_EXACT:    rules.Exact,
	tcpgatev1.MatchKind_MATCH_KIND_PREFIX:   rules.Prefix,
	tcpgatev1.MatchKind_MATCH_KIND_SUFFIX:   rules.Suffix,
	tcpgatev1.MatchKind_MATCH_KIND_CONTAINS: rules.Contains,
	tcpgatev1.MatchKind_MATCH_KIND_REGEX:    rules.Regex,
}

// rulesFromProto translates ar's rules for rules.Compile: which oneof is
// set, and the delay decoded. The checks of what the fields hold are
// Compile's; here only a match field the kind does not take (regex with
// a byte kind, text or data with REGEX) and a delay that is no duration
// are refused, as InvalidArgument naming "auto_reply.rules[i]...".
func rulesFromProto(ar *tcpgatev1.AutoReply) ([]rules.Spec, error) {
	if len(ar.GetRules()) == 0 {
		return nil, nil
	}
	specs := make([]rules.Spec, len(ar.GetRules()))
	for i, r := range ar.GetRules() {
		field := func(name string) string { return fmt.Sprintf("auto_reply.rules[%d].%s", i, name) }
		sp := &specs[i]
		sp.Kind = kindOf[r.GetKind()]
		switch m := r.GetMatch().(type) {
		case *tcpgatev1.ReplyRule_Text:
			sp.Pattern = []byte(m.Text)
		case *tcpgatev1.ReplyRule_Data:
			sp.Pattern, sp.PatternIsData = m.Data, true
		case *tcpgatev1.ReplyRule_Regex:
			sp.Pattern = []byte(m.Regex)
		}
		// An unknown kind is Compile's to name: the kind is at fault, not
		// the match.
		if sp.Kind != 0 {
			_, isRegex := r.GetMatch().(*tcpgatev1.ReplyRule_Regex)
			switch {
			case isRegex && sp.Kind != rules.Regex:
				return nil, invalid(field("regex"), "a %s rule takes text or data; only MATCH_KIND_REGEX takes a regex", r.GetKind())
			case !isRegex && r.GetMatch() != nil && sp.Kind == rules.Regex:
				name := "text"
				if sp.PatternIsData {
					name = "data"
				}
				return nil, invalid(field(name), "a MATCH_KIND_REGEX rule takes a regex; text and data are for MATCH_KIND_EXACT, _PREFIX, _SUFFIX and _CONTAINS")
			}
		}
		switch p := r.GetReply().(type) {
		case *tcpgatev1.ReplyRule_ReplyText:
			sp.Reply = []byte(p.ReplyText)
		case *tcpgatev1.ReplyRule_ReplyData:
			sp.Reply, sp.ReplyIsData = p.ReplyData, true
		}
		if d := r.GetDelay(); d != nil {
			if err := d.CheckValid(); err != nil {
				return nil, invalid(field("delay"), "%v", err)
			}
			sp.Delay = d.AsDuration()
		}
		sp.Raw, sp.CloseAfter, sp.Name = r.GetRaw(), r.GetCloseAfter(), r.GetName()
	}
	return specs, nil
}

// templateError is the InvalidArgument of a template that does not parse
// (rules.ParseTemplate), naming field: "on_connect.text".
func templateError(field string, err error) error {
	var fe *rules.FieldError
	if errors.As(err, &fe) {
		return invalid(field, "%s", fe.Msg)
	}
	return invalid(field, "%v", err)
}

// rulesStatus is the InvalidArgument of a rule that does not compile,
// naming its field under auto_reply; nil when err is no *rules.FieldError.
func rulesStatus(err error) error {
	var fe *rules.FieldError
	if !errors.As(err, &fe) {
		return nil
	}
	return invalid("auto_reply."+fe.Field, "%s", fe.Msg)
}
