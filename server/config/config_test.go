package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/config"
)

// write puts text in a config file of a fresh directory.
func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tcpgate.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A file that does not decode names its line and field.
func TestLoadBadFiles(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		line  int
		field string
		msg   string
	}{
		{"unknown top-level key", "listeners: []\nlistner: 1\n", 2, "listner", "unknown field"},
		{"unknown listener field", "listeners:\n  - listenerId: a\n    prot: 5000\n", 3, "listeners[0].prot", "unknown field"},
		{"port not a number", "listeners:\n  - listenerId: a\n    port: high\n", 3, "listeners[0].port", "integer"},
		{"bad enum", "listeners:\n  - listenerId: a\n    framing:\n      mode: FRAMING_MODE_LINES\n", 4, "listeners[0].framing.mode", "unknown enum value"},
		{"proto names too", "listeners:\n  - listener_id: a\n    auto_reply:\n      mode: NOPE\n", 4, "listeners[0].auto_reply.mode", "enum"},
		{"rule field unknown", "listeners:\n  - listenerId: a\n    autoReply:\n      rules:\n        - kind: MATCH_KIND_REGEX\n          regexp: x\n", 6, "listeners[0].auto_reply.rules[0].regexp", "unknown field"},
		{"listener without id", "listeners:\n  - port: 5000\n", 2, "listeners[0]", "listener_id is required"},
		{"connection without id", "connections:\n  - address: 127.0.0.1:7\n", 2, "connections[0]", "connection_id is required"},
		{"listener id twice", "listeners:\n  - listenerId: a\n  - listenerId: a\n", 3, "listeners[1].listener_id", "declared twice (first at line 2)"},
		{"bad yaml", "listeners: []\n\tport: 1\n", 2, "", "cannot start any token"},
		{"not a mapping", "- a\n- b\n", 1, "", "expected a mapping"},
		{"serve not a mapping", "serve: [a]\n", 1, "serve", "expected fields"},
		{"serve value a mapping", "serve:\n  grpc-addr:\n    a: b\n", 3, "serve.grpc-addr", "scalar"},
		{"listeners not a list", "listeners:\n  listenerId: a\n", 2, "listeners", "expected sequence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := write(t, tt.text)
			_, err := config.Load(p)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load: %v, want a *config.Error", err)
			}
			if ce.File != p || ce.Line != tt.line || ce.Field != tt.field || !strings.Contains(ce.Msg, tt.msg) {
				t.Fatalf("error %+v, want line %d, field %q, message with %q", ce, tt.line, tt.field, tt.msg)
			}
			if want := p + ":"; !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
		})
	}
}

// A file that decodes: JSON and proto names alike, the serve: section in
// order, TLS paths relative to the file's directory.
func TestLoad(t *testing.T) {
	p := write(t, `# a gateway
listeners:
  - listenerId: echo
    host: 127.0.0.1
    port: 0
    autoReply: {mode: AUTO_REPLY_MODE_ECHO}
  - listener_id: tls
    tls:
      cert_file: certs/server.pem
      keyFile: /etc/tcpgate/server.key
connections:
  - connectionId: up
    address: 127.0.0.1:7
    tls: {caFile: ca.pem, serverName: up}
serve:
  grpc-addr: 127.0.0.1:0
  cors-origins: [https://a.example, https://b.example]
  ui: false
`)
	f, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(p)
	ls := f.Config.GetListeners()
	if len(ls) != 2 || ls[0].GetListenerId() != "echo" || ls[0].GetAutoReply().GetMode() != tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO || ls[1].GetListenerId() != "tls" {
		t.Fatalf("listeners %v", ls)
	}
	if got, want := ls[1].GetTls().GetCertFile(), filepath.Join(dir, "certs/server.pem"); got != want {
		t.Errorf("cert_file %q, want %q", got, want)
	}
	if got := ls[1].GetTls().GetKeyFile(); got != "/etc/tcpgate/server.key" {
		t.Errorf("absolute key_file became %q", got)
	}
	if got, want := f.Config.GetConnections()[0].GetTls().GetCaFile(), filepath.Join(dir, "ca.pem"); got != want {
		t.Errorf("ca_file %q, want %q", got, want)
	}
	want := []config.Flag{
		{Name: "grpc-addr", Values: []string{"127.0.0.1:0"}, Line: 16},
		{Name: "cors-origins", Values: []string{"https://a.example", "https://b.example"}, Line: 17},
		{Name: "ui", Values: []string{"false"}, Line: 18},
	}
	if len(f.Serve) != len(want) {
		t.Fatalf("serve %v, want %v", f.Serve, want)
	}
	for i := range want {
		if f.Serve[i].Name != want[i].Name || strings.Join(f.Serve[i].Values, ",") != strings.Join(want[i].Values, ",") || f.Serve[i].Line != want[i].Line {
			t.Errorf("serve[%d] = %+v, want %+v", i, f.Serve[i], want[i])
		}
	}
	for field, line := range map[string]int{
		"listeners[0].auto_reply.mode": 6, "listeners[0].auto_reply": 6, "listeners[1].tls.cert_file": 9,
		"listeners[1].tls.key_file": 10, "connections[0].address": 13,
		// A field the file does not set is at its nearest parent's line.
		"listeners[0].auto_reply.rules[2].regex": 6, "listeners[1].framing.mode": 7,
	} {
		if got := f.Line(field); got != line {
			t.Errorf("Line(%s) = %d, want %d", field, got, line)
		}
	}
}

// An empty file declares nothing, and is no error.
func TestLoadEmpty(t *testing.T) {
	for _, text := range []string{"", "# nothing\n", "listeners: []\n"} {
		f, err := config.Load(write(t, text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if len(f.Config.GetListeners())+len(f.Config.GetConnections())+len(f.Serve) != 0 {
			t.Fatalf("%q declares %v", text, f.Config)
		}
	}
}

func TestLoadMissing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "none.yaml")
	_, err := config.Load(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+": ") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

// ChangedFlags names the serve: keys set, changed or removed.
func TestChangedFlags(t *testing.T) {
	a, err := config.Load(write(t, "serve:\n  grpc-addr: a\n  allow-dial: [x, y]\n  node-id: n\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := config.Load(write(t, "serve:\n  grpc-addr: a\n  allow-dial: [x]\n  idle-timeout: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(b.ChangedFlags(a), " "); got != "allow-dial idle-timeout node-id" {
		t.Fatalf("ChangedFlags = %q", got)
	}
}
