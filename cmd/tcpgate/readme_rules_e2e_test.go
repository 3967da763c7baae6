package main_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// rulesListener is what the walkthrough learned of a listener it started.
type rulesListener struct {
	id, addr string
	rules    []string // its --rule arguments, as written
}

var (
	// rulesPort finds the ports of the section's commands: a listen's,
	// and an address's.
	rulesPort = regexp.MustCompile(`(\$T listen |127\.0\.0\.1:)(\d+)\b`)
	// rulesArg is one --rule argument as the README quotes it.
	rulesArg = regexp.MustCompile(`--rule '([^']*)'`)
	// rulesStarted is `tcpgate listen`'s answer.
	rulesStarted = regexp.MustCompile(`^listener (\S+) listening on (\S+) \(framing (\S+)\)\n$`)
	// rulesTime is an RFC 3339 time in a comment of the README.
	rulesTime = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
)

// TestReadmeRulesWalkthrough runs every sh and bash block of the README's
// section "Reply rules" as pasted, with the built binary as $T against a
// daemon of its own, the README's ports replaced by free ones and the
// server that `tcpgate connect` reaches played by the test: a line server
// that sends PING. Every command must exit 0; a send must print what its
// comment says it prints (a time there stands for any time in RFC 3339),
// and the test plays the client of each listener the second block starts,
// as its comment describes it.
func TestReadmeRulesWalkthrough(t *testing.T) {
	t.Parallel()
	const section = "Reply rules"
	var code []codeBlock
	for _, b := range readmeBlocks(t) {
		if strings.HasPrefix(b.section, section) && (b.lang == "sh" || b.lang == "bash") {
			code = append(code, b)
		}
	}
	if len(code) == 0 {
		t.Fatalf("README section %q has no sh or bash block", section)
	}

	// The server of the connect: it sends PING and reports the answer,
	// then holds the connection until the test ends, so that the gateway
	// has no reason to reconnect.
	answers := make(chan string, 4)
	done := make(chan struct{})
	pinger := servertest.Peer(t, func(c net.Conn) {
		if _, err := io.WriteString(c, "PING\n"); err != nil {
			return
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		select {
		case answers <- line:
		default:
		}
		<-done
	})
	t.Cleanup(func() { close(done) }) // before the peer's cleanup, which waits
	_, pingerPort, _ := net.SplitHostPort(pinger)

	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"T": tcpgateBin})
	sh.env = append(sh.env, "TCPGATE_SERVER="+g.grpcAddr)

	var (
		ports     = map[string]string{} // README port -> the test's
		listeners = map[string]*rulesListener{}
		sub       *subscription
		checked   = map[string]bool{}
	)
	for _, b := range code {
		for _, c := range splitCommands(t, b) {
			var portErr error
			c.text = rulesPort.ReplaceAllStringFunc(c.text, func(m string) string {
				sm := rulesPort.FindStringSubmatch(m)
				p, ok := ports[sm[2]]
				switch {
				case ok:
				case sm[1] == "$T listen ":
					p = freePort(t)
				case strings.HasPrefix(c.text, "$T connect "):
					p = pingerPort // a server's, not the gateway's
				default:
					portErr = fmt.Errorf("names port %s, which no command before it listens on", sm[2])
					return m
				}
				ports[sm[2]] = p
				sh.ports = append(sh.ports, p)
				return sm[1] + p
			})
			if portErr != nil {
				t.Fatalf("README.md:%d: %v:\n%s", c.line, portErr, c.text)
			}
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			comment := trailingComment(text)
			out := sh.mustRun(t, c, text)
			where := fmt.Sprintf("README.md:%d: %s\n", c.line, text)

			switch {
			case strings.HasPrefix(text, "$T listen "):
				m := rulesStarted.FindStringSubmatch(out)
				port := rulesPort.FindStringSubmatch(text)[2]
				framing := "raw"
				if f := regexp.MustCompile(`--framing (\S+)`).FindStringSubmatch(text); f != nil {
					framing = f[1]
				}
				if m == nil || m[2] != "127.0.0.1:"+port || m[3] != framing {
					t.Fatalf("%sprinted %q, want \"listener ID listening on 127.0.0.1:%s (framing %s)\"", where, out, port, framing)
				}
				l := &rulesListener{id: m[1], addr: m[2]}
				for _, r := range rulesArg.FindAllStringSubmatch(text, -1) {
					l.rules = append(l.rules, r[1])
				}
				listeners[l.id] = l
				if sub == nil {
					// Live before any frame is sent, for the closes.
					sub = subscribe(t, g.grpcAddr, map[string]any{})
					sub.sync(t, l.addr)
				}
				if comment != "" {
					checked[comment] = true
					rulesClient(t, where, comment, l, sub, g.httpAddr)
				}

			case strings.HasPrefix(text, "$T send "):
				if comment == "" {
					t.Fatalf("%shas no comment saying what it prints", where)
				}
				// What the comment says it prints comes before any ": "
				// or ", " that explains it. A line reply is printed
				// without its newline; other replies as they came, with
				// the newline the listeners' replies end in.
				want := comment
				for _, sep := range []string{": ", ", "} {
					want, _, _ = strings.Cut(want, sep)
				}
				got := out
				if !strings.Contains(text, "--await line") {
					if !strings.HasSuffix(got, "\n") {
						t.Errorf("%sprinted %q, want it to end with a newline", where, got)
					}
					got = strings.TrimSuffix(got, "\n")
				}
				if loc := rulesTime.FindStringIndex(want); loc != nil {
					re := regexp.MustCompile(`^` + regexp.QuoteMeta(want[:loc[0]]) + `(\S+)` + regexp.QuoteMeta(want[loc[1]:]) + `$`)
					m := re.FindStringSubmatch(got)
					if m == nil {
						t.Errorf("%sprinted %q, want %q with any time", where, out, want)
						break
					}
					if ts, err := time.Parse(time.RFC3339Nano, m[1]); err != nil || !strings.HasSuffix(m[1], "Z") {
						t.Errorf("%sprinted the time %q, want RFC 3339 in UTC (%v, %v)", where, m[1], ts, err)
					}
					checked["time"] = true
					break
				}
				if got != want {
					t.Errorf("%sprinted %q, want %q (its comment: %s)", where, out, want, comment)
				}
				checked["send "+want] = true
				if strings.Contains(text, "--await close") {
					// "and the gateway closes": by its rule.
					rulesClosedByRule(t, where, sub, func(e eventJSON) bool {
						return e.Kind == kindData && e.payload() == "QUIT"
					})
					checked["close"] = true
				}

			case strings.HasPrefix(text, "$T listener "):
				checked["listener"] = true
				id := strings.Fields(text)[2]
				l := listeners[id]
				if l == nil {
					t.Fatalf("%sshows %q, a listener the section did not start", where, id)
				}
				var rules []string
				for _, m := range regexp.MustCompile(`(?m)^rule (\d+): +(.*)$`).FindAllStringSubmatch(out, -1) {
					if m[1] != fmt.Sprint(len(rules)) {
						t.Errorf("%sprinted rule %s after %d rules", where, m[1], len(rules))
					}
					rules = append(rules, m[2])
				}
				if !slices.Equal(rules, l.rules) || !regexp.MustCompile(`(?m)^id: +`+id+`$`).MatchString(out) ||
					!regexp.MustCompile(`(?m)^address: +`+regexp.QuoteMeta(l.addr)+`$`).MatchString(out) {
					t.Errorf("%sprinted\n%s\nwant %s on %s with the rules %q, as written", where, out, id, l.addr, l.rules)
				}

			case strings.HasPrefix(text, "$T update "):
				checked["update"] = true
				id := strings.Fields(text)[2]
				l := listeners[id]
				if l == nil || out != "listener "+id+" updated on "+l.addr+": auto_reply\n" {
					t.Fatalf("%sprinted %q, want \"listener %s updated on ADDR: auto_reply\" on its old address", where, out, id)
				}
				l.rules = nil
				for _, r := range rulesArg.FindAllStringSubmatch(text, -1) {
					l.rules = append(l.rules, r[1])
				}

			case strings.HasPrefix(text, "$T stop "):
				checked["stop"] = true
				id := strings.Fields(text)[2]
				l := listeners[id]
				if l == nil || !strings.HasPrefix(out, "listener "+id+" stopped: ") {
					t.Fatalf("%sprinted %q, want \"listener %s stopped: ...\"", where, out, id)
				}
				if ln, err := net.Listen("tcp", l.addr); err != nil {
					t.Errorf("%s still bound after the stop: %v", l.addr, err)
				} else {
					ln.Close()
				}

			case strings.HasPrefix(text, "$T connect "):
				checked["connect"] = true
				if !regexp.MustCompile(`^connection c-[a-z2-7]{10} open to ` + regexp.QuoteMeta(pinger) + ` \(generation 1\)\n$`).MatchString(out) {
					t.Errorf("%sprinted %q, want the connection open to %s", where, out, pinger)
				}
				if !strings.HasPrefix(comment, "answer the pings") {
					t.Errorf("%shas the comment %q; the test plays a server that pings", where, comment)
				}
				select {
				case a := <-answers:
					if a != "PONG\n" {
						t.Errorf("%sthe server's PING was answered %q, want \"PONG\\n\"", where, a)
					}
				case <-time.After(eventTimeout):
					t.Errorf("%sthe server's PING had no answer within %v", where, eventTimeout)
				}

			default:
				t.Fatalf("%sis a command the test does not know how to check", where)
			}
		}
	}

	for _, what := range []string{"send PONG", "send 200 OK", "send OK color is blue", "time", "send hello", "send bye", "close",
		"listener", "update", "send hi", "stop", "send welcome to hello", "connect",
		"ACK a binary request", "hang up on errors", "ok, a quarter second late", `replies "a=b;c"`} {
		if !checked[what] {
			t.Errorf("README section %q has no command the test recognizes as %q", section, what)
		}
	}
	g.d.stop(t)
}

// rulesClient plays the client that the comment of a listen command
// describes, on listener l.
func rulesClient(t *testing.T, where, comment string, l *rulesListener, sub *subscription, httpAddr string) {
	t.Helper()
	c, local := dialLocal(t, l.addr)
	_ = c.SetDeadline(time.Now().Add(eventTimeout))
	write := func(p string) {
		t.Helper()
		if _, err := io.WriteString(c, p); err != nil {
			t.Fatalf("%swriting %q: %v", where, p, err)
		}
	}
	switch comment {
	case "ACK a binary request":
		// A request 02 00 01, in a 2-byte length prefix; the ACK 06 in one.
		write("\x00\x03\x02\x00\x01")
		if got := readN(t, c, 3); got != "\x00\x01\x06" {
			t.Errorf("%sthe request was answered % x, want 00 01 06", where, got)
		}
	case "hang up on errors":
		write("all is well\nan error occurred\n")
		got, err := io.ReadAll(c)
		if errors.Is(err, os.ErrDeadlineExceeded) || len(got) > 0 {
			t.Errorf("%sthe client read %q (%v), want the connection closed with nothing written", where, got, err)
		}
		rulesClosedByRule(t, where, sub, func(e eventJSON) bool {
			return e.Kind == kindConnectionOpened && e.RemoteAddress == local
		})
	case "ok, a quarter second late":
		write("slow\n")
		if got := readN(t, c, 3); got != "ok\n" {
			t.Errorf("%sslow was answered %q, want \"ok\\n\"", where, got)
		}
		// name=slow: the rule's label in its hit counter.
		want := fmt.Sprintf(`tcpgate_rule_hits_total{connection_id="",listener_id=%q,rule="slow"} 1`, l.id)
		if m := rulesMetrics(t, httpAddr); !slices.Contains(strings.Split(m, "\n"), want) {
			t.Errorf("%sGET /metrics has no line %s:\n%s", where, want, m)
		}
	case `replies "a=b;c"`:
		write("x\n")
		if got := readN(t, c, len("a=b;c\n")); got != "a=b;c\n" {
			t.Errorf("%sx was answered %q, want \"a=b;c\\n\"", where, got)
		}
	default:
		t.Fatalf("%shas the comment %q, a client the test does not know how to play", where, comment)
	}
	c.Close()
}

// rulesClosedByRule waits for the connection of the first event that
// matches to be closed with CLOSE_REASON_CLOSED_BY_RULE.
func rulesClosedByRule(t *testing.T, where string, sub *subscription, match func(eventJSON) bool) {
	t.Helper()
	_, e := sub.waitFor(t, 0, "event of the connection to be closed", match)
	_, closed := sub.waitFor(t, 0, "CONNECTION_CLOSED of "+e.ConnectionID, func(c eventJSON) bool {
		return c.Kind == kindConnectionClosed && c.ConnectionID == e.ConnectionID
	})
	if closed.CloseReason != "CLOSE_REASON_CLOSED_BY_RULE" {
		t.Errorf("%sconnection %s closed with %s, want CLOSE_REASON_CLOSED_BY_RULE", where, e.ConnectionID, closed.CloseReason)
	}
}

// rulesMetrics returns the gateway's GET /metrics.
func rulesMetrics(t *testing.T, httpAddr string) string {
	t.Helper()
	// No idle connection is left for goleak to find.
	client := &http.Client{Timeout: callTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", resp.StatusCode, err)
	}
	return string(b)
}

// trailingComment returns the text of a command's comment, after a # that
// starts a word outside quotes, or "" when it has none.
func trailingComment(s string) string {
	var single, double, escaped bool
	for i, r := range s {
		switch {
		case escaped:
			escaped = false
		case single:
			single = r != '\''
		case r == '\\':
			escaped = true
		case double:
			double = r != '"'
		case r == '\'':
			single = true
		case r == '"':
			double = true
		case r == '#' && i > 0 && (s[i-1] == ' ' || s[i-1] == '\t'):
			return strings.TrimSpace(s[i+1:])
		}
	}
	return ""
}
