package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// knSockSection is the README section this file runs.
const knSockSection = "kn-sock's example server, three ways"

// TestReadmeKnSock runs the README's section "kn-sock's example server,
// three ways" as pasted, against a gateway of its own: the rule, the
// tcpgate handle command and the Node WebSocket client each answer a
// client's line with "Message received" and its newline, and the
// printing half (subscribe, handle, the script) shows the line and its
// peer.
func TestReadmeKnSock(t *testing.T) {
	t.Parallel()
	code := sectionBlocks(t, readmeBlocks(t), knSockSection, "sh")
	if len(code) != 3 {
		t.Fatalf("README section %q has %d sh blocks, want 3 (rule, handle, node)", knSockSection, len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"T": tcpgateBin})
	sh.env = append(sh.env, "TCPGATE_SERVER="+g.grpcAddr)
	laddr := "127.0.0.1:" + sh.port
	script, err := filepath.Abs(filepath.Join("..", "..", "docs", "examples", "handle-ws.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	background := regexp.MustCompile(`\s&(\s+#.*)?$`)
	comment := regexp.MustCompile(`\s+#.*$`)

	// knSockClient is kn-sock's example client, with a line: it sends
	// "Hello, World!", reads the answer, and returns its local address.
	knSockClient := func(t *testing.T) string {
		t.Helper()
		c, local := dialLocal(t, laddr)
		if _, err := c.Write([]byte("Hello, World!\n")); err != nil {
			t.Fatal(err)
		}
		if got := readN(t, c, len("Message received\n")); got != "Message received\n" {
			t.Fatalf("the client read %q, want %q", got, "Message received\n")
		}
		c.Close()
		return local
	}
	// frameLine is what a handler prints for the client's line.
	frameLine := func(local, data string) *regexp.Regexp {
		return regexp.MustCompile(`(?m)^received from ` + regexp.QuoteMeta(local) + ` conn=c-[a-z2-7]{10} frame=\d+: ` + data + `$`)
	}

	t.Run("rule", func(t *testing.T) {
		var sub *proc
		listened := false
		for _, c := range splitCommands(t, code[0]) {
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			if background.MatchString(text) {
				sub = sh.start(t, c, background.ReplaceAllString(text, ""))
				sub.sync(t, laddr)
				continue
			}
			if strings.HasPrefix(text, "$T stop ") {
				if !listened || sub == nil {
					t.Fatalf("README.md:%d: stop before listen and subscribe", c.line)
				}
				local := knSockClient(t)
				sub.waitMatch(t, regexp.MustCompile(`(?m) data listener=knsock conn=c-[a-z2-7]{10} 13 bytes "Hello, World!"$`))
				sub.waitMatch(t, regexp.MustCompile(regexp.QuoteMeta(local)))
			}
			out := sh.mustRun(t, c, text)
			if strings.HasPrefix(text, "$T listen ") {
				listened = true
				if want := "listener knsock listening on " + laddr + " (framing line)\n"; !strings.HasPrefix(out, strings.TrimSuffix(want, "\n")) {
					t.Fatalf("README.md:%d: %s printed %q, want %q", c.line, text, out, want)
				}
			}
		}
		if sub == nil || !listened {
			t.Fatalf("the rule block has no listen and subscribe in the background")
		}
		if err := sub.interrupt(t); err != nil {
			t.Fatalf("subscribe after Ctrl-C: %v", err)
		}
	})

	t.Run("handle", func(t *testing.T) {
		var h *proc
		for _, c := range splitCommands(t, code[1]) {
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			if strings.HasPrefix(text, "$T handle ") {
				// It runs until Ctrl-C: in the background here.
				h = sh.start(t, c, comment.ReplaceAllString(text, ""))
				continue
			}
			sh.mustRun(t, c, text)
		}
		if h == nil {
			t.Fatal("the handle block has no tcpgate handle")
		}
		h.waitMatch(t, regexp.MustCompile(`(?m)^registered stream=\S+ group=\S+ max_in_flight=64$`))
		local := knSockClient(t)
		h.waitMatch(t, regexp.MustCompile(`(?m)^opened conn=c-[a-z2-7]{10} listener=knsock remote=`+regexp.QuoteMeta(local)+`$`))
		h.waitMatch(t, frameLine(local, `13 bytes "Hello, World!"`))
		h.waitMatch(t, regexp.MustCompile(`(?m)^closed conn=c-[a-z2-7]{10} reason=peer_closed$`))
		if err := h.interrupt(t); err != nil {
			t.Fatalf("tcpgate handle after Ctrl-C: %v\n%s", err, h.stderr.String())
		}
	})

	t.Run("node", func(t *testing.T) {
		if _, err := exec.LookPath("node"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("node (Node 20) is not installed: .ci/deps installs it")
			}
			t.Skip("node is not installed (on CI it is, and this fails)")
		}
		var n *proc
		for _, c := range splitCommands(t, code[2]) {
			text, ok := sh.prepare(t, c)
			if !ok {
				continue
			}
			if !strings.Contains(text, "node --experimental-websocket docs/examples/handle-ws.mjs knsock") {
				t.Fatalf("README.md:%d: %s: want the Node client of listener knsock", c.line, text)
			}
			n = sh.start(t, c, strings.ReplaceAll(text, "docs/examples/handle-ws.mjs", script))
		}
		if n == nil {
			t.Fatal("the node block has no command")
		}
		n.waitMatch(t, regexp.MustCompile(`(?m)^registered stream=\S+ group=\S+ max_in_flight=64$`))
		local := knSockClient(t)
		n.waitMatch(t, regexp.MustCompile(`(?m)^opened conn=c-[a-z2-7]{10} listener=knsock remote=`+regexp.QuoteMeta(local)+`$`))
		n.waitMatch(t, frameLine(local, `"Hello, World!"`))
		n.waitMatch(t, regexp.MustCompile(`(?m)^closed conn=c-[a-z2-7]{10} reason=CLOSE_REASON_PEER_CLOSED$`))
		if err := n.interrupt(t); err != nil {
			t.Fatalf("the Node client after Ctrl-C: %v\n%s", err, n.stderr.String())
		}
	})
	g.d.stop(t)
}
