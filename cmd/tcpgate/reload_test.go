package main

import (
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestReloadableFlagsMarked: every flag of the reloadable table is a serve
// flag, and serve --help marks it, and only it, "(reloadable)".
func TestReloadableFlagsMarked(t *testing.T) {
	f := newServeCmd().Flags()
	for name := range reloadable {
		if f.Lookup(name) == nil {
			t.Errorf("reloadable flag --%s is no serve flag", name)
		}
	}
	f.VisitAll(func(fl *pflag.Flag) {
		_, want := reloadable[fl.Name]
		if got := strings.HasSuffix(fl.Usage, "(reloadable)"); got != want {
			t.Errorf("--%s usage %q: marked reloadable %v, want %v", fl.Name, fl.Usage, got, want)
		}
	})
}

// reloadGateway is a gateway started as serve starts one from a config
// file's serve section, with the flags it ran with.
type reloadGateway struct {
	*servertest.Gateway
	running *pflag.FlagSet
	pinned  map[string]bool
}

// startFromFlags starts a gateway from the command line args, then the
// file's flags for those args leave unset, as serve with a config file does.
func startFromFlags(t *testing.T, args []string, file map[string]string) *reloadGateway {
	t.Helper()
	var (
		cfg server.Config
		o   serveOptions
	)
	running := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	serveFlags(running, &cfg, &o)
	if err := running.Parse(args); err != nil {
		t.Fatal(err)
	}
	pinned := changedFlags(running)
	for name, v := range file {
		if !pinned[name] {
			if err := setFlag(running, name, v); err != nil {
				t.Fatalf("--%s %s: %v", name, v, err)
			}
		}
	}
	token, err := readToken(o.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AuthToken = token
	run := cfg // the flags keep their values, as in serve
	connectionDefaults(running, &run, openFileLimit())
	return &reloadGateway{Gateway: servertest.Start(t, run), running: running, pinned: pinned}
}

// list calls ListListeners over gRPC and REST with token, and returns the
// gRPC code and the HTTP status.
func (g *reloadGateway) list(t *testing.T, token string) (codes.Code, int) {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(servertest.Context(t), "authorization", "Bearer "+token)
	_, err := g.Client.ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	resp, _ := g.REST.Do(http.MethodGet, "/v1/listeners", "", http.Header{"Authorization": {"Bearer " + token}})
	return status.Code(err), resp.StatusCode
}

// TestReloadFlags: a reload applies the reloadable flags a config file
// changed (the token file read again, so a rewritten one rotates the
// token; the dial policy), reports the others as needing a restart
// without applying them, keeps the flags of the command line, and changes
// nothing when a new value is bad.
func TestReloadFlags(t *testing.T) {
	peer := servertest.Peer(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		_, _ = c.Write(buf[:n])
	})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("first-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	boot := map[string]string{"grpc-addr": "127.0.0.1:0", "http-addr": "127.0.0.1:0", "auth-token-file": tokenFile, "log-level": "debug"}
	g := startFromFlags(t, []string{"--log-level", "warn"}, boot)
	send := func(token string) error {
		ctx := metadata.AppendToOutgoingContext(servertest.Context(t), "authorization", "Bearer "+token)
		_, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: peer},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "x"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
		})
		return err
	}
	with := func(changes map[string]string) map[string]string {
		m := maps.Clone(boot)
		maps.Copy(m, changes)
		return m
	}

	t.Run("token file rewritten", func(t *testing.T) {
		if err := os.WriteFile(tokenFile, []byte("second-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		applied, restart, err := reloadFlags(g.Server, g.running, g.pinned, boot)
		if err != nil || !slices.Equal(applied, []string{"auth-token-file"}) || len(restart) != 0 {
			t.Fatalf("reloadFlags = %v, %v, %v; want [auth-token-file], none, nil", applied, restart, err)
		}
		if c, h := g.list(t, "first-token"); c != codes.Unauthenticated || h != http.StatusUnauthorized {
			t.Errorf("the old token: gRPC %v, REST %d; want Unauthenticated, 401", c, h)
		}
		if c, h := g.list(t, "second-token"); c != codes.OK || h != http.StatusOK {
			t.Errorf("the new token: gRPC %v, REST %d; want OK, 200", c, h)
		}
	})

	t.Run("grpc-addr needs a restart", func(t *testing.T) {
		addr := g.Server.GRPCAddr()
		applied, restart, err := reloadFlags(g.Server, g.running, g.pinned, with(map[string]string{"grpc-addr": "127.0.0.1:1", "deny-dial": "127.0.0.0/8"}))
		if err != nil || !slices.Equal(applied, []string{"deny-dial"}) || !slices.Equal(restart, []string{"grpc-addr"}) {
			t.Fatalf("reloadFlags = %v, %v, %v; want [deny-dial], [grpc-addr], nil", applied, restart, err)
		}
		if got := g.running.Lookup("grpc-addr").Value.String(); got != "127.0.0.1:0" {
			t.Errorf("--grpc-addr in force = %s, want 127.0.0.1:0 (not applied)", got)
		}
		if g.Server.GRPCAddr() != addr {
			t.Errorf("gRPC address moved to %s", g.Server.GRPCAddr())
		}
		if c, _ := g.list(t, "second-token"); c != codes.OK {
			t.Errorf("ListListeners on the old address: %v", c)
		}
		err = send("second-token")
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "--deny-dial") {
			t.Errorf("Send to %s after --deny-dial 127.0.0.0/8: %v, want PermissionDenied naming --deny-dial", peer, err)
		}
	})

	t.Run("bad value changes nothing", func(t *testing.T) {
		tests := []struct {
			name    string
			changes map[string]string
			wantErr string
		}{
			{"unreadable token file", map[string]string{"auth-token-file": filepath.Join(t.TempDir(), "missing"), "deny-dial": ""}, "--auth-token-file"},
			{"bad allow-dial rule", map[string]string{"allow-dial": "10.0.0.0/99", "deny-dial": ""}, "--allow-dial"},
			{"bad number", map[string]string{"max-listeners": "many", "deny-dial": ""}, "max-listeners"},
			{"unknown flag", map[string]string{"no-such-flag": "1", "deny-dial": ""}, "no-such-flag"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				applied, restart, err := reloadFlags(g.Server, g.running, g.pinned, with(tt.changes))
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("reloadFlags = %v, %v, %v; want an error naming %s", applied, restart, err, tt.wantErr)
				}
				if c, _ := g.list(t, "second-token"); c != codes.OK {
					t.Errorf("the token in force after a refused reload: %v", c)
				}
				if err := send("second-token"); status.Code(err) != codes.PermissionDenied {
					t.Errorf("Send after a refused reload that would lift --deny-dial: %v, want PermissionDenied", err)
				}
				if got := g.running.Lookup("deny-dial").Value.String(); got != "127.0.0.0/8" {
					t.Errorf("--deny-dial in force = %q, want 127.0.0.0/8", got)
				}
			})
		}
	})

	t.Run("command line wins and removed flags go back to default", func(t *testing.T) {
		applied, restart, err := reloadFlags(g.Server, g.running, g.pinned, with(map[string]string{"log-level": "error"}))
		if err != nil || !slices.Equal(applied, []string{"deny-dial"}) || len(restart) != 0 {
			t.Fatalf("reloadFlags = %v, %v, %v; want [deny-dial] (back to its default), none, nil", applied, restart, err)
		}
		if got := g.running.Lookup("log-level").Value.String(); got != "warn" {
			t.Errorf("--log-level = %s, want warn, as the command line set it", got)
		}
		if err := send("second-token"); err != nil {
			t.Errorf("Send once --deny-dial is back to its default: %v", err)
		}
	})
}
