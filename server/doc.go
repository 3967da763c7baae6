// Package server is the tcpgate daemon: it wires the engine to the gRPC
// service and runs it. server.go is the only place the parts meet.
//
// # Architecture
//
// Data flows one way. A listener (internal/listener) accepts TCP
// connections and adds them to the connection registry
// (internal/registry), which names each one, admits it under the limits
// over every connection, and is where Send, the connection RPCs and
// broadcasts find it; a connection's origin is data of its entry there.
// A managed outbound connection (Connect) is one entry of the registry for
// its whole life, while its sockets come and go: its supervisor
// (internal/outbound, one goroutine each, owned by outbound.Manager) dials
// through the dialer, attaches each socket as a new generation, writes
// on_connect and heartbeats through the socket's write queue like a Send,
// holds the Sends made while it is down, and reconnects with backoff. Each
// connection (internal/conn) runs one read loop that cuts
// its bytes into frames (internal/framing) and publishes them to the hub
// (internal/hub). The hub numbers every event with a gateway-wide sequence,
// keeps recent events in a replay ring bounded in bytes, and queues each
// event for every subscriber it matches. A Subscribe stream (rpc) takes
// whatever is queued as one batch and sends it in responses of at most
// 4 MiB. A REST event stream (gateway/events.go) is a hub subscriber of
// its own, through rpc.EventSource, which validates as Subscribe does and
// makes each event's JSON once per payload format for every REST stream.
// A payload is allocated once per read and shared, unchanged, by the ring
// and every subscriber. A stream whose client accepts nothing for
// rpc.StreamWriteTimeout (or, once the gateway shuts down,
// rpc.FinalWriteTimeout) ends: REST by write deadlines, gRPC by closing
// the client's connection (rpc.ConnTracker).
//
// In a cluster (--cluster) a node's hub numbers nothing (hub.Config.External):
// its connections' events go to the cluster's JetStream stream, which
// numbers the events of every node, and the node's consumer of the whole
// stream hands each stored event, with its stream sequence, to the hub's
// Ingest. Ingest delivers as Publish does (the same queues, policies and
// waits), skips what was already delivered (a consumer re-created after a
// reconnect), and lets the sequence jump where the stream holds nothing.
// The hub starts at the stream's last sequence, in the stream's
// incarnation; a replay older than its ring reads the stream back through
// hub.Archive, in the subscriber's Next, and a stream out of reach ends
// the subscription with CLUSTER_UNAVAILABLE and the sequence to resume
// from. The embedded gateway has no archive and numbers its own events.
//
// Writes go the other way: Send on an accepted connection, a broadcast and
// the listener's auto replies meet in that connection's write queue,
// written in order by one write goroutine that runs only while bytes are
// queued. The queue is bounded per connection and over all connections
// (--max-write-buffer-bytes); a read loop whose replies find no room stops
// reading until they do. Awaited replies are matched in write order. Send
// to an address uses internal/dialer, a fresh connection per call; the
// dialer resolves the address, checks the dial policy and dials in one
// call, its only way to connect. The listener registry likewise checks the
// listen policy, picks the port under a narrowed --allow-listen, and fills
// in and bounds a listener's max_connections (--listener-max-connections)
// and idle timeout (--idle-timeout) on every start. Both kinds of send
// wait for a reply of one await.Mode (internal/await). The write goroutine
// publishes every write, once written, as DATA of direction Sent, which
// only subscribers that ask include_sent match (live and in the replay).
//
// A forwarding listener's connection dials its target through the dialer
// (the policy checked at every dial) once open, then relays: its read
// loop writes what the client sent to the target after publishing it, and
// a pump goroutine, which the connection's Serve starts and waits for,
// reads the target into the connection's write queue, so that the
// target's bytes take turns with Sends and are published as sent data.
// Neither direction goes through the hub; each side's end of stream is
// passed on to the other as a half-close (internal/conn/forward.go).
//
// A listener with a PROXY protocol mode (internal/proxyproto, a pure
// parser that reads a header's bytes and none after) reads each accepted
// connection's header on a goroutine of its own, within
// listener.ProxyHeaderTimeout, before the TLS handshake and before the
// connection registry admits it: the socket, wrapped so that its remote
// address is the header's client, is what the registry counts per IP and
// the connection reports. A bad header is admitted as the socket's peer
// and closed at once with PROXY_HEADER_INVALID, as a failed handshake is
// reported. A listener's stop ends the header reads in progress first, so
// that none joins it after its drain took its connections.
//
// Each frame that no rule answers is offered to the connection's Handler,
// the one handler.Manager of the daemon (internal/handler), when a Handle
// stream registered for its listener or outbound connection: the manager
// gives the connection to one stream of its handler group (sticky, the
// least loaded first), queues the frame for that stream, and settles the
// frame's conn.Handoff with the stream's answer; the connection writes
// the answers in frame order and runs the handler timeout itself. A stream
// that ends hands its connections and their unanswered frames to another
// stream of the group, or to the fallback. Frame waits while a stream has
// its max_in_flight unanswered, so the read loop, and TCP, push back.
//
// In a cluster the Handle RPC registers with cluster.Handlers instead
// (internal/cluster/handle.go). The node the client reached holds the
// stream; it asks every live node to register a relay: an ordinary
// handler stream on that node's manager, for the targets the node has,
// of the same group and max_in_flight. So the node where a connection
// lives keeps every decision about it, as alone (the stream of the group,
// max_in_flight, the handler timeout, failover, the fallback): relays
// are simply more members of its groups. A relay's events go to the
// holder over NATS request-reply, batch by batch in order; the holder
// numbers the frames of every node in one space for its client, and
// carries each answer, write or close back to the frame's node, which
// settles the frame's Handoff with it. A relay ends when the holder ends
// the stream, when the holder answers that it has no such stream or has
// no subscription left (NATS: no responders; a relay pings while idle,
// every --cluster-detection/3), and when the holder is no longer a live
// node; the relay's node then moves its connections as for any stream
// that ends. The handler package knows nothing of NATS: a relay is a
// handler.Stream whose reader is the cluster, and handler.Event carries a
// ConnInfo (Peer) for a connection of another node.
//
// The engine knows nothing of protobuf and owns its decisions. rpc
// validates requests, calls the engine and maps its sentinel errors to
// gRPC codes (rpc/errors.go). The hub, the listener registry, the
// connection registry and the dialer are reached through small interfaces
// declared in rpc (the methods it calls).
//
// In a cluster the node's engine stays whole and local; what is shared
// goes through internal/cluster: the connections publish to the cluster's
// Publisher instead of the hub (see above), and rpc routes (rpc/peers.go,
// rpc/routes.go): a call about an object that is not on this node goes,
// as its request message, to the node that has it (rpc.Peers, over NATS
// request-reply), which runs it as a local call (Service.ServePeer) and
// answers with its response or status. The routing is at the API layer,
// not behind the registries' interfaces, so that the owner node takes
// every decision through its own path (validation, limits, policy,
// state). Presence in a key-value bucket tells the nodes apart; one
// survivor reports a lost node's connections closed (NODE_LOST), and a
// node told it was declared lost closes its sockets
// (registry.CloseSockets). docs/CLUSTER.md has the whole design.
//
// Reconfigure (reconfigure.go) changes the reloadable settings while the
// gateway serves. It checks and loads everything first, then stores each
// where its request path reads it at every use: the token in rpc.Auth and
// console.Sessions (atomic pointers), the certificate behind the TLS
// config's GetCertificate, the policy in the dialer and the listener
// registry (atomic pointers), the CORS origins in the REST gateway, and
// the listener and subscriber bounds under the registry's and the hub's
// own locks. Nothing is copied at start, so the next call, handshake,
// bind or dial sees the new value; what is open is left alone.
//
// # State
//
// What the API makes outlives the process with --state-file. server/state
// keeps every API-made listener and outbound connection as the request
// that made it (rpc.State, declared in rpc); rpc records a change after
// the engine made it (StartListener, StopListener, UpdateListener, Connect, CloseConnection
// of an outbound connection) and answers only once Save has it on disk.
// internal/store owns the file: an exclusive flock (FILE.lock), a
// group-commit writer (one goroutine, owned and waited for by its File)
// that writes the newest snapshot for every commit waiting, by temp file,
// fsync, rename and fsync of the directory, and a line-per-record format
// with a checksum each, so that damage loses only the lines it touched.
// New opens the file before binding anything (a second gateway on it
// stops there) and, last, replays its records through rpc's own path
// with their ids; shutdown, drains and reconnect give-ups never write it.
// state.State.mu is a leaf; the writer takes it only to copy a snapshot.
//
// In a cluster there is no state file: state.Cluster keeps the same
// records in the cluster's key-value bucket TCPGATE_<NAME>_STATE, one key
// per object with the node that runs it (none for a listener on every
// node, recorded once by the node the call came to). Changes are queued in
// order and Save writes them, one at a time, holding state.Cluster.flushMu
// (taken by nothing else; state.Cluster.mu is a leaf under it, never held
// across the write). At start a node restores its own records and every
// every-node listener. An outbound connection with take_over is also held
// through a lease (cluster/lease.go): the owner renews it by
// compare-and-set, gives the connection up (NODE_LOST) when it could not
// for --cluster-detection, and another node takes the lease, by
// compare-and-set, once it stood unchanged for twice that, and makes the
// connection again through rpc's restore path.
//
// # Lock order
//
// Locks are never held across I/O, and only two pairs are ever nested:
//
//	hub.Hub.mu                 ->  hub.Subscriber.mu
//	listener.Registry.mu       ->  registry.Registry.mu
//	outbound.Manager.mu        ->  registry.Registry.mu
//
// A connection's write turn (conn.Conn.writeTurn, a channel) is held while
// a write is queued, and across the wait for room, never across the write
// itself; its queue's lock, its own lock and the shared conn.WriteBudget's
// are leaves, each taken alone. A publisher holds hub.Hub.mu and takes each
// subscriber's lock once per batch; it waits for room in lossless queues
// with no lock held. A subscriber taking its events takes only its own
// lock, so subscribers do not contend with each other, except that a replay
// copies a batch's worth of the ring under hub.Hub.mu, and matches it
// against the filter after releasing it; its reads of a cluster's stream
// (hub.Archive) hold no lock. listener.Registry.mu takes only
// registry.Registry.mu, so that a listener becomes visible, starts
// draining and is forgotten together with its group of connections; no
// I/O runs while it is held (a drain rereads its deadline under it and
// waits outside it). registry.Registry.mu is a leaf: under it a
// connection is made (conn.New does no I/O) and its state read from an
// atomic; snapshots are taken after releasing it. outbound.Manager.mu
// takes registry.Registry.mu only to list a new connection, so that no
// connection is added once the manager is closed; a supervisor's own lock
// is a leaf (it is released before a socket is closed or the registry is
// told anything). The server's table of
// calls in flight has a leaf lock of its own.
//
// handler.Manager.mu is a leaf: it guards the groups, the connections
// given to streams, their unanswered frames and the streams' queues; a
// handoff is settled (and a reply written, a connection closed) only
// after it is released, since settling calls back into the manager.
// cluster.Handlers.mu (the streams a node holds, the relays it runs)
// takes handler.Manager.mu only to register a relay, so that none starts
// once the node's streams are closed; a held stream's own lock is a leaf,
// and no NATS request is made under either.
//
// Counters of connections and listeners are atomics and take no lock.
//
// # Shutdown
//
// When Run's context ends (the first SIGINT or SIGTERM in the daemon; a
// second one exits the process at once), the shutdown keeps one deadline,
// Config.ShutdownTimeout, counted from the signal, whatever is in flight.
// Its last quarter (at most a second) is kept for the hard stop:
//
//  1. the data plane stops accepting: every listening socket closes, so
//     every port is free and no client connects any more; StartListener is
//     refused; drains in progress are cut, their connections closed at once
//     with reason SHUTDOWN, which also returns the StopListener calls
//     waiting on them (listener.Registry.StopAccepting);
//  2. the health service reports NOT_SERVING;
//  3. the hub closes: every Subscribe stream ends at once with Unavailable
//     (events still queued for it are not sent), so no slow subscriber
//     holds up steps 4 and 5; so does every Handle stream
//     (handler.Manager.Close), their unanswered frames getting the
//     fallback reply;
//  4. the REST server stops: its event streams end at once with a final
//     error line, other REST calls may finish until the graceful part
//     ends, then the REST gateway's gRPC connection closes;
//  5. the gRPC server stops gracefully, letting unary calls finish until
//     the graceful part ends; the connections of listeners that were not
//     draining stay open meanwhile, so a Send awaiting a reply on one may
//     finish;
//  6. the hard stop, when a call is still running: every call's context
//     is cancelled (grpc.Server.Stop, in a goroutine of its own, since it
//     waits for the lock GracefulStop holds while a handler runs) and REST
//     connections close;
//  7. every listener stops and every connection closes with reason
//     SHUTDOWN (a partial frame is delivered, as at any close, though no
//     subscriber is left to see it); managed outbound connections close
//     with SHUTDOWN at the same time, those waiting to reconnect publish a
//     CONNECTION_CLOSED of their own, and none is dialed again
//     (outbound.Manager.Close waits for every supervisor); one-shot sends
//     still closing gracefully are closed; the profiling endpoint closes.
//
// Each wait logs "shutdown waiting" every second: what for, the calls still
// running (the oldest named, with their age) and the connections open.
// Nothing is waited for past the deadline: if a call ignores cancellation,
// Run logs "shutdown timed out", returns an error naming it and leaves its
// goroutines to the process's exit. Otherwise Run returns nil once every
// goroutine of the engine has returned, with nothing left bound.
//
// Connections are closed rather than drained: draining is StopListener's
// drain_timeout (at most Config.MaxDrainTimeout), for a caller who stops
// one listener and keeps the gateway. A second StopListener of a draining
// listener may bring the drain's end closer, never further.
package server
