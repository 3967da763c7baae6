package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// codeOf maps the engine's sentinel errors to gRPC codes.
var codeOf = []struct {
	err  error
	code codes.Code
}{
	{framing.ErrInvalidConfig, codes.InvalidArgument},
	{policy.ErrDenied, codes.PermissionDenied},
	{listener.ErrExists, codes.AlreadyExists},
	{listener.ErrNotFound, codes.NotFound},
	{listener.ErrConnNotFound, codes.NotFound},
	{conn.ErrClosed, codes.NotFound},
	{conn.ErrHalfClosed, codes.FailedPrecondition},
	{listener.ErrAddressInUse, codes.Unavailable},
	{listener.ErrAddressNotUsable, codes.FailedPrecondition},
	{listener.ErrLimit, codes.ResourceExhausted},
	{listener.ErrDrainTooLong, codes.InvalidArgument},
	{listener.ErrClosed, codes.Unavailable},
	{hub.ErrClosed, codes.Unavailable},
	{hub.ErrTooManySubscribers, codes.ResourceExhausted},
	{hub.ErrFilterTooLarge, codes.InvalidArgument},
	{dialer.ErrRefused, codes.Unavailable},
	{dialer.ErrUnreachable, codes.Unavailable},
	{dialer.ErrNoReply, codes.Unavailable},
	{dialer.ErrBroken, codes.Unavailable},
	{dialer.ErrHandshake, codes.Unavailable},
	{dialer.ErrReplyTooLarge, codes.ResourceExhausted},
	{conn.ErrReplyTooLarge, codes.ResourceExhausted},
	{conn.ErrWriteTimeout, codes.DeadlineExceeded},
	{pemfile.ErrNoDir, codes.InvalidArgument},
	{pemfile.ErrNotAllowed, codes.InvalidArgument},
	{pemfile.ErrTooLarge, codes.InvalidArgument},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// toStatus turns an engine error into a status a caller can act on. Errors
// the engine does not name become Internal with a generic message; the full
// error is logged.
func toStatus(log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var slow *hub.SlowConsumerError
	if errors.As(err, &slow) {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return status.Error(codes.Unavailable, err.Error())
	}
	for _, m := range codeOf {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	log.Error("internal error", "error", err)
	return status.Error(codes.Internal, "internal error; the gateway's log has the details")
}

// invalid is an InvalidArgument status naming the field.
func invalid(field, format string, args ...any) error {
	return status.Error(codes.InvalidArgument, field+": "+fmt.Sprintf(format, args...))
}
