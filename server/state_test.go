package server_test

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// stateGateway starts a gateway saving to path, its log in sink.
func stateGateway(t *testing.T, path string, inlineKeys bool, sink *servertest.LogSink) *servertest.Gateway {
	t.Helper()
	cfg := server.Config{StateFile: path, StateInlineKeys: inlineKeys}
	if sink != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(sink, nil))
	}
	return servertest.Start(t, cfg)
}

func listenerOf(t *testing.T, g *servertest.Gateway, id string) *tcpgatev1.Listener {
	t.Helper()
	resp, err := g.Client.GetListener(context.Background(), &tcpgatev1.GetListenerRequest{ListenerId: id})
	if err != nil {
		t.Fatalf("listener %s after the restart: %v", id, err)
	}
	return resp.GetListener()
}

// TestStateRestart: listeners with rules and outbound connections made
// through the API come back after a restart with their ids, ports and
// rules; what was stopped or closed does not; and the restart made no
// change of its own to the file.
func TestStateRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state")
	peer := servertest.NewLineServer(t, servertest.EchoLine)
	a := stateGateway(t, path, false, nil)
	rules := a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "rules", Host: "127.0.0.1",
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mRegex, `^PING (\d+)$`, "PONG {{1}}")}}})
	gone := a.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"}) // a generated id
	kept := a.StartListener(t, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if _, err := a.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: gone.GetListenerId()}); err != nil {
		t.Fatal(err)
	}
	a.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "feed", Address: peer.Addr(), Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	a.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "closed", Address: peer.Addr()})
	if _, err := a.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: "closed"}); err != nil {
		t.Fatal(err)
	}
	// An accepted connection closed through the API changes nothing.
	c := servertest.Dial(t, kept.GetAddress())
	var accepted string
	servertest.Eventually(t, "the accepted connection listed", func() bool {
		resp, err := a.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{ListenerId: kept.GetListenerId()})
		if err == nil && len(resp.GetConnections()) == 1 {
			accepted = resp.GetConnections()[0].GetConnectionId()
		}
		return accepted != ""
	})
	if _, err := a.Client.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: accepted}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", st.Mode().Perm())
	}

	b := stateGateway(t, path, false, nil)
	if r := b.Server.RestoreReport(); len(r) != 0 {
		t.Errorf("restore report %q, want none", r)
	}
	for _, l := range []*tcpgatev1.Listener{rules, kept} {
		got := listenerOf(t, b, l.GetListenerId())
		if got.GetAddress() != l.GetAddress() || got.GetSource() != tcpgatev1.Source_SOURCE_API {
			t.Errorf("listener %s back on %s (source %v), want %s SOURCE_API", l.GetListenerId(), got.GetAddress(), got.GetSource(), l.GetAddress())
		}
	}
	if _, err := b.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: gone.GetListenerId()}); err == nil {
		t.Errorf("stopped listener %s came back", gone.GetListenerId())
	}
	rc := servertest.Dial(t, rules.GetAddress())
	if got := exchange(t, rc, bufio.NewReader(rc), "PING 7"); got != "PONG 7" {
		t.Errorf("restored rule answered %q, want PONG 7", got)
	}
	servertest.Eventually(t, "feed reconnected", func() bool {
		resp, err := b.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "feed"})
		return err == nil && resp.GetConnection().GetState() == tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN
	})
	if _, err := b.Client.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: "closed"}); err == nil {
		t.Error("closed connection came back")
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("a restart and a shutdown changed the file:\nbefore %s\nafter  %s", before, after)
	}
}

// TestStatePortTaken: a listener that had asked for port 0 and finds its
// old port taken comes back on a new one, and says so in the log, the
// restore report and its LISTENER_STARTED event.
func TestStatePortTaken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	a := stateGateway(t, path, false, nil)
	l := a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "moved", Host: "127.0.0.1"})
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	squatter, err := net.Listen("tcp", l.GetAddress())
	if err != nil {
		t.Skipf("the old port was taken by someone else before the test could: %v", err)
	}
	defer squatter.Close()
	var sink servertest.LogSink
	b := stateGateway(t, path, false, &sink)
	got := listenerOf(t, b, "moved")
	if got.GetAddress() == l.GetAddress() {
		t.Fatalf("listener back on its taken port %s", got.GetAddress())
	}
	if r := strings.Join(b.Server.RestoreReport(), "\n"); !strings.Contains(r, "in use") || !strings.Contains(r, got.GetAddress()) {
		t.Errorf("restore report %q, want it to name the new address %s", r, got.GetAddress())
	}
	if !strings.Contains(sink.String(), "level=WARN") || !strings.Contains(sink.String(), "new port") {
		t.Errorf("log has no warning of the new port:\n%s", sink.String())
	}
	sub := b.Subscribe(t, &tcpgatev1.SubscribeRequest{ListenerIds: []string{"moved"}, SinceSequence: 1})
	ev := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED)
	if ev.GetLocalAddress() != got.GetAddress() {
		t.Errorf("LISTENER_STARTED on %q, want the new address %s", ev.GetLocalAddress(), got.GetAddress())
	}
}

// TestStateInlineKeys: an inline private key stays out of the file unless
// --state-inline-keys, and a listener saved without it is reported and
// not restored.
func TestStateInlineKeys(t *testing.T) {
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	for _, tc := range []struct {
		name       string
		inlineKeys bool
	}{{"without --state-inline-keys", false}, {"with --state-inline-keys", true}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			var sink servertest.LogSink
			a := stateGateway(t, path, tc.inlineKeys, &sink)
			a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "tls", Host: "127.0.0.1",
				Tls: &tcpgatev1.ListenerTLS{CertPem: string(cert), KeyPem: string(key)}})
			if err := a.Stop(); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if hasKey := bytes.Contains(b, []byte("PRIVATE KEY")); hasKey != tc.inlineKeys {
				t.Errorf("key in the state file: %v, want %v", hasKey, tc.inlineKeys)
			}
			g := stateGateway(t, path, tc.inlineKeys, &sink)
			_, err = g.Client.GetListener(context.Background(), &tcpgatev1.GetListenerRequest{ListenerId: "tls"})
			report := strings.Join(g.Server.RestoreReport(), "\n")
			if tc.inlineKeys {
				if err != nil || report != "" {
					t.Errorf("listener with its saved key: %v, report %q; want it back", err, report)
				}
				return
			}
			if err == nil || !strings.Contains(report, "listener tls not restored") || !strings.Contains(report, "--state-inline-keys") {
				t.Errorf("listener saved without its key: %v, report %q; want it not restored and reported", err, report)
			}
			if !strings.Contains(sink.String(), "--state-inline-keys") {
				t.Errorf("log does not say why:\n%s", sink.String())
			}
		})
	}
}

// TestStateDamaged: a damaged state file is renamed aside, never
// deleted; its sound records come back and the report says what was
// lost.
func TestStateDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	a := stateGateway(t, path, false, nil)
	a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "first", Host: "127.0.0.1"})
	a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "second", Host: "127.0.0.1"})
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	damaged := bytes.Replace(b, []byte(`"second"`), []byte(`"secxnd"`), 1)
	damaged = damaged[:bytes.LastIndex(damaged, []byte("end "))] // and cut short
	if err := os.WriteFile(path, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	g := stateGateway(t, path, false, nil)
	listenerOf(t, g, "first")
	if _, err := g.Client.GetListener(context.Background(), &tcpgatev1.GetListenerRequest{ListenerId: "second"}); err == nil {
		t.Error("the damaged record came back")
	}
	report := strings.Join(g.Server.RestoreReport(), "\n")
	if !strings.Contains(report, "line 3: checksum mismatch") || !strings.Contains(report, "cut short") {
		t.Errorf("restore report %q, want the lost line and the cut", report)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("renamed aside: %q, want one file", aside)
	}
	if kept, err := os.ReadFile(aside[0]); err != nil || !bytes.Equal(kept, damaged) {
		t.Errorf("the file aside is not the damaged file: %v", err)
	}
}

// TestStateLocked: a second gateway on the same state file does not start,
// and says which file is locked.
func TestStateLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	stateGateway(t, path, false, nil)
	_, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", StateFile: path, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), path) {
		t.Errorf("second gateway on %s: %v, want a refusal naming the locked file", path, err)
	}
}

// TestExportConfig: ExportConfig returns the API-made objects as the
// requests that make them again, on their bound ports, without inline
// keys; without a state file too.
func TestExportConfig(t *testing.T) {
	ctx := context.Background()
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	g := servertest.Start(t, server.Config{})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "x", Host: "127.0.0.1",
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}})
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "tls", Host: "127.0.0.1", Tls: &tcpgatev1.ListenerTLS{CertPem: string(cert), KeyPem: string(key)}})
	peer := servertest.NewLineServer(t, servertest.EchoLine)
	g.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "c", Address: peer.Addr()})
	resp, err := g.Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.GetAddress())
	want := &tcpgatev1.Config{
		Listeners: []*tcpgatev1.StartListenerRequest{
			{ListenerId: "x", Host: "127.0.0.1", Port: atou(t, port), AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}},
			{ListenerId: "tls", Host: "127.0.0.1", Port: resp.GetConfig().GetListeners()[1].GetPort(), Tls: &tcpgatev1.ListenerTLS{CertPem: string(cert)}},
		},
		Connections: []*tcpgatev1.ConnectRequest{{ConnectionId: "c", Address: peer.Addr()}},
	}
	if !proto.Equal(resp.GetConfig(), want) {
		t.Errorf("ExportConfig = %v, want %v", resp.GetConfig(), want)
	}
}

func atou(t *testing.T, s string) uint32 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n)
}

// TestStateUpdateListener: a listener changed by UpdateListener comes
// back after a restart as changed.
func TestStateUpdateListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	a := stateGateway(t, path, false, nil)
	l := a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "u", Host: "127.0.0.1",
		Framing:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mExact, "a", "old")}}, MaxConnections: 5})
	if _, err := a.Client.UpdateListener(context.Background(), &tcpgatev1.UpdateListenerRequest{ListenerId: "u",
		Listener:   &tcpgatev1.StartListenerRequest{AutoReply: &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mExact, "a", "new")}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_reply"}}}); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	b := stateGateway(t, path, false, nil)
	got := listenerOf(t, b, "u")
	if got.GetAddress() != l.GetAddress() || got.GetMaxConnections() != 5 {
		t.Errorf("listener back on %s with max_connections %d, want %s and 5", got.GetAddress(), got.GetMaxConnections(), l.GetAddress())
	}
	c := servertest.Dial(t, got.GetAddress())
	if r := exchange(t, c, bufio.NewReader(c), "a"); r != "new" {
		t.Errorf("restored listener answered %q, want the updated rule's new", r)
	}
}
