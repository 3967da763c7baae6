package rpc

import (
	"context"
	"slices"
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

// notUpdatable are the StartListenerRequest fields UpdateListener refuses
// to change: they need a new socket.
var notUpdatable = []string{"host", "port", "framing", "tls", "forward", "proxy_protocol"}

// maskFields returns the listener fields an update mask names, by their
// proto names, each once and in the mask's order. A path into a field
// (auto_reply.rules, as grpc-gateway fills in the mask from a REST body)
// names the field; a camelCase path (autoReply) is taken as its proto
// name. listener_id is left out: the request's listener_id names the
// listener.
func maskFields(paths []string) []string {
	var out []string
	for _, p := range paths {
		top, _, _ := strings.Cut(p, ".")
		top = snakeCase(top)
		if top == "listener_id" || slices.Contains(out, top) {
			continue
		}
		out = append(out, top)
	}
	return out
}

// snakeCase turns a JSON name (maxConnections) into its proto name
// (max_connections); a proto name comes back as it is.
func snakeCase(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fieldNotUpdatable is the InvalidArgument of a mask naming field, which
// cannot change in place or is not a field of a listener.
func fieldNotUpdatable(field, why string) error {
	return Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FIELD_NOT_UPDATABLE,
		"update_mask: "+field+": "+why, map[string]string{MetaField: field})
}

// localUpdateListener is UpdateListener on this node (peers.go routes it).
func (s *Service) localUpdateListener(ctx context.Context, req *tcpgatev1.UpdateListenerRequest) (*tcpgatev1.UpdateListenerResponse, error) {
	id := req.GetListenerId()
	if err := checkID("listener_id", id); err != nil {
		return nil, err
	}
	l := req.GetListener()
	if other := l.GetListenerId(); other != "" && other != id {
		return nil, invalid("listener.listener_id", "is %q, not the listener_id %q of the request: leave it empty", other, id)
	}
	fields := maskFields(req.GetUpdateMask().GetPaths())
	if len(fields) == 0 {
		return nil, invalid("update_mask", "names no field: list those to change (%s)", strings.Join(listener.UpdatableFields, ", "))
	}
	for _, f := range fields {
		switch {
		case slices.Contains(notUpdatable, f):
			return nil, fieldNotUpdatable(f, "cannot change in place, as it needs a new socket: stop the listener and start it anew")
		case !slices.Contains(listener.UpdatableFields, f):
			return nil, fieldNotUpdatable(f, "is not a field UpdateListener changes ("+strings.Join(listener.UpdatableFields, ", ")+")")
		}
	}
	spec := listener.Spec{Source: listener.SourceAPI, ID: id}
	for _, f := range fields {
		switch f {
		case listener.FieldAutoReply:
			ar, err := repliesFromProto(l.GetAutoReply())
			if err != nil {
				return nil, err
			}
			spec.AutoReply, spec.Rules = ar.fallback, ar.rules
			spec.HandlerTimeout, spec.HandlerTimeoutClose = ar.handlerTimeout, ar.handlerTimeoutClose
		case listener.FieldOnConnect:
			banner, err := s.bannerFromProto(l.GetOnConnect())
			if err != nil {
				return nil, err
			}
			spec.Banner = banner
		case listener.FieldMaxConnections:
			spec.MaxConnections = int(l.GetMaxConnections())
		case listener.FieldIdleTimeout:
			idle, err := durationFromProto("idle_timeout", l.GetIdleTimeout(), 0)
			if err != nil {
				return nil, err
			}
			spec.IdleTimeout = idle
		case listener.FieldHalfCloseTimeout:
			halfClose, err := durationFromProto("half_close_timeout", l.GetHalfCloseTimeout(), 0)
			if err != nil {
				return nil, err
			}
			if halfClose > maxHalfClose {
				return nil, invalid("half_close_timeout", "must be at most %s, got %s", maxHalfClose, halfClose)
			}
			spec.HalfCloseTimeout = halfClose
		}
	}
	info, err := s.cfg.Listeners.Update(ctx, id, spec, fields, listener.SourceAPI)
	if err != nil {
		return nil, s.status(err)
	}
	out := listenerToProto(info)
	// The recorded request takes the new values of the fields changed, so
	// that a restart brings the listener back as it is now.
	if s.cfg.State != nil {
		v := s.recordListener(info, out, func() (*tcpgatev1.StartListenerRequest, bool) {
			rec, ok := s.cfg.State.RecordedListener(id)
			if ok {
				mergeFields(rec, l, fields)
			}
			return rec, ok
		})
		if err := s.save(ctx, "listener "+id+" updated", v); err != nil {
			return nil, err
		}
	}
	return &tcpgatev1.UpdateListenerResponse{Listener: out, Header: s.header()}, nil
}

// mergeFields sets the fields of dst named by their proto names to their
// values in src, clearing those src leaves unset.
func mergeFields(dst, src *tcpgatev1.StartListenerRequest, fields []string) {
	d, sr := dst.ProtoReflect(), src.ProtoReflect()
	for _, f := range fields {
		fd := d.Descriptor().Fields().ByName(protoreflect.Name(f))
		if fd == nil {
			continue
		}
		if sr.Has(fd) {
			d.Set(fd, sr.Get(fd))
		} else {
			d.Clear(fd)
		}
	}
}
