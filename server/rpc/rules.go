package rpc

import (
	"fmt"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

var ruleKinds = map[tcpgatev1.MatchKind]rules.Kind{
	tcpgatev1.MatchKind_MATCH_KIND_EXACT:    rules.Exact,
	tcpgatev1.MatchKind_MATCH_KIND_PREFIX:   rules.Prefix,
	tcpgatev1.MatchKind_MATCH_KIND_SUFFIX:   rules.Suffix,
	tcpgatev1.MatchKind_MATCH_KIND_CONTAINS: rules.Contains,
	tcpgatev1.MatchKind_MATCH_KIND_REGEX:    rules.Regex,
}

// rulesFromProto reads an AutoReply's rules: the wire shape only, the
// engine compiles and checks them.
func rulesFromProto(a *tcpgatev1.AutoReply) ([]rules.Spec, error) {
	rs := a.GetRules()
	if len(rs) == 0 {
		return nil, nil
	}
	out := make([]rules.Spec, len(rs))
	for i, r := range rs {
		field := fmt.Sprintf("auto_reply.rules[%d]", i)
		sp := rules.Spec{Kind: ruleKinds[r.GetKind()], Raw: r.GetRaw(), CloseAfter: r.GetCloseAfter(), Name: r.GetName()}
		isRegex := r.GetKind() == tcpgatev1.MatchKind_MATCH_KIND_REGEX
		switch m := r.GetMatch().(type) {
		case *tcpgatev1.ReplyRule_Text:
			if isRegex {
				return nil, invalid(field+".text", "MATCH_KIND_REGEX takes its expression in regex, not text")
			}
			sp.Pattern = []byte(m.Text)
		case *tcpgatev1.ReplyRule_Data:
			if isRegex {
				return nil, invalid(field+".data", "MATCH_KIND_REGEX takes its expression in regex, not data: a regex matches text")
			}
			sp.Pattern, sp.PatternIsData = m.Data, true
		case *tcpgatev1.ReplyRule_Regex:
			if !isRegex && r.GetKind() != tcpgatev1.MatchKind_MATCH_KIND_UNSPECIFIED {
				return nil, invalid(field+".regex", "only MATCH_KIND_REGEX takes regex; %s takes text or data", r.GetKind())
			}
			sp.Pattern = []byte(m.Regex)
		}
		switch p := r.GetReply().(type) {
		case *tcpgatev1.ReplyRule_ReplyText:
			sp.Reply = []byte(p.ReplyText)
		case *tcpgatev1.ReplyRule_ReplyData:
			sp.Reply, sp.ReplyIsData = p.ReplyData, true
		}
		d, err := durationFromProto(field+".delay", r.GetDelay(), 0)
		if err != nil {
			return nil, err
		}
		sp.Delay = d
		out[i] = sp
	}
	return out, nil
}
