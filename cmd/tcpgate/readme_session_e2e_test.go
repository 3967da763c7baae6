package main_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeSessionLogin runs the README's session login block as pasted,
// with curl and its cookie jar, against a daemon with a token: the login
// sets the cookie, the cookie reads and (with the Origin) acts, and after
// the logout the cookie the jar held is refused.
func TestReadmeSessionLogin(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	var block *codeBlock
	for _, b := range sectionBlocks(t, readmeBlocks(t), "Security", "sh") {
		if strings.Contains(b.text, "/v1/session") {
			block = &b
		}
	}
	if block == nil {
		t.Fatal("README.md's Security section has no sh block of /v1/session")
	}

	const token = "readme-session-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--auth-token-file", tokenFile)
	g := gateway{d: d, grpcAddr: d.waitServing(t)}
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("tcpgate logged no http_addr:\n%s", d.stderr.String())
	}
	g.httpAddr = strings.Trim(m[1], `"`)
	sh := newSnippetShell(t, g, map[string]string{})
	if err := os.WriteFile(filepath.Join(sh.dir, "token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// What each command prints, in order.
	wants := []string{
		`{"login_required":true,"authenticated":true,"expires_at":"`,
		`{"header":{"incarnation":`, // no listener yet: the header only
		`"state":"LISTENER_STATE_LISTENING"`,
		`{"login_required":true,"authenticated":false}`,
	}
	cmds := splitCommands(t, *block)
	if len(cmds) != len(wants) {
		t.Fatalf("README.md:%d: %d commands, the test knows %d", block.line, len(cmds), len(wants))
	}
	var session string // the cookie the jar held
	for i, c := range cmds {
		text, ok := sh.prepare(t, c)
		if !ok {
			t.Fatalf("README.md:%d: %s: not a command", c.line, c.text)
		}
		out := sh.mustRun(t, c, text)
		if !strings.Contains(out, wants[i]) {
			t.Fatalf("README.md:%d: %s\nprinted %s, want %s", c.line, text, out, wants[i])
		}
		if i == 0 {
			jar, err := os.ReadFile(filepath.Join(sh.dir, "jar"))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(string(jar), "\n") {
				if f := strings.Split(l, "\t"); len(f) == 7 && f[5] == "tcpgate_session" {
					session = f[6]
				}
			}
			if session == "" {
				t.Fatalf("the jar holds no session cookie:\n%s", jar)
			}
		}
	}
	if jar, _ := os.ReadFile(filepath.Join(sh.dir, "jar")); strings.Contains(string(jar), session) {
		t.Fatalf("the jar still holds the session after the logout:\n%s", jar)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.httpAddr+"/v1/listeners", nil)
	req.Header.Set("Cookie", "tcpgate_session="+session)
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the logged-out cookie, replayed: %d, want 401", resp.StatusCode)
	}
	if strings.Contains(d.stderr.String(), token) {
		t.Fatalf("the daemon logged the token:\n%s", d.stderr.String())
	}
}
