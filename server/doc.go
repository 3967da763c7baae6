// Package server is the tcpgate daemon: it wires the engine to the gRPC
// service and runs it. server.go is the only place the parts meet.
//
// # Architecture
//
// Data flows one way. A listener (internal/listener) accepts TCP
// connections; each connection (internal/conn) runs one read loop that cuts
// its bytes into frames (internal/framing) and publishes them to the hub
// (internal/hub). The hub numbers every event with a gateway-wide sequence,
// keeps recent events in a replay ring bounded in bytes, and queues each
// event for every subscriber it matches. A Subscribe stream (rpc) takes
// whatever is queued as one batch and sends it in one response. A payload is
// allocated once per read and shared, unchanged, by the ring and every
// subscriber.
//
// Writes go the other way: Send on an accepted connection goes through that
// connection's write lock, so writes are serialized and awaited replies are
// matched in write order; Send to an address uses internal/dialer, a fresh
// connection per call.
//
// The engine knows nothing of protobuf. rpc validates requests, calls the
// engine and maps its sentinel errors to gRPC codes (rpc/errors.go). The hub
// and the listener registry are reached through small method sets, so that a
// cluster can later put NATS-backed versions in their place.
//
// # Lock order
//
// Locks are never held across I/O, and only two pairs are ever nested:
//
//	conn.Conn.writeMu  ->  conn.Conn.mu
//	hub.Hub.mu         ->  hub.Subscriber.mu
//
// conn.Conn.writeMu is held across a write to the socket: that write is the
// thing it serializes, bounded by the write timeout. A publisher holds
// hub.Hub.mu and takes each subscriber's lock once per batch; it waits for
// room in lossless queues with no lock held. A subscriber taking its events
// takes only its own lock, so subscribers do not contend with each other,
// except that a replay copies a batch's worth of the ring under
// hub.Hub.mu, and matches it against the filter after releasing it. listener.Registry.mu is a leaf: nothing that takes another
// lock, and no I/O, runs while it is held.
//
// Counters of connections and listeners are atomics and take no lock.
//
// # Shutdown
//
// When Run's context ends (SIGINT or SIGTERM in the daemon):
//
//  1. the health service reports NOT_SERVING;
//  2. the REST server stops: its event streams end at once with a final
//     error line, other REST calls may finish;
//  3. the hub closes: every Subscribe stream ends at once with Unavailable
//     (events still queued for it are not sent), so no slow subscriber
//     holds up step 4;
//  4. the gRPC server stops gracefully, letting unary calls finish, and is
//     stopped hard when the shutdown timeout passes (one deadline for steps
//     2 and 4 together, counted from the signal);
//  5. every listener stops: its port is freed at once and its connections
//     are closed with reason SHUTDOWN (a partial frame is delivered, as at
//     any close, though no subscriber is left to see it); one-shot sends
//     still closing gracefully are closed; the profiling endpoint closes;
//     Run returns when every goroutine of the engine has returned.
//
// Connections are closed rather than drained: draining is StopListener's
// drain_timeout, for a caller who stops one listener and keeps the gateway.
// Nothing is left bound when Run returns.
package server
