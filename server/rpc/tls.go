package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
)

// pem is one PEM input and the field it came from, which its errors name.
type pem struct {
	b     []byte // nil when neither field is set
	field string // "tls.cert_pem" or "tls.cert_file"
}

// pemOrFile returns the PEM given inline or read from a file; exactly one of
// the two may be set. field names the pair in errors ("tls.cert"). A path
// is read by the service's pemfile.Reader as Untrusted: it names a file of
// the gateway's host, chosen by the caller; as Trusted only under a
// declaring context, for the operator's config file.
func (s *Service) pemOrFile(ctx context.Context, field, inline, file string) (pem, error) {
	switch {
	case inline != "" && file != "":
		return pem{}, invalid(field+"_pem", "give %s_pem or %s_file, not both", field, field)
	case inline != "":
		return pem{[]byte(inline), field + "_pem"}, nil
	case file != "":
		b, err := s.cfg.TLSFiles.Read(ctx, file, fileTrust(ctx))
		if err != nil {
			return pem{}, s.fileError(field, err)
		}
		return pem{b, field + "_file"}, nil
	}
	return pem{}, nil
}

// fileError names the field in a refused read. The caller learns no more
// than the error's message (see pemfile); the operator's log gets the
// cause.
func (s *Service) fileError(field string, err error) error {
	name := field + "_file"
	var refused *pemfile.RefusedError
	if errors.As(err, &refused) {
		s.log.Info("TLS file refused", "field", name, "path", refused.Path, "cause", refused.Cause)
	}
	if errors.Is(err, pemfile.ErrNoDir) {
		return s.status(fmt.Errorf("%s: %w (the operator allows one with --tls-files-dir); give %s_pem inline", name, err, field))
	}
	return s.status(fmt.Errorf("%s: %w", name, err))
}

func certPool(p pem) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.b) {
		return nil, invalid(p.field, "no PEM certificate found")
	}
	return pool, nil
}

func keyPair(cert, key pem) (tls.Certificate, error) {
	c, err := tls.X509KeyPair(cert.b, key.b)
	if err != nil {
		return tls.Certificate{}, invalid(cert.field+" and "+key.field, "certificate and key: %v", err)
	}
	return c, nil
}

// listenerTLS builds a listener's TLS configuration: a certificate, and
// client certificates required when a client CA is given.
func (s *Service) listenerTLS(ctx context.Context, t *tcpgatev1.ListenerTLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	cert, err := s.pemOrFile(ctx, "tls.cert", t.GetCertPem(), t.GetCertFile())
	if err != nil {
		return nil, err
	}
	key, err := s.pemOrFile(ctx, "tls.key", t.GetKeyPem(), t.GetKeyFile())
	if err != nil {
		return nil, err
	}
	if cert.b == nil || key.b == nil {
		return nil, invalid("tls", "a TLS listener needs a certificate and a key (cert_pem or cert_file, key_pem or key_file)")
	}
	pair, err := keyPair(cert, key)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	ca, err := s.pemOrFile(ctx, "tls.client_ca", t.GetClientCaPem(), t.GetClientCaFile())
	if err != nil {
		return nil, err
	}
	if ca.b != nil {
		if cfg.ClientCAs, err = certPool(ca); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// dialTLS builds the TLS configuration of a Send to host.
func (s *Service) dialTLS(ctx context.Context, t *tcpgatev1.DialTLS, host string) (*tls.Config, error) {
	return s.dialTLSAt(ctx, "tls", t, host)
}

// dialTLSAt is dialTLS of the DialTLS at field (tls, forward.tls), which
// its errors name.
func (s *Service) dialTLSAt(ctx context.Context, field string, t *tcpgatev1.DialTLS, host string) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	cfg := &tls.Config{
		ServerName:         t.GetServerName(),
		InsecureSkipVerify: t.GetInsecureSkipVerify(),
		MinVersion:         tls.VersionTLS12,
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	ca, err := s.pemOrFile(ctx, field+".ca", t.GetCaPem(), t.GetCaFile())
	if err != nil {
		return nil, err
	}
	if ca.b != nil {
		if cfg.RootCAs, err = certPool(ca); err != nil {
			return nil, err
		}
	}
	cert, err := s.pemOrFile(ctx, field+".cert", t.GetCertPem(), t.GetCertFile())
	if err != nil {
		return nil, err
	}
	key, err := s.pemOrFile(ctx, field+".key", t.GetKeyPem(), t.GetKeyFile())
	if err != nil {
		return nil, err
	}
	switch {
	case cert.b != nil && key.b != nil:
		pair, err := keyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	case cert.b != nil || key.b != nil:
		return nil, invalid(field, "a client certificate needs both its certificate and its key")
	}
	return cfg, nil
}
