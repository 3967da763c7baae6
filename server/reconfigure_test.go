package server_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/tcpgate/tcpgate/gateway"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// reloadableOf is the reloadable part of cfg, as a reload that changes
// nothing would pass it.
func reloadableOf(cfg server.Config) server.Reloadable {
	return server.Reloadable{
		AuthToken: cfg.AuthToken, TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey,
		AllowListen: cfg.AllowListen, AllowDial: cfg.AllowDial, DenyDial: cfg.DenyDial,
		CORSOrigins: cfg.CORSOrigins, MaxListeners: cfg.MaxListeners, MaxSubscribers: cfg.MaxSubscribers,
	}
}

// restStatus is the status of a REST request with the given headers.
func restStatus(t *testing.T, g *servertest.Gateway, method, path, body string, h http.Header) int {
	t.Helper()
	resp, _ := g.REST.Do(method, path, body, h)
	return resp.StatusCode
}

// TestReconfigureToken: a new token is required by the next call at once,
// over gRPC and REST; the old one is refused, and browser sessions
// signed under the old token's key end.
func TestReconfigureToken(t *testing.T) {
	cfg := server.Config{AuthToken: "old-token", HTTPAddr: "127.0.0.1:0"}
	g := servertest.Start(t, cfg)
	list := func(token string) error {
		_, err := g.Client.ListListeners(secAuth(servertest.Context(t), "Bearer "+token), &tcpgatev1.ListListenersRequest{})
		return err
	}
	bearer := func(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }
	if err := list("old-token"); err != nil {
		t.Fatalf("ListListeners with the token: %v", err)
	}
	resp, _ := g.REST.Do(http.MethodPost, gateway.SessionPath, `{"token": "old-token"}`, nil)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == gateway.SessionCookie {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatalf("login answered %d without a session cookie", resp.StatusCode)
	}
	withCookie := http.Header{"Cookie": {cookie.Name + "=" + cookie.Value}}
	if code := restStatus(t, g, http.MethodGet, "/v1/listeners", "", withCookie); code != http.StatusOK {
		t.Fatalf("GET /v1/listeners with the session cookie = %d, want 200", code)
	}

	r := reloadableOf(cfg)
	r.AuthToken = "new-token"
	applied, err := g.Server.Reconfigure(r)
	if err != nil || !slices.Equal(applied, []string{"auth-token"}) {
		t.Fatalf("Reconfigure(new token) = %v, %v; want [auth-token]", applied, err)
	}

	tests := []struct {
		name     string
		token    string
		wantCode codes.Code
		wantHTTP int
	}{
		{"old token", "old-token", codes.Unauthenticated, http.StatusUnauthorized},
		{"new token", "new-token", codes.OK, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := list(tt.token); status.Code(err) != tt.wantCode {
				t.Errorf("ListListeners over gRPC: %v, want %v", err, tt.wantCode)
			}
			if code := restStatus(t, g, http.MethodGet, "/v1/listeners", "", bearer(tt.token)); code != tt.wantHTTP {
				t.Errorf("GET /v1/listeners = %d, want %d", code, tt.wantHTTP)
			}
		})
	}
	t.Run("old session", func(t *testing.T) {
		if code := restStatus(t, g, http.MethodGet, "/v1/listeners", "", withCookie); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/listeners with a session of the old token = %d, want 401", code)
		}
	})
	t.Run("new session", func(t *testing.T) {
		resp, _ := g.REST.Do(http.MethodPost, gateway.SessionPath, `{"token": "new-token"}`, nil)
		cookies := resp.Cookies()
		if len(cookies) != 1 {
			t.Fatalf("login with the new token answered %d with cookies %v", resp.StatusCode, cookies)
		}
		h := http.Header{"Cookie": {cookies[0].Name + "=" + cookies[0].Value}}
		// The session carries the new token on to gRPC, which checks it.
		if code := restStatus(t, g, http.MethodGet, "/v1/listeners", "", h); code != http.StatusOK {
			t.Errorf("GET /v1/listeners with a session of the new token = %d, want 200", code)
		}
	})
}

// TestReconfigureCertificate: after the control plane's certificate files
// are rewritten and reloaded, a new TLS client sees the new certificate,
// over gRPC and REST, while a connection made before keeps working.
func TestReconfigureCertificate(t *testing.T) {
	oldCA, newCA := servertest.NewCA(t), servertest.NewCA(t)
	oldCert, oldKey := oldCA.IssueLoopback(t)
	files := servertest.WriteFiles(t, map[string][]byte{"server.pem": oldCert, "server-key.pem": oldKey})
	cfg := server.Config{TLSCert: files["server.pem"], TLSKey: files["server-key.pem"], HTTPAddr: "127.0.0.1:0"}
	g := servertest.Start(t, cfg)
	grpcAddr, httpAddr := g.Server.GRPCAddr(), g.Server.HTTPAddr()

	before := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: oldCA.Pool()}))
	if err := secListListeners(t, before); err != nil {
		t.Fatalf("ListListeners over TLS before the rotation: %v", err)
	}

	newCert, newKey := newCA.IssueLoopback(t)
	writeFile(t, cfg.TLSCert, newCert)
	writeFile(t, cfg.TLSKey, newKey)
	applied, err := g.Server.Reconfigure(reloadableOf(cfg))
	if err != nil || !slices.Equal(applied, []string{"tls-cert"}) {
		t.Fatalf("Reconfigure(renewed files) = %v, %v; want [tls-cert]", applied, err)
	}

	t.Run("new gRPC client", func(t *testing.T) {
		cc := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: newCA.Pool()}))
		if err := secListListeners(t, cc); err != nil {
			t.Fatalf("ListListeners trusting the new CA: %v", err)
		}
		stale := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: oldCA.Pool()}))
		if err := secListListeners(t, stale); status.Code(err) != codes.Unavailable {
			t.Fatalf("ListListeners of a new client trusting only the old CA: %v, want Unavailable", err)
		}
	})
	t.Run("new TLS handshake", func(t *testing.T) {
		c, err := tls.Dial("tcp", httpAddr, &tls.Config{RootCAs: newCA.Pool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("TLS handshake with the REST port: %v", err)
		}
		defer c.Close()
		peer := c.ConnectionState().PeerCertificates
		if len(peer) == 0 || !bytes.Equal(peer[0].Raw, servertest.KeyPair(t, newCert, newKey).Certificate[0]) {
			t.Fatal("the REST port served another certificate than the new one")
		}
	})
	t.Run("REST", func(t *testing.T) {
		hc := secHTTPS(t, &tls.Config{RootCAs: newCA.Pool()})
		if code, body, err := secGet(t, hc, "https://"+httpAddr+"/v1/listeners"); err != nil || code != http.StatusOK {
			t.Fatalf("GET /v1/listeners trusting the new CA = %d %s, %v", code, body, err)
		}
	})
	t.Run("connection made before", func(t *testing.T) {
		if err := secListListeners(t, before); err != nil {
			t.Fatalf("ListListeners on the connection made before the rotation: %v", err)
		}
	})
}

// writeFile replaces the content of path, as an operator renewing a file
// in place does.
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReconfigureDialPolicy: an address the new --deny-dial names is
// refused to the next Send with the policy's reason, and a listen policy
// narrowed refuses the next StartListener.
func TestReconfigureDialPolicy(t *testing.T) {
	target := servertest.Peer(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		_, _ = c.Write(buf[:n])
	})
	cfg := server.Config{}
	g := servertest.Start(t, cfg)
	send := func() error {
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: target},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "x"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
		})
		return err
	}
	if err := send(); err != nil {
		t.Fatalf("Send before the policy changed: %v", err)
	}
	r := reloadableOf(cfg)
	r.DenyDial = "127.0.0.0/8"
	r.AllowListen = "127.0.0.1:20000-20010"
	applied, err := g.Server.Reconfigure(r)
	if err != nil || !slices.Equal(applied, []string{"allow-listen", "deny-dial"}) {
		t.Fatalf("Reconfigure(deny-dial) = %v, %v; want [allow-listen deny-dial]", applied, err)
	}
	err = send()
	servertest.WantCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, `--deny-dial rule "127.0.0.0/8`) {
		t.Errorf("refused Send says %q; want the --deny-dial rule named", msg)
	}
	_, err = g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Port: 30000})
	servertest.WantCode(t, err, codes.PermissionDenied)
}

// TestReconfigureLimits: a lower --max-listeners refuses the next
// StartListener and stops none; a raised one admits again.
func TestReconfigureLimits(t *testing.T) {
	cfg := server.Config{MaxListeners: 2}
	g := servertest.Start(t, cfg)
	for _, id := range []string{"a", "b"} {
		g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1"})
	}
	r := reloadableOf(cfg)
	r.MaxListeners = 1
	if _, err := g.Server.Reconfigure(r); err != nil {
		t.Fatal(err)
	}
	_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{ListenerId: "c", Host: "127.0.0.1"})
	servertest.WantCode(t, err, codes.ResourceExhausted)
	list, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
	if err != nil || len(list.GetListeners()) != 2 {
		t.Fatalf("ListListeners = %v, %v; want both still running", list, err)
	}
	r.MaxListeners = 3
	if _, err := g.Server.Reconfigure(r); err != nil {
		t.Fatal(err)
	}
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "c", Host: "127.0.0.1"})
}

// TestReconfigureBadValue: a reload with any bad value changes nothing,
// the good values beside it included.
func TestReconfigureBadValue(t *testing.T) {
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	files := servertest.WriteFiles(t, map[string][]byte{"server.pem": cert, "server-key.pem": key, "garbage.pem": []byte("not PEM")})
	cfg := server.Config{AuthToken: "tok", TLSCert: files["server.pem"], TLSKey: files["server-key.pem"]}
	g := servertest.Start(t, cfg)
	tests := []struct {
		name    string
		change  func(*server.Reloadable)
		wantErr string
		restart bool
	}{
		{"unreadable certificate", func(r *server.Reloadable) { r.TLSCert = files["garbage.pem"] }, "--tls-cert", false},
		{"bad deny rule", func(r *server.Reloadable) { r.DenyDial = "300.1.1.1" }, "--deny-dial", false},
		{"negative limit", func(r *server.Reloadable) { r.MaxSubscribers = -1 }, "--max-subscribers", false},
		{"token removed", func(r *server.Reloadable) { r.AuthToken = "" }, "token", true},
		{"TLS off", func(r *server.Reloadable) { r.TLSCert, r.TLSKey = "", "" }, "TLS", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := reloadableOf(cfg)
			r.AuthToken = "changed" // a good change beside the bad one
			tt.change(&r)
			applied, err := g.Server.Reconfigure(r)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, server.ErrNeedsRestart) != tt.restart {
				t.Fatalf("Reconfigure = %v, %v; want an error naming %s (needs restart: %v)", applied, err, tt.wantErr, tt.restart)
			}
			cc := secConn(t, g.Server.GRPCAddr(), credentials.NewTLS(&tls.Config{RootCAs: ca.Pool()}), grpc.WithPerRPCCredentials(secBearer("tok")))
			if err := secListListeners(t, cc); err != nil {
				t.Errorf("the old token over the old certificate after a refused reload: %v", err)
			}
		})
	}
}
