package rpc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// Method prefixes that stay open whatever the authentication.
const (
	healthService       = "/grpc.health.v1.Health/"
	reflectionV1        = "/grpc.reflection.v1.ServerReflection/"
	reflectionV1Alpha   = "/grpc.reflection.v1alpha.ServerReflection/"
	bearerPrefix        = "bearer "
	authorizationHeader = "authorization"
)

// Auth requires a bearer token on every call except health checks (and
// reflection when it is public). Tokens are compared in constant time, as
// SHA-256 digests so that not even their length leaks. The token can be
// replaced while calls run (SetToken): each check reads the current one.
type Auth struct {
	digest           atomic.Pointer[[32]byte]
	publicReflection bool
}

// NewAuth returns an Auth for token, which must not be empty.
func NewAuth(token string, publicReflection bool) *Auth {
	a := &Auth{publicReflection: publicReflection}
	a.SetToken(token)
	return a
}

// SetToken makes token, which must not be empty, the one every check from
// now on requires; the previous token is refused at once. Calls already
// admitted run on.
func (a *Auth) SetToken(token string) {
	d := sha256.Sum256([]byte(token))
	a.digest.Store(&d)
}

// Valid reports whether an Authorization value ("Bearer TOKEN") carries the
// token.
func (a *Auth) Valid(authorization string) bool {
	if len(authorization) < len(bearerPrefix) || !strings.EqualFold(authorization[:len(bearerPrefix)], bearerPrefix) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(authorization[len(bearerPrefix):])))
	return subtle.ConstantTimeCompare(got[:], a.digest.Load()[:]) == 1
}

// open reports whether method needs no token.
func (a *Auth) open(method string) bool {
	if strings.HasPrefix(method, healthService) {
		return true
	}
	return a.publicReflection && (strings.HasPrefix(method, reflectionV1) || strings.HasPrefix(method, reflectionV1Alpha))
}

func (a *Auth) check(ctx context.Context, method string) error {
	if a.open(method) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(authorizationHeader)
	switch {
	case len(values) == 0:
		return Status(codes.Unauthenticated, tcpgatev1.ErrorReason_ERROR_REASON_UNAUTHENTICATED, "missing bearer token: send the header \"authorization: Bearer TOKEN\"", nil)
	case len(values) > 1 || !a.Valid(values[0]):
		return Status(codes.Unauthenticated, tcpgatev1.ErrorReason_ERROR_REASON_UNAUTHENTICATED, "invalid bearer token", nil)
	}
	return nil
}

// Unary checks the token of unary calls.
func (a *Auth) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream checks the token of streaming calls.
func (a *Auth) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
