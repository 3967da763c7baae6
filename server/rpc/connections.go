package rpc

import (
	"context"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/page"
)

// The connection RPCs: ListConnections, GetConnection and CloseConnection.

// CloseConnection implements GatewayService.CloseConnection.
func (s *Service) CloseConnection(ctx context.Context, req *tcpgatev1.CloseConnectionRequest) (*tcpgatev1.CloseConnectionResponse, error) {
	if err := checkID("connection_id", req.GetConnectionId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.CloseConn(ctx, req.GetConnectionId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.CloseConnectionResponse{Connection: connToProto(info), Header: s.header()}, nil
}

// ListConnections implements GatewayService.ListConnections.
func (s *Service) ListConnections(_ context.Context, req *tcpgatev1.ListConnectionsRequest) (*tcpgatev1.ListConnectionsResponse, error) {
	if id := req.GetListenerId(); id != "" {
		if err := checkID("listener_id", id); err != nil {
			return nil, err
		}
	}
	st, ok := connStateFromProto(req.GetState())
	if !ok {
		return nil, invalid("state", "unknown value %d", int32(req.GetState()))
	}
	f := listener.ConnFilter{ListenerID: req.GetListenerId(), State: st, RemotePrefix: req.GetRemoteAddressPrefix()}
	inc := s.cfg.Hub.Incarnation()
	after, err := page.Decode(req.GetPageToken(), inc, f.Digest())
	if err != nil {
		return nil, s.status(err)
	}
	p, err := s.cfg.Listeners.ListConns(f, int(req.GetPageSize()), after)
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

// GetConnection implements GatewayService.GetConnection.
func (s *Service) GetConnection(_ context.Context, req *tcpgatev1.GetConnectionRequest) (*tcpgatev1.GetConnectionResponse, error) {
	if err := checkID("connection_id", req.GetConnectionId()); err != nil {
		return nil, err
	}
	info, err := s.cfg.Listeners.GetConn(req.GetConnectionId())
	if err != nil {
		return nil, s.status(err)
	}
	return &tcpgatev1.GetConnectionResponse{Connection: connToProto(info), Header: s.header()}, nil
}

var connStates = map[listener.ConnState]tcpgatev1.ConnectionState{
	listener.ConnOpen:       tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN,
	listener.ConnHalfClosed: tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED,
	listener.ConnDraining:   tcpgatev1.ConnectionState_CONNECTION_STATE_DRAINING,
}

// connStateFromProto is the state a filter names: 0 (any) for
// UNSPECIFIED, false for a value the API does not define.
func connStateFromProto(st tcpgatev1.ConnectionState) (listener.ConnState, bool) {
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
