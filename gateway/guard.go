package gateway

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	spb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/tcpgate/tcpgate/server/rpc"
)

func statusProto(code int, msg string) *spb.Status {
	return &spb.Status{Code: int32(code), Message: msg}
}

// writeError answers with the JSON error body every other error has.
func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := marshalOptions.Marshal(statusProto(code, msg))
	_, _ = w.Write(b)
}

// refuse answers a request refused before it reached gRPC (a bad token, a
// foreign Host or Origin), logs it (never the token) and counts it, so that
// probing shows up as gRPC refusals do.
func (g *Gateway) refuse(w http.ResponseWriter, r *http.Request, status, code int, msg string) {
	g.log.Warn("HTTP request refused", "status", status, "method", r.Method, "path", rpc.Quote(r.URL.Path), "remote", r.RemoteAddr, "error", msg)
	if g.cfg.Refused != nil {
		g.cfg.Refused(status)
	}
	writeError(w, status, code, msg)
}

// Protect wraps a handler served beside the REST API (the profiling
// endpoint) in the REST API's own checks: the Host and Origin guard when
// loopbackOnly, and the bearer token when auth is set.
func Protect(h http.Handler, cfg Config) http.Handler {
	g := &Gateway{cfg: cfg, log: cfg.Logger}
	if g.log == nil {
		g.log = slog.Default()
	}
	return g.guard(g.authorize(h))
}

// authorize requires the bearer token on every request but health checks
// and CORS preflights (browsers send those without credentials).
func (g *Gateway) authorize(next http.Handler) http.Handler {
	if g.cfg.Auth == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if r.URL.Path == "/healthz" || preflight {
			next.ServeHTTP(w, r)
			return
		}
		h := r.Header.Values("Authorization")
		if len(h) != 1 || !g.cfg.Auth.Valid(h[0]) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tcpgate"`)
			msg := "invalid bearer token"
			if len(h) == 0 {
				msg = "missing bearer token: send the header \"Authorization: Bearer TOKEN\""
			}
			g.refuse(w, r, http.StatusUnauthorized, 16, msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// guard refuses, on a loopback-only gateway, requests whose Host or Origin
// names another host: that is what a page served from elsewhere sends when
// it reaches 127.0.0.1 through DNS rebinding.
func (g *Gateway) guard(next http.Handler) http.Handler {
	if !g.cfg.LoopbackOnly {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			g.refuse(w, r, http.StatusForbidden, 7, "Host "+r.Host+" is not a loopback name: this gateway answers only requests addressed to this host")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !g.originAllowed(o) {
			g.refuse(w, r, http.StatusForbidden, 7, "Origin "+o+" may not call this gateway: list it in --cors-origins")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (g *Gateway) originAllowed(origin string) bool {
	if slices.Contains(g.cfg.CORSOrigins, origin) || slices.Contains(g.cfg.CORSOrigins, "*") {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && loopbackHost(u.Host)
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
