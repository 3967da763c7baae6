// Package cluster makes several gateways one, on NATS JetStream: every
// node stores its events in one stream, whose sequence is the cluster's
// sequence, and hands every stored event of every node to its own hub;
// nodes announce themselves in a key-value bucket and find out there when
// one is lost; control calls reach the node that owns a connection or a
// listener over NATS request-reply.
//
// A single gateway uses none of this: the in-process hub and registries
// are the default, and this package is only wired in by --cluster.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tcpgate/tcpgate/server/internal/ids"
)

// Defaults of Config.
const (
	DefaultName            = "tcpgate"
	DefaultRetentionBytes  = 1 << 30
	DefaultRetentionAge    = 24 * time.Hour
	DefaultDetection       = 6 * time.Second
	DefaultRequestTimeout  = 5 * time.Second
	incarnationMetadataKey = "tcpgate_incarnation"
)

// ErrConfig is the cause of every refused Config.
var ErrConfig = errors.New("invalid cluster settings")

// Config says how a node joins its cluster.
type Config struct {
	// URL is the NATS server (or comma-separated servers).
	URL string
	// Name is the cluster's name: nodes of one name form one gateway.
	// Empty means DefaultName.
	Name string
	// Node is this node's id, unique in the cluster.
	Node string
	// Token, User and Password, CredsFile: how the node authenticates.
	Token, User, Password, CredsFile string
	// TLS, when set, is the client TLS configuration (CA, client
	// certificate for mTLS).
	TLS *tls.Config
	// Insecure allows plaintext to a NATS server that is not on loopback.
	Insecure bool
	// RetentionBytes and RetentionAge bound the stream; 0 means the
	// defaults.
	RetentionBytes int64
	RetentionAge   time.Duration
	// Detection is how long a node may go without renewing its presence
	// before the others take it for lost; 0 means DefaultDetection.
	Detection time.Duration
	// Log receives the cluster's log lines; nil discards them.
	Log *slog.Logger
	// Info describes the node to its peers (addresses), stored with its
	// presence.
	Info NodeInfo
	// OnSelfLost is called when this node finds that the cluster declared
	// it lost (it could not renew its presence in time: a partition, a
	// stall): the cluster reported its connections closed, so the node
	// closes their sockets. It renews its presence again as usual.
	OnSelfLost func()
}

// tokenPattern is what names in subjects and stream names may be: NATS
// subject tokens may not hold '.', '*', '>' or spaces.
var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c *Config) check() error {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.RetentionBytes == 0 {
		c.RetentionBytes = DefaultRetentionBytes
	}
	if c.RetentionAge == 0 {
		c.RetentionAge = DefaultRetentionAge
	}
	if c.Detection == 0 {
		c.Detection = DefaultDetection
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.URL == "":
		return fmt.Errorf("%w: --cluster needs a NATS URL, such as nats://127.0.0.1:4222", ErrConfig)
	case !tokenPattern.MatchString(c.Name):
		return fmt.Errorf("%w: --cluster-name %q: use 1 to 64 of A-Z a-z 0-9 _ -", ErrConfig, c.Name)
	case !tokenPattern.MatchString(c.Node):
		return fmt.Errorf("%w: --node-id %q: in a cluster a node id is 1 to 64 of A-Z a-z 0-9 _ - (it names NATS subjects)", ErrConfig, c.Node)
	case c.RetentionBytes < 0 || c.RetentionAge < 0:
		return fmt.Errorf("%w: --cluster-retention-bytes and --cluster-retention-age must not be negative", ErrConfig)
	case c.Detection < time.Second:
		return fmt.Errorf("%w: --cluster-detection %v: at least 1s", ErrConfig, c.Detection)
	}
	if c.TLS != nil || c.Insecure {
		return nil
	}
	for raw := range strings.SplitSeq(c.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Host == "" {
			return fmt.Errorf("%w: --cluster %q is not a URL such as nats://127.0.0.1:4222", ErrConfig, raw)
		}
		if u.Scheme == "tls" {
			continue
		}
		if !loopbackHost(u.Hostname()) {
			return fmt.Errorf("%w: --cluster %s is plaintext to a host that is not loopback: give tls:// and --cluster-ca (or a client certificate), or --cluster-insecure to allow it", ErrConfig, u.Redacted())
		}
	}
	return nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Cluster is this node's membership of the cluster.
type Cluster struct {
	cfg         Config
	nc          *nats.Conn
	js          jetstream.JetStream
	stream      jetstream.Stream
	streamName  string
	incarnation string
	startSeq    uint64
	boot        string // this run of the node: presence and message ids carry it

	pub      *Publisher
	presence *presence
	open     *openSet
	view     *view
	state    *StateBucket
	leases   *leases // nil until StartLeases

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
}

// Join connects to NATS, makes sure the cluster's stream and buckets
// exist, and announces this node. It fails when the node id is already
// live in the cluster. The caller fits its limits to MaxPayload.
func Join(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, boot: ids.Incarnation(), closed: make(chan struct{}),
		streamName: "TCPGATE_" + strings.ToUpper(strings.ReplaceAll(cfg.Name, "-", "_"))}
	nc, err := nats.Connect(cfg.URL, c.natsOptions()...)
	if err != nil {
		return nil, fmt.Errorf("joining cluster %q at %s: %w", cfg.Name, redact(cfg.URL), err)
	}
	c.nc = nc
	if err := c.setup(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return "the given URL"
}

func (c *Cluster) natsOptions() []nats.Option {
	cfg := c.cfg
	opts := []nats.Option{
		nats.Name("tcpgate " + cfg.Name + "/" + cfg.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// While disconnected a publish fails at once rather than wait in
		// a client buffer: what a node stored is then always a prefix of
		// what it published, which the publisher's recovery relies on.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if !nc.IsClosed() {
				cfg.Log.Warn("cluster connection lost; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			cfg.Log.Info("cluster connection back", "server", nc.ConnectedUrlRedacted())
		}),
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.TLS != nil {
		opts = append(opts, nats.Secure(cfg.TLS))
	}
	return opts
}

func (c *Cluster) setup(ctx context.Context) error {
	js, err := jetstream.New(c.nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("joining cluster %q: %w", c.cfg.Name, err)
	}
	c.js = js
	if err := c.ensureStream(ctx); err != nil {
		return err
	}
	st, err := newStateBucket(ctx, c)
	if err != nil {
		return err
	}
	c.state = st
	c.open = newOpenSet(c)
	c.view = newView()
	c.pub = newPublisher(c)
	p, err := newPresence(ctx, c)
	if err != nil {
		c.pub.close(ctx)
		return err
	}
	c.presence = p
	return nil
}

// ensureStream creates the cluster's event stream, or takes the existing
// one: its incarnation is in its metadata, so that it names the sequence
// space for as long as the stream lives, across node restarts.
func (c *Cluster) ensureStream(ctx context.Context) error {
	want := jetstream.StreamConfig{
		Name:        c.streamName,
		Description: "tcpgate cluster " + c.cfg.Name + ": the events of every node",
		Subjects:    []string{c.subject("ev", ">")},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    c.cfg.RetentionBytes,
		MaxAge:      c.cfg.RetentionAge,
		Duplicates:  30 * time.Second,
		Metadata:    map[string]string{incarnationMetadataKey: ids.Incarnation()},
	}
	s, err := c.js.Stream(ctx, c.streamName)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = c.js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = c.js.Stream(ctx, c.streamName) // another node made it first
		}
	case err == nil:
		// Keep the stream and its incarnation; apply this node's
		// retention, which every node of a cluster should share.
		got := s.CachedInfo().Config
		if got.MaxBytes != want.MaxBytes || got.MaxAge != want.MaxAge {
			got.MaxBytes, got.MaxAge = want.MaxBytes, want.MaxAge
			if _, uerr := c.js.UpdateStream(ctx, got); uerr != nil {
				c.cfg.Log.Warn("cluster stream retention not changed", "stream", c.streamName, "error", uerr)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("joining cluster %q: the event stream %s: %w", c.cfg.Name, c.streamName, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("joining cluster %q: the event stream %s: %w", c.cfg.Name, c.streamName, err)
	}
	c.stream = s
	c.incarnation = info.Config.Metadata[incarnationMetadataKey]
	if c.incarnation == "" {
		// A stream made by hand: its creation time names it.
		c.incarnation = fmt.Sprintf("s%x", info.Created.UnixNano())
	}
	c.startSeq = info.State.LastSeq
	return nil
}

// subject returns the cluster's subject of parts: tcpgate.NAME.parts...
func (c *Cluster) subject(parts ...string) string {
	return "tcpgate." + c.cfg.Name + "." + strings.Join(parts, ".")
}

// Node returns this node's id.
func (c *Cluster) Node() string { return c.cfg.Node }

// Incarnation names the cluster's sequence space: the stream's identity.
func (c *Cluster) Incarnation() string { return c.incarnation }

// StartSequence is the stream's last sequence when the node joined: the
// node's hub starts there, and reads older events from the stream.
func (c *Cluster) StartSequence() uint64 { return c.startSeq }

// Publisher is what the node's connections publish their events to.
func (c *Cluster) Publisher() *Publisher { return c.pub }

// MaxPayload is the NATS server's max_payload.
func (c *Cluster) MaxPayload() int64 { return c.nc.MaxPayload() }

// Connected reports whether the NATS connection is up.
func (c *Cluster) Connected() bool { return c.nc.IsConnected() }

// Close leaves the cluster: it stops consuming, publishes what it can of
// what is pending within ctx, withdraws the node's presence and closes
// the NATS connection.
func (c *Cluster) Close(ctx context.Context) error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		err = c.pub.close(ctx)
		c.presence.leave(ctx)
		c.wg.Wait()
		c.nc.Close()
	})
	return err
}
