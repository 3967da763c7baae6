package server

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// collector reads the engine's figures at scrape time, so the hot paths
// only bump the atomics they keep anyway.
type collector struct {
	hub       *hub.Hub
	listeners *listener.Registry
	conns     *registry.Registry
	dialer    *dialer.Dialer

	listenersD, connsOpen, accepted, closed *prometheus.Desc
	bytesIn, bytesOut, framesIn, framesOut  *prometheus.Desc
	events, ringBytes                       *prometheus.Desc
	subscribers, queued, dropped, discon    *prometheus.Desc
	dials, dialsFailed, dialOut, dialIn     *prometheus.Desc
	forwarded, forwardFailed                *prometheus.Desc
	ruleHits                                *prometheus.Desc
	writeQueued                             *prometheus.Desc

	outbound                                        *outbound.Manager
	outboundD, reconnects, outDialFailed, outQueued *prometheus.Desc
}

func newCollector(h *hub.Hub, r *listener.Registry, conns *registry.Registry, dl *dialer.Dialer, out *outbound.Manager) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tcpgate_"+name, help, labels, nil)
	}
	return &collector{
		hub:         h,
		listeners:   r,
		conns:       conns,
		dialer:      dl,
		dials:       d("address_sends_total", "Sends to an address (one-shot connections), failed ones included."),
		dialsFailed: d("address_sends_failed_total", "Sends to an address that returned an error."),
		dialOut:     d("address_sent_bytes_total", "Payload bytes written by sends to an address."),
		dialIn:      d("address_reply_bytes_total", "Reply bytes returned by sends to an address."),
		listenersD:  d("listeners", "Listeners running now."),
		connsOpen:   d("connections_open", "Connections open now: accepted ones, and outbound ones that hold a socket."),
		accepted:    d("connections_accepted_total", "Connections accepted, including those refused by a limit."),
		closed:      d("connections_closed_total", "Connections closed, by close reason.", "reason"),
		bytesIn:     d("received_bytes_total", "Bytes received on accepted connections."),
		bytesOut:    d("sent_bytes_total", "Bytes written to accepted connections."),
		framesIn:    d("received_frames_total", "Frames received on accepted connections."),
		framesOut:   d("sent_writes_total", "Writes to accepted connections (sends and auto replies)."),
		events:      d("events_published_total", "Events published; equals the last sequence."),
		ringBytes:   d("replay_ring_bytes", "Bytes held by the replay ring."),
		subscribers: d("subscribers", "Subscribe streams open now, by slow-consumer policy.", "policy"),
		queued:      d("subscriber_queued_bytes", "Bytes queued for subscribers, by slow-consumer policy.", "policy"),
		dropped:     d("events_dropped_total", "Events dropped from subscriber queues, by slow-consumer policy.", "policy"),
		discon:      d("subscribers_disconnected_total", "Subscribe streams ended for falling behind: DISCONNECT at a full queue, BACKPRESSURE when a publisher could wait for room no longer."),
		writeQueued: d("write_queued_bytes", "Bytes queued for writing to accepted connections (sends, broadcasts, auto replies), at most --max-write-buffer-bytes."),

		// Forwarding listeners.
		forwarded:     d("forwarded_bytes_total", "Bytes relayed by forwarding listeners: direction to_target is what clients sent to targets, from_target what targets sent to clients.", "direction"),
		forwardFailed: d("forward_dial_failures_total", "Targets of forwarding listeners that could not be dialed (refused, unreachable, denied by the dial policy, TLS failed)."),

		ruleHits: d("rule_hits_total", "Frames answered by each reply rule (auto_reply.rules), by listener, or by managed outbound connection (listener_id empty), and rule (its name, or its index).", "listener_id", "connection_id", "rule"),

		// Managed outbound connections.
		outbound:      out,
		outboundD:     d("outbound_connections", "Managed outbound connections (Connect) now, by state: connecting, open, half_closed, waiting.", "state"),
		reconnects:    d("outbound_reconnects_total", "Reconnects of managed outbound connections scheduled (RECONNECT_SCHEDULED events)."),
		outDialFailed: d("outbound_dial_failures_total", "Failed attempts of managed outbound connections to connect, by reason: refused, unreachable, host_not_found, policy_denied, tls_handshake, timeout, limit, other.", "reason"),
		outQueued:     d("outbound_queued_bytes", "Bytes of Sends held by managed outbound connections while down, at most each one's queue_while_down_bytes."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	ls, cs := c.listeners.Stats(), c.conns.Stats()
	gauge(c.listenersD, float64(ls.Listeners))
	gauge(c.connsOpen, float64(cs.ConnectionsOpen))
	counter(c.accepted, float64(ls.Accepted))
	counter(c.forwarded, float64(ls.ForwardedToTarget), "to_target")
	counter(c.forwarded, float64(ls.ForwardedFromTarget), "from_target")
	counter(c.forwardFailed, float64(ls.ForwardDialFailures))
	for _, l := range c.listeners.List() {
		if set := l.RuleSet(); set != nil {
			for i := range set.Len() {
				counter(c.ruleHits, float64(set.Hits(i)), l.ID, "", set.Name(i))
			}
		}
	}
	c.outbound.RuleSets(func(id string, set *rules.Set) {
		for i := range set.Len() {
			counter(c.ruleHits, float64(set.Hits(i)), "", id, set.Name(i))
		}
	})
	for reason, n := range cs.Closed {
		counter(c.closed, float64(n), reason.String())
	}
	counter(c.bytesIn, float64(cs.BytesIn))
	counter(c.bytesOut, float64(cs.BytesOut))
	counter(c.framesIn, float64(cs.FramesIn))
	counter(c.framesOut, float64(cs.FramesOut))
	gauge(c.writeQueued, float64(cs.WriteQueued))

	hs := c.hub.Stats()
	counter(c.events, float64(hs.LastSequence))
	gauge(c.ringBytes, float64(hs.RingBytes))
	for p, ps := range hs.Policies {
		gauge(c.subscribers, float64(ps.Subscribers), p.String())
		gauge(c.queued, float64(ps.QueuedBytes), p.String())
		counter(c.dropped, float64(ps.Dropped), p.String())
	}
	counter(c.discon, float64(hs.Disconnected+hs.Abandoned))

	for _, st := range []registry.State{registry.Connecting, registry.Open, registry.HalfClosed, registry.Waiting} {
		gauge(c.outboundD, float64(cs.Outbound[st]), outboundStates[st])
	}
	os := c.outbound.Stats()
	counter(c.reconnects, float64(os.Reconnects))
	for reason, n := range os.DialFailures {
		counter(c.outDialFailed, float64(n), reason)
	}
	gauge(c.outQueued, float64(os.QueuedBytes))

	ds := c.dialer.Stats()
	counter(c.dials, float64(ds.Sends))
	counter(c.dialsFailed, float64(ds.Failed))
	counter(c.dialOut, float64(ds.BytesOut))
	counter(c.dialIn, float64(ds.BytesIn))
}

// outboundStates names the states of managed outbound connections in
// metrics.
var outboundStates = map[registry.State]string{
	registry.Connecting: "connecting",
	registry.Open:       "open",
	registry.HalfClosed: "half_closed",
	registry.Waiting:    "waiting",
}

// rpcMetrics counts calls and their latency by method and code, and the
// HTTP requests refused before they became calls.
type rpcMetrics struct {
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
	refused *prometheus.CounterVec
	// methods caches each method's children of calls and latency, so that
	// a call costs no hashing of label values: one *methodMetrics per
	// method seen, as many as the vectors hold themselves.
	methods sync.Map // method -> *methodMetrics
}

// methodMetrics are one method's children of rpcMetrics' vectors; calls
// by code, made on a code's first call.
type methodMetrics struct {
	latency prometheus.Observer
	calls   [codeCount]atomic.Pointer[prometheus.Counter]
}

// codeCount is how many gRPC codes there are: OK (0) to Unauthenticated (16).
const codeCount = int(codes.Unauthenticated) + 1

func newRPCMetrics() *rpcMetrics {
	return &rpcMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcpgate_grpc_calls_total",
			Help: "gRPC calls handled, by method and status code (REST calls that passed the HTTP checks included).",
		}, []string{"method", "code"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tcpgate_http_refused_total",
			Help: "HTTP requests refused before reaching gRPC, by status: 401 a missing or wrong token, 403 a foreign Host or a request from another origin, 415 a body that is not application/json (REST and the profiling endpoint).",
		}, []string{"status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tcpgate_grpc_call_duration_seconds",
			Help: "gRPC call duration by method; for Subscribe, the stream's life.",
			// From 100 µs (a local call) to about 30 s (Send's default timeout).
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"method"}),
	}
}

func (m *rpcMetrics) refuse(status int) {
	m.refused.WithLabelValues(strconv.Itoa(status)).Inc()
}

func (m *rpcMetrics) observe(method string, err error, start time.Time) {
	code := status.Code(err)
	v, ok := m.methods.Load(method)
	if !ok {
		v, _ = m.methods.LoadOrStore(method, &methodMetrics{latency: m.latency.WithLabelValues(method)})
	}
	mm := v.(*methodMetrics)
	if int(code) >= codeCount {
		// A code gRPC does not define: counted, uncached.
		m.calls.WithLabelValues(method, code.String()).Inc()
	} else {
		c := mm.calls[code].Load()
		if c == nil {
			cc := m.calls.WithLabelValues(method, code.String())
			c = &cc
			mm.calls[code].Store(c)
		}
		(*c).Inc()
	}
	mm.latency.Observe(time.Since(start).Seconds())
}

// newMetrics returns the registry served at /metrics.
func newMetrics(h *hub.Hub, r *listener.Registry, conns *registry.Registry, dl *dialer.Dialer, out *outbound.Manager, rpcs *rpcMetrics) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newCollector(h, r, conns, dl, out),
		rpcs.calls,
		rpcs.latency,
		rpcs.refused,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	defer s.inflight.begin(info.FullMethod, start)()
	resp, err := handler(ctx, req)
	s.rpcs.observe(info.FullMethod, err, start)
	if err != nil {
		s.logFailure(ctx, info.FullMethod, err, start)
	}
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	defer s.inflight.begin(info.FullMethod, start)()
	err := handler(srv, ss)
	s.rpcs.observe(info.FullMethod, err, start)
	if err != nil {
		s.logFailure(ss.Context(), info.FullMethod, err, start)
	}
	return err
}

// handlerMetrics are the Handle streams' figures: the counters read from
// the handler manager at scrape time, and the reply latency observed as
// each answer comes.
type handlerMetrics struct {
	m       *handler.Manager
	latency prometheus.Histogram

	streams, frames, replies, redelivered, timeouts, unhandled, rejections *prometheus.Desc
}

func newHandlerMetrics() *handlerMetrics {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("tcpgate_handler_"+name, help, nil, nil)
	}
	return &handlerMetrics{
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tcpgate_handler_reply_seconds",
			Help: "Time from a frame's delivery to a Handle stream to its answer.",
			// From 50 µs (a local handler) to about 13 s (past the default
			// 5 s handler timeout).
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}),
		streams:     d("streams", "Handle streams registered now."),
		frames:      d("frames_total", "Frames given to a Handle stream."),
		replies:     d("replies_total", "Handle replies and writes carried out."),
		redelivered: d("redeliveries_total", "Frames given again to another stream of their group after theirs ended."),
		timeouts:    d("timeouts_total", "Frames whose handler did not answer within handler_timeout."),
		unhandled:   d("unhandled_total", "Frames given the fallback reply as no stream of their group was left."),
		rejections:  d("rejections_total", "Handle replies and writes the gateway refused."),
	}
}

func (h *handlerMetrics) observe(d time.Duration) { h.latency.Observe(d.Seconds()) }

func (h *handlerMetrics) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(h, ch) }

func (h *handlerMetrics) Collect(ch chan<- prometheus.Metric) {
	st := h.m.Stats()
	ch <- prometheus.MustNewConstMetric(h.streams, prometheus.GaugeValue, float64(st.Streams))
	for d, v := range map[*prometheus.Desc]uint64{h.frames: st.Frames, h.replies: st.Replies, h.redelivered: st.Redelivered, h.timeouts: st.TimedOut, h.unhandled: st.Unhandled, h.rejections: st.Rejections} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	h.latency.Collect(ch)
}
