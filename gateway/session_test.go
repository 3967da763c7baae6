package gateway_test

// The browser session login (docs/SECURITY.md, "Browsers: session login"):
// the cookie's flags, the routes it opens, logout, expiry, forgeries, and
// the Origin check on what a cookie alone would otherwise let a foreign
// page do.

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/gateway"
	"github.com/tcpgate/tcpgate/gateway/console"
	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// sessToken is the gateway's token in these tests: long and odd enough
// that finding it in a log or a URL cannot be a coincidence.
const sessToken = "sess-T0ken-9f8e7d6c5b4a"

// sessionGateway runs a gateway with sessToken and returns its REST
// client and its log.
func sessionGateway(t *testing.T, cfg server.Config) (*servertest.Gateway, *rest, *servertest.LogSink) {
	t.Helper()
	logs := &servertest.LogSink{}
	cfg.AuthToken = sessToken
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g, api := startREST(t, cfg)
	return g, api, logs
}

// login logs in with token and returns the response's session cookie.
func login(t *testing.T, api *rest, token string) (*http.Response, []byte, *http.Cookie) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"token": token})
	resp, body := api.Do(http.MethodPost, gateway.SessionPath, string(b), nil)
	var c *http.Cookie
	for _, rc := range resp.Cookies() {
		if strings.HasSuffix(rc.Name, gateway.SessionCookie) {
			c = rc
		}
	}
	return resp, body, c
}

// withCookie is a header of cookie c, and of origin unless it is "".
func withCookie(c *http.Cookie, origin string) http.Header {
	h := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	if origin != "" {
		h.Set("Origin", origin)
	}
	return h
}

// sessionStatus is GET /v1/session's answer.
type sessionStatus struct {
	LoginRequired *bool  `json:"login_required"`
	Authenticated *bool  `json:"authenticated"`
	ExpiresAt     string `json:"expires_at"`
	MaxSendBytes  int    `json:"max_send_bytes"`
}

func getSession(t *testing.T, api *rest, h http.Header) sessionStatus {
	t.Helper()
	resp, b := api.Do(http.MethodGet, gateway.SessionPath, "", h)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/session = %d %s", resp.StatusCode, b)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var st sessionStatus
	if err := dec.Decode(&st); err != nil || st.LoginRequired == nil || st.Authenticated == nil {
		t.Fatalf("GET /v1/session body %s: %v", b, err)
	}
	return st
}

// wantCookie checks a login's Set-Cookie: the name and exactly the flags
// a browser session needs.
func wantCookie(t *testing.T, resp *http.Response, name string, secure bool) {
	t.Helper()
	raw := resp.Header.Values("Set-Cookie")
	if len(raw) != 1 {
		t.Fatalf("Set-Cookie = %q, want one", raw)
	}
	attrs := map[string]string{}
	parts := strings.Split(raw[0], "; ")
	nv := strings.SplitN(parts[0], "=", 2)
	if nv[0] != name || len(nv) != 2 || len(nv[1]) < 40 {
		t.Fatalf("Set-Cookie %q: want the cookie %s with a session value", raw[0], name)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		attrs[k] = v
	}
	want := map[string]string{"Path": "/", "HttpOnly": "", "SameSite": "Strict", "Max-Age": "43200"}
	if secure {
		want["Secure"] = ""
	}
	exp, err := time.Parse(http.TimeFormat, attrs["Expires"])
	if err != nil {
		t.Fatalf("Set-Cookie %q: Expires: %v", raw[0], err)
	}
	delete(attrs, "Expires")
	if len(attrs) != len(want) {
		t.Fatalf("Set-Cookie %q: attributes %v, want %v and Expires", raw[0], attrs, want)
	}
	for k, v := range want {
		if got, ok := attrs[k]; !ok || got != v {
			t.Fatalf("Set-Cookie %q: %s = %q, want %q", raw[0], k, got, v)
		}
	}
	if d := time.Until(exp); d < 11*time.Hour || d > 13*time.Hour {
		t.Fatalf("Set-Cookie %q: expires in %s, want the 12 h default", raw[0], d)
	}
}

// TestSessionLogin: the token in a JSON body gets a session cookie with
// exactly the flags of a browser session, named with __Host- under TLS;
// GET /v1/session reports it; a wrong token is a counted, logged 401
// that does not show the token.
func TestSessionLogin(t *testing.T) {
	t.Run("plain HTTP", func(t *testing.T) {
		g, api, logs := sessionGateway(t, server.Config{})
		if st := getSession(t, api, nil); !*st.LoginRequired || *st.Authenticated || st.ExpiresAt != "" || st.MaxSendBytes != 0 {
			t.Fatalf("before login: %+v, want no session and no send limit told", st)
		}
		resp, body, c := login(t, api, sessToken)
		if resp.StatusCode != http.StatusOK || c == nil {
			t.Fatalf("login = %d %s", resp.StatusCode, body)
		}
		wantCookie(t, resp, gateway.SessionCookie, false)
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("login Cache-Control = %q, want no-store", cc)
		}
		st := getSession(t, api, withCookie(c, ""))
		exp, err := time.Parse(time.RFC3339, st.ExpiresAt)
		if !*st.LoginRequired || !*st.Authenticated || err != nil || !exp.Equal(c.Expires) || st.MaxSendBytes != server.DefaultMaxSendBytes {
			t.Fatalf("with the cookie: %+v (%v), want authenticated until %s, sends up to %d bytes", st, err, c.Expires, server.DefaultMaxSendBytes)
		}
		if st := getSession(t, api, http.Header{"Authorization": {"Bearer " + sessToken}}); !*st.Authenticated {
			t.Fatalf("with the bearer header: %+v", st)
		}

		for _, tc := range []struct{ name, body string }{
			{"wrong token", `{"token":"not-` + sessToken + `"}`},
			{"empty token", `{"token":""}`},
		} {
			resp, b := api.Do(http.MethodPost, gateway.SessionPath, tc.body, nil)
			e := servertest.WantError(t, resp, b, http.StatusUnauthorized, 16, "invalid token")
			if reason, _, _ := e.Info(); reason != "UNAUTHENTICATED" {
				t.Fatalf("%s: reason %q, want UNAUTHENTICATED", tc.name, reason)
			}
			if len(resp.Cookies()) != 0 {
				t.Fatalf("%s: cookies %v", tc.name, resp.Cookies())
			}
		}
		// The token goes in the body only: a query is refused before
		// anything reads it.
		resp, b := api.Do(http.MethodPost, gateway.SessionPath+"?token="+sessToken, `{"token":"`+sessToken+`"}`, nil)
		servertest.WantError(t, resp, b, http.StatusBadRequest, 3, "takes no query parameters")
		if strings.Contains(string(b), sessToken) || len(resp.Cookies()) != 0 {
			t.Fatalf("a login with the token in the URL: %s, cookies %v", b, resp.Cookies())
		}
		resp, b = api.Do(http.MethodPost, gateway.SessionPath, `{"token":"`+sessToken+`","extra":1}`, nil)
		servertest.WantError(t, resp, b, http.StatusBadRequest, 3, "extra")

		_, metrics := api.Do(http.MethodGet, "/metrics", "", http.Header{"Authorization": {"Bearer " + sessToken}})
		if !strings.Contains(string(metrics), `status="401"} 2`) {
			t.Errorf("the two refused logins are not counted as 401s:\n%s", grepLines(metrics, "refused"))
		}
		g.Stop()
		if n := strings.Count(logs.String(), "HTTP request refused"); n < 2 || !strings.Contains(logs.String(), "path=/v1/session") {
			t.Errorf("refused logins not logged (%d lines):\n%s", n, logs)
		}
		if strings.Contains(logs.String(), sessToken) || strings.Contains(logs.String(), c.Value) {
			t.Fatalf("the log shows the token or a session:\n%s", logs)
		}
	})

	t.Run("TLS", func(t *testing.T) {
		ca := servertest.NewCA(t)
		cert, key := ca.IssueLoopback(t)
		files := servertest.WriteFiles(t, map[string][]byte{"cert.pem": cert, "key.pem": key})
		g, _, _ := sessionGateway(t, server.Config{TLSCert: files["cert.pem"], TLSKey: files["key.pem"]})
		api := newREST(t, "https://"+g.Server.HTTPAddr())
		tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}
		t.Cleanup(tr.CloseIdleConnections)
		api.HTTP = &http.Client{Transport: tr}

		resp, body, c := login(t, api, sessToken)
		if resp.StatusCode != http.StatusOK || c == nil {
			t.Fatalf("login = %d %s", resp.StatusCode, body)
		}
		wantCookie(t, resp, gateway.SessionCookieTLS, true)
		// The plain name means nothing here: a page served over plain
		// HTTP could have set it.
		plain := &http.Cookie{Name: gateway.SessionCookie, Value: c.Value}
		resp, b := api.Do(http.MethodGet, "/v1/listeners", "", withCookie(plain, ""))
		servertest.WantError(t, resp, b, http.StatusUnauthorized, 16, "missing bearer token")
		resp, b = api.Do(http.MethodGet, "/v1/listeners", "", withCookie(c, ""))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/listeners with the cookie = %d %s", resp.StatusCode, b)
		}
	})
}

// TestSessionCookieRoutes: the cookie opens the routes the bearer header
// does: a REST call, the event stream as Server-Sent Events and the
// Handle WebSocket, each from the gateway's own page.
func TestSessionCookieRoutes(t *testing.T) {
	_, api, _ := sessionGateway(t, server.Config{})
	_, _, c := login(t, api, sessToken)
	page := withCookie(c, api.Base)

	resp, b := api.Do(http.MethodPost, "/v1/listeners",
		`{"listenerId":"web","host":"127.0.0.1","port":0,"framing":{"mode":"FRAMING_MODE_LINE"}}`, page)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("StartListener with the cookie = %d %s", resp.StatusCode, b)
	}
	var sl tcpgatev1.StartListenerResponse
	servertest.Decode(t, string(b), &sl)
	addr := sl.GetListener().GetAddress()

	// EventSource sends no Origin on a same-origin GET: none is needed.
	sse := servertest.SSEHeader("")
	sse.Set("Cookie", c.Name+"="+c.Value)
	events := api.OpenEvents("listener_ids=web", sse)
	defer events.Close()
	events.NextBlock() // the retry: line
	tcp := servertest.Dial(t, addr)
	if f := events.NextBlock(); !strings.Contains(f.Data, "EVENT_KIND_CONNECTION_OPENED") {
		t.Fatalf("first SSE event %q, want the connection opened", f.Lines)
	}

	ws, resp, body := dialHandle(t, api, page)
	if ws == nil {
		t.Fatalf("Handle WebSocket with the cookie refused: %d %s", resp.StatusCode, body)
	}
	register(t, ws, "web")
	if _, err := tcp.Write([]byte("Hello, World!\n")); err != nil {
		t.Fatal(err)
	}
	var pending []*tcpgatev1.HandleEvent
	if f := wsEvent(t, ws, tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME, &pending); f.GetText() != "Hello, World!" {
		t.Fatalf("frame = %v", f)
	}
}

// TestSessionLogout: logout clears the cookie and revokes the session, so
// the old cookie, replayed, is refused everywhere.
func TestSessionLogout(t *testing.T) {
	_, api, _ := sessionGateway(t, server.Config{})
	_, _, c := login(t, api, sessToken)
	_, _, other := login(t, api, sessToken)

	// Logging out acts: from a foreign page, or one that does not say,
	// it is refused, and the session lives on.
	for _, h := range []http.Header{withCookie(c, ""), withCookie(c, "http://evil.example")} {
		resp, b := api.Do(http.MethodDelete, gateway.SessionPath, "", h)
		servertest.WantError(t, resp, b, http.StatusForbidden, 7, "Origin")
	}
	if st := getSession(t, api, withCookie(c, "")); !*st.Authenticated {
		t.Fatalf("a refused logout logged out: %+v", st)
	}

	resp, b := api.Do(http.MethodDelete, gateway.SessionPath, "", withCookie(c, api.Base))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("logout = %d %s", resp.StatusCode, b)
	}
	set := resp.Header.Values("Set-Cookie")
	if len(set) != 1 || !strings.HasPrefix(set[0], gateway.SessionCookie+"=;") || !strings.Contains(set[0], "Max-Age=0") {
		t.Fatalf("logout Set-Cookie = %q, want the cookie cleared", set)
	}
	if st := getSession(t, api, withCookie(c, "")); *st.Authenticated {
		t.Fatalf("after logout: %+v", st)
	}
	for _, path := range []string{"/v1/listeners", "/v1/events"} {
		resp, b := api.Do(http.MethodGet, path, "", withCookie(c, api.Base))
		servertest.WantError(t, resp, b, http.StatusUnauthorized, 16, "session logged out")
	}
	if _, resp, body := dialHandle(t, api, withCookie(c, api.Base)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Handle WebSocket with a revoked cookie = %d %s", resp.StatusCode, body)
	}
	// Only that session: another one of the same token still works.
	if resp, b := api.Do(http.MethodGet, "/v1/listeners", "", withCookie(other, "")); resp.StatusCode != http.StatusOK {
		t.Fatalf("another session after a logout = %d %s", resp.StatusCode, b)
	}
}

// TestSessionForged: what did not come from this gateway's login, as it
// is now, is refused: an expired session, a tampered cookie, one signed
// with another token (a gateway whose token changed), garbage.
func TestSessionForged(t *testing.T) {
	_, api, _ := sessionGateway(t, server.Config{})
	_, _, c := login(t, api, sessToken)

	// Sessions made by the same token on a clock set back: the gateway's
	// own clock sees them expired (or about to be valid, for the control).
	mint := func(token string, ttl, ago time.Duration) string {
		s, err := console.NewSessions(console.Config{Token: token, TTL: ttl, Now: func() time.Time { return time.Now().Add(-ago) }})
		if err != nil {
			t.Fatal(err)
		}
		v, _ := s.Issue()
		return v
	}
	// One bit of the session id flipped, re-encoded: still well formed.
	tampered, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		t.Fatalf("cookie value %q: %v", c.Value, err)
	}
	tampered[0] ^= 1
	_, _, oldC := login(t, newREST(t, startOther(t, "an-older-token")), "an-older-token")

	for _, tc := range []struct {
		name, value, msg string
	}{
		{"expired", mint(sessToken, time.Minute, 2*time.Minute), "session expired"},
		{"tampered", base64.RawURLEncoding.EncodeToString(tampered), "not signed"},
		{"signed with another token", mint("other-token", time.Hour, 0), "not signed"},
		{"of the gateway's old token", oldC.Value, "not signed"},
		{"garbage", "x", "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := &http.Cookie{Name: c.Name, Value: tc.value}
			resp, b := api.Do(http.MethodGet, "/v1/listeners", "", withCookie(bad, ""))
			servertest.WantError(t, resp, b, http.StatusUnauthorized, 16, tc.msg)
			if st := getSession(t, api, withCookie(bad, "")); *st.Authenticated {
				t.Fatalf("GET /v1/session: %+v", st)
			}
		})
	}
	// The control: a session minted elsewhere with this token, as another
	// node would, is accepted.
	if resp, b := api.Do(http.MethodGet, "/v1/listeners", "", withCookie(&http.Cookie{Name: c.Name, Value: mint(sessToken, time.Hour, 0)}, "")); resp.StatusCode != http.StatusOK {
		t.Fatalf("a session of the same token from elsewhere = %d %s", resp.StatusCode, b)
	}
}

// startOther runs a second gateway with token and returns its REST base.
func startOther(t *testing.T, token string) string {
	t.Helper()
	g := servertest.Start(t, server.Config{AuthToken: token, HTTPAddr: "127.0.0.1:0"})
	return g.BaseURL
}

// TestSessionCSRF: a request that acts with the cookie alone must name
// its page with an Origin (or Sec-Fetch-Site: same-origin), and that page
// must be the gateway's own or one of --cors-origins; the bearer header,
// which no foreign page can send, needs none.
func TestSessionCSRF(t *testing.T) {
	const dash = "http://dash.example:3000"
	_, api, _ := sessionGateway(t, server.Config{CORSOrigins: []string{dash}})
	_, _, c := login(t, api, sessToken)
	bearer := http.Header{"Authorization": {"Bearer " + sessToken}}
	n := 0
	body := func() string {
		n++
		return strings.Replace(listenerBody("csrf"), `"csrf"`, `"csrf-`+string(rune('a'+n))+`"`, 1)
	}

	for _, tc := range []struct {
		name   string
		header http.Header
		status int
		msg    string
	}{
		{"cookie, no Origin", withCookie(c, ""), http.StatusForbidden, "needs an Origin header"},
		{"cookie, foreign Origin", withCookie(c, "http://evil.example"), http.StatusForbidden, "may not call this gateway"},
		{"cookie, Origin null", withCookie(c, "null"), http.StatusForbidden, "may not call this gateway"},
		{"cookie, Sec-Fetch-Site same-site", func() http.Header {
			h := withCookie(c, "")
			h.Set("Sec-Fetch-Site", "same-site")
			return h
		}(), http.StatusForbidden, "Sec-Fetch-Site"},
		{"cookie, own Origin", withCookie(c, api.Base), http.StatusOK, ""},
		{"cookie, a --cors-origins Origin", withCookie(c, dash), http.StatusOK, ""},
		{"cookie, Sec-Fetch-Site same-origin", func() http.Header {
			h := withCookie(c, "")
			h.Set("Sec-Fetch-Site", "same-origin")
			return h
		}(), http.StatusOK, ""},
		{"bearer, no Origin", bearer, http.StatusOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := api.Do(http.MethodPost, "/v1/listeners", body(), tc.header)
			if tc.status == http.StatusOK {
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("StartListener = %d %s, want 200", resp.StatusCode, b)
				}
				return
			}
			e := servertest.WantError(t, resp, b, tc.status, 7, tc.msg)
			if reason, _, _ := e.Info(); reason != "REQUEST_FORBIDDEN" {
				t.Fatalf("reason %q, want REQUEST_FORBIDDEN", reason)
			}
		})
	}

	// The WebSocket opens with a GET, but acts: it needs the Origin too.
	if _, resp, body := dialHandle(t, api, withCookie(c, "")); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "REQUEST_FORBIDDEN") {
		t.Fatalf("Handle WebSocket with the cookie and no Origin = %d %s", resp.StatusCode, body)
	}
	// A GET that only reads needs none, with the cookie alone.
	if resp, b := api.Do(http.MethodGet, "/v1/listeners", "", withCookie(c, "")); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/listeners with the cookie = %d %s", resp.StatusCode, b)
	}
	var list tcpgatev1.ListListenersResponse
	_, lb := api.Do(http.MethodGet, "/v1/listeners", "", bearer)
	servertest.Decode(t, string(lb), &list)
	if len(list.GetListeners()) != 4 {
		t.Fatalf("listeners %v, want the 4 accepted starts", list.GetListeners())
	}
}

// TestSessionNoToken: without a token there is no login: POST is a 404
// that says why, GET says none is required.
func TestSessionNoToken(t *testing.T) {
	_, api := startREST(t, server.Config{})
	st := getSession(t, api, nil)
	if *st.LoginRequired || !*st.Authenticated {
		t.Fatalf("GET /v1/session = %+v, want no login required", st)
	}
	resp, b := api.Do(http.MethodPost, gateway.SessionPath, `{"token":"x"}`, nil)
	e := servertest.WantError(t, resp, b, http.StatusNotFound, 5, "no login on this gateway")
	if reason, _, _ := e.Info(); reason != "ROUTE_NOT_FOUND" || len(resp.Cookies()) != 0 {
		t.Fatalf("reason %q, cookies %v", reason, resp.Cookies())
	}
}

// TestSessionSendLimit: GET /v1/session tells a caller it lets in the
// largest payload a REST Send takes, --max-send-bytes or, when that is
// more than a request body can carry in base64, what fits. A Send of the
// limit goes and one over it is refused (by --max-send-bytes, or by the
// body's bound before anything decodes it); the multi-megabyte Sends
// that decode are left out, as they are slow under -race on a busy
// machine.
func TestSessionSendLimit(t *testing.T) {
	const bodyFit = (8<<20 - 64<<10) / 4 * 3 // a request body is at most 8 MiB
	for _, tc := range []struct {
		name      string
		maxSend   int
		want      int
		sendsMax  bool // send a payload of the limit
		sendsOver bool // and one over it
	}{
		{"the default", 0, server.DefaultMaxSendBytes, false, false},
		{"a small --max-send-bytes", 1000, 1000, true, true},
		{"more than a body carries", 16 << 20, bodyFit, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, api := startREST(t, server.Config{MaxSendBytes: tc.maxSend})
			st := getSession(t, api, nil)
			if !*st.Authenticated || st.MaxSendBytes != tc.want {
				t.Fatalf("GET /v1/session: %+v, want max_send_bytes %d", st, tc.want)
			}
			g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "l", Host: "127.0.0.1"})
			body := func(n int) string {
				return `{"listenerId": "l", "data": "` + base64.StdEncoding.EncodeToString(make([]byte, n)) + `"}`
			}
			if tc.sendsMax {
				var ok tcpgatev1.SendResponse
				api.Call(http.MethodPost, "/v1/send", body(st.MaxSendBytes), &ok)
			}
			if !tc.sendsOver {
				return
			}
			over := st.MaxSendBytes + min(st.MaxSendBytes, 48<<10)
			if resp, b := api.Do(http.MethodPost, "/v1/send", body(over), nil); resp.StatusCode < 400 {
				t.Fatalf("a Send of %d bytes, over the limit told: %d %.200s, want it refused", over, resp.StatusCode, b)
			}
		})
	}
}
