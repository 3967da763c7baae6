package rpc

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// replies is what an AutoReply asks of the engine, listener or outbound.
type replies struct {
	fallback            conn.AutoReply
	rules               []rules.Spec
	handlerTimeout      time.Duration
	handlerTimeoutClose bool
}

// repliesFromProto checks an AutoReply's wire shape; the engine compiles
// its rules and checks their limits.
func repliesFromProto(a *tcpgatev1.AutoReply) (replies, error) {
	var r replies
	var err error
	if r.fallback, err = autoReplyFromProto(a); err != nil {
		return r, err
	}
	if r.rules, err = rulesFromProto(a); err != nil {
		return r, err
	}
	if r.handlerTimeout, err = durationFromProto("auto_reply.handler_timeout", a.GetHandlerTimeout(), 0); err != nil {
		return r, err
	}
	switch a.GetOnHandlerTimeout() {
	case tcpgatev1.HandlerTimeoutAction_HANDLER_TIMEOUT_ACTION_UNSPECIFIED, tcpgatev1.HandlerTimeoutAction_HANDLER_TIMEOUT_ACTION_FALLBACK:
	case tcpgatev1.HandlerTimeoutAction_HANDLER_TIMEOUT_ACTION_CLOSE:
		r.handlerTimeoutClose = true
	default:
		return r, invalid("auto_reply.on_handler_timeout", "unknown value %d", int32(a.GetOnHandlerTimeout()))
	}
	return r, nil
}

// repliesToProto is the reverse of repliesFromProto, for a listener's
// snapshot.
func repliesToProto(r replies) *tcpgatev1.AutoReply {
	a := autoReplyToProto(r.fallback)
	a.Rules = rulesToProto(r.rules)
	if r.handlerTimeout > 0 {
		a.HandlerTimeout = durationpb.New(r.handlerTimeout)
	}
	if r.handlerTimeoutClose {
		a.OnHandlerTimeout = tcpgatev1.HandlerTimeoutAction_HANDLER_TIMEOUT_ACTION_CLOSE
	}
	return a
}

var matchKinds = map[rules.Kind]tcpgatev1.MatchKind{
	rules.Exact:    tcpgatev1.MatchKind_MATCH_KIND_EXACT,
	rules.Prefix:   tcpgatev1.MatchKind_MATCH_KIND_PREFIX,
	rules.Suffix:   tcpgatev1.MatchKind_MATCH_KIND_SUFFIX,
	rules.Contains: tcpgatev1.MatchKind_MATCH_KIND_CONTAINS,
	rules.Regex:    tcpgatev1.MatchKind_MATCH_KIND_REGEX,
}

// rulesToProto gives rules back as the API took them.
func rulesToProto(specs []rules.Spec) []*tcpgatev1.ReplyRule {
	if len(specs) == 0 {
		return nil
	}
	out := make([]*tcpgatev1.ReplyRule, len(specs))
	for i, sp := range specs {
		r := &tcpgatev1.ReplyRule{Kind: matchKinds[sp.Kind], Raw: sp.Raw, CloseAfter: sp.CloseAfter, Name: sp.Name}
		switch {
		case sp.Kind == rules.Regex:
			r.Match = &tcpgatev1.ReplyRule_Regex{Regex: string(sp.Pattern)}
		case sp.PatternIsData:
			r.Match = &tcpgatev1.ReplyRule_Data{Data: sp.Pattern}
		default:
			r.Match = &tcpgatev1.ReplyRule_Text{Text: string(sp.Pattern)}
		}
		switch {
		case sp.Reply == nil:
		case sp.ReplyIsData:
			r.Reply = &tcpgatev1.ReplyRule_ReplyData{ReplyData: sp.Reply}
		default:
			r.Reply = &tcpgatev1.ReplyRule_ReplyText{ReplyText: string(sp.Reply)}
		}
		if sp.Delay > 0 {
			r.Delay = durationpb.New(sp.Delay)
		}
		out[i] = r
	}
	return out
}

// bannerFromProto checks a listener's on_connect: a payload, framed or
// not, and no expect (a listener awaits nothing of its clients first).
func (s *Service) bannerFromProto(oc *tcpgatev1.OnConnect) (*listener.Banner, error) {
	if oc == nil {
		return nil, nil
	}
	if oc.GetExpect() != nil {
		return nil, invalid("on_connect.expect", "not on a listener: a banner is written, nothing is awaited; unset it")
	}
	if oc.GetTimeout() != nil {
		return nil, invalid("on_connect.timeout", "not on a listener: it goes with expect; unset it")
	}
	b := &listener.Banner{Framed: oc.GetFramed()}
	switch p := oc.GetPayload().(type) {
	case *tcpgatev1.OnConnect_Text:
		b.Payload, b.Template = []byte(p.Text), true
	case *tcpgatev1.OnConnect_Data:
		b.Payload = p.Data
	default:
		return nil, invalid("on_connect", "text or data is required")
	}
	if len(b.Payload) == 0 {
		return nil, invalid("on_connect", "text or data must not be empty")
	}
	if limit := s.cfg.MaxSendBytes; limit > 0 && len(b.Payload) > limit {
		return nil, invalidLimit("on_connect", "--max-send-bytes", int64(limit), "%d bytes is more than --max-send-bytes (%d)", len(b.Payload), limit)
	}
	return b, nil
}

// bannerToProto is the reverse of bannerFromProto.
func bannerToProto(b *listener.Banner) *tcpgatev1.OnConnect {
	if b == nil {
		return nil
	}
	oc := &tcpgatev1.OnConnect{Framed: b.Framed}
	if b.Template {
		oc.Payload = &tcpgatev1.OnConnect_Text{Text: string(b.Payload)}
	} else {
		oc.Payload = &tcpgatev1.OnConnect_Data{Data: b.Payload}
	}
	return oc
}
