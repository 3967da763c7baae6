package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpgate/tcpgate/server/internal/cluster"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/state"
)

// ClusterConfig makes the gateway a node of a cluster on NATS JetStream
// (--cluster): see cluster.Config. Node is the gateway's NodeID.
type ClusterConfig = cluster.Config

// clusterJoinTimeout bounds joining the cluster at start.
const clusterJoinTimeout = 30 * time.Second

// natsOverhead is what a routed call or a stored event needs beyond its
// payload: headers, the rest of the message, the protocol's framing.
const natsOverhead = 16 << 10

// joinCluster joins cfg.Cluster and fits the gateway's message limits to
// the NATS server's max_payload: a limit left at its default is lowered
// to fit, with a log line; one set above what fits stops the start,
// naming the flag and the NATS setting. sendSet says --max-send-bytes
// was given (its default is filled in before).
func joinCluster(cfg *Config, sendSet bool, log *slog.Logger, onSelfLost func()) (*cluster.Cluster, error) {
	cc := *cfg.Cluster
	cc.Node = cfg.NodeID
	if cc.Log == nil {
		cc.Log = log.With("component", "cluster")
	}
	cc.Info.GRPCAddr, cc.Info.HTTPAddr = cfg.GRPCAddr, cfg.HTTPAddr
	cc.OnSelfLost = onSelfLost
	ctx, cancel := context.WithTimeout(context.Background(), clusterJoinTimeout)
	defer cancel()
	cl, err := cluster.Join(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("--cluster: %w", err)
	}
	budget := int(cl.MaxPayload()) - natsOverhead
	for _, l := range []struct {
		flag string
		v    *int
		set  bool
		def  int
	}{
		{"--max-frame-bytes", &cfg.MaxFrameBytes, cfg.MaxFrameBytes > 0, rpc.MaxFrameLimit},
		{"--max-reply-bytes", &cfg.MaxReplyBytes, cfg.MaxReplyBytes > 0, rpc.MaxFrameLimit},
		{"--max-send-bytes", &cfg.MaxSendBytes, sendSet, DefaultMaxSendBytes},
	} {
		v := *l.v
		if !l.set {
			v = l.def
		}
		if v <= budget {
			continue
		}
		if l.set {
			_ = cl.Close(ctx)
			return nil, fmt.Errorf("--cluster: %s %d does not fit the NATS server's max_payload (%d bytes, of which %d are for headers): raise max_payload in the NATS server's configuration, or lower %s to at most %d", l.flag, v, cl.MaxPayload(), natsOverhead, l.flag, budget)
		}
		*l.v = budget
		log.Warn("cluster: a limit is lowered to fit the NATS server's max_payload; raise max_payload on the NATS side to keep the default", "flag", l.flag, "default", l.def, "now", budget, "max_payload", cl.MaxPayload())
	}
	return cl, nil
}

// publisher is what the engine publishes events to: the hub, or in a
// cluster the cluster's stream (whose feed fills the hub).
func (s *Server) publisher() interface {
	conn.Publisher
	conn.TryPublisher
} {
	if s.cluster != nil {
		return s.cluster.Publisher()
	}
	return s.hub
}

// ClusterNodes returns the ids of the cluster's live nodes, this one
// included, sorted; nil in a single gateway.
func (s *Server) ClusterNodes() []string {
	if s.cluster == nil {
		return nil
	}
	return s.cluster.Nodes()
}

// Defaults of ClusterConfig, for the flags.
const (
	DefaultClusterName           = cluster.DefaultName
	DefaultClusterRetentionBytes = cluster.DefaultRetentionBytes
	DefaultClusterRetentionAge   = cluster.DefaultRetentionAge
	DefaultClusterDetection      = cluster.DefaultDetection
)

// clusterMetrics are the cluster's figures: what the node stored in the
// stream, what it lost, its recoveries after failed publishes, what waits
// to be stored, the live nodes and whether NATS is connected.
func clusterMetrics(cl *cluster.Cluster) []prometheus.Collector {
	st := cl.Publisher().Stats()
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tcpgate_cluster_events_stored_total",
			Help: "Events this node stored in the cluster's stream."}, func() float64 { return float64(st.Stored.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tcpgate_cluster_events_lost_total",
			Help: "Events this node could not store in the cluster's stream (each reported by an EVENTS_LOST event)."}, func() float64 { return float64(st.Lost.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tcpgate_cluster_publish_recoveries_total",
			Help: "Times publishing to the cluster's stream failed and resumed after the last stored event."}, func() float64 { return float64(st.Retries.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tcpgate_cluster_events_pending",
			Help: "Events queued for the cluster's stream and not stored yet."}, func() float64 { return float64(st.Pending.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tcpgate_cluster_nodes",
			Help: "Live nodes of the cluster, this one included."}, func() float64 { return float64(len(cl.Nodes())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tcpgate_cluster_connected",
			Help: "1 while this node's connection to NATS is up."}, func() float64 {
			if cl.Connected() {
				return 1
			}
			return 0
		}),
	}
}

// handlersFor is what Handle streams register with: the node's handler
// manager, or in a cluster the cluster's streams, which handle the
// connections of every node through a relay on each.
func (s *Server) handlersFor() rpc.Handlers {
	if s.clusterHandlers == nil {
		return rpc.LocalHandlers{M: s.handlers}
	}
	return clusterHandlers{s.clusterHandlers}
}

// clusterHandlers gives rpc the cluster's Handle streams.
type clusterHandlers struct{ h *cluster.Handlers }

func (c clusterHandlers) Register(ctx context.Context, r handler.Registration) (rpc.HandlerStream, error) {
	st, err := c.h.Register(ctx, r)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// takeOverTimeout bounds making a connection this node took over: the
// first dial's own timeout ends it sooner.
const takeOverTimeout = time.Minute

// startLeases starts the take-over leases: a connection whose lease this
// node wins is made here again through the API's path (the same id, its
// generations starting again at 1); one whose lease this node could not
// renew is closed at once with reason NODE_LOST, before another node may
// dial it.
func (s *Server) startLeases() error {
	cs := s.state.(*state.Cluster)
	err := s.cluster.StartLeases(cluster.LeaseHooks{
		Take: func(id string, request []byte) {
			ctx, cancel := context.WithTimeout(context.Background(), takeOverTimeout)
			defer cancel()
			if err := cs.TakeOver(ctx, s.svc, id, request); err != nil {
				s.log.Error("cluster: connection not taken over", "connection", id, "error", err)
				return
			}
			s.log.Warn("cluster: connection taken over from a node that stopped renewing its lease", "connection", id)
		},
		Lost: func(id string, cause error) {
			ctx, cancel := context.WithTimeout(context.Background(), clusterJoinTimeout)
			defer cancel()
			s.log.Error("cluster: connection closed (NODE_LOST): this node lost its take-over lease, another node takes it over", "connection", id, "cause", cause)
			if err := s.outbound.Abandon(ctx, id, event.ReasonNodeLost, "this node lost the connection's take-over lease: "+cause.Error()); err != nil {
				s.log.Warn("cluster: closing a connection whose lease was lost", "connection", id, "error", err)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	return nil
}
