package gateway

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// SessionPath is the browser login: POST logs in with the token, GET says
// whether a login is needed and held, DELETE logs out.
const SessionPath = "/v1/session"

// Session cookie names. With TLS the __Host- prefix makes browsers keep
// the cookie only when it is Secure, for this host alone, with Path=/, so
// a sibling subdomain or a plain-HTTP page cannot plant or shadow it.
const (
	SessionCookie    = "tcpgate_session"
	SessionCookieTLS = "__Host-tcpgate_session"
)

// maxLoginBody bounds a login's body: a token and some JSON around it.
const maxLoginBody = 8 << 10

// sessionState is GET /v1/session's answer, what a page needs to choose
// between showing a login and the console.
type sessionState struct {
	LoginRequired bool   `json:"login_required"`
	Authenticated bool   `json:"authenticated"`
	ExpiresAt     string `json:"expires_at,omitempty"` // RFC 3339, of a cookie's session
	// MaxSendBytes is the largest payload a Send over REST takes (see
	// sendLimit), told only to a caller that is let in, so that the page
	// refuses a larger file before it reads it.
	MaxSendBytes int `json:"max_send_bytes,omitempty"`
}

// sendBodySlack is the room a Send's body keeps for its JSON besides the
// payload: the target, the await and the field names, with space to spare.
const sendBodySlack = 64 << 10

// sendLimit is the largest payload a REST Send can carry: --max-send-bytes,
// or less when that payload in base64 would not fit a request body
// (maxBodyBytes).
func (g *Gateway) sendLimit() int {
	return min(g.cfg.MaxSendBytes, (maxBodyBytes-sendBodySlack)/4*3)
}

// cookieName is the session cookie's name on this gateway.
func (g *Gateway) cookieName() string {
	if g.cfg.TLS {
		return SessionCookieTLS
	}
	return SessionCookie
}

// sessionCookie returns the value of r's session cookie, if it has one.
func (g *Gateway) sessionCookie(r *http.Request) (string, bool) {
	c, err := r.Cookie(g.cookieName())
	if err != nil || c.Value == "" {
		return "", false
	}
	return c.Value, true
}

// setCookie sets the session cookie to value until expires (ttl from now),
// or clears it when value is "".
func (g *Gateway) setCookie(w http.ResponseWriter, value string, expires time.Time, ttl time.Duration) {
	c := &http.Cookie{
		Name:     g.cookieName(),
		Value:    value,
		Path:     "/",
		HttpOnly: true,
		Secure:   g.cfg.TLS,
		SameSite: http.SameSiteStrictMode,
	}
	if value == "" {
		c.MaxAge = -1 // Max-Age=0: delete it now
	} else {
		c.Expires = expires.UTC()
		c.MaxAge = int(ttl / time.Second)
	}
	w.Header().Add("Set-Cookie", c.String())
	w.Header().Set("Cache-Control", "no-store")
}

// changesState reports whether r acts, so that a cookie alone must not be
// enough for it: any method but GET, HEAD and OPTIONS, and the Handle
// WebSocket, which opens with a GET but then answers for connections.
func changesState(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.URL.Path == HandlePath
	}
	return true
}

// originVouched reports whether the browser said which page sent r and
// the guard lets that page in: an Origin header (or Sec-Fetch-Site:
// same-origin) naming the gateway's own origin or one of --cors-origins.
// A cookie rides along on any request its site makes, so a request that
// acts on a cookie alone must say where it comes from.
func (g *Gateway) originVouched(r *http.Request) bool {
	if g.crossOrigin(r) != "" {
		return false
	}
	return r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") == "same-origin"
}

// cookieAuth authenticates r by its session cookie, when it has one and no
// Authorization header: on success r carries the bearer header on to the
// routes and to gRPC, as a program's request would, and loses its cookies,
// which the API has no use for. It returns false when it has answered.
func (g *Gateway) cookieAuth(w http.ResponseWriter, r *http.Request) bool {
	value, ok := g.sessionCookie(r)
	if !ok {
		return true
	}
	if _, err := g.cfg.Sessions.Check(value); err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tcpgate"`)
		g.refuse(w, r, http.StatusUnauthorized, int(codes.Unauthenticated), err.Error()+": log in again (POST "+SessionPath+")")
		return false
	}
	if changesState(r) && !g.originVouched(r) {
		g.refuse(w, r, http.StatusForbidden, int(codes.PermissionDenied), "a request authenticated by the session cookie that acts needs an Origin header naming this gateway or one of --cors-origins")
		return false
	}
	r.Header.Del("Cookie")
	r.Header.Set("Authorization", g.cfg.Sessions.Authorization())
	return true
}

// registerSession adds the session routes to the mux.
func (g *Gateway) registerSession() error {
	for method, h := range map[string]func(http.ResponseWriter, *http.Request){
		http.MethodPost:   g.login,
		http.MethodGet:    g.sessionStatus,
		http.MethodDelete: g.logout,
	} {
		if err := g.mux.HandlePath(method, SessionPath, func(w http.ResponseWriter, r *http.Request, _ map[string]string) { h(w, r) }); err != nil {
			return err
		}
	}
	return nil
}

// writeJSON answers 200 with v as JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	b, _ := json.Marshal(v)
	_, _ = w.Write(b)
}

// writeReason answers with the REST error JSON of code and reason.
func writeReason(w http.ResponseWriter, status int, code codes.Code, reason tcpgatev1.ErrorReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := marshalOptions.Marshal(rpc.StatusOf(code, reason, msg, nil).Proto())
	_, _ = w.Write(b)
}

// login exchanges the token, in a JSON body, for a session cookie. Without
// a token there is nothing to log in to: 404, as for a route this gateway
// does not serve.
func (g *Gateway) login(w http.ResponseWriter, r *http.Request) {
	if g.cfg.Sessions == nil || g.cfg.Auth == nil {
		writeReason(w, http.StatusNotFound, codes.NotFound, tcpgatev1.ErrorReason_ERROR_REASON_ROUTE_NOT_FOUND,
			"no login on this gateway: it has no token, so every request is let in without one")
		return
	}
	var body struct {
		Token string `json:"token"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(&body)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("more than one JSON value")
	}
	if err != nil {
		// The decoder's error quotes no value of the body, never the token.
		writeReason(w, http.StatusBadRequest, codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST,
			`login body: send {"token": "TOKEN"} as application/json: `+loginError(err))
		return
	}
	if body.Token == "" || !g.cfg.Auth.Valid("Bearer "+body.Token) {
		g.refuse(w, r, http.StatusUnauthorized, int(codes.Unauthenticated), "invalid token")
		return
	}
	value, sess := g.cfg.Sessions.Issue()
	g.setCookie(w, value, sess.Expires, g.cfg.Sessions.TTL())
	writeJSON(w, sessionState{LoginRequired: true, Authenticated: true, ExpiresAt: sess.Expires.UTC().Format(time.RFC3339), MaxSendBytes: g.sendLimit()})
}

// loginError describes a login body's decoding error without its values.
func loginError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.As(err, &syn):
		return "malformed JSON"
	case errors.As(err, &typ):
		return "field " + rpc.Quote(typ.Field) + " must be a " + typ.Type.String()
	case errors.As(err, &big):
		return "body over 8 KiB"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "empty or cut body"
	}
	return rpc.Clip(err.Error()) // an unknown field: json names it, not its value
}

// sessionStatus says whether this gateway needs a login and whether r
// holds one: a session cookie, or the bearer header; to a caller it lets
// in, also the largest Send payload.
func (g *Gateway) sessionStatus(w http.ResponseWriter, r *http.Request) {
	st := sessionState{LoginRequired: g.cfg.Auth != nil}
	switch {
	case !st.LoginRequired:
		st.Authenticated = true
	case r.Header.Get("Authorization") != "":
		st.Authenticated = len(r.Header.Values("Authorization")) == 1 && g.cfg.Auth.Valid(r.Header.Get("Authorization"))
	case g.cfg.Sessions != nil:
		if value, ok := g.sessionCookie(r); ok {
			if sess, err := g.cfg.Sessions.Check(value); err == nil {
				st.Authenticated, st.ExpiresAt = true, sess.Expires.UTC().Format(time.RFC3339)
			}
		}
	}
	if st.Authenticated {
		st.MaxSendBytes = g.sendLimit()
	}
	writeJSON(w, st)
}

// logout revokes the session of r's cookie and clears the cookie. Logging
// out is an act like any other, so it passes the Origin check; without a
// valid session there is nothing to revoke, and the cookie is cleared all
// the same.
func (g *Gateway) logout(w http.ResponseWriter, r *http.Request) {
	st := sessionState{LoginRequired: g.cfg.Auth != nil, Authenticated: g.cfg.Auth == nil}
	if g.cfg.Sessions != nil {
		if value, ok := g.sessionCookie(r); ok {
			if sess, err := g.cfg.Sessions.Check(value); err == nil {
				if !g.originVouched(r) {
					g.refuse(w, r, http.StatusForbidden, int(codes.PermissionDenied), "logging out with the session cookie needs an Origin header naming this gateway or one of --cors-origins")
					return
				}
				g.cfg.Sessions.Revoke(sess)
			}
		}
		g.setCookie(w, "", time.Time{}, 0)
	}
	writeJSON(w, st)
}
