package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

func textRule(kind tcpgatev1.MatchKind, match, reply string) *tcpgatev1.ReplyRule {
	r := &tcpgatev1.ReplyRule{Kind: kind, Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: reply}}
	if kind == tcpgatev1.MatchKind_MATCH_KIND_REGEX {
		r.Match = &tcpgatev1.ReplyRule_Regex{Regex: match}
	} else {
		r.Match = &tcpgatev1.ReplyRule_Text{Text: match}
	}
	return r
}

// ruleListener starts a line listener with rules and an echo fallback and
// returns it with a client connected to it.
func ruleListener(t *testing.T, g *servertest.Gateway, rules ...*tcpgatev1.ReplyRule) (*tcpgatev1.Listener, *net.TCPConn, *bufio.Reader) {
	t.Helper()
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO, Rules: rules},
	})
	c := servertest.Dial(t, l.GetAddress())
	return l, c, bufio.NewReader(c)
}

func exchange(t *testing.T, c net.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("after %q: read %q, then %v", line, got, err)
	}
	return strings.TrimSuffix(got, "\n")
}

const (
	mExact    = tcpgatev1.MatchKind_MATCH_KIND_EXACT
	mPrefix   = tcpgatev1.MatchKind_MATCH_KIND_PREFIX
	mSuffix   = tcpgatev1.MatchKind_MATCH_KIND_SUFFIX
	mContains = tcpgatev1.MatchKind_MATCH_KIND_CONTAINS
	mRegex    = tcpgatev1.MatchKind_MATCH_KIND_REGEX
)

// Every match kind and template against a real listener and client: the
// first rule that matches answers, framed as a line, and a frame no rule
// matches gets the echo fallback.
func TestRuleTable(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	named := textRule(mExact, "PING", "PONG")
	named.Name = "ping"
	l, c, r := ruleListener(t, g,
		named,
		textRule(mPrefix, "GET ", "got"),
		textRule(mSuffix, "?", "question"),
		textRule(mContains, "err", "noted"),
		textRule(mRegex, `^SET (\w+)=(?P<value>\d+)$`, "{{1}} is {{value}} ({{0}})"),
		textRule(mExact, "escape", "{{{{1}} stays"),
		textRule(mExact, "unix", "{{.unix_ms}}"),
		textRule(mExact, "time", "{{.time}}"),
		textRule(mExact, "who", "{{.connection_id}} {{.listener_id}} {{.remote_address}}"),
		textRule(mPrefix, "P", "second"), // "PING" matched the first rule
	)
	for _, tc := range []struct{ send, want string }{
		{"PING", "PONG"},
		{"PINGS", "second"},
		{"ping", "ping"}, // no rule: the echo
		{"GET /x", "got"},
		{"really?", "question"},
		{"an error here", "noted"},
		{"SET a=42", "a is 42 (SET a=42)"},
		{"SET a=x", "SET a=x"},
		{"escape", "{{1}} stays"},
	} {
		if got := exchange(t, c, r, tc.send); got != tc.want {
			t.Errorf("%q: answered %q, want %q", tc.send, got, tc.want)
		}
	}
	// Hits per rule, by name or index: PING once, the prefix rule "P" once.
	for series, want := range map[string]float64{
		`tcpgate_rule_hits_total{connection_id="",listener_id="` + l.GetListenerId() + `",rule="ping"}`: 1,
		`tcpgate_rule_hits_total{connection_id="",listener_id="` + l.GetListenerId() + `",rule="9"}`:    1,
		`tcpgate_rule_hits_total{connection_id="",listener_id="` + l.GetListenerId() + `",rule="1"}`:    1,
		`tcpgate_rule_hits_total{connection_id="",listener_id="` + l.GetListenerId() + `",rule="4"}`:    1,
	} {
		if got := metric(t, g, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	before := time.Now().UnixMilli()
	ms, err := strconv.ParseInt(exchange(t, c, r, "unix"), 10, 64)
	if err != nil || ms < before-1000 || ms > time.Now().UnixMilli()+1000 {
		t.Errorf("{{.unix_ms}} gave %d (%v), want about %d", ms, err, before)
	}
	ts, err := time.Parse(time.RFC3339Nano, exchange(t, c, r, "time"))
	if err != nil || time.Since(ts).Abs() > time.Minute {
		t.Errorf("{{.time}} gave %v (%v), want now in RFC 3339", ts, err)
	}
	who := strings.Fields(exchange(t, c, r, "who"))
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections: %v, %v", conns, err)
	}
	cn := conns.GetConnections()[0]
	if want := []string{cn.GetConnectionId(), cn.GetListenerId(), c.LocalAddr().String()}; fmt.Sprint(who) != fmt.Sprint(want) {
		t.Errorf("variables gave %q, want %q", who, want)
	}
}

// Bytes rules for binary protocols, raw replies, and replies that close.
func TestRuleDataRawClose(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 1},
		AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{
			{Kind: mExact, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{0x01, 0xff}}, Reply: &tcpgatev1.ReplyRule_ReplyData{ReplyData: []byte{0xaa, 0x00}}},
			{Kind: mPrefix, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{0x02}}, Reply: &tcpgatev1.ReplyRule_ReplyData{ReplyData: []byte{0xbb}}, Raw: true},
			{Kind: mExact, Match: &tcpgatev1.ReplyRule_Data{Data: []byte{0x03}}, Reply: &tcpgatev1.ReplyRule_ReplyText{ReplyText: "bye"}, CloseAfter: true},
		}},
	})
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte{2, 0x01, 0xff, 2, 0x02, 0x07, 1, 0x09, 1, 0x03, 1, 0x01}); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	// The first reply framed (a length prefix), the second raw, none for
	// the frame no rule matches, the third framed and then the close: the
	// frame after it gets nothing.
	want := []byte{2, 0xaa, 0x00, 0xbb, 3, 'b', 'y', 'e'}
	if string(got) != string(want) {
		t.Errorf("client read % x, want % x", got, want)
	}
	closed := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_RULE {
		t.Errorf("closed with %v, want CLOSED_BY_RULE", closed.GetCloseReason())
	}
}

// A delayed reply holds the replies after it, so they keep the frames'
// order, while the frames are read and published at once.
func TestRuleDelayKeepsOrder(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	slow := textRule(mExact, "slow", "S")
	slow.Delay = durationpb.New(300 * time.Millisecond)
	l, c, r := ruleListener(t, g, slow, textRule(mExact, "fast", "F"))
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{l.GetListenerId()}})
	start := time.Now()
	if _, err := io.WriteString(c, "slow\nfast\nplain\n"); err != nil {
		t.Fatal(err)
	}
	// All three frames are published before the delayed reply is due.
	for _, want := range []string{"slow", "fast", "plain"} {
		if e := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA); e.GetText() != want {
			t.Fatalf("DATA %q, want %q", e.GetText(), want)
		}
	}
	published := time.Since(start)
	var got []string
	for range 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.TrimSuffix(line, "\n"))
	}
	if fmt.Sprint(got) != "[S F plain]" {
		t.Errorf("replies %q, want S, F, plain in the frames' order", got)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("the delayed reply came after %s, before its delay", time.Since(start))
	}
	t.Logf("frames published after %s, replies after %s", published, time.Since(start))
}

// A frame a rule answers is never the reply to a Send: the device's ping
// in the middle of a request and its reply is answered by the rule and
// skipped by the Send.
func TestRuleFrameAnswersNoSend(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	_, c, r := ruleListener(t, g, textRule(mExact, "PING", "PONG"))
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections: %v, %v", conns, err)
	}
	id := conns.GetConnections()[0].GetConnectionId()
	go func() {
		line, err := r.ReadString('\n')
		if err != nil || line != "request\n" {
			return
		}
		_, _ = io.WriteString(c, "PING\nreply\n")
	}()
	resp, err := awaitSend(t, g, id, "request\n", 5*time.Second, &tcpgatev1.AwaitReply{})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(payloadOf(resp.GetReply())); got != "reply" {
		t.Errorf("Send's reply %q, want the frame after the rule's", got)
	}
}

// Rules answer an outbound connection's peer too: a device's keep-alive
// ping is answered by the gateway.
func TestRuleOutbound(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(servertest.Wait))
		_, _ = io.WriteString(c, "PING 7\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			got <- err.Error()
			return
		}
		got <- line
	}()
	cn := g.Connect(t, &tcpgatev1.ConnectRequest{
		Address:   ln.Addr().String(),
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mRegex, `^PING (\d+)$`, "PONG {{1}}")}},
	})
	if line := <-got; line != "PONG 7\n" {
		t.Errorf("device read %q, want PONG 7", line)
	}
	if series := `tcpgate_rule_hits_total{connection_id="` + cn.GetConnectionId() + `",listener_id="",rule="0"}`; metric(t, g, series) != 1 {
		t.Errorf("%s = %v, want 1", series, metric(t, g, series))
	}
}

// A listener's banner is written first, its template rendered for each
// connection.
func TestBanner(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "welcome {{.connection_id}}"}, Framed: true},
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
	})
	if l.GetOnConnect().GetText() != "welcome {{.connection_id}}" {
		t.Errorf("listener's on_connect %v, want the banner as started", l.GetOnConnect())
	}
	c := servertest.Dial(t, l.GetAddress())
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections: %v, %v", conns, err)
	}
	if want := "welcome " + conns.GetConnections()[0].GetConnectionId() + "\n"; line != want {
		t.Errorf("banner %q, want %q", line, want)
	}
	if got := exchange(t, c, r, "x"); got != "x" {
		t.Errorf("echo after the banner %q", got)
	}
}

// Bad rules and banners are refused at StartListener and Connect, each
// naming its field.
func TestRuleErrors(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	many := make([]*tcpgatev1.ReplyRule, 65)
	for i := range many {
		many[i] = textRule(mExact, "x", "y")
	}
	bad := []*tcpgatev1.ReplyRule{textRule(mExact, "a", "b"), textRule(mExact, "c", "d"), textRule(mExact, "e", "f"), textRule(mRegex, "(unclosed", "x")}
	for _, tc := range []struct {
		name  string
		req   *tcpgatev1.StartListenerRequest
		field string
	}{
		{"too many rules", &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Rules: many}}, "auto_reply.rules"},
		{"bad regex", &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Rules: bad}}, "auto_reply.rules[3].regex"},
		{"unknown variable", &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mExact, "a", "{{.nope}}")}}}, "auto_reply.rules[0].reply_text"},
		{"handler timeout", &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{HandlerTimeout: durationpb.New(2 * time.Hour)}}, "auto_reply.handler_timeout"},
		{"banner template", &tcpgatev1.StartListenerRequest{OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "hi {{.connection_id"}}}, "on_connect.text"},
		{"banner expect", &tcpgatev1.StartListenerRequest{OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "hi"}, Expect: &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: "x"}}}}, "on_connect.expect"},
		{"banner with forward", &tcpgatev1.StartListenerRequest{OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "hi"}}, Forward: &tcpgatev1.Forward{Address: "127.0.0.1:1"}}, "forward"},
	} {
		tc.req.Host = "127.0.0.1"
		_, err := g.Client.StartListener(servertest.Context(t), tc.req)
		e := servertest.ErrorOf(err)
		if e.Code != codes.InvalidArgument || e.Meta["field"] != tc.field || len(e.Fields) != 1 || e.Fields[0] != tc.field {
			t.Errorf("%s: %v %q (field %q, violations %q), want InvalidArgument naming %s", tc.name, e.Code, e.Message, e.Meta["field"], e.Fields, tc.field)
		}
	}
	_, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{Address: "127.0.0.1:1", AutoReply: &tcpgatev1.AutoReply{Rules: bad}})
	if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Meta["field"] != "auto_reply.rules[3].regex" {
		t.Errorf("Connect with a bad regex: %v %q (field %q), want InvalidArgument naming auto_reply.rules[3].regex", e.Code, e.Message, e.Meta["field"])
	}
}
