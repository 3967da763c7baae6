package rpc

import (
	"crypto/tls"
	"crypto/x509"
	"os"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// pemOrFile returns the PEM given inline or read from a file; exactly one of
// the two may be set. field names the pair in errors ("tls.cert").
func pemOrFile(field, pem, file string) ([]byte, error) {
	switch {
	case pem != "" && file != "":
		return nil, invalid(field+"_pem", "give %s_pem or %s_file, not both", field, field)
	case pem != "":
		return []byte(pem), nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, invalid(field+"_file", "%v", err)
		}
		return b, nil
	}
	return nil, nil
}

func certPool(field string, pem []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, invalid(field, "no PEM certificate found")
	}
	return pool, nil
}

func keyPair(prefix string, certPEM, keyPEM []byte) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, invalid(prefix+"cert_pem", "certificate and key: %v", err)
	}
	return cert, nil
}

// listenerTLS builds a listener's TLS configuration: a certificate, and
// client certificates required when a client CA is given.
func listenerTLS(t *tcpgatev1.ListenerTLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	certPEM, err := pemOrFile("tls.cert", t.GetCertPem(), t.GetCertFile())
	if err != nil {
		return nil, err
	}
	keyPEM, err := pemOrFile("tls.key", t.GetKeyPem(), t.GetKeyFile())
	if err != nil {
		return nil, err
	}
	if certPEM == nil || keyPEM == nil {
		return nil, invalid("tls", "a TLS listener needs a certificate and a key (cert_pem or cert_file, key_pem or key_file)")
	}
	cert, err := keyPair("tls.", certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	caPEM, err := pemOrFile("tls.client_ca", t.GetClientCaPem(), t.GetClientCaFile())
	if err != nil {
		return nil, err
	}
	if caPEM != nil {
		if cfg.ClientCAs, err = certPool("tls.client_ca_pem", caPEM); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// dialTLS builds the TLS configuration of a Send to host.
func dialTLS(t *tcpgatev1.DialTLS, host string) (*tls.Config, error) {
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
	caPEM, err := pemOrFile("tls.ca", t.GetCaPem(), t.GetCaFile())
	if err != nil {
		return nil, err
	}
	if caPEM != nil {
		if cfg.RootCAs, err = certPool("tls.ca_pem", caPEM); err != nil {
			return nil, err
		}
	}
	certPEM, err := pemOrFile("tls.cert", t.GetCertPem(), t.GetCertFile())
	if err != nil {
		return nil, err
	}
	keyPEM, err := pemOrFile("tls.key", t.GetKeyPem(), t.GetKeyFile())
	if err != nil {
		return nil, err
	}
	switch {
	case certPEM != nil && keyPEM != nil:
		cert, err := keyPair("tls.", certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	case certPEM != nil || keyPEM != nil:
		return nil, invalid("tls", "a client certificate needs both its certificate and its key")
	}
	return cfg, nil
}
