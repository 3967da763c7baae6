package server_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/config"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	port, err := strconv.Atoi(servertest.RefusedAddr(t)[len("127.0.0.1:"):])
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// The config file's listeners and outbound connections start with the
// gateway as SOURCE_CONFIG; the API cannot stop a declared listener, and
// CloseConnection on a declared outbound connection makes it reconnect.
func TestConfigDeclared(t *testing.T) {
	up := servertest.NewLineServer(t, servertest.EchoLine)
	port := freePort(t)
	path := filepath.Join(t.TempDir(), "tcpgate.yaml")
	writeConfig(t, path, fmt.Sprintf(`listeners:
  - listenerId: echo
    host: 127.0.0.1
    port: %d
    framing: {mode: FRAMING_MODE_LINE}
    autoReply: {mode: AUTO_REPLY_MODE_ECHO}
connections:
  - connectionId: up
    address: %s
    framing: {mode: FRAMING_MODE_LINE}
    reconnect: {initialBackoff: 0.05s}
`, port, up.Addr()))
	g := servertest.Start(t, server.Config{ConfigFile: path})
	ctx := servertest.Context(t)

	l, err := g.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if l.GetListener().GetSource() != tcpgatev1.Source_SOURCE_CONFIG || l.GetListener().GetAddress() != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Fatalf("declared listener %v", l.GetListener())
	}
	c := servertest.Dial(t, l.GetListener().GetAddress())
	if got := exchange(t, c, bufio.NewReader(c), "hi"); got != "hi" {
		t.Fatalf("echo %q", got)
	}

	_, err = g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: "echo"})
	servertest.WantCode(t, err, codes.FailedPrecondition)
	if reason, meta := rpc.ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_DECLARED_IN_CONFIG || meta["file"] != path || !strings.Contains(err.Error(), path) {
		t.Fatalf("StopListener of a declared listener: %v (reason %v, meta %v)", err, reason, meta)
	}

	var conn *tcpgatev1.Connection
	servertest.Eventually(t, "the declared connection connected", func() bool {
		r, err := g.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "up"})
		conn = r.GetConnection()
		return err == nil && conn.GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if conn.GetSource() != tcpgatev1.Source_SOURCE_CONFIG || conn.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND {
		t.Fatalf("declared connection %v", conn)
	}
	if _, err := g.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: "up"}); err != nil {
		t.Fatalf("CloseConnection of a declared connection: %v", err)
	}
	servertest.Eventually(t, "the declared connection reconnected", func() bool {
		r, err := g.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "up"})
		return err == nil && r.GetConnection().GetGeneration() >= 2 && r.GetConnection().GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if up.Accepted() < 2 {
		t.Fatalf("the peer accepted %d connections, want a second", up.Accepted())
	}
}

// A daemon whose declared listener cannot bind does not start, names the
// file, line and field, and leaves none of the others bound.
func TestConfigBootAllOrNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	first := freePort(t)
	path := filepath.Join(t.TempDir(), "tcpgate.yaml")
	tests := []struct {
		name, text, want string
	}{
		{"port in use", fmt.Sprintf(`listeners:
  - listenerId: first
    host: 127.0.0.1
    port: %d
  - listenerId: second
    host: 127.0.0.1
    port: %d
`, first, taken.Addr().(*net.TCPAddr).Port), path + ":7: listeners[1].port: "},
		{"bad regex", fmt.Sprintf(`listeners:
  - listenerId: first
    host: 127.0.0.1
    port: %d
    autoReply:
      rules:
        - {kind: MATCH_KIND_EXACT, text: a, replyText: b}
        - kind: MATCH_KIND_REGEX
          regex: "("
          replyText: c
`, first), path + ":9: listeners[0].auto_reply.rules[1].regex: "},
		{"bad address", `connections:
  - connectionId: c
    address: nowhere
`, path + ":3: connections[0].address: "},
		{"listener on another node", fmt.Sprintf(`listeners:
  - listenerId: first
    host: 127.0.0.1
    port: %d
  - listenerId: second
    host: 127.0.0.1
    nodeId: elsewhere
`, first), path + ":7: listeners[1].node_id: "},
		{"connection on another node", `connections:
  - connectionId: c
    address: 127.0.0.1:1
    nodeId: elsewhere
`, path + ":4: connections[0].node_id: "},
		{"take_over without reconnect", `connections:
  - connectionId: c
    address: 127.0.0.1:1
    reconnect: {disabled: true}
    takeOver: true
`, path + ":5: connections[0].take_over: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeConfig(t, path, tt.text)
			srv, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", ConfigFile: path})
			if err == nil {
				t.Fatal("the gateway started")
				_ = srv
			}
			var ce *config.Error
			if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("New: %v, want a config error starting %q", err, tt.want)
			}
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", first))
			if err != nil {
				t.Fatalf("listener first left bound: %v", err)
			}
			ln.Close()
		})
	}
}

// Reload: unchanged listeners keep their port and open connections,
// changed ones take their new settings, removed ones stop, added ones
// start; a bad file changes nothing. Reload without --config is refused.
func TestConfigReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpgate.yaml")
	keep, change, drop, add := freePort(t), freePort(t), freePort(t), freePort(t)
	listener := func(id string, port int, reply string) string {
		ar := "{mode: AUTO_REPLY_MODE_ECHO}"
		if reply != "" {
			ar = fmt.Sprintf("{mode: AUTO_REPLY_MODE_FIXED, text: %q}", reply)
		}
		return fmt.Sprintf("  - listenerId: %s\n    host: 127.0.0.1\n    port: %d\n    framing: {mode: FRAMING_MODE_LINE}\n    autoReply: %s\n", id, port, ar)
	}
	writeConfig(t, path, "listeners:\n"+listener("keep", keep, "")+listener("change", change, "")+listener("drop", drop, ""))
	g := servertest.Start(t, server.Config{ConfigFile: path})
	ctx := servertest.Context(t)

	c := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%d", keep))
	r := bufio.NewReader(c)
	if got := exchange(t, c, r, "before"); got != "before" {
		t.Fatalf("echo %q", got)
	}
	// A client of the listener whose auto reply changes: updated in
	// place, it stays connected and answers by the new reply.
	cc := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%d", change))
	cr := bufio.NewReader(cc)
	if got := exchange(t, cc, cr, "ping"); got != "ping" {
		t.Fatalf("echo %q", got)
	}

	// A bad file: nothing changes, the error names line and field.
	writeConfig(t, path, "listeners:\n"+listener("keep", keep, "")+"  - listenerId: change\n    port: many\n")
	_, err := g.Client.Reload(ctx, &tcpgatev1.ReloadRequest{})
	servertest.WantCode(t, err, codes.FailedPrecondition)
	if reason, _ := rpc.ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_CONFIG_INVALID || !strings.Contains(err.Error(), path+":8: listeners[1].port") {
		t.Fatalf("Reload of a bad file: %v", err)
	}
	// An added listener that cannot bind: nothing changes either.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	writeConfig(t, path, "listeners:\n"+listener("keep", keep, "")+listener("new", taken.Addr().(*net.TCPAddr).Port, ""))
	_, err = g.Client.Reload(ctx, &tcpgatev1.ReloadRequest{})
	if reason, _ := rpc.ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_CONFIG_INVALID || !strings.Contains(err.Error(), "listeners[1].port") {
		t.Fatalf("Reload with a port in use: %v", err)
	}
	list, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range list.GetListeners() {
		ids = append(ids, l.GetListenerId())
	}
	slices.Sort(ids)
	if strings.Join(ids, " ") != "change drop keep" {
		t.Fatalf("after failed reloads the listeners are %v", ids)
	}

	writeConfig(t, path, "listeners:\n"+listener("keep", keep, "")+listener("change", change, "pong\n")+listener("add", add, ""))
	resp, err := g.Client.Reload(ctx, &tcpgatev1.ReloadRequest{})
	if err != nil {
		t.Fatal(err)
	}
	d := resp.GetListeners()
	if fmt.Sprint(d.GetAdded(), d.GetChanged(), d.GetRemoved(), d.GetUnchanged()) != "[add] [change] [drop] [keep]" || resp.GetFile() != path {
		t.Fatalf("reload diff %v", resp)
	}
	// The client of the unchanged listener is still connected.
	if got := exchange(t, c, r, "after"); got != "after" {
		t.Fatalf("echo after the reload %q", got)
	}
	if got := exchange(t, cc, cr, "ping"); got != "pong" {
		t.Fatalf("the changed listener's open connection answered %q", got)
	}
	cn := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%d", change))
	if got := exchange(t, cn, bufio.NewReader(cn), "ping"); got != "pong" {
		t.Fatalf("changed listener answered %q", got)
	}
	ca := servertest.Dial(t, fmt.Sprintf("127.0.0.1:%d", add))
	if got := exchange(t, ca, bufio.NewReader(ca), "x"); got != "x" {
		t.Fatalf("added listener answered %q", got)
	}
	_, err = g.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "drop"})
	servertest.WantCode(t, err, codes.NotFound)

	// Without --config.
	plain := servertest.Start(t, server.Config{})
	_, err = plain.Client.Reload(ctx, &tcpgatev1.ReloadRequest{})
	servertest.WantCode(t, err, codes.FailedPrecondition)
	if reason, _ := rpc.ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_NO_CONFIG {
		t.Fatalf("Reload without a config file: %v", err)
	}
}

// TestConfigAndState: with both files, an id that the config declares and
// the state file holds comes from the config, with a line in the log and
// the restore report; the other API-made objects are restored; and a
// declared object never reaches the state file, nor ExportConfig.
func TestConfigAndState(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	a := servertest.Start(t, server.Config{StateFile: state})
	for _, id := range []string{"dup", "api"} {
		a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1",
			Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
			AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}

	port := freePort(t)
	cfgPath := filepath.Join(dir, "tcpgate.yaml")
	writeConfig(t, cfgPath, fmt.Sprintf(`listeners:
  - listenerId: dup
    host: 127.0.0.1
    port: %d
    framing: {mode: FRAMING_MODE_LINE}
    autoReply: {mode: AUTO_REPLY_MODE_FIXED, text: "from-the-config\n"}
`, port))
	sink := &servertest.LogSink{}
	b := servertest.Start(t, server.Config{ConfigFile: cfgPath, StateFile: state, Logger: slog.New(slog.NewTextHandler(sink, nil))})
	ctx := servertest.Context(t)

	dup, err := b.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "dup"})
	if err != nil {
		t.Fatal(err)
	}
	if dup.GetListener().GetSource() != tcpgatev1.Source_SOURCE_CONFIG || dup.GetListener().GetAddress() != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Fatalf("dup is %v, want the config's on port %d", dup.GetListener(), port)
	}
	c := servertest.Dial(t, dup.GetListener().GetAddress())
	if got := exchange(t, c, bufio.NewReader(c), "hi"); got != "from-the-config" {
		t.Fatalf("dup answered %q, want the config's reply", got)
	}
	api, err := b.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: "api"})
	if err != nil || api.GetListener().GetSource() != tcpgatev1.Source_SOURCE_API {
		t.Fatalf("api after the restart: %v, %v", api.GetListener(), err)
	}
	if r := b.Server.RestoreReport(); !slices.ContainsFunc(r, func(l string) bool {
		return strings.Contains(l, "listener dup not restored") && strings.Contains(l, "config")
	}) {
		t.Errorf("restore report %q: nothing about dup", r)
	}
	if !strings.Contains(sink.String(), "the config file declares its id") {
		t.Errorf("no log line about dup:\n%s", sink.String())
	}

	// A change through the API writes the state file: the declared
	// listener is not in it, nor in the export.
	b.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "later", Host: "127.0.0.1"})
	exp, err := b.Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range exp.GetConfig().GetListeners() {
		ids = append(ids, l.GetListenerId())
	}
	if slices.Contains(ids, "dup") || !slices.Contains(ids, "api") || !slices.Contains(ids, "later") {
		t.Errorf("ExportConfig lists %v, want api and later and not the declared dup", ids)
	}
	saved, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(saved, []byte("from-the-config")) {
		t.Errorf("the declared listener reached the state file:\n%s", saved)
	}
}
