package main_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// echoOnce writes a line to c and returns the line read back.
func echoOnce(t *testing.T, c net.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(callTimeout))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		t.Fatalf("writing %q: %v", line, err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the echo of %q: %v", line, err)
	}
	return strings.TrimSuffix(got, "\n")
}

// TestReadmeServiceSnippets runs the README's section "Running as a
// service" with the built binary: its config file (on free ports) starts
// the declared listener as SOURCE_CONFIG, below a flag in precedence; a
// client stays connected across a SIGHUP that adds a listener and a Reload
// over REST with curl, as the section shows; a bad file changes nothing;
// the systemd unit it quotes is the one in docs/examples.
func TestReadmeServiceSnippets(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	yamls := sectionBlocks(t, readmeBlocks(t), "Running as a service", "yaml")
	shs := sectionBlocks(t, readmeBlocks(t), "Running as a service", "sh")
	if len(yamls) != 1 || len(shs) != 1 {
		t.Fatalf("README section \"Running as a service\" has %d yaml and %d sh blocks, want 1 and 1", len(yamls), len(shs))
	}
	port, second := freePort(t), freePort(t)
	text := yamls[0].text
	for old, repl := range map[string]string{
		"port: 7000": fmt.Sprintf("port: %s", port), "grpc-addr: 127.0.0.1:50051": "grpc-addr: 127.0.0.1:0",
		"http-addr: 127.0.0.1:50080": "http-addr: 127.0.0.1:0", "log-level: info": "log-level: info\n  node-id: fromfile",
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("README.md:%d: the config file has no %q", yamls[0].line, old)
		}
		text = strings.Replace(text, old, repl, 1)
	}
	path := filepath.Join(t.TempDir(), "tcpgate.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env := slicesWithout(hermeticEnv(), "TCPGATE_HTTP_ADDR=")
	d := startDaemon(t, env, "serve", "--config", path, "--node-id", "fromflag")
	addr := d.waitServing(t)
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no http_addr in the serving line:\n%s", d.stderr.String())
	}
	httpAddr := strings.Trim(m[1], `"`)
	api := servertest.Client(t, addr)
	ctx := servertest.Context(t)
	l, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if l.GetListener().GetSource() != tcpgatev1.Source_SOURCE_CONFIG || l.GetHeader().GetNodeId() != "fromflag" {
		t.Fatalf("declared listener %v, header %v: want SOURCE_CONFIG and the flag's node id over the file's", l.GetListener(), l.GetHeader())
	}
	c := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%s", port))
	r := bufio.NewReader(c)
	if got := echoOnce(t, c, r, "one"); got != "one" {
		t.Fatalf("echo %q", got)
	}

	// SIGHUP after adding a listener: it starts, echo stays, its client too.
	added := strings.Replace(text, "connections: []", fmt.Sprintf("  - listenerId: second\n    host: 127.0.0.1\n    port: %s\n    framing: {mode: FRAMING_MODE_LINE}\n    autoReply: {mode: AUTO_REPLY_MODE_ECHO}\nconnections: []", second), 1)
	if err := os.WriteFile(path, []byte(added), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	servertest.Eventually(t, "the reload after SIGHUP to be logged", func() bool {
		return strings.Contains(d.stderr.String(), `msg="reload done"`)
	})
	if log := d.stderr.String(); !strings.Contains(log, "listeners_added=[second]") || !strings.Contains(log, "listeners_unchanged=[echo]") {
		t.Fatalf("reload log does not say what changed:\n%s", log)
	}
	c2 := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%s", second))
	if got := echoOnce(t, c2, bufio.NewReader(c2), "two"); got != "two" {
		t.Fatalf("added listener echoed %q", got)
	}
	if got := echoOnce(t, c, r, "still"); got != "still" {
		t.Fatalf("echo after the reload %q", got)
	}

	// The README's curl, with a bad file: refused, naming line and field.
	curl := ""
	for _, line := range strings.Split(shs[0].text, "\n") {
		if strings.HasPrefix(line, "curl ") {
			curl = line
		}
	}
	if !strings.Contains(curl, "http://127.0.0.1:50080/v1/config:reload") || !strings.Contains(curl, "--json") {
		t.Fatalf("README.md:%d: no curl of /v1/config:reload in %q", shs[0].line, shs[0].text)
	}
	curl = strings.Replace(curl, "127.0.0.1:50080", httpAddr, 1)
	bad := strings.Replace(added, fmt.Sprintf("port: %s", second), "port: lots", 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("sh", "-c", curl).CombinedOutput()
	if !strings.Contains(string(out), "CONFIG_INVALID") || !strings.Contains(string(out), "listeners[1].port") || !strings.Contains(string(out), path+":") {
		t.Fatalf("%s with a bad file printed %s", curl, out)
	}
	if got := echoOnce(t, c2, bufio.NewReader(c2), "kept"); got != "kept" {
		t.Fatalf("a bad file changed the added listener: %q", got)
	}
	// And the good file again, removing second: curl prints the diff.
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("sh", "-c", curl).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"removed":["second"]`) || !strings.Contains(string(out), `"unchanged":["echo"]`) {
		t.Fatalf("%s printed %s (%v)", curl, out, err)
	}
	if got := echoOnce(t, c, r, "last"); got != "last" {
		t.Fatalf("echo after the second reload %q", got)
	}
	d.stop(t)

	// The unit the section quotes is the example file's.
	unit, err := os.ReadFile(filepath.Join("..", "..", "docs", "examples", "tcpgate.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"ExecStart=/usr/local/bin/tcpgate serve --config /etc/tcpgate/tcpgate.yaml", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(unit), "\n"+line+"\n") {
			t.Errorf("docs/examples/tcpgate.service has no line %q", line)
		}
	}
}

// slicesWithout drops the variables of env that start with prefix.
func slicesWithout(env []string, prefix string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, prefix) {
			out = append(out, kv)
		}
	}
	return out
}

// A config file that cannot start the daemon makes it exit non-zero
// naming the file, line and field, with nothing left bound.
func TestServeConfigRefused(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	first := freePort(t)
	dir := t.TempDir()
	tests := []struct {
		name, text, want string
	}{
		{"not a flag", "serve:\n  grpc-addr: 127.0.0.1:0\n  grpc-adr: x\n", "tcpgate.yaml:3: serve.grpc-adr: not a flag"},
		{"bad flag value", "serve:\n  idle-timeout: soon\n", "tcpgate.yaml:2: serve.idle-timeout: "},
		{"port in use", fmt.Sprintf("serve:\n  grpc-addr: 127.0.0.1:0\nlisteners:\n  - listenerId: a\n    host: 127.0.0.1\n    port: %s\n  - listenerId: b\n    host: 127.0.0.1\n    port: %d\n",
			first, taken.Addr().(*net.TCPAddr).Port), "tcpgate.yaml:9: listeners[1].port: "},
		{"unknown field", "listeners:\n  - listenerId: a\n    hots: x\n", "tcpgate.yaml:3: listeners[0].hots: unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "tcpgate.yaml")
			if err := os.WriteFile(path, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			out := runFailing(t, hermeticEnv("TCPGATE_GRPC_ADDR=127.0.0.1:0"), "serve", "--config", path)
			if !strings.Contains(out, filepath.Join(dir, tt.want)) {
				t.Fatalf("tcpgate serve --config printed:\n%s\nwant %q", out, tt.want)
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%s", first))
			if err != nil {
				t.Fatalf("the first listener was left bound: %v", err)
			}
			ln.Close()
		})
	}
}

// TestServeConfigEnvOverFile: a TCPGATE_* variable wins over the config
// file's serve: section, and the file over a flag's default.
func TestServeConfigEnvOverFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tcpgate.yaml")
	text := "serve:\n  grpc-addr: 127.0.0.1:0\n  http-addr: \"\"\n  node-id: fromfile\n  max-listeners: 3\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(slicesWithout(slicesWithout(hermeticEnv(), "TCPGATE_HTTP_ADDR="), "TCPGATE_NODE_ID="), "TCPGATE_NODE_ID=fromenv")
	d := startDaemon(t, env, "serve", "--config", path)
	api := servertest.Client(t, d.waitServing(t))
	ctx := servertest.Context(t)
	for i := range 4 {
		resp, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
		if i == 0 && (err != nil || resp.GetHeader().GetNodeId() != "fromenv") {
			t.Fatalf("StartListener: %v, header %v: want the variable's node id over the file's", err, resp.GetHeader())
		}
		if i == 3 {
			servertest.WantCode(t, err, codes.ResourceExhausted) // the file's max-listeners: 3
		}
	}
}
