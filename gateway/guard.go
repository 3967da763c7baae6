package gateway

import (
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// refusalReason is the ErrorInfo reason of a refusal by its HTTP status.
var refusalReason = map[int]tcpgatev1.ErrorReason{
	http.StatusUnauthorized:         tcpgatev1.ErrorReason_ERROR_REASON_UNAUTHENTICATED,
	http.StatusForbidden:            tcpgatev1.ErrorReason_ERROR_REASON_REQUEST_FORBIDDEN,
	http.StatusUnsupportedMediaType: tcpgatev1.ErrorReason_ERROR_REASON_UNSUPPORTED_MEDIA_TYPE,
}

// writeError answers with the JSON error body every other error has, its
// details (the ErrorInfo) included.
func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	reason, ok := refusalReason[status]
	if !ok {
		reason = tcpgatev1.ErrorReason_ERROR_REASON_INTERNAL
	}
	b, _ := marshalOptions.Marshal(rpc.StatusOf(codes.Code(code), reason, msg, nil).Proto())
	_, _ = w.Write(b)
}

// refuse answers a request refused before it reached gRPC (a bad token, a
// foreign Host or Origin), logs it (never the token) and counts it, so that
// probing shows up as gRPC refusals do.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, status, code int, msg string) {
	attrs := []any{"status", status, "method", r.Method, "path", rpc.Clip(r.URL.Path)}
	if len(r.URL.Path) > rpc.MaxEcho {
		attrs = append(attrs, "path_bytes", len(r.URL.Path)) // what Clip cut
	}
	g.log.Warn("HTTP request refused", append(attrs, "remote", r.RemoteAddr, "error", msg)...)
	if g.cfg.Refused != nil {
		g.cfg.Refused(status)
	}
	writeError(w, status, code, msg)
}

// Protect wraps a handler served beside the REST API (the profiling
// endpoint) in the REST API's own checks: the guard, then the bearer token
// when auth is set. It answers no CORS preflight, so a preflight there needs
// the token like any other request.
func Protect(h http.Handler, cfg Config) http.Handler {
	g := &Gateway{cfg: cfg, log: cfg.Logger}
	if g.log == nil {
		g.log = slog.Default()
	}
	return g.guard(g.authorize(h))
}

// authorize requires the bearer token on every request but health checks
// (GET or HEAD /healthz) and the session login, /v1/session. The Handle
// WebSocket may carry it as its subprotocol, bearer.TOKEN, instead, and a
// browser may send its session cookie instead (cookieAuth), with an Origin
// on requests that act. CORS preflights, which browsers send without
// credentials, never get here when they are answered: cors, in front of
// it, answers those of the allowed origins, and any other OPTIONS is an
// ordinary request that needs the token.
func (g *Gateway) authorize(next http.Handler) http.Handler {
	if g.cfg.Auth == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == SessionPath {
			next.ServeHTTP(w, r) // the login checks the token itself
			return
		}
		if _, ws := tokenProtocol(r.Header); !ws && len(r.Header.Values("Authorization")) == 0 && g.cfg.Sessions != nil && !g.cookieAuth(w, r) {
			return
		}
		h := r.Header.Values("Authorization")
		if len(h) == 0 && r.URL.Path == HandlePath {
			// A browser's WebSocket cannot set Authorization: the token
			// comes as the subprotocol bearer.TOKEN instead.
			if p, ok := tokenProtocol(r.Header); ok {
				h = []string{"Bearer " + p[len(bearerProtocol):]}
			}
		}
		if len(h) != 1 || !g.cfg.Auth.Valid(h[0]) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tcpgate"`)
			msg := "invalid bearer token"
			if len(h) == 0 {
				msg = "missing bearer token: send the header \"Authorization: Bearer TOKEN\""
				if r.URL.Path == HandlePath {
					msg += ", or the WebSocket subprotocol bearer.TOKEN"
				}
			}
			g.refuse(w, r, http.StatusUnauthorized, 16, msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// guard is the check every HTTP request passes first, whatever its route
// and whether or not the gateway has a token: it refuses what a web page
// elsewhere can make a browser send.
//
//   - On a loopback-only gateway, a Host that is not a loopback name (403):
//     what a page sends when it reaches 127.0.0.1 through DNS rebinding.
//   - A request from another origin, unless --cors-origins allows it (403):
//     a foreign Origin, or Sec-Fetch-Site cross-site or same-site (a page
//     on another port of localhost is same-site). Requests without either
//     header (curl, SDKs, the CLI) and same-origin ones pass.
//   - A body that is not application/json (415): a page can send
//     text/plain, form and multipart bodies to any address without a
//     preflight, but not JSON, so this keeps every body-carrying call
//     behind CORS.
func (g *Gateway) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.cfg.LoopbackOnly && !loopbackHost(r.Host) {
			g.refuse(w, r, http.StatusForbidden, 7, "Host "+quoteHeader(r.Host)+" is not a loopback name: this gateway answers only requests addressed to this host")
			return
		}
		if msg := g.crossOrigin(r); msg != "" {
			g.refuse(w, r, http.StatusForbidden, 7, msg)
			return
		}
		if msg := jsonBody(r); msg != "" {
			g.refuse(w, r, http.StatusUnsupportedMediaType, 3, msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// crossOrigin returns why r comes from a page of another origin that
// --cors-origins does not allow, or "".
func (g *Gateway) crossOrigin(r *http.Request) string {
	origins := r.Header.Values("Origin")
	if len(origins) > 1 {
		return "more than one Origin header: send one, the page's origin, and list it in --cors-origins"
	}
	origin := ""
	if len(origins) == 1 {
		origin = origins[0]
	}
	if origin != "" && g.corsAllowed(origin) {
		return "" // CORS lets this page in, from wherever it was served
	}
	if origin != "" && !sameOrigin(origin, r) {
		return "Origin " + quoteHeader(origin) + " may not call this gateway: list it in --cors-origins"
	}
	// The browser's own word, which also covers requests without an Origin
	// (a GET from an <img> of a page at localhost:3000), and a same-origin
	// Origin after a redirect through another site.
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return "Sec-Fetch-Site " + site + ": a page of another origin sent this request; list that origin in --cors-origins"
	}
	return ""
}

// corsAllowed reports whether --cors-origins lets pages of origin call.
func (g *Gateway) corsAllowed(origin string) bool {
	origins := g.cfg.CORSOrigins // a Gateway of Protect's, which nothing reconfigures
	if o := g.origins.Load(); o != nil {
		origins = *o
	}
	return slices.Contains(origins, origin) || slices.Contains(origins, "*")
}

// sameOrigin reports whether origin is the gateway's own, as r addressed
// it: the same host and port (browsers leave a default port out of both
// headers). The scheme is left out, as net/http's CrossOriginProtection
// leaves it, so that behind a proxy that terminates TLS and keeps the Host
// header, pages the gateway's address serves still count as its own.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// jsonBody returns why r's body is not one the API reads, or "": a request
// with a body must say Content-Type application/json, with at most a
// charset parameter of utf-8 (JSON is UTF-8).
func jsonBody(r *http.Request) string {
	if r.ContentLength == 0 {
		return "" // no body (-1, an unknown length, is a body)
	}
	const how = "send JSON with Content-Type application/json: curl --json '{...}', or curl -H 'Content-Type: application/json' -d '{...}'"
	cts := r.Header.Values("Content-Type")
	switch len(cts) {
	case 0:
		return "request body without a Content-Type: " + how
	case 1:
	default:
		return "more than one Content-Type header: " + how
	}
	mt, params, err := mime.ParseMediaType(cts[0])
	if err != nil || mt != "application/json" {
		return "request body of Content-Type " + quoteHeader(cts[0]) + ": " + how
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return "Content-Type parameter " + quoteHeader(k+"="+v) + ": JSON bodies are UTF-8; " + how
		}
	}
	return ""
}

// quoteHeader quotes a header value for an error, cut to 64 bytes: enough
// to recognize it, and a megabyte header is not echoed back.
func quoteHeader(v string) string {
	const max = 64
	if len(v) > max {
		return strconv.Quote(v[:max]) + "..."
	}
	return strconv.Quote(v)
}

// loopbackHost reports whether a Host header (host or host:port) names this
// host: localhost, 127.0.0.0/8 or ::1.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
