package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/handler"
	"github.com/tcpgate/tcpgate/server/internal/hub"
	"github.com/tcpgate/tcpgate/server/internal/limits"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/outbound"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/pemfile"
	"github.com/tcpgate/tcpgate/server/internal/placement"
	"github.com/tcpgate/tcpgate/server/internal/policy"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// ErrorDomain is the domain of every ErrorInfo the API returns.
const ErrorDomain = "tcpgate.v1"

// Metadata keys of the ErrorInfo: what a program may read besides the
// reason.
const (
	MetaField = "field" // the request field to change
	MetaLimit = "limit" // the value of the limit reached
	MetaFlag  = "flag"  // the daemon flag that sets it
	MetaRule  = "rule"  // the policy rule that denied
	MetaNode  = "node"  // the cluster node an error concerns
	// MetaLastSequence is the newest event sequence, of a since_sequence
	// out of range.
	MetaLastSequence = "last_sequence"
)

// codeOf maps the engine's sentinel errors to gRPC codes and the reason a
// program branches on. TestSentinelReasons walks it.
var codeOf = []struct {
	err    error
	code   codes.Code
	reason tcpgatev1.ErrorReason
}{
	{framing.ErrInvalidConfig, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_FRAMING},
	{framing.ErrUnencodable, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{policy.ErrDenied, codes.PermissionDenied, tcpgatev1.ErrorReason_ERROR_REASON_POLICY_DENIED},
	{listener.ErrExists, codes.AlreadyExists, tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_EXISTS},
	{listener.ErrNotFound, codes.NotFound, tcpgatev1.ErrorReason_ERROR_REASON_LISTENER_NOT_FOUND},
	{registry.ErrNotFound, codes.NotFound, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_NOT_FOUND},
	{registry.ErrExists, codes.AlreadyExists, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_EXISTS},
	// Before conn.ErrClosed, which a cut send wraps too: a managed
	// connection that dropped is Unavailable (it comes back), not gone.
	{outbound.ErrDisconnected, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_CLOSED},
	{outbound.ErrNotConnected, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_NOT_CONNECTED},
	{outbound.ErrQueueFull, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_QUEUE_FULL},
	{outbound.ErrOnConnect, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_ON_CONNECT_FAILED},
	{outbound.ErrInvalidSpec, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{outbound.ErrClosed, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{conn.ErrClosed, codes.NotFound, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_CLOSED},
	{conn.ErrHalfClosed, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_PEER_HALF_CLOSED},
	{listener.ErrAddressInUse, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_IN_USE},
	{listener.ErrAddressNotUsable, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_NOT_USABLE},
	{listener.ErrLimit, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED},
	{registry.ErrLimit, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED},
	{listener.ErrDrainTooLong, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_DRAIN_TOO_LONG},
	{listener.ErrInvalidSpec, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{listener.ErrNotUpdatable, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FIELD_NOT_UPDATABLE},
	{listener.ErrDeclared, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_DECLARED_IN_CONFIG},
	{listener.ErrClosed, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{ErrNoConfig, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_NO_CONFIG},
	{ErrConfigInvalid, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_CONFIG_INVALID},
	{registry.ErrInvalidFilter, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{page.ErrInvalidSize, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{page.ErrInvalidToken, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_PAGE_TOKEN},
	{hub.ErrClosed, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{hub.ErrTooManySubscribers, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED},
	{hub.ErrFilterTooLarge, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FILTER_TOO_LARGE},
	{hub.ErrSequenceOutOfRange, codes.OutOfRange, tcpgatev1.ErrorReason_ERROR_REASON_SEQUENCE_OUT_OF_RANGE},
	{dialer.ErrRefused, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_REFUSED},
	{dialer.ErrUnreachable, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_ADDRESS_UNREACHABLE},
	{dialer.ErrNoReply, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_NO_REPLY},
	{dialer.ErrBroken, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_CONNECTION_BROKEN},
	{dialer.ErrHandshake, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_TLS_HANDSHAKE_FAILED},
	{dialer.ErrReplyTooLarge, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TOO_LARGE},
	{conn.ErrReplyTooLarge, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TOO_LARGE},
	{conn.ErrWriteTimeout, codes.DeadlineExceeded, tcpgatev1.ErrorReason_ERROR_REASON_WRITE_TIMEOUT},
	{conn.ErrReplyTimeout, codes.DeadlineExceeded, tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TIMEOUT},
	{dialer.ErrReplyTimeout, codes.DeadlineExceeded, tcpgatev1.ErrorReason_ERROR_REASON_REPLY_TIMEOUT},
	{pemfile.ErrNoDir, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FILE_PATHS_DISABLED},
	{pemfile.ErrNotAllowed, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FILE_NOT_ALLOWED},
	{pemfile.ErrTooLarge, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_FILE_TOO_LARGE},
	{handler.ErrInvalid, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
	{handler.ErrGroupConflict, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_HANDLER_GROUP_CONFLICT},
	{handler.ErrLimit, codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED},
	{handler.ErrNotHandled, codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED},
	{handler.ErrClosed, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN},
	{placement.ErrUnknownNode, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_UNKNOWN_NODE},
	{placement.ErrNodeUnavailable, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_NODE_UNAVAILABLE},
	{placement.ErrClusterUnavailable, codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_CLUSTER_UNAVAILABLE},
	{context.DeadlineExceeded, codes.DeadlineExceeded, tcpgatev1.ErrorReason_ERROR_REASON_TIMEOUT},
	{context.Canceled, codes.Canceled, tcpgatev1.ErrorReason_ERROR_REASON_CANCELED},
}

// toStatus turns an engine error into a status a caller can act on: its
// code, and an ErrorInfo whose reason a program branches on. Errors the
// engine does not name become Internal with a generic message; the full
// error is logged.
func toStatus(log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if st := rulesStatus(err); st != nil {
		return st
	}
	var slow *hub.SlowConsumerError
	if errors.As(err, &slow) {
		return Status(codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_SLOW_CONSUMER, err.Error(), nil)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_HOST_NOT_FOUND, err.Error(), nil)
	}
	var meta map[string]string
	var lim *limits.Error
	if errors.As(err, &lim) {
		meta = map[string]string{MetaFlag: lim.Flag, MetaLimit: strconv.Itoa(lim.Limit)}
	}
	var bad *framing.ConfigError
	if errors.As(err, &bad) {
		meta = map[string]string{MetaField: bad.Path()}
	}
	var seq *hub.SequenceError
	if errors.As(err, &seq) {
		meta = map[string]string{MetaField: "since_sequence", MetaLastSequence: strconv.FormatUint(seq.Last, 10)}
	}
	var denied *policy.DeniedError
	if errors.As(err, &denied) {
		meta = map[string]string{MetaRule: denied.Rule}
		if denied.Flag != "" {
			meta[MetaFlag] = denied.Flag
		}
	}
	// A field the engine names gets its BadRequest, as rpc's own field
	// errors do, so that a form can point at it.
	var details []protoadapt.MessageV1
	var field *page.FieldError
	if errors.As(err, &field) {
		meta = map[string]string{MetaField: field.Field}
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field.Field, Description: field.Reason}}})
	}
	// A field over a limit the engine keeps names the field, as invalidLimit
	// does, and the flag with its value.
	var over *limits.FieldError
	if errors.As(err, &over) {
		meta = map[string]string{MetaField: over.Field, MetaFlag: over.Flag, MetaLimit: strconv.Itoa(over.Limit)}
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: over.Field, Description: over.Reason()}}})
	}
	// A handler group conflict names the field and the group that holds
	// the target; a stream over --max-handlers names the flag.
	var conflict *handler.ConflictError
	if errors.As(err, &conflict) {
		meta = map[string]string{MetaField: conflict.Field, "group": conflict.Group}
	}
	var streams *handler.LimitError
	if errors.As(err, &streams) {
		meta = map[string]string{MetaFlag: "max-handlers", MetaLimit: strconv.Itoa(streams.Limit)}
	}
	// An error about a node names it.
	var node *placement.NodeError
	if errors.As(err, &node) {
		meta = map[string]string{MetaNode: node.Node}
		// And, when a request field named it, that field, as a field
		// error does, so that a form can point at it.
		if node.Field != "" {
			meta[MetaField] = node.Field
			details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: node.Field, Description: node.Error()}}})
		}
	}
	// A Send to a managed connection that is down says when it dials
	// again, so that a client retries then rather than at once.
	var down *outbound.NotConnectedError
	if errors.As(err, &down) {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(down.RetryAfter)})
	}
	for _, m := range codeOf {
		if errors.Is(err, m.err) {
			return Status(m.code, m.reason, err.Error(), meta, details...)
		}
	}
	log.Error("internal error", "error", err)
	return Status(codes.Internal, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "internal error; the gateway's log has the details", nil)
}

// Reason is the ErrorInfo reason of r: its name without ERROR_REASON_.
func Reason(r tcpgatev1.ErrorReason) string {
	return strings.TrimPrefix(r.String(), "ERROR_REASON_")
}

// ReasonOf returns the reason of err's ErrorInfo in the tcpgate.v1
// domain, ERROR_REASON_UNSPECIFIED when it carries none, and the
// ErrorInfo's metadata.
func ReasonOf(err error) (tcpgatev1.ErrorReason, map[string]string) {
	st, ok := status.FromError(err)
	if !ok {
		return tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED, nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			v := tcpgatev1.ErrorReason_value["ERROR_REASON_"+info.GetReason()]
			return tcpgatev1.ErrorReason(v), info.GetMetadata()
		}
	}
	return tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED, nil
}

// Status is a status of code and msg with an ErrorInfo of reason and meta,
// and any further details (a BadRequest, a RetryInfo).
func Status(code codes.Code, reason tcpgatev1.ErrorReason, msg string, meta map[string]string, details ...protoadapt.MessageV1) error {
	return StatusOf(code, reason, msg, meta, details...).Err()
}

// StatusOf is Status as a *status.Status.
func StatusOf(code codes.Code, reason tcpgatev1.ErrorReason, msg string, meta map[string]string, details ...protoadapt.MessageV1) *status.Status {
	info := &errdetails.ErrorInfo{Reason: Reason(reason), Domain: ErrorDomain, Metadata: meta}
	st, err := status.New(code, msg).WithDetails(append([]protoadapt.MessageV1{info}, details...)...)
	if err != nil {
		// Only a detail that cannot be marshaled fails, and these are
		// plain messages; keep the code and message anyway.
		return status.New(code, msg)
	}
	return st
}

// WithReason is err with an ErrorInfo: err itself when it carries one,
// else a status of its code with the reason that code means when it comes
// from outside this package's handlers: the health service, grpc-gateway
// decoding a body or a query, the REST gateway's own gRPC connection
// failing (which happens only as the daemon shuts down), a call's context.
func WithReason(err error) error {
	if err == nil {
		return nil
	}
	if reason, _ := ReasonOf(err); reason != tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		return err
	}
	st := status.Convert(err)
	reason := tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL
	switch st.Code() {
	case codes.InvalidArgument:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST
	case codes.NotFound:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_UNKNOWN_SERVICE
	case codes.Unavailable:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN
	case codes.Canceled:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_CANCELED
	case codes.DeadlineExceeded:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_TIMEOUT
	case codes.Unauthenticated:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_UNAUTHENTICATED
	case codes.ResourceExhausted:
		reason = tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED
	}
	return Status(st.Code(), reason, st.Message(), nil)
}

// UnaryReasons gives every error of a unary call its ErrorInfo
// (WithReason).
func UnaryReasons(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, WithReason(err)
}

// StreamReasons is UnaryReasons for streams.
func StreamReasons(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return WithReason(handler(srv, ss))
}

// invalid is an InvalidArgument status naming the field, in its message,
// in the ErrorInfo's "field" and in a BadRequest field violation, so that
// a form can highlight it.
func invalid(field, format string, args ...any) error {
	return invalidMeta(field, nil, format, args...)
}

// invalidLimit is invalid for a value over a limit of the daemon: the
// ErrorInfo also names the flag that sets it and its value.
func invalidLimit(field, flag string, limit int64, format string, args ...any) error {
	return invalidMeta(field, map[string]string{MetaFlag: flag, MetaLimit: strconv.FormatInt(limit, 10)}, format, args...)
}

func invalidMeta(field string, meta map[string]string, format string, args ...any) error {
	desc := fmt.Sprintf(format, args...)
	if meta == nil {
		meta = map[string]string{}
	}
	meta[MetaField] = field
	br := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}}}
	return Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, field+": "+desc, meta, br)
}

// LimitReached is a ResourceExhausted status of a limit the daemon keeps
// outside the engine (max_send_bytes, the health service's watchers),
// naming its flag and value.
func LimitReached(flag string, limit int64, format string, args ...any) error {
	return Status(codes.ResourceExhausted, tcpgatev1.ErrorReason_ERROR_REASON_LIMIT_REACHED, fmt.Sprintf(format, args...),
		map[string]string{MetaFlag: flag, MetaLimit: strconv.FormatInt(limit, 10)})
}
