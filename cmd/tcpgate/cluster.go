package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcpgate/tcpgate/server"
)

// clusterOptions are serve's cluster flags.
type clusterOptions struct {
	url, name               string
	token, user, password   string
	creds, ca, cert, key    string
	insecure                bool
	retentionBytes          int64
	retentionAge, detection time.Duration
}

func clusterFlags(f *pflag.FlagSet, cfg *server.Config, o *clusterOptions) {
	f.StringVar(&o.url, "cluster", "", "join a cluster of gateways on this NATS server with JetStream, such as nats://127.0.0.1:4222 (comma-separated for several; default: run alone)")
	f.StringVar(&o.name, "cluster-name", server.DefaultClusterName, "the cluster's name: nodes of one name on one NATS form one gateway (A-Z a-z 0-9 _ -)")
	f.StringVar(&o.token, "cluster-token", "", "NATS token (prefer TCPGATE_CLUSTER_TOKEN: a flag shows in ps)")
	f.StringVar(&o.user, "cluster-user", "", "NATS user name, with --cluster-password (or TCPGATE_CLUSTER_PASSWORD)")
	f.StringVar(&o.password, "cluster-password", "", "NATS password (prefer TCPGATE_CLUSTER_PASSWORD)")
	f.StringVar(&o.creds, "cluster-creds", "", "NATS credentials file (JWT and NKey seed) of the node's user")
	f.StringVar(&o.ca, "cluster-ca", "", "PEM file of the CA that signed the NATS server's certificate (implies TLS)")
	f.StringVar(&o.cert, "cluster-cert", "", "PEM client certificate for mutual TLS with NATS, with --cluster-key")
	f.StringVar(&o.key, "cluster-key", "", "PEM key of --cluster-cert")
	f.BoolVar(&o.insecure, "cluster-insecure", false, "allow plaintext to a NATS server that is not on loopback (NATS credentials and all traffic then cross the network readable)")
	f.Int64Var(&o.retentionBytes, "cluster-retention-bytes", server.DefaultClusterRetentionBytes, "bytes of events the cluster's stream keeps, for since_sequence (oldest dropped first)")
	f.DurationVar(&o.retentionAge, "cluster-retention-age", server.DefaultClusterRetentionAge, "how long the cluster's stream keeps an event")
	f.DurationVar(&o.detection, "cluster-detection", server.DefaultClusterDetection, "how long a node may be silent before the others take it for lost and report its connections closed (at least 1s)")
	f.StringVar(&cfg.NodeHost, "node-host", "", "the host a listener binds when its request names none (default 0.0.0.0); nodes sharing a machine each take their own, such as 127.0.0.11")
}

// clusterConfig builds the server's cluster settings from the flags; nil
// without --cluster.
func (o *clusterOptions) config() (*server.ClusterConfig, error) {
	if o.url == "" {
		return nil, nil
	}
	cc := &server.ClusterConfig{URL: o.url, Name: o.name, Token: o.token, User: o.user, Password: o.password, CredsFile: o.creds,
		Insecure: o.insecure, RetentionBytes: o.retentionBytes, RetentionAge: o.retentionAge, Detection: o.detection}
	if o.ca == "" && o.cert == "" && o.key == "" {
		return cc, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, fmt.Errorf("--cluster-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cluster-ca %s: no PEM certificate in it", o.ca)
		}
	}
	if (o.cert == "") != (o.key == "") {
		return nil, fmt.Errorf("--cluster-cert and --cluster-key go together")
	}
	if o.cert != "" {
		kp, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cert/--cluster-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	cc.TLS = tc
	return cc, nil
}
