package rpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
)

// The objects of the config file (--config), and the Reload RPC. The
// config file's listeners and connections are the API's requests, and
// they take the API's path: the same translation, the same engine calls,
// under a declaring context that marks them SOURCE_CONFIG and trusts
// their file paths (the operator wrote them). Package config decides what
// to start, stop and change; these methods are what it calls.

// Errors of the Reload RPC.
var (
	// ErrNoConfig refuses a Reload of a gateway run without --config.
	ErrNoConfig = errors.New("the gateway runs without a config file (serve --config)")
	// ErrConfigInvalid wraps the error of a config file that did not load:
	// nothing was changed.
	ErrConfigInvalid = errors.New("the config file did not load; nothing was changed")
)

// Reloader re-reads the config file and applies the difference: what the
// Reload RPC calls (the server's, over package config). It returns an
// error wrapping ErrConfigInvalid for a file that does not load.
type Reloader interface {
	Reload(ctx context.Context) (*tcpgatev1.ReloadResponse, error)
}

// DeclaredOutbound is what closes a declared outbound connection for good
// (outbound.Manager), which CloseConnection cannot.
type DeclaredOutbound interface {
	CloseDeclared(ctx context.Context, id string) error
}

// DeclaredListeners is what checks a declared listener without starting
// it, and stops one the API may not (listener.Registry).
type DeclaredListeners interface {
	Check(spec listener.Spec) error
	StopDeclared(ctx context.Context, id string, drain time.Duration) (listener.Info, error)
}

type declaringKey struct{}

// declaring marks ctx as the config file's: what it starts is
// SOURCE_CONFIG, and its file paths are trusted.
func declaring(ctx context.Context) context.Context {
	return context.WithValue(ctx, declaringKey{}, true)
}

func isDeclaring(ctx context.Context) bool {
	v, _ := ctx.Value(declaringKey{}).(bool)
	return v
}

func listenerSource(ctx context.Context) listener.Source {
	if isDeclaring(ctx) {
		return listener.SourceConfig
	}
	return listener.SourceAPI
}

func fileTrust(ctx context.Context) pemfile.Trust {
	if isDeclaring(ctx) {
		return pemfile.Trusted
	}
	return pemfile.Untrusted
}

// CheckDeclaredListener checks a declared listener as StartListener
// would, short of binding it: the translation, and the engine's own
// checks (rules, bounds, the listen policy). The error is a status naming
// the field, as StartListener's.
func (s *Service) CheckDeclaredListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) error {
	spec, err := s.listenerSpec(declaring(ctx), req)
	if err != nil {
		return err
	}
	if d, ok := s.cfg.Listeners.(DeclaredListeners); ok {
		if err := d.Check(spec); err != nil {
			return s.status(err)
		}
	}
	return nil
}

// StartDeclaredListener starts a listener of the config file, as
// StartListener does, with source SOURCE_CONFIG.
func (s *Service) StartDeclaredListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.Listener, error) {
	// Not through StartListener: only API calls change the state file.
	info, err := s.startListener(declaring(ctx), req)
	if err != nil {
		return nil, s.status(err)
	}
	return listenerToProto(info), nil
}

// StopDeclaredListener stops a listener of the config file with a drain,
// which StopListener refuses.
func (s *Service) StopDeclaredListener(ctx context.Context, id string, drain time.Duration) error {
	d, ok := s.cfg.Listeners.(DeclaredListeners)
	if !ok {
		return Status(codes.Unimplemented, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "this gateway cannot stop declared listeners", nil)
	}
	if _, err := d.StopDeclared(ctx, id, drain); err != nil {
		return s.status(err)
	}
	return nil
}

// CheckDeclaredConnection checks a declared outbound connection as Connect
// would translate it.
func (s *Service) CheckDeclaredConnection(ctx context.Context, req *tcpgatev1.ConnectRequest) error {
	_, err := s.connectSpec(declaring(ctx), req)
	return err
}

// ConnectDeclared makes an outbound connection of the config file, as
// Connect does, with source SOURCE_CONFIG: CloseConnection makes it
// reconnect rather than closing it for good. As Connect, it waits for
// the first attempt (at most its timeout); a first dial that fails is not
// an error unless reconnect is disabled: it dials again as its reconnect
// says.
func (s *Service) ConnectDeclared(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.Connection, error) {
	spec, err := s.connectSpec(declaring(ctx), req)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Outbound.Connect(ctx, spec)
	if err != nil {
		return nil, s.status(err)
	}
	return connToProto(info), nil
}

// CloseDeclaredConnection closes an outbound connection of the config
// file for good.
func (s *Service) CloseDeclaredConnection(ctx context.Context, id string) error {
	d, ok := s.cfg.Outbound.(DeclaredOutbound)
	if !ok {
		return Status(codes.Unimplemented, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "this gateway cannot close declared connections", nil)
	}
	if err := d.CloseDeclared(ctx, id); err != nil {
		return s.status(err)
	}
	return nil
}

// declaredError is StopListener's refusal of a declared listener, naming
// the file in its message and its ErrorInfo's "file".
func (s *Service) declaredError(err error) error {
	file := s.cfg.ConfigFile
	return Status(codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_DECLARED_IN_CONFIG,
		fmt.Sprintf("%v: it is declared in %s; remove it from the file and reload (SIGHUP or Reload) instead", err, file),
		map[string]string{"file": file})
}

// Reload implements GatewayService.Reload.
func (s *Service) Reload(ctx context.Context, _ *tcpgatev1.ReloadRequest) (*tcpgatev1.ReloadResponse, error) {
	if s.cfg.Reloader == nil {
		return nil, s.status(fmt.Errorf("reloading: %w", ErrNoConfig))
	}
	resp, err := s.cfg.Reloader.Reload(ctx)
	if err != nil {
		if errors.Is(err, ErrConfigInvalid) {
			return nil, Status(codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_CONFIG_INVALID, err.Error(),
				map[string]string{"file": s.cfg.ConfigFile})
		}
		return nil, s.status(err)
	}
	resp.Header = s.header()
	return resp, nil
}

// UpdateDeclaredListener changes a declared listener from old to new in
// place when UpdateListener could (listener.InPlace: the same host, port,
// framing, and no TLS or forward, whose configs are compared by pointer),
// and reports whether it did; false with a nil error means it must be
// restarted. This is the reload's in-place path.
func (s *Service) UpdateDeclaredListener(ctx context.Context, old, new *tcpgatev1.StartListenerRequest) (bool, error) {
	if old.GetTls() != nil || new.GetTls() != nil || old.GetForward() != nil || new.GetForward() != nil {
		return false, nil
	}
	ctx = declaring(ctx)
	a, err := s.listenerSpec(ctx, old)
	if err != nil {
		return false, err
	}
	b, err := s.listenerSpec(ctx, new)
	if err != nil {
		return false, err
	}
	if ok, _ := listener.InPlace(a, b); !ok {
		return false, nil
	}
	fields := listener.Diff(a, b)
	if len(fields) == 0 {
		return true, nil
	}
	if _, err := s.cfg.Listeners.Update(ctx, new.GetListenerId(), b, fields, listener.SourceConfig); err != nil {
		return false, s.status(err)
	}
	return true, nil
}
