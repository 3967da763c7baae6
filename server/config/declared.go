package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// Service is what Declared calls to check, start and stop the file's
// objects: the API's own translation and engine calls (rpc.Service), so
// that a listener of the file and one of a StartListener call take one
// path.
type Service interface {
	CheckDeclaredListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) error
	StartDeclaredListener(ctx context.Context, req *tcpgatev1.StartListenerRequest) (*tcpgatev1.Listener, error)
	StopDeclaredListener(ctx context.Context, id string, drain time.Duration) error
	CheckDeclaredConnection(ctx context.Context, req *tcpgatev1.ConnectRequest) error
	ConnectDeclared(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.Connection, error)
	CloseDeclaredConnection(ctx context.Context, id string) error
}

// UpdateFunc changes a running listener from old to new in place when
// that can be done (UpdateListener's path), and reports whether it did;
// false with a nil error means it must be restarted.
type UpdateFunc func(ctx context.Context, old, new *tcpgatev1.StartListenerRequest) (inPlace bool, err error)

// FlagsFunc applies the reloadable flags of a reload's serve: section
// and lists those applied and those that need a restart.
type FlagsFunc func(old, new *File) (applied, needRestart []string, err error)

// FlagValues returns f's serve: section as flag name to value, as on the
// command line (a list joined with commas).
func (f *File) FlagValues() map[string]string {
	m := make(map[string]string, len(f.Serve))
	for _, fl := range f.Serve {
		m[fl.Name] = strings.Join(fl.Values, ",")
	}
	return m
}

// Options configures a Declared.
type Options struct {
	// Load reads the file again at each reload; nil means Load.
	Load func(path string) (*File, error)
	// Update changes a listener in place; nil restarts every changed
	// listener.
	Update UpdateFunc
	// Flags applies the serve: section's reloadable flags; nil reports
	// every changed flag as needing a restart.
	Flags FlagsFunc
	// Drain is how long a listener the file no longer declares (or one
	// restarted) lets its connections finish; 0 means DefaultDrain.
	Drain time.Duration
	// Logger logs reloads; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultDrain is the drain of a listener a reload stops: long enough
// for a request in flight to be answered, short enough that a reload
// returns soon.
const DefaultDrain = 5 * time.Second

// Declared keeps what the config file declares running: it starts it at
// boot and applies each reload's difference, one reload at a time.
type Declared struct {
	svc  Service
	opts Options
	log  *slog.Logger

	mu   sync.Mutex // held by a boot or reload for its whole run; guards file
	file *File
}

// New returns the Declared of file over svc; nothing is started yet.
func New(file *File, svc Service, opts Options) *Declared {
	if opts.Load == nil {
		opts.Load = Load
	}
	if opts.Drain <= 0 {
		opts.Drain = DefaultDrain
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Declared{svc: svc, opts: opts, log: log, file: file}
}

// Path is the config file's path.
func (d *Declared) Path() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.file.Path
}

// Declares reports whether the file declares an object: kind is
// "listener" or "connection".
func (d *Declared) Declares(kind, id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch kind {
	case "listener":
		l, _ := d.file.Listener(id)
		return l != nil
	case "connection":
		c, _ := d.file.Connection(id)
		return c != nil
	}
	return false
}

// Start checks every declared object, then starts them all: a listener
// that does not start (its port in use) stops those started before it,
// and the error names the file, line and field. Never half-configured.
func (d *Declared) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.file
	if err := d.check(ctx, f, nil); err != nil {
		return err
	}
	var listeners, conns []string
	undo := func() {
		for _, id := range slices.Backward(conns) {
			_ = d.svc.CloseDeclaredConnection(context.WithoutCancel(ctx), id)
		}
		for _, id := range slices.Backward(listeners) {
			_ = d.svc.StopDeclaredListener(context.WithoutCancel(ctx), id, 0)
		}
	}
	for i, l := range f.Config.GetListeners() {
		if _, err := d.svc.StartDeclaredListener(ctx, l); err != nil {
			undo()
			return f.apiError(fmt.Sprintf("listeners[%d]", i), err)
		}
		listeners = append(listeners, l.GetListenerId())
	}
	for i, c := range f.Config.GetConnections() {
		if _, err := d.svc.ConnectDeclared(ctx, c); err != nil {
			undo()
			return f.apiError(fmt.Sprintf("connections[%d]", i), err)
		}
		conns = append(conns, c.GetConnectionId())
	}
	d.log.Info("config file loaded", "file", f.Path, "listeners", len(listeners), "connections", len(conns))
	return nil
}

// check checks every object of f that old does not declare the same
// (all of them when old is nil), as the API would translate it.
func (d *Declared) check(ctx context.Context, f, old *File) error {
	for i, l := range f.Config.GetListeners() {
		if old != nil {
			if prev, _ := old.Listener(l.GetListenerId()); prev != nil && proto.Equal(prev, l) {
				continue
			}
		}
		if err := d.svc.CheckDeclaredListener(ctx, l); err != nil {
			return f.apiError(fmt.Sprintf("listeners[%d]", i), err)
		}
	}
	for i, c := range f.Config.GetConnections() {
		if err := d.svc.CheckDeclaredConnection(ctx, c); err != nil {
			return f.apiError(fmt.Sprintf("connections[%d]", i), err)
		}
	}
	return nil
}

// invalid is a reload's error for a file that did not load.
type invalid struct{ err error }

func (e *invalid) Error() string { return e.err.Error() }

// Is makes a file that did not load rpc.ErrConfigInvalid to the API.
func (e *invalid) Is(target error) bool { return target == rpc.ErrConfigInvalid }

func (e *invalid) Unwrap() error { return e.err }

// Reload reads the file again, checks all of it, and applies the
// difference: listeners and connections added are started, those
// removed stopped (listeners with a drain), those changed updated in
// place when the UpdateFunc can, restarted on their id otherwise; those
// unchanged are not touched, their connections and all. A file that does
// not load, or an added listener that does not start, changes nothing and
// is an error wrapping rpc.ErrConfigInvalid. A reload waits for the one
// running.
func (d *Declared) Reload(ctx context.Context) (*tcpgatev1.ReloadResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.file
	f, err := d.opts.Load(old.Path)
	if err != nil {
		return nil, &invalid{err}
	}
	if err := d.check(ctx, f, old); err != nil {
		return nil, &invalid{err}
	}
	resp := &tcpgatev1.ReloadResponse{File: f.Path, Listeners: &tcpgatev1.ReloadDiff{}, Connections: &tcpgatev1.ReloadDiff{}}
	ld, cd := resp.Listeners, resp.Connections

	// Added listeners first: one whose port is taken undoes the others,
	// before anything running was touched.
	var added []string
	for i, l := range f.Config.GetListeners() {
		if prev, _ := old.Listener(l.GetListenerId()); prev != nil {
			continue
		}
		if _, err := d.svc.StartDeclaredListener(ctx, l); err != nil {
			for _, id := range slices.Backward(added) {
				_ = d.svc.StopDeclaredListener(context.WithoutCancel(ctx), id, 0)
			}
			return nil, &invalid{f.apiError(fmt.Sprintf("listeners[%d]", i), err)}
		}
		added = append(added, l.GetListenerId())
	}
	ld.Added = added
	// From here on the new file is the one in force: what fails is
	// reported, and the next reload tries it again.
	d.file = f
	var failed []error
	for i, l := range f.Config.GetListeners() {
		id := l.GetListenerId()
		prev, _ := old.Listener(id)
		switch {
		case prev == nil:
		case proto.Equal(prev, l):
			ld.Unchanged = append(ld.Unchanged, id)
		default:
			ld.Changed = append(ld.Changed, id)
			if err := d.changeListener(ctx, prev, l); err != nil {
				failed = append(failed, f.apiError(fmt.Sprintf("listeners[%d]", i), err))
			}
		}
	}
	for _, l := range old.Config.GetListeners() {
		id := l.GetListenerId()
		if now, _ := f.Listener(id); now != nil {
			continue
		}
		ld.Removed = append(ld.Removed, id)
		if err := d.svc.StopDeclaredListener(ctx, id, d.opts.Drain); err != nil {
			failed = append(failed, fmt.Errorf("stopping listener %q: %w", id, err))
		}
	}
	for _, c := range old.Config.GetConnections() {
		id := c.GetConnectionId()
		now, _ := f.Connection(id)
		if now != nil && proto.Equal(now, c) {
			continue
		}
		if now == nil {
			cd.Removed = append(cd.Removed, id)
		}
		if err := d.svc.CloseDeclaredConnection(ctx, id); err != nil {
			failed = append(failed, fmt.Errorf("closing connection %q: %w", id, err))
		}
	}
	for i, c := range f.Config.GetConnections() {
		id := c.GetConnectionId()
		prev, _ := old.Connection(id)
		switch {
		case prev != nil && proto.Equal(prev, c):
			cd.Unchanged = append(cd.Unchanged, id)
			continue
		case prev == nil:
			cd.Added = append(cd.Added, id)
		default:
			cd.Changed = append(cd.Changed, id)
		}
		if _, err := d.svc.ConnectDeclared(ctx, c); err != nil {
			failed = append(failed, f.apiError(fmt.Sprintf("connections[%d]", i), err))
		}
	}
	if d.opts.Flags != nil {
		applied, restart, err := d.opts.Flags(old, f)
		if err != nil {
			failed = append(failed, err)
		}
		resp.FlagsApplied, resp.FlagsNeedRestart = applied, restart
	} else {
		resp.FlagsNeedRestart = f.ChangedFlags(old)
	}
	d.log.Debug("config file reloaded", "file", f.Path,
		"listeners_added", ld.Added, "listeners_changed", ld.Changed, "listeners_removed", ld.Removed, "listeners_unchanged", len(ld.Unchanged),
		"connections_added", cd.Added, "connections_changed", cd.Changed, "connections_removed", cd.Removed,
		"flags_applied", resp.FlagsApplied, "flags_need_restart", resp.FlagsNeedRestart)
	if err := errors.Join(failed...); err != nil {
		return nil, fmt.Errorf("reloading %s: applied in part: %w", f.Path, err)
	}
	return resp, nil
}

// changeListener updates a listener in place when it can, and otherwise
// stops it with a drain and starts it again on its id.
func (d *Declared) changeListener(ctx context.Context, prev, l *tcpgatev1.StartListenerRequest) error {
	if d.opts.Update != nil {
		inPlace, err := d.opts.Update(ctx, prev, l)
		if err != nil || inPlace {
			return err
		}
	}
	if err := d.svc.StopDeclaredListener(ctx, l.GetListenerId(), d.opts.Drain); err != nil {
		return err
	}
	_, err := d.svc.StartDeclaredListener(ctx, l)
	return err
}

// apiError is an error of the API's translation or the engine for the
// object at prefix (listeners[1]): the field its ErrorInfo names, under
// prefix, at that field's line.
func (f *File) apiError(prefix string, err error) error {
	reason, meta := rpc.ReasonOf(err)
	field := prefix
	switch {
	case meta[rpc.MetaField] != "":
		field = prefix + "." + meta[rpc.MetaField]
	case reason == tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_IN_USE,
		reason == tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_NOT_USABLE,
		reason == tcpgatev1.ErrorReason_ERROR_REASON_POLICY_DENIED:
		field = prefix + ".port"
	case reason == tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_EXISTS,
		reason == tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_EXISTS:
		field = prefix + ".id"
		if f.Line(prefix+".listener_id") != 0 {
			field = prefix + ".listener_id"
		} else if f.Line(prefix+".connection_id") != 0 {
			field = prefix + ".connection_id"
		}
	}
	return &Error{File: f.Path, Line: f.Line(field), Field: field, Msg: message(err)}
}

// message is an error's text, a status's message without its code.
func message(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}
