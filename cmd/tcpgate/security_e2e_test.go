package main_test

// End-to-end security tests of the binary: `serve` refusing an exposed
// control plane, and the client commands against a daemon that requires a
// token or TLS (docs/SECURITY.md).

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// secListening reads the address from `tcpgate listen`'s output.
var secListening = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)

// secLocal turns a daemon's logged address, which may be 0.0.0.0:PORT,
// into the loopback address to call it on.
func secLocal(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("daemon address %q: %v", addr, err)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// secWantFail runs tcpgate and expects a non-zero exit whose output
// mentions each of want.
func secWantFail(t *testing.T, r cliRunner, want []string, args ...string) {
	t.Helper()
	stdout, stderr, err := r.run(t, args...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("tcpgate %s: %v, want a non-zero exit\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stdout+stderr, w) {
			t.Errorf("tcpgate %s: output does not mention %q:\n%s%s", strings.Join(args, " "), w, stdout, stderr)
		}
	}
}

// TestServeRefusesInsecureRemoteBind: `serve` on a non-loopback address
// needs a token, mutual TLS or --insecure, and says so.
func TestServeRefusesInsecureRemoteBind(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, flag string
		args       []string
	}{
		{"grpc-addr", "--grpc-addr", []string{"--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"}},
		{"http-addr", "--http-addr", []string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "0.0.0.0:0"}},
		{"http-addr IPv6", "--http-addr", []string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "[::]:0"}},
		{"empty host", "--grpc-addr", []string{"--grpc-addr", ":0", "--http-addr", "127.0.0.1:0"}},
		{"TLS without client CA", "--grpc-addr", []string{"--grpc-addr", "0.0.0.0:0", "--tls-cert", "x.pem", "--tls-key", "x-key.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := runFailing(t, hermeticEnv(), append([]string{"serve"}, tc.args...)...)
			for _, want := range []string{tc.flag, "token", "--insecure"} {
				if !strings.Contains(out, want) {
					t.Errorf("output does not mention %q:\n%s", want, out)
				}
			}
		})
	}

	t.Run("token is no flag", func(t *testing.T) {
		// A flag's value would be in the process list.
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--auth-token", "s3cret")
		if !strings.Contains(out, "unknown flag") {
			t.Errorf("serve --auth-token: %s, want unknown flag", out)
		}
	})
	t.Run("empty token file", func(t *testing.T) {
		files := servertest.WriteFiles(t, map[string][]byte{"token": []byte("\n")})
		out := runFailing(t, hermeticEnv(), "serve", "--grpc-addr", "0.0.0.0:0", "--auth-token-file", files["token"])
		if !strings.Contains(out, "--auth-token-file") {
			t.Errorf("output does not mention --auth-token-file:\n%s", out)
		}
	})

	starts := []struct {
		name  string
		env   []string
		args  []string
		token string
	}{
		{"--insecure", hermeticEnv(), []string{"--insecure"}, ""},
		{"TCPGATE_INSECURE", hermeticEnv("TCPGATE_INSECURE=true"), nil, ""},
		{"TCPGATE_AUTH_TOKEN", hermeticEnv("TCPGATE_AUTH_TOKEN=s3cret"), nil, "s3cret"},
		{"--auth-token-file", hermeticEnv(), []string{"--auth-token-file", ""}, "from-a-file"},
	}
	for _, tc := range starts {
		t.Run("starts with "+tc.name, func(t *testing.T) {
			args := append([]string{"serve", "--grpc-addr", "0.0.0.0:0"}, tc.args...)
			if tc.name == "--auth-token-file" {
				files := servertest.WriteFiles(t, map[string][]byte{"token": []byte(tc.token + "\n")})
				args[len(args)-1] = files["token"]
			}
			d := startDaemon(t, tc.env, args...)
			addr := secLocal(t, d.waitServing(t))
			env := []string{"TCPGATE_SERVER=" + addr}
			if tc.token != "" {
				secWantFail(t, cliRunner{env: hermeticEnv(env...)}, []string{"Unauthenticated"}, "ls")
				env = append(env, "TCPGATE_TOKEN="+tc.token)
			}
			if stdout, _ := (cliRunner{env: hermeticEnv(env...)}).mustRun(t, "ls"); !strings.HasPrefix(stdout, "ID") {
				t.Errorf("tcpgate ls printed %q, want the listener table", stdout)
			}
			d.stop(t)
		})
	}
}

// TestCLIAuth: the client commands against a daemon that requires a token:
// refused without it or with a wrong one, working with TCPGATE_TOKEN or
// --token; and the daemon, at debug level, logs neither token nor payload.
func TestCLIAuth(t *testing.T) {
	t.Parallel()
	const (
		token   = "cli-token-5e1f0b"
		wrong   = "wrongtoken123"
		payload = "PAYLOAD-MARKER-42"
	)
	d := startDaemon(t, hermeticEnv("TCPGATE_AUTH_TOKEN="+token), "serve", "--grpc-addr", "127.0.0.1:0", "--log-level", "debug")
	addr := d.waitServing(t)
	anon := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + addr)}
	authed := cliRunner{env: hermeticEnv("TCPGATE_SERVER="+addr, "TCPGATE_TOKEN="+token)}

	t.Run("refused", func(t *testing.T) {
		// Without a token the CLI says which flag or variable to set.
		secWantFail(t, anon, []string{"Unauthenticated", "--token", "TCPGATE_TOKEN"}, "ls")
		secWantFail(t, anon, []string{"Unauthenticated", "--token"}, "ls", "--token", wrong)
		secWantFail(t, cliRunner{env: hermeticEnv("TCPGATE_SERVER="+addr, "TCPGATE_TOKEN="+wrong)}, []string{"Unauthenticated"}, "ls")
		secWantFail(t, anon, []string{"Unauthenticated"}, "listen", "0", "--host", "127.0.0.1")
		secWantFail(t, anon, []string{"Unauthenticated"}, "subscribe")
		// grpcurl: reflection needs the token too; with the token for
		// reflection only, the method itself is refused, and health is not.
		c := client{addr: addr}
		reflect := "authorization: Bearer " + token
		if stdout, stderr, err := c.run(t, addr, "list"); err == nil || !strings.Contains(stdout+stderr, "Unauthenticated") {
			t.Errorf("grpcurl list without token: %v\n%s%s", err, stdout, stderr)
		}
		if stdout, stderr, err := c.run(t, "-reflect-header", reflect, "-d", "{}", addr, service+"/ListListeners"); err == nil || !strings.Contains(stdout+stderr, "Unauthenticated") {
			t.Errorf("grpcurl ListListeners without token: %v\n%s%s", err, stdout, stderr)
		}
		for _, args := range [][]string{
			{"-reflect-header", reflect, addr, "grpc.health.v1.Health/Check"},
			{"-H", reflect, "-d", "{}", addr, service + "/ListListeners"},
		} {
			if stdout, stderr, err := c.run(t, args...); err != nil {
				t.Errorf("grpcurl %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
			}
		}
	})

	t.Run("TCPGATE_TOKEN", func(t *testing.T) {
		if stdout, _ := authed.mustRun(t, "ls"); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls printed %q, want the listener table", stdout)
		}
	})
	t.Run("--token", func(t *testing.T) {
		if stdout, _ := anon.mustRun(t, "ls", "--token", token); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls printed %q, want the listener table", stdout)
		}
	})

	t.Run("payloads and events", func(t *testing.T) {
		out, _ := authed.mustRun(t, "listen", "0", "--host", "127.0.0.1", "--id", "sec", "--reply", payload)
		m := secListening.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("tcpgate listen printed %q", out)
		}
		sub := authed.start(t, "subscribe", "--listener", "sec")
		sub.sync(t, m[1])
		stdout, _ := authed.mustRun(t, "send", m[1], payload, "--await", "first")
		if stdout != payload {
			t.Errorf("send --await first printed %q, want %q", stdout, payload)
		}
		sub.waitFor(t, "the DATA event of the send", eventTimeout, func(out string) bool { return strings.Contains(out, payload) })
		// Failures carrying the payload.
		secWantFail(t, authed, nil, "send", servertest.RefusedAddr(t), payload)
		secWantFail(t, authed, []string{"PermissionDenied"}, "send", "169.254.169.254:80", payload)
		secWantFail(t, anon, []string{"Unauthenticated"}, "send", m[1], payload, "--token", wrong)
		authed.mustRun(t, "stop", "sec")
	})

	d.stop(t)
	logs := d.stderr.String()
	if !strings.Contains(logs, "Unauthenticated") {
		t.Fatalf("the daemon logged no refused call, so the log check shows nothing:\n%s", logs)
	}
	for _, secret := range []string{token, wrong, payload} {
		if strings.Contains(logs, secret) {
			t.Errorf("the daemon's log contains %q:\n%s", secret, logs)
		}
	}
}

// TestCLITLS: the client commands against a TLS daemon with --tls-ca, and
// with a client certificate against a mutual-TLS daemon, which may then
// listen on every interface without a token.
func TestCLITLS(t *testing.T) {
	t.Parallel()
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	clientCert, clientKey := ca.Issue(t, "cli", nil, nil, true)
	files := servertest.WriteFiles(t, map[string][]byte{
		"ca.pem": ca.CertPEM, "server.pem": cert, "server-key.pem": key, "client.pem": clientCert, "client-key.pem": clientKey,
	})
	other := servertest.NewCA(t)
	otherFiles := servertest.WriteFiles(t, map[string][]byte{"other-ca.pem": other.CertPEM})

	t.Run("TLS", func(t *testing.T) {
		d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0",
			"--tls-cert", files["server.pem"], "--tls-key", files["server-key.pem"])
		addr := d.waitServing(t)
		r := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + addr)}
		if stdout, _ := r.mustRun(t, "ls", "--tls-ca", files["ca.pem"]); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls --tls-ca printed %q", stdout)
		}
		if stdout, _ := (cliRunner{env: hermeticEnv("TCPGATE_SERVER="+addr, "TCPGATE_TLS_CA="+files["ca.pem"])}).mustRun(t, "ls"); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls with TCPGATE_TLS_CA printed %q", stdout)
		}
		// Plain gRPC to a TLS gateway: the CLI says to pass --tls-ca.
		secWantFail(t, r, []string{"Unavailable", "--tls-ca"}, "ls")
		secWantFail(t, r, nil, "ls", "--tls")
		secWantFail(t, r, nil, "ls", "--tls-ca", otherFiles["other-ca.pem"])
		secWantFail(t, r, []string{"--tls-ca"}, "ls", "--tls-ca", filepath.Join(t.TempDir(), "missing.pem"))
		d.stop(t)
	})

	t.Run("mutual TLS on every interface", func(t *testing.T) {
		d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "0.0.0.0:0",
			"--tls-cert", files["server.pem"], "--tls-key", files["server-key.pem"], "--client-ca", files["ca.pem"])
		addr := secLocal(t, d.waitServing(t))
		r := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + addr)}
		if stdout, _ := r.mustRun(t, "ls", "--tls-ca", files["ca.pem"], "--tls-cert", files["client.pem"], "--tls-key", files["client-key.pem"]); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls with a client certificate printed %q", stdout)
		}
		// The client certificate from the environment: TCPGATE_CLIENT_CERT
		// and _KEY, never serve's TCPGATE_TLS_CERT and _KEY.
		envClient := cliRunner{env: hermeticEnv("TCPGATE_SERVER="+addr, "TCPGATE_TLS_CA="+files["ca.pem"],
			"TCPGATE_CLIENT_CERT="+files["client.pem"], "TCPGATE_CLIENT_KEY="+files["client-key.pem"])}
		if stdout, _ := envClient.mustRun(t, "ls"); !strings.HasPrefix(stdout, "ID") {
			t.Errorf("tcpgate ls with TCPGATE_CLIENT_CERT printed %q", stdout)
		}
		serverEnv := cliRunner{env: hermeticEnv("TCPGATE_SERVER="+addr, "TCPGATE_TLS_CA="+files["ca.pem"],
			"TCPGATE_TLS_CERT="+files["client.pem"], "TCPGATE_TLS_KEY="+files["client-key.pem"])}
		secWantFail(t, serverEnv, nil, "ls")
		secWantFail(t, r, nil, "ls", "--tls-ca", files["ca.pem"])
		secWantFail(t, r, []string{"--tls-key"}, "ls", "--tls-ca", files["ca.pem"], "--tls-cert", files["client.pem"])
		secWantFail(t, r, []string{"--tls-cert"}, "ls", "--tls-ca", files["ca.pem"], "--tls-key", files["client-key.pem"])
		d.stop(t)
	})
}
