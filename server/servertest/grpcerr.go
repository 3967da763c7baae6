package servertest

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tcpgate/tcpgate/server/rpc"
)

// GRPCError is what a gRPC error tells a program: its code and message,
// the reason and metadata of its tcpgate.v1 ErrorInfo ("" and nil
// without one) and the fields of its BadRequest violations. It is the
// gRPC side of APIError.Info.
type GRPCError struct {
	Code    codes.Code
	Message string
	// Reason is the ErrorInfo's reason as the wire has it:
	// "INVALID_ARGUMENT", not "ERROR_REASON_INVALID_ARGUMENT".
	Reason string
	Meta   map[string]string
	Fields []string
}

// ErrorOf reads err as a gRPC status; a nil err is codes.OK with nothing
// else, an error that is no status is codes.Unknown.
func ErrorOf(err error) GRPCError {
	st := status.Convert(err)
	e := GRPCError{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == rpc.ErrorDomain {
				e.Reason, e.Meta = d.GetReason(), d.GetMetadata()
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Fields = append(e.Fields, v.GetField())
			}
		}
	}
	return e
}
