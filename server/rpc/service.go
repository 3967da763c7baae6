// Package rpc implements tcpgate.v1.GatewayService over the engine: each
// method validates its request, calls the engine, and translates the result
// and errors. It is the only place that speaks both protobuf and the
// engine's types.
//
// One file per group of RPCs, as etcd's v3rpc has it: listeners.go,
// connections.go, send.go, subscribe.go (with stream.go, which opens an
// event stream for gRPC and REST alike, and restevents.go, REST's side);
// errors.go maps engine errors to statuses once, convert.go the types.
package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"sync"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
)

// ids are used in REST paths, so they stay URL-safe, and short, so that
// what an error or a log line quotes of them stays short. Every id a
// request names is held to it (listener ids, connection ids, the ids of a
// Subscribe filter), so that an id no listener or connection can have is
// an InvalidArgument naming the field rather than a NotFound echoing it.
//
// validID is that rule, ^[A-Za-z0-9._~-]{1,64}$, checked by hand: every
// Send and Subscribe checks ids, and a loop over at most 64 bytes costs a
// fraction of a regexp match (FuzzValidID holds it to the regexp).
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '~', c == '-':
		default:
			return false
		}
	}
	return true
}

// maxIDBytes bounds an id: see validID.
const maxIDBytes = 64

// checkID refuses an empty id, and one that validID refuses.
func checkID(field, id string) error {
	if id == "" {
		return invalid(field, "required")
	}
	if !validID(id) {
		return invalid(field, "must be 1 to 64 of A-Z a-z 0-9 . _ ~ -, got %s", Quote(id))
	}
	return nil
}

// Hub is what the service calls of the event hub (hub.Hub): Subscribe
// streams, and the incarnation and sequence of every ResponseHeader.
type Hub interface {
	Subscribe(opts hub.SubscribeOptions) (*hub.Subscriber, error)
	Incarnation() string
	LastSequence() uint64
	// Closed is closed when the hub shuts down.
	Closed() <-chan struct{}
}

// Dialer is what Send to an address calls (dialer.Dialer): it resolves
// the address, checks it against the dial policy and dials, in one call
// that no caller can go around.
type Dialer interface {
	Send(ctx context.Context, req dialer.Request) (dialer.Result, error)
}

// Config configures a Service. The engine is reached through the small
// interfaces above and in listeners.go and connections.go, each the
// methods this package calls, so that another implementation (a
// cluster's) can stand in for the in-process one that server.go wires.
type Config struct {
	Listeners   Listeners
	Connections Connections
	Outbound    Outbound
	Hub         Hub
	Dialer      Dialer
	// Handlers serves Handle streams; nil refuses them.
	Handlers Handlers
	// NodeHost is the host a listener binds when its request names none
	// (--node-host); empty means 0.0.0.0. Nodes of a cluster that share
	// a machine each bind their own address with it.
	NodeHost string
	// Peers reaches the other nodes of a cluster, where calls about
	// their objects are routed (peers.go); nil in a single gateway.
	Peers Peers
	// State records what API calls change (server/state), each call
	// returning once its change is saved; nil records nothing, and
	// ExportConfig is Unimplemented.
	State State
	// SubscriberQueueBytes bounds each subscriber's queue; 0 means hub.DefaultQueueBytes.
	SubscriberQueueBytes int
	// MaxSendBytes bounds a Send payload; 0 means DefaultMaxSendBytes.
	MaxSendBytes int
	// MaxFrameBytes bounds framing.max_frame_bytes and fixed_size; 0 (or
	// more than MaxFrameLimit) means MaxFrameLimit. An unset max_frame_bytes
	// is 1 MiB or this, whichever is smaller.
	MaxFrameBytes int
	// MaxReplyBytes bounds await_reply.max_bytes; 0 (or more than
	// MaxFrameLimit) means MaxFrameLimit. An unset max_bytes is 1 MiB or
	// this, whichever is smaller.
	MaxReplyBytes int
	// TLSFiles reads the cert_file, key_file, ca_file and client_ca_file
	// of a request, as paths the caller chose; nil refuses every path.
	TLSFiles *pemfile.Reader
	// Conns records the gRPC server's connections (see ConnTracker), so
	// that a Subscribe stream whose client does not read can be ended; nil
	// means such a stream waits for its client.
	Conns *ConnTracker
	// NodeID names this gateway in every ResponseHeader; empty means the
	// host name.
	NodeID string
	// Logger logs internal errors; nil means slog.Default().
	Logger *slog.Logger
	// ConfigFile is the config file's path (--config), which a refusal
	// to stop a declared listener names; empty without one.
	ConfigFile string
	// Reloader serves Reload; nil (no --config) refuses it with NO_CONFIG.
	Reloader Reloader
}

// Service implements tcpgatev1.GatewayServiceServer.
type Service struct {
	tcpgatev1.UnimplementedGatewayServiceServer
	cfg Config
	log *slog.Logger
	// recordMu orders what the listener RPCs record in cfg.State with
	// what the engine did: see recordListener.
	recordMu sync.Mutex
}

var _ tcpgatev1.GatewayServiceServer = (*Service)(nil)

// New returns a Service over the engine in cfg.
func New(cfg Config) *Service {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = DefaultMaxSendBytes
	}
	if cfg.MaxFrameBytes <= 0 || cfg.MaxFrameBytes > MaxFrameLimit {
		cfg.MaxFrameBytes = MaxFrameLimit
	}
	if cfg.MaxReplyBytes <= 0 || cfg.MaxReplyBytes > MaxFrameLimit {
		cfg.MaxReplyBytes = MaxFrameLimit
	}
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID()
	}
	return &Service{cfg: cfg, log: log}
}

// DefaultNodeID is the node id of a gateway that sets none: the host name
// when it is a valid id, "tcpgate" otherwise.
func DefaultNodeID() string {
	if h, err := os.Hostname(); err == nil && validID(h) {
		return h
	}
	return "tcpgate"
}

// CheckNodeID refuses a node id that is not empty (the default) and not
// an id of the API's pattern: it goes into headers and SSE clients' code.
func CheckNodeID(id string) error {
	if id != "" && !validID(id) {
		return fmt.Errorf("node id %s must be 1 to 64 of A-Z a-z 0-9 . _ ~ -", Quote(id))
	}
	return nil
}

// header returns the ResponseHeader of a response made now: the hub's
// incarnation, this node, and the newest sequence, read after whatever the
// call published so that it is at or past the call's own events.
func (s *Service) header() *tcpgatev1.ResponseHeader {
	return &tcpgatev1.ResponseHeader{
		Incarnation:  s.cfg.Hub.Incarnation(),
		NodeId:       s.cfg.NodeID,
		LastSequence: s.cfg.Hub.LastSequence(),
	}
}

func (s *Service) status(err error) error { return toStatus(s.log, err) }

// hostPattern is a DNS name: letters, digits, '-' and '.'.
var hostPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// checkHost accepts an empty host (the default), an IP literal or a DNS
// name, so that "127.0.0.1:80" is refused here rather than by the resolver.
func checkHost(host string) error {
	switch {
	case host == "":
		return nil
	case len(host) > 253:
		return invalid("host", "longer than 253 bytes")
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !hostPattern.MatchString(host) {
		return invalid("host", "%s is not an IP address or host name (no port: that goes in port)", Quote(host))
	}
	return nil
}
