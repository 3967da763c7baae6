package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/servertest"
)

func TestClusterOptions(t *testing.T) {
	if cc, err := (&clusterOptions{}).config(); cc != nil || err != nil {
		t.Fatalf("without --cluster: %v, %v; want no cluster", cc, err)
	}
	cc, err := (&clusterOptions{url: "nats://127.0.0.1:4222", name: "x", token: "t"}).config()
	if err != nil || cc.URL != "nats://127.0.0.1:4222" || cc.Token != "t" || cc.TLS != nil {
		t.Fatalf("plain: %+v, %v", cc, err)
	}
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	dir := t.TempDir()
	files := map[string][]byte{"ca.pem": ca.CertPEM, "cert.pem": cert, "key.pem": key, "junk.pem": []byte("not pem")}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	cc, err = (&clusterOptions{url: "tls://127.0.0.1:4222", ca: f("ca.pem"), cert: f("cert.pem"), key: f("key.pem")}).config()
	if err != nil || cc.TLS == nil || cc.TLS.RootCAs == nil || len(cc.TLS.Certificates) != 1 {
		t.Fatalf("mTLS: %+v, %v", cc, err)
	}
	for _, tt := range []struct {
		o    clusterOptions
		want string
	}{
		{clusterOptions{url: "tls://x:1", ca: f("missing.pem")}, "--cluster-ca"},
		{clusterOptions{url: "tls://x:1", ca: f("junk.pem")}, "no PEM certificate"},
		{clusterOptions{url: "tls://x:1", cert: f("cert.pem")}, "go together"},
		{clusterOptions{url: "tls://x:1", cert: f("cert.pem"), key: f("ca.pem")}, "--cluster-cert/--cluster-key"},
	} {
		if _, err := tt.o.config(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error naming %q", tt.o, err, tt.want)
		}
	}
}
