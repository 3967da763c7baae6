package rpc

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/ids"
)

// The GatewayService methods that a cluster routes (peers.go): each runs
// here, or on the node that owns its object or that the request names.
// In a single gateway each is its local call.

var peerMethods = map[string]peerFunc{
	"StartListener":   peerMethod(func() *tcpgatev1.StartListenerRequest { return new(tcpgatev1.StartListenerRequest) }, (*Service).localStartListener),
	"StopListener":    peerMethod(func() *tcpgatev1.StopListenerRequest { return new(tcpgatev1.StopListenerRequest) }, (*Service).localStopListener),
	"GetListener":     peerMethod(func() *tcpgatev1.GetListenerRequest { return new(tcpgatev1.GetListenerRequest) }, (*Service).localGetListener),
	"ListListeners":   peerMethod(func() *tcpgatev1.ListListenersRequest { return new(tcpgatev1.ListListenersRequest) }, (*Service).localListListeners),
	"UpdateListener":  peerMethod(func() *tcpgatev1.UpdateListenerRequest { return new(tcpgatev1.UpdateListenerRequest) }, (*Service).localUpdateListener),
	"ListConnections": peerMethod(func() *tcpgatev1.ListConnectionsRequest { return new(tcpgatev1.ListConnectionsRequest) }, (*Service).localListConnections),
	"GetConnection":   peerMethod(func() *tcpgatev1.GetConnectionRequest { return new(tcpgatev1.GetConnectionRequest) }, (*Service).localGetConnection),
	"CloseConnection": peerMethod(func() *tcpgatev1.CloseConnectionRequest { return new(tcpgatev1.CloseConnectionRequest) }, (*Service).localCloseConnection),
	"Connect":         peerMethod(func() *tcpgatev1.ConnectRequest { return new(tcpgatev1.ConnectRequest) }, (*Service).localConnect),
	"Send":            peerMethod(func() *tcpgatev1.SendRequest { return new(tcpgatev1.SendRequest) }, (*Service).localSend),
}

const (
	listenerNotFound   = tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_NOT_FOUND
	connectionNotFound = tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_NOT_FOUND
)

// StartListener implements GatewayService.StartListener: on the node
// node_id names, or on every node.
func (s *Service) StartListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.StartListenerResponse, error) {
	if req.GetEveryNode() && s.routing(ctx) {
		return s.startEverywhere(ctx, req)
	}
	if resp, routed, err := onNode(s, ctx, req.GetNodeId(), "StartListener", req, new(tcpgatev1.StartListenerResponse)); routed {
		return resp, err
	}
	return s.localStartListener(ctx, req)
}

// startEverywhere starts a listener on every live node, under one id:
// here first (which validates it), then on the others. When one node
// refuses, the listener is stopped on the nodes that started it and the
// call fails with that node's error.
func (s *Service) startEverywhere(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.StartListenerResponse, error) {
	if req.GetNodeId() != "" {
		return nil, invalid("every_node", "not with node_id: a listener on every node is on no node in particular")
	}
	req = proto.CloneOf(req)
	if req.GetListenerId() == "" {
		req.ListenerId = ids.New(ids.Listener)
	}
	resp, err := s.localStartListener(ctx, req)
	if err != nil {
		return nil, err
	}
	// The others bind the port this node got, when it was left to
	// choose: a load balancer in front forwards to one port.
	if _, port, err := net.SplitHostPort(resp.GetListener().GetAddress()); err == nil && req.GetPort() == 0 {
		p, _ := strconv.ParseUint(port, 10, 16)
		req.Port = uint32(p)
	}
	started := []string{s.cfg.NodeID}
	for _, n := range s.otherNodes() {
		cctx, cancel := withPeerTimeout(ctx, 0)
		err := s.cfg.Peers.Call(cctx, n, "StartListener", req, new(tcpgatev1.StartListenerResponse))
		cancel()
		if err != nil {
			s.stopOn(context.WithoutCancel(ctx), started, req.GetListenerId())
			return nil, s.status(fmt.Errorf("starting listener %s on every node: node %s: %w (stopped again on %s)", req.GetListenerId(), n, err, strings.Join(started, ", ")))
		}
		started = append(started, n)
	}
	return resp, nil
}

// stopOn stops listener id on nodes, as well as it can: a rollback.
func (s *Service) stopOn(ctx context.Context, nodes []string, id string) {
	req := &tcpgatev1.StopListenerRequest{ListenerId: id}
	for _, n := range nodes {
		cctx, cancel := context.WithTimeout(ctx, peerTimeout)
		var err error
		if n == s.cfg.NodeID {
			_, err = s.localStopListener(cctx, req)
		} else {
			err = s.cfg.Peers.Call(cctx, n, "StopListener", req, new(tcpgatev1.StopListenerResponse))
		}
		cancel()
		if err != nil {
			s.log.Warn("listener not stopped on a node", "listener", id, "node", n, "error", err)
		}
	}
}

// StopListener implements GatewayService.StopListener: on the node that
// runs the listener; a listener on every node stops on every node.
func (s *Service) StopListener(ctx context.Context, req *tcpgatev1.StopListenerRequest) (*tcpgatev1.StopListenerResponse, error) {
	resp, err := s.localStopListener(ctx, req)
	if err == nil {
		if resp.GetListener().GetEveryNode() && s.routing(ctx) {
			s.stopOn(ctx, s.otherNodes(), req.GetListenerId())
		}
		return resp, nil
	}
	resp, err = elsewhere(s, ctx, err, listenerNotFound, "StopListener", req, func() *tcpgatev1.StopListenerResponse { return new(tcpgatev1.StopListenerResponse) }, drainOf(req))
	if err == nil && resp.GetListener().GetEveryNode() {
		s.stopOn(ctx, except(s.otherNodes(), resp.GetHeader().GetNodeId()), req.GetListenerId())
	}
	return resp, err
}

func drainOf(req *tcpgatev1.StopListenerRequest) time.Duration {
	return req.GetDrainTimeout().AsDuration()
}

func except(nodes []string, n string) []string {
	out := nodes[:0:0]
	for _, x := range nodes {
		if x != n {
			out = append(out, x)
		}
	}
	return out
}

// GetListener implements GatewayService.GetListener, on whichever node
// runs the listener (this one first).
func (s *Service) GetListener(ctx context.Context, req *tcpgatev1.GetListenerRequest) (*tcpgatev1.GetListenerResponse, error) {
	resp, err := s.localGetListener(ctx, req)
	if err == nil {
		return resp, nil
	}
	return elsewhere(s, ctx, err, listenerNotFound, "GetListener", req, func() *tcpgatev1.GetListenerResponse { return new(tcpgatev1.GetListenerResponse) }, 0)
}

// UpdateListener implements GatewayService.UpdateListener, on the node
// that runs the listener.
func (s *Service) UpdateListener(ctx context.Context, req *tcpgatev1.UpdateListenerRequest) (*tcpgatev1.UpdateListenerResponse, error) {
	resp, err := s.localUpdateListener(ctx, req)
	if err != nil {
		resp, err = elsewhere(s, ctx, err, listenerNotFound, "UpdateListener", req, func() *tcpgatev1.UpdateListenerResponse { return new(tcpgatev1.UpdateListenerResponse) }, 0)
	}
	if err != nil || !resp.GetListener().GetEveryNode() || !s.routing(ctx) {
		return resp, err
	}
	// A listener on every node changes on every node: the others after
	// the one that answered, which validated the change.
	for _, n := range except(s.otherNodes(), resp.GetListener().GetNodeId()) {
		cctx, cancel := withPeerTimeout(ctx, 0)
		err := s.cfg.Peers.Call(cctx, n, "UpdateListener", req, new(tcpgatev1.UpdateListenerResponse))
		cancel()
		if err != nil {
			return nil, s.status(fmt.Errorf("updating listener %s on every node: changed on %s, not on node %s: %w", req.GetListenerId(), resp.GetListener().GetNodeId(), n, err))
		}
	}
	return resp, nil
}

// ListListeners implements GatewayService.ListListeners: in a cluster,
// the listeners of every node, node by node.
func (s *Service) ListListeners(ctx context.Context, req *tcpgatev1.ListListenersRequest) (*tcpgatev1.ListListenersResponse, error) {
	if !s.routing(ctx) {
		return s.localListListeners(ctx, req)
	}
	resp, err := listAll(s, ctx, "ListListeners", req, req.GetPageSize(), req.GetPageToken(), s.localListListeners,
		func() *tcpgatev1.ListListenersResponse { return new(tcpgatev1.ListListenersResponse) },
		func(r *tcpgatev1.ListListenersRequest, size int32, tok string) *tcpgatev1.ListListenersRequest {
			c := proto.CloneOf(r)
			c.PageSize, c.PageToken = size, tok
			return c
		},
		func(dst, src *tcpgatev1.ListListenersResponse) int {
			dst.Listeners = append(dst.Listeners, src.Listeners...)
			return len(src.Listeners)
		},
		(*tcpgatev1.ListListenersResponse).GetNextPageToken,
		func(r *tcpgatev1.ListListenersResponse, t string) { r.NextPageToken = t })
	if err != nil {
		return nil, err
	}
	resp.Header = s.header()
	return resp, nil
}

// ListConnections implements GatewayService.ListConnections: in a
// cluster, the connections of every node, node by node.
func (s *Service) ListConnections(ctx context.Context, req *tcpgatev1.ListConnectionsRequest) (*tcpgatev1.ListConnectionsResponse, error) {
	if !s.routing(ctx) {
		return s.localListConnections(ctx, req)
	}
	resp, err := listAll(s, ctx, "ListConnections", req, req.GetPageSize(), req.GetPageToken(), s.localListConnections,
		func() *tcpgatev1.ListConnectionsResponse { return new(tcpgatev1.ListConnectionsResponse) },
		func(r *tcpgatev1.ListConnectionsRequest, size int32, tok string) *tcpgatev1.ListConnectionsRequest {
			c := proto.CloneOf(r)
			c.PageSize, c.PageToken = size, tok
			return c
		},
		func(dst, src *tcpgatev1.ListConnectionsResponse) int {
			dst.Connections = append(dst.Connections, src.Connections...)
			return len(src.Connections)
		},
		(*tcpgatev1.ListConnectionsResponse).GetNextPageToken,
		func(r *tcpgatev1.ListConnectionsResponse, t string) { r.NextPageToken = t })
	if err != nil {
		return nil, err
	}
	resp.Header = s.header()
	return resp, nil
}

// GetConnection implements GatewayService.GetConnection, on whichever
// node has the connection (this one first).
func (s *Service) GetConnection(ctx context.Context, req *tcpgatev1.GetConnectionRequest) (*tcpgatev1.GetConnectionResponse, error) {
	resp, err := s.localGetConnection(ctx, req)
	if err == nil {
		return resp, nil
	}
	return elsewhere(s, ctx, err, connectionNotFound, "GetConnection", req, func() *tcpgatev1.GetConnectionResponse { return new(tcpgatev1.GetConnectionResponse) }, 0)
}

// CloseConnection implements GatewayService.CloseConnection, on the node
// that has the connection.
func (s *Service) CloseConnection(ctx context.Context, req *tcpgatev1.CloseConnectionRequest) (*tcpgatev1.CloseConnectionResponse, error) {
	resp, err := s.localCloseConnection(ctx, req)
	if err == nil {
		return resp, nil
	}
	return elsewhere(s, ctx, err, connectionNotFound, "CloseConnection", req, func() *tcpgatev1.CloseConnectionResponse { return new(tcpgatev1.CloseConnectionResponse) }, 0)
}

// Connect implements GatewayService.Connect, on the node node_id names.
func (s *Service) Connect(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.ConnectResponse, error) {
	if resp, routed, err := onNode(s, ctx, req.GetNodeId(), "Connect", req, new(tcpgatev1.ConnectResponse)); routed {
		return resp, err
	}
	return s.localConnect(ctx, req)
}

// Send implements GatewayService.Send: to a connection, on the node that
// has it; the awaited reply comes back through this node.
func (s *Service) Send(ctx context.Context, req *tcpgatev1.SendRequest) (*tcpgatev1.SendResponse, error) {
	resp, err := s.localSend(ctx, req)
	if err == nil || req.GetConnectionId() == "" {
		return resp, err
	}
	timeout := DefaultSendTimeout
	if t := req.GetTimeout(); t != nil {
		timeout = t.AsDuration()
	}
	return elsewhere(s, ctx, err, connectionNotFound, "Send", req, func() *tcpgatev1.SendResponse { return new(tcpgatev1.SendResponse) }, timeout)
}
