package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"

	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// internalBuffer is the buffer of the REST gateway's in-memory connection
// to gRPC, in bytes: a few event batches, so a stream is not held up by the
// pipe itself.
const internalBuffer = 4 << 20

// isLoopback reports whether a listen address can only be reached from
// this host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// checkExposure refuses a control plane reachable from other hosts that
// anyone there could drive: whoever reaches it can open ports and make
// connections from this host.
func checkExposure(cfg Config) error {
	if cfg.Insecure || cfg.AuthToken != "" || cfg.ClientCA != "" {
		return nil
	}
	for _, a := range []struct{ flag, addr string }{{"--grpc-addr", cfg.GRPCAddr}, {"--http-addr", cfg.HTTPAddr}} {
		if a.addr != "" && !isLoopback(a.addr) {
			return fmt.Errorf("%s %s is reachable from other hosts, and whoever reaches it can open ports and "+
				"make connections from this one: set a token (--auth-token-file or TCPGATE_AUTH_TOKEN) or mutual TLS "+
				"(--tls-cert, --tls-key, --client-ca), or pass --insecure to accept that", a.flag, a.addr)
		}
	}
	return nil
}

// warnCleartextToken warns when the token protects an address reachable
// from other hosts without TLS: anyone on the path reads it from the first
// request and has the gateway's full power.
func warnCleartextToken(cfg Config, log *slog.Logger) {
	if cfg.AuthToken == "" || cfg.TLSCert != "" {
		return
	}
	for _, a := range []struct{ flag, addr string }{{"--grpc-addr", cfg.GRPCAddr}, {"--http-addr", cfg.HTTPAddr}} {
		if a.addr != "" && !isLoopback(a.addr) {
			log.Warn("the bearer token crosses the network in clear text: add --tls-cert and --tls-key", "flag", a.flag, "address", a.addr)
		}
	}
}

// newPolicy parses the policy flags.
func newPolicy(cfg Config) (*policy.Policy, error) {
	p := policy.Policy{Resolver: cfg.DialResolver}
	var err error
	if p.AllowListen, err = policy.ParseRules(cfg.AllowListen); err != nil {
		return nil, fmt.Errorf("--allow-listen: %w", err)
	}
	if p.AllowDial, err = policy.ParseRules(cfg.AllowDial); err != nil {
		return nil, fmt.Errorf("--allow-dial: %w", err)
	}
	if p.DenyDial, err = policy.ParseRules(cfg.DenyDial); err != nil {
		return nil, fmt.Errorf("--deny-dial: %w", err)
	}
	return &p, nil
}

// loadKeyPair reads the control plane's certificate and key files.
func loadKeyPair(cfg Config) (*tls.Certificate, error) {
	kp, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("loading --tls-cert %s and --tls-key %s: %w", cfg.TLSCert, cfg.TLSKey, err)
	}
	return &kp, nil
}

// serverTLS builds the control plane's TLS configuration from cfg's files.
// Its certificate is the one cert holds, read at every handshake, so that
// a Reconfigure that stores a new one serves it to the next client.
func serverTLS(cfg Config, cert *atomic.Pointer[tls.Certificate]) (*tls.Config, error) {
	switch {
	case cfg.TLSCert == "" && cfg.TLSKey == "":
		if cfg.ClientCA != "" {
			return nil, errors.New("--client-ca needs --tls-cert and --tls-key: client certificates are checked in a TLS handshake")
		}
		return nil, nil
	case cfg.TLSCert == "" || cfg.TLSKey == "":
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	kp, err := loadKeyPair(cfg)
	if err != nil {
		return nil, err
	}
	cert.Store(kp)
	c := &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Load(), nil },
		MinVersion:     tls.VersionTLS12,
	}
	if cfg.ClientCA != "" {
		pem, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("reading --client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--client-ca %s holds no PEM certificate", cfg.ClientCA)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}
