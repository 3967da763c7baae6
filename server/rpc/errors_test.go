package rpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestToStatusSentinels(t *testing.T) {
	tests := map[error]codes.Code{
		framing.ErrInvalidConfig:        codes.InvalidArgument,
		framing.ErrUnencodable:          codes.InvalidArgument,
		listener.ErrExists:              codes.AlreadyExists,
		listener.ErrNotFound:            codes.NotFound,
		registry.ErrNotFound:            codes.NotFound,
		conn.ErrClosed:                  codes.NotFound,
		conn.ErrHalfClosed:              codes.FailedPrecondition,
		listener.ErrAddressInUse:        codes.Unavailable,
		listener.ErrAddressNotUsable:    codes.FailedPrecondition,
		listener.ErrLimit:               codes.ResourceExhausted,
		registry.ErrLimit:               codes.ResourceExhausted,
		listener.ErrDrainTooLong:        codes.InvalidArgument,
		listener.ErrInvalidSpec:         codes.InvalidArgument,
		listener.ErrNotUpdatable:        codes.InvalidArgument,
		listener.ErrDeclared:            codes.FailedPrecondition,
		ErrNoConfig:                     codes.FailedPrecondition,
		ErrConfigInvalid:                codes.FailedPrecondition,
		listener.ErrClosed:              codes.Unavailable,
		hub.ErrClosed:                   codes.Unavailable,
		hub.ErrTooManySubscribers:       codes.ResourceExhausted,
		dialer.ErrRefused:               codes.Unavailable,
		dialer.ErrUnreachable:           codes.Unavailable,
		dialer.ErrNoReply:               codes.Unavailable,
		dialer.ErrBroken:                codes.Unavailable,
		dialer.ErrHandshake:             codes.Unavailable,
		policy.ErrDenied:                codes.PermissionDenied,
		dialer.ErrReplyTooLarge:         codes.ResourceExhausted,
		conn.ErrReplyTooLarge:           codes.ResourceExhausted,
		conn.ErrWriteTimeout:            codes.DeadlineExceeded,
		conn.ErrReplyTimeout:            codes.DeadlineExceeded,
		dialer.ErrReplyTimeout:          codes.DeadlineExceeded,
		pemfile.ErrNoDir:                codes.InvalidArgument,
		pemfile.ErrNotAllowed:           codes.InvalidArgument,
		pemfile.ErrTooLarge:             codes.InvalidArgument,
		hub.ErrFilterTooLarge:           codes.InvalidArgument,
		registry.ErrInvalidFilter:       codes.InvalidArgument,
		page.ErrInvalidSize:             codes.InvalidArgument,
		page.ErrInvalidToken:            codes.InvalidArgument,
		hub.ErrSequenceOutOfRange:       codes.OutOfRange,
		context.DeadlineExceeded:        codes.DeadlineExceeded,
		context.Canceled:                codes.Canceled,
		registry.ErrExists:              codes.AlreadyExists,
		outbound.ErrDisconnected:        codes.Unavailable,
		outbound.ErrNotConnected:        codes.Unavailable,
		outbound.ErrQueueFull:           codes.ResourceExhausted,
		outbound.ErrOnConnect:           codes.Unavailable,
		outbound.ErrInvalidSpec:         codes.InvalidArgument,
		outbound.ErrClosed:              codes.Unavailable,
		handler.ErrInvalid:              codes.InvalidArgument,
		handler.ErrGroupConflict:        codes.FailedPrecondition,
		handler.ErrLimit:                codes.ResourceExhausted,
		handler.ErrNotHandled:           codes.FailedPrecondition,
		handler.ErrClosed:               codes.Unavailable,
		placement.ErrUnknownNode:        codes.InvalidArgument,
		placement.ErrNodeUnavailable:    codes.Unavailable,
		placement.ErrClusterUnavailable: codes.Unavailable,
	}
	// Every sentinel that codeOf maps is checked here.
	for _, m := range codeOf {
		if _, ok := tests[m.err]; !ok {
			t.Errorf("codeOf maps %q, which this table does not check", m.err)
		}
	}
	for sentinel, code := range tests {
		t.Run(sentinel.Error(), func(t *testing.T) {
			// The engine wraps its sentinels with what it was doing; the
			// caller must get both the code and that context.
			wrapped := fmt.Errorf("doing something with 127.0.0.1:9: %w", sentinel)
			for _, err := range []error{sentinel, wrapped} {
				st, ok := status.FromError(toStatus(discardLogger(), err))
				if !ok {
					t.Fatalf("toStatus(%v) is not a status", err)
				}
				if st.Code() != code {
					t.Errorf("toStatus(%v) code = %v, want %v", err, st.Code(), code)
				}
				if st.Message() != err.Error() {
					t.Errorf("toStatus(%v) message = %q, want the error's text", err, st.Message())
				}
			}
		})
	}
}

func TestToStatusOthers(t *testing.T) {
	secret := errors.New("open /etc/tcpgate/secret.key: permission denied")
	custom := status.Error(codes.PermissionDenied, "nope")
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		message  string // exact, when not empty
		noLeak   string // must not appear in the message, when not empty
		logged   bool
		sameErr  bool
		contains string
	}{
		{name: "unknown error", err: fmt.Errorf("reading config: %w", secret), code: codes.Internal,
			noLeak: "secret.key", logged: true},
		{name: "refused file", err: fmt.Errorf("tls.cert_file: %w", &pemfile.RefusedError{Path: "/etc/tcpgate/secret.key", Cause: secret}),
			code: codes.InvalidArgument, message: "tls.cert_file: not an allowed file", noLeak: "secret.key"},
		{name: "status passes through", err: custom, code: codes.PermissionDenied, message: "nope", sameErr: true},
		{name: "slow consumer", err: &hub.SlowConsumerError{QueueBytes: 1024, Resume: 77}, code: codes.ResourceExhausted,
			contains: "since_sequence=77"},
		{name: "wrapped slow consumer", err: fmt.Errorf("subscription: %w", &hub.SlowConsumerError{QueueBytes: 8, Resume: 3}),
			code: codes.ResourceExhausted, contains: "since_sequence=3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			got := toStatus(log, tt.err)
			st, ok := status.FromError(got)
			if !ok {
				t.Fatalf("toStatus(%v) = %v, not a status", tt.err, got)
			}
			if st.Code() != tt.code {
				t.Errorf("code = %v, want %v", st.Code(), tt.code)
			}
			if tt.message != "" && st.Message() != tt.message {
				t.Errorf("message = %q, want %q", st.Message(), tt.message)
			}
			if tt.contains != "" && !strings.Contains(st.Message(), tt.contains) {
				t.Errorf("message = %q, want it to contain %q", st.Message(), tt.contains)
			}
			if tt.noLeak != "" {
				if strings.Contains(st.Message(), tt.noLeak) {
					t.Errorf("message %q leaks the internal error", st.Message())
				}
				if st.Message() == "" {
					t.Error("message is empty; want a generic explanation")
				}
			}
			if tt.logged != strings.Contains(logs.String(), tt.err.Error()) {
				t.Errorf("logged = %v, want %v; log: %q", !tt.logged, tt.logged, logs.String())
			}
			if tt.sameErr && got != tt.err {
				t.Errorf("toStatus returned %v, want the status error unchanged", got)
			}
		})
	}
	if err := toStatus(discardLogger(), nil); err != nil {
		t.Errorf("toStatus(nil) = %v, want nil", err)
	}
}

func TestInvalid(t *testing.T) {
	err := invalid("port", "must be 0 to 65535, got %d", 70000)
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument || st.Message() != "port: must be 0 to 65535, got 70000" {
		t.Errorf("invalid = %v %q", st.Code(), st.Message())
	}
}

// TestFieldLimitStatus: a field over a limit the engine keeps (a
// listener's max_connections over --listener-max-connections) becomes the
// status rpc's own limit check gave: code, reason, message, ErrorInfo
// field, flag and limit, and the BadRequest naming the field.
func TestFieldLimitStatus(t *testing.T) {
	// The registry returns it unwrapped: its message is the status message.
	err := &limits.FieldError{Field: "max_connections", Flag: "--listener-max-connections", Limit: 2, Got: 3, Err: listener.ErrInvalidSpec}
	got := status.Convert(toStatus(discardLogger(), err))
	want := status.Convert(invalidLimit("max_connections", "--listener-max-connections", 2, "must be at most %d (--listener-max-connections), got %d", 2, 3))
	if got.Code() != want.Code() || got.Message() != want.Message() {
		t.Errorf("status %v %q, want %v %q", got.Code(), got.Message(), want.Code(), want.Message())
	}
	// Details compared unpacked: a map's wire order is not fixed.
	gd, wd := got.Details(), want.Details()
	if len(gd) != len(wd) {
		t.Fatalf("details %v, want %v", gd, wd)
	}
	for i := range gd {
		g, gok := gd[i].(proto.Message)
		w, wok := wd[i].(proto.Message)
		if !gok || !wok || !proto.Equal(g, w) {
			t.Errorf("detail %d: %v, want %v", i, gd[i], wd[i])
		}
	}
}
