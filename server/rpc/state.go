package rpc

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

// State is what the API-made objects are recorded in (state.State): the
// request that made each, so that a restart makes it again and
// ExportConfig can print it. The calls that change state record their
// change after the engine made it and return once Save has it on disk:
// StartListener, StopListener, UpdateListener (as PutListener of the
// merged request), Connect, and CloseConnection of an outbound connection.
// Nothing else changes it: shutdown, drains and reconnect give-ups do
// not.
type State interface {
	// PutListener records the listener l that req started (or changed).
	// It returns the state's version that holds it.
	PutListener(req *tcpgatev1.StartListenerRequest, l *tcpgatev1.Listener) uint64
	// RecordedListener is the request recorded for an API-made listener,
	// a copy: UpdateListener merges its mask into it and puts it back.
	RecordedListener(id string) (*tcpgatev1.StartListenerRequest, bool)
	// DeleteListener forgets a listener; 0 when none was recorded.
	DeleteListener(id string) uint64
	// PutConnection records the outbound connection id that req made.
	PutConnection(req *tcpgatev1.ConnectRequest, id string) uint64
	// DeleteConnection forgets an outbound connection; 0 when none was
	// recorded.
	DeleteConnection(id string) uint64
	// Save returns once version is saved (at once without a state file).
	Save(ctx context.Context, version uint64) error
	// Export is the recorded objects as a config file declares them (in
	// a cluster, every node's: it reads them from the cluster).
	Export(ctx context.Context) (*tcpgatev1.Config, error)
}

// recordListener records the request of a listener the engine started
// or changed (info, as the engine returned it), unless that listener is
// no longer listening: a StopListener that ran in between has recorded
// its removal, and recording the listener after it would bring a stopped
// listener back at the next start. req builds the request to record (for
// UpdateListener, the recorded one with the mask merged in, read under
// the same lock so that concurrent updates keep each other's fields);
// false records nothing. The version is 0 when nothing was recorded.
func (s *Service) recordListener(info listener.Info, l *tcpgatev1.Listener, req func() (*tcpgatev1.StartListenerRequest, bool)) uint64 {
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	cur, err := s.cfg.Listeners.Get(info.ID)
	if err != nil || cur.State != listener.Listening || !cur.CreatedAt.Equal(info.CreatedAt) {
		return 0
	}
	r, ok := req()
	if !ok {
		return 0
	}
	return s.cfg.State.PutListener(r, l)
}

// forgetListener records that a listener stopped, in order with
// recordListener.
func (s *Service) forgetListener(id string) uint64 {
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	return s.cfg.State.DeleteListener(id)
}

// save waits for version to be saved (to the state file, or in a cluster
// to its state bucket). A failure is STATE_NOT_SAVED: the change was made
// (done says which) but would not survive a restart.
func (s *Service) save(ctx context.Context, done string, version uint64) error {
	if version == 0 {
		return nil
	}
	err := s.cfg.State.Save(ctx, version)
	if err == nil {
		return nil
	}
	where := "the state file"
	if s.cfg.Peers != nil {
		where = "the cluster's state bucket"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return s.status(fmt.Errorf("%s; saving it to %s: %w", done, where, err))
	}
	s.log.Error("state not saved", "change", done, "error", err)
	return Status(codes.Internal, tcpgatev1.ErrorReason_ERROR_REASON_STATE_NOT_SAVED,
		fmt.Sprintf("%s, but not saved to %s, so a restart loses it: %v", done, where, err), nil)
}

// RestoreListener starts a listener of the state file as StartListener
// would, without recording it: req keeps the listener's id, and port is
// the one it was bound to. A listener that had asked for port 0 gets its
// old port back if it is free, and a new one (moved) if not.
func (s *Service) RestoreListener(ctx context.Context, req *tcpgatev1.StartListenerRequest, port uint32) (l *tcpgatev1.Listener, moved bool, err error) {
	try := req
	if req.GetPort() == 0 && port != 0 {
		try = proto.CloneOf(req)
		try.Port = port
	}
	info, err := s.startListener(ctx, try)
	if err != nil && try != req && errors.Is(err, listener.ErrAddressInUse) {
		moved = true
		info, err = s.startListener(ctx, req)
	}
	if err != nil {
		return nil, false, s.status(err)
	}
	return listenerToProto(info), moved, nil
}

// RestoreConnection makes an outbound connection of the state file as
// Connect would, without recording it; req keeps its id.
func (s *Service) RestoreConnection(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.Connection, error) {
	spec, err := s.connectSpec(ctx, req)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Outbound.Connect(ctx, spec)
	if err != nil {
		return nil, s.status(err)
	}
	return connToProto(info), nil
}

// ExportConfig implements GatewayService.ExportConfig.
func (s *Service) ExportConfig(ctx context.Context, _ *tcpgatev1.ExportConfigRequest) (*tcpgatev1.ExportConfigResponse, error) {
	if s.cfg.State == nil {
		return nil, status.Error(codes.Unimplemented, "this gateway records no state")
	}
	cfg, err := s.cfg.State.Export(ctx)
	if err != nil {
		return nil, s.status(fmt.Errorf("exporting the recorded state: %w", err))
	}
	return &tcpgatev1.ExportConfigResponse{Config: cfg, Header: s.header()}, nil
}
