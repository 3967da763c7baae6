// Package gateway is tcpgate's REST front: grpc-gateway over a gRPC client
// connection to the daemon's own gRPC address, plus what REST clients and
// dashboards need beyond it: the event stream as NDJSON or Server-Sent
// Events (served from the daemon's hub, not through gRPC), the OpenAPI
// document, a health check and CORS.
package gateway

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tcpgate/tcpgate/gateway/console"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// openAPI is the generated OpenAPI document; `make generate` copies it here
// from gen/ so that it can be embedded.
//
//go:embed openapi.json
var openAPI []byte

// DefaultHeartbeat is how often an idle Server-Sent Events stream gets a
// comment line: often enough that proxies with a 30 s or 60 s idle timeout
// keep it open.
const DefaultHeartbeat = 15 * time.Second

// Config configures a Gateway.
type Config struct {
	// GRPCAddr is the daemon's gRPC address, dialed in plain text. An
	// unspecified host (0.0.0.0, [::]) is dialed on loopback. Dial, when
	// set, is used instead.
	GRPCAddr string
	// Dial connects to the daemon's gRPC server, for an in-memory connection.
	Dial func(ctx context.Context) (net.Conn, error)
	// Events serves the event stream, GET /v1/events, straight from the
	// daemon's hub (an *rpc.EventSource); required.
	Events EventSource
	// Handle serves the Handle stream over WebSocket, GET /v1/handle (an
	// *rpc.HandleSource); nil answers that route 501.
	Handle HandleSource
	// Auth, when set, requires "Authorization: Bearer TOKEN" on every
	// request but /healthz and the CORS preflights of CORSOrigins (which
	// the gateway answers itself); the header also goes on to gRPC, which
	// checks it again.
	Auth interface {
		Valid(authorization string) bool
	}
	// Sessions, set with Auth, lets browsers log in at POST /v1/session and
	// send the session cookie instead of the bearer header; nil means no
	// login (GET /v1/session says none is required when Auth is nil too).
	Sessions *console.Sessions
	// TLS says the HTTP port serves TLS: the session cookie is then Secure
	// and named with the __Host- prefix.
	TLS bool
	// LoopbackOnly, set when the REST address is a loopback one, refuses
	// requests whose Host is not a loopback name: a web page cannot then
	// reach the gateway through DNS rebinding. Requests from pages of other
	// origins are refused whatever the address (see guard).
	LoopbackOnly bool
	// CORSOrigins are the origins allowed to call from a browser page served
	// elsewhere; "*" allows any. Empty means CORS is off, and only
	// same-origin pages and clients that send no Origin get in.
	// SetCORSOrigins replaces them while the gateway serves.
	CORSOrigins []string
	// MaxSendBytes is the daemon's bound on a Send payload
	// (--max-send-bytes), which GET /v1/session tells a logged-in page;
	// 0 means rpc.DefaultMaxSendBytes.
	MaxSendBytes int
	// Heartbeat is the Server-Sent Events heartbeat; 0 means DefaultHeartbeat.
	Heartbeat time.Duration
	// Metrics, when set, is served at /metrics.
	Metrics http.Handler
	// Console, when set, serves the web console's page at / and its files
	// (GET and HEAD of the paths it Serves), behind the same guard as the
	// API; nil leaves / to the router's 404.
	Console interface {
		http.Handler
		Serves(r *http.Request) bool
	}
	// Refused, when set, is called with the HTTP status of every request
	// refused before it reaches gRPC: 401 for a missing or wrong token, 403
	// for a foreign Host or a request from another origin, 415 for a body
	// that is not application/json.
	Refused func(status int)
	// Logger logs stream failures and refused requests; nil means
	// slog.Default().
	Logger *slog.Logger
}

// EventSource is where the REST event stream comes from: the daemon's hub,
// through server/rpc, which validates a request exactly as Subscribe does.
// Auth is the HTTP side's: it is checked before Subscribe is called.
type EventSource interface {
	Subscribe(req *tcpgatev1.SubscribeRequest) (*rpc.EventStream, error)
	// SubscribeSSE is Subscribe for Server-Sent Events, resuming from
	// Last-Event-ID, and never refusing a position (see
	// rpc.EventSource.SubscribeSSE).
	SubscribeSSE(req *tcpgatev1.SubscribeRequest, lastEventID string) (*rpc.EventStream, error)
}

// Gateway serves the REST API. Create it with New; Close releases its gRPC
// connection and ends its event streams.
type Gateway struct {
	cfg Config
	// origins are the CORS origins in force: Config.CORSOrigins until
	// SetCORSOrigins.
	origins atomic.Pointer[[]string]
	log     *slog.Logger
	cc      *grpc.ClientConn
	client  tcpgatev1.GatewayServiceClient
	mux     *runtime.ServeMux
	handler http.Handler
	ctx     context.Context // ends every event stream at Close
	cancel  context.CancelFunc
	// sockets are the Handle WebSockets being served: once hijacked, the
	// HTTP server's Shutdown no longer waits for them, Close does.
	sockets sync.WaitGroup
}

// marshalOptions is protojson as the API documents it: lowerCamelCase
// names, enums by name, zero values omitted.
var marshalOptions = protojson.MarshalOptions{}

// New builds the REST gateway over a client connection to cfg.GRPCAddr.
func New(cfg Config) (*Gateway, error) {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = rpc.DefaultMaxSendBytes
	}
	if cfg.Events == nil {
		return nil, errors.New("REST gateway: no event source (gateway.Config.Events)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}
	target := "passthrough:///tcpgate-internal"
	if cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return cfg.Dial(ctx) }))
	} else {
		var err error
		if target, err = loopback(cfg.GRPCAddr); err != nil {
			return nil, err
		}
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting REST gateway to %s: %w", target, err)
	}
	g := &Gateway{cfg: cfg, log: log, cc: cc, client: tcpgatev1.NewGatewayServiceClient(cc)}
	g.SetCORSOrigins(cfg.CORSOrigins)
	g.ctx, g.cancel = context.WithCancel(context.Background())

	jsonpb := &runtime.JSONPb{
		MarshalOptions: marshalOptions,
		// Unknown fields are an error, so a misspelt field is a 400 that
		// names it, not a silently ignored setting.
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
	g.mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, strictJSON{jsonpb}),
		runtime.SetQueryParameterParser(&strictQuery{}),
		runtime.WithRoutingErrorHandler(routingError),
		runtime.WithErrorHandler(errorHandler),
		// Every route, generated or added, checks its query and path
		// parameters the same way before it runs (checkParams).
		runtime.WithMiddlewares(g.checkParams),
		runtime.WithHealthzEndpoint(healthpb.NewHealthClient(cc)),
		// gRPC metadata is the gRPC call's business (content-type, the
		// last sequence a stream starts from): REST responses carry only
		// headers of their own, never Grpc-Metadata-* copies.
		runtime.WithOutgoingHeaderMatcher(dropMetadata),
		runtime.WithOutgoingTrailerMatcher(dropMetadata),
	)
	if err := tcpgatev1.RegisterGatewayServiceHandlerClient(g.ctx, g.mux, g.client); err != nil {
		cc.Close()
		return nil, fmt.Errorf("registering REST routes: %w", err)
	}
	// Registered after the generated routes, so it takes precedence over
	// grpc-gateway's own streaming of Subscribe.
	if err := g.mux.HandlePath(http.MethodGet, "/v1/events", g.events); err != nil {
		cc.Close()
		return nil, fmt.Errorf("registering /v1/events: %w", err)
	}
	if err := g.mux.HandlePath(http.MethodGet, HandlePath, g.handleSocket); err != nil {
		cc.Close()
		return nil, fmt.Errorf("registering %s: %w", HandlePath, err)
	}
	if err := g.registerSession(); err != nil {
		cc.Close()
		return nil, fmt.Errorf("registering %s: %w", SessionPath, err)
	}
	if err := g.mux.HandlePath(http.MethodGet, "/openapi.json", serveOpenAPI); err != nil {
		cc.Close()
		return nil, fmt.Errorf("registering /openapi.json: %w", err)
	}
	if cfg.Metrics != nil {
		if err := g.mux.HandlePath(http.MethodGet, "/metrics", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
			cfg.Metrics.ServeHTTP(w, r)
		}); err != nil {
			cc.Close()
			return nil, fmt.Errorf("registering /metrics: %w", err)
		}
	}
	// The console's files pass the guard like every route, but not the
	// token: they hold no data, and the page must load to show its login
	// (what it then asks of the API needs the session cookie).
	api := g.cors(g.authorize(g.mux))
	routes := api
	if cfg.Console != nil {
		routes = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if cfg.Console.Serves(r) {
				cfg.Console.ServeHTTP(w, r)
				return
			}
			api.ServeHTTP(w, r)
		})
	}
	g.handler = g.guard(routes)
	return g, nil
}

// loopback turns a listen address into one to dial.
func loopback(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("gRPC address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}

// routingError answers unknown routes with 404 and a known route with the
// wrong method with 405 (grpc-gateway's default says 501), in the JSON error
// body every other error has.
func routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	var err error
	switch code {
	case http.StatusMethodNotAllowed:
		allow := allowedMethods(r.URL.Path)
		if allow != "" {
			w.Header().Set("Allow", allow)
		}
		err = &runtime.HTTPStatusError{HTTPStatus: code, Err: rpc.Status(codes.Unimplemented, tcpgatev1.ErrorReason_ERROR_REASON_METHOD_NOT_ALLOWED,
			fmt.Sprintf("method %s not allowed on %s (allowed: %s)", rpc.Quote(r.Method), rpc.Quote(r.URL.Path), allow), nil)}
	case http.StatusNotFound:
		err = rpc.Status(codes.NotFound, tcpgatev1.ErrorReason_ERROR_REASON_ROUTE_NOT_FOUND, fmt.Sprintf("no route %s %s", rpc.Quote(r.Method), rpc.Quote(r.URL.Path)), nil)
	case http.StatusBadRequest:
		err = rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, fmt.Sprintf("malformed request path %s", rpc.Quote(r.URL.Path)), nil)
	default:
		err = rpc.Status(codes.Internal, tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL, "routing error", nil)
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// errorHandler is the mux's error handler: grpc-gateway's, whose JSON body
// keeps the status's details, after giving an error that carries no
// ErrorInfo the reason its code means here (rpc.WithReason). Those are the
// errors grpc-gateway makes itself: a body or query it could not decode, or
// the gateway's own gRPC connection failing. Every error of the API has its
// ErrorInfo already.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, withReason(err))
}

// withReason is rpc.WithReason, through an HTTPStatusError.
func withReason(err error) error {
	var he *runtime.HTTPStatusError
	if errors.As(err, &he) {
		return &runtime.HTTPStatusError{HTTPStatus: he.HTTPStatus, Err: rpc.WithReason(he.Err)}
	}
	return rpc.WithReason(err)
}

// routeMethods are the methods of each route, by path pattern ("*" is
// one path segment): proto/tcpgate/v1/gateway_http.yaml and the paths the
// gateway adds. TestAllowHeader checks it against what the router serves.
var routeMethods = []struct {
	pattern string
	methods string
}{
	{"/v1/listeners", "GET, POST"},
	{"/v1/listeners/*", "GET, DELETE, PATCH"},
	{"/v1/connections", "GET, POST"},
	{"/v1/connections/*", "GET, DELETE"},
	{"/v1/send", "POST"},
	{"/v1/events", "GET"},
	{"/v1/handle", "GET"},
	{"/v1/session", "GET, POST, DELETE"},
	{"/openapi.json", "GET"},
	{"/healthz", "GET"},
	{"/metrics", "GET"},
}

// allowedMethods returns the Allow header of a 405 for path, or "".
func allowedMethods(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for _, rm := range routeMethods {
		pat := strings.Split(strings.Trim(rm.pattern, "/"), "/")
		if len(pat) != len(segs) {
			continue
		}
		match := true
		for i := range pat {
			if pat[i] != "*" && pat[i] != segs[i] {
				match = false
				break
			}
		}
		if match {
			return rm.methods
		}
	}
	return ""
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

// cors answers the preflights of the configured origins, and sets the
// allow headers for those origins only. It is the one place a preflight
// is answered without the token: every other OPTIONS goes on to authorize
// as an ordinary request.
func (g *Gateway) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && g.corsAllowed(origin) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Expose-Headers", "Tcpgate-Last-Sequence, Tcpgate-Incarnation, Tcpgate-Node-Id")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, Last-Event-ID")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// SetCORSOrigins replaces the origins allowed to call from a browser
// ("*": any; empty: CORS off) for every request from now on.
func (g *Gateway) SetCORSOrigins(origins []string) {
	o := slices.Clone(origins)
	g.origins.Store(&o)
}

// ServeHTTP serves the REST API.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.handler.ServeHTTP(w, r) }

// EndStreams ends every event stream, each with its final error line, and
// leaves the gRPC connection to the calls still in flight: a shutdown ends
// the streams at once, then lets other requests finish before Close.
func (g *Gateway) EndStreams() { g.cancel() }

// Close ends every event stream and Handle WebSocket, waits for the
// WebSockets to close (each within rpc.FinalWriteTimeout of its last
// write), and closes the gRPC connection, failing the calls still in
// flight. It is idempotent.
func (g *Gateway) Close() error {
	g.cancel()
	g.sockets.Wait()
	err := g.cc.Close()
	if status.Code(err) == codes.Canceled {
		return nil // already closed
	}
	return err
}

// dropMetadata keeps every gRPC header and trailer out of REST responses.
func dropMetadata(string) (string, bool) { return "", false }
