package rpc

import (
	"context"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// The connection RPCs: ListConnections, GetConnection and CloseConnection.

// Connections is what the service calls of the connection registry
// (registry.Registry): the lookups of the connection RPCs, and Send's to a
// connection or a listener's connections.
type Connections interface {
	Send(ctx context.Context, id string, p []byte, framed bool, aw conn.Await) ([]byte, int, error)
	GetConn(id string) (registry.Info, error)
	CloseConn(ctx context.Context, id string) (registry.Info, error)
	ListConns(f registry.Filter, size int, after uint64) (registry.Page, error)
	Broadcast(ctx context.Context, listenerID string, p []byte) (uint64, int, error)
}

// localCloseConnection is CloseConnection on this node (peers.go routes it).
func (s *Service) localCloseConnection(ctx context.Context, req *tcpgatev1.CloseConnectionRequest) (*tcpgatev1.CloseConnectionResponse, error) {
	if err := checkID("connection_id", req.GetConnectionId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Connections.CloseConn(ctx, req.GetConnectionId())
	if err != nil {
		return nil, s.status(err)
	}
	// An outbound connection made by Connect is closed for good: it
	// leaves the state file. An accepted connection was never in it.
	if s.cfg.State != nil && info.Origin == registry.Outbound {
		if err := s.save(ctx, "connection "+info.ID+" closed", s.cfg.State.DeleteConnection(info.ID)); err != nil {
			return nil, err
		}
	}
	return &tcpgatev1.CloseConnectionResponse{Connection: connToProto(info), Header: s.header()}, nil
}

// localListConnections is ListConnections on this node (peers.go routes it).
func (s *Service) localListConnections(_ context.Context, req *tcpgatev1.ListConnectionsRequest) (*tcpgatev1.ListConnectionsResponse, error) {
	if id := req.GetListenerId(); id != "" {
		if err := checkID("listener_id", id); err != nil {
			return nil, err
		}
	}
	st, ok := connStateFromProto(req.GetState())
	if !ok {
		return nil, invalid("state", "unknown value %d", int32(req.GetState()))
	}
	os, err := originsFromProto("origins", req.GetOrigins())
	if err != nil {
		return nil, err
	}
	f := registry.Filter{ListenerID: req.GetListenerId(), State: st, RemotePrefix: req.GetRemoteAddressPrefix(), Origins: os}
	inc := s.cfg.Hub.Incarnation()
	after, err := page.Decode(req.GetPageToken(), inc, f.Digest())
	if err != nil {
		return nil, s.status(err)
	}
	p, err := s.cfg.Connections.ListConns(f, int(req.GetPageSize()), after)
	if err != nil {
		return nil, s.status(err)
	}
	resp := &tcpgatev1.ListConnectionsResponse{Connections: make([]*tcpgatev1.Connection, 0, len(p.Conns))}
	for _, i := range p.Conns {
		resp.Connections = append(resp.Connections, connToProto(i))
	}
	if p.More {
		resp.NextPageToken = page.Token{After: p.Last, Incarnation: inc, Filter: f.Digest()}.Encode()
	}
	resp.Header = s.header()
	return resp, nil
}

// localGetConnection is GetConnection on this node (peers.go routes it).
func (s *Service) localGetConnection(_ context.Context, req *tcpgatev1.GetConnectionRequest) (*tcpgatev1.GetConnectionResponse, error) {
	if err := checkID("connection_id", req.GetConnectionId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Connections.GetConn(req.GetConnectionId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.GetConnectionResponse{Connection: connToProto(info), Header: s.header()}, nil
}

var connStates = map[registry.State]tcpgatev1.ConnectionState{
	registry.Open:       tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN,
	registry.HalfClosed: tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED,
	registry.Draining:   tcpgatev1.ConnectionState_CONNECTION_STATE_DRAINING,
	registry.Connecting: tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING,
	registry.Waiting:    tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING,
	registry.Closed:     tcpgatev1.ConnectionState_CONNECTION_STATE_CLOSED,
}

// connStateFromProto is the state a filter names: 0 (any) for
// UNSPECIFIED, false for a value the API does not define.
func connStateFromProto(st tcpgatev1.ConnectionState) (registry.State, bool) {
	if st == tcpgatev1.ConnectionState_CONNECTION_STATE_UNSPECIFIED {
		return 0, true
	}
	for k, v := range connStates {
		if v == st {
			return k, true
		}
	}
	return 0, false
}
