package gateway_test

// The REST side of docs/SECURITY.md: the token on every route, and the
// Host and Origin checks of a loopback gateway against DNS rebinding.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// secToken is the gateway's token in these tests.
const secToken = "s3cret"

// secRoute is one REST route of the HTTP mapping.
type secRoute struct {
	selector string // the gRPC method, "" for routes outside the mapping
	method   string
	template string // the path with its {parameters}
	path     string // the path with parameters filled in
	body     string // the rule's body: "*" for the whole request, "" for none
}

func (r secRoute) String() string { return r.method + " " + r.template }

// secParam matches a path parameter: {name} or {name=pattern}.
var secParam = regexp.MustCompile(`\{([^}=]+)(=[^}]*)?\}`)

// secParamValues fill the path parameters; an unknown one gets "x".
var secParamValues = map[string]string{"listener_id": "sec-l", "connection_id": "nope"}

// secRule matches the lines of gateway_http.yaml that matter here: a
// rule's selector, one of its HTTP bindings (an additional binding too,
// in the list under it), or its body.
var secRule = regexp.MustCompile(`^\s*(?:-\s+)?(selector|get|put|post|delete|patch|custom|body)\s*:\s*"?([^"#\s]*)"?\s*(?:#.*)?$`)

// secRoutes reads every route of proto/tcpgate/v1/gateway_http.yaml, so that
// a route added to the mapping is tested without touching the test. The
// file is a google.api.Service whose rules hold one selector and HTTP
// bindings each; it is read line by line (go.mod has no YAML library of its
// own to lean on).
func secRoutes(t *testing.T) []secRoute {
	t.Helper()
	b, err := os.ReadFile("../proto/tcpgate/v1/gateway_http.yaml")
	if err != nil {
		t.Fatalf("reading the HTTP mapping: %v", err)
	}
	var routes []secRoute
	var selectors []string
	perSelector := map[string]int{}
	selector := ""
	for i, line := range strings.Split(string(b), "\n") {
		m := secRule.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		key, value := m[1], m[2]
		switch key {
		case "selector":
			selector = value
			selectors = append(selectors, value)
			continue
		case "custom":
			t.Fatalf("gateway_http.yaml:%d: custom verbs are not handled by this test", i+1)
		case "body":
			if len(routes) == 0 || routes[len(routes)-1].selector != selector {
				t.Fatalf("gateway_http.yaml:%d: a body outside a rule", i+1)
			}
			routes[len(routes)-1].body = value
			continue
		}
		if selector == "" || !strings.HasPrefix(value, "/") {
			t.Fatalf("gateway_http.yaml:%d: binding %q outside a rule or without a path", i+1, line)
		}
		path := secParam.ReplaceAllStringFunc(value, func(p string) string {
			name := secParam.FindStringSubmatch(p)[1]
			if v, ok := secParamValues[name]; ok {
				return v
			}
			return "x"
		})
		routes = append(routes, secRoute{selector: selector, method: strings.ToUpper(key), template: value, path: path})
		perSelector[selector]++
	}
	for _, sel := range selectors {
		if perSelector[sel] == 0 {
			t.Fatalf("gateway_http.yaml: rule %s has no binding this test could read", sel)
		}
	}
	if len(routes) < 8 {
		t.Fatalf("the HTTP mapping has %d routes; the parser missed some", len(routes))
	}
	return routes
}

// secExtraRoutes are the routes the gateway serves beside the mapping.
var secExtraRoutes = []secRoute{
	{method: http.MethodGet, template: "/openapi.json", path: "/openapi.json"},
	{method: http.MethodGet, template: "/metrics", path: "/metrics"},
	{method: http.MethodGet, template: "/v1/events", path: "/v1/events"},
	{method: http.MethodGet, template: "/v1/events?kinds=EVENT_KIND_DATA", path: "/v1/events?kinds=EVENT_KIND_DATA"},
	{method: http.MethodGet, template: "/v1/handle", path: "/v1/handle"},
}

// secResponse is what secDo read of a response.
type secResponse struct {
	status int
	header http.Header
	body   []byte // empty for event streams, which are not read
}

// secDo sends one request with header (and Host host, when set) and
// returns the response; an event stream's body is left unread.
func secDo(t *testing.T, r *rest, method, path, body string, header http.Header, host string) secResponse {
	t.Helper()
	if host != "" {
		header = header.Clone()
		if header == nil {
			header = http.Header{}
		}
		header.Set("Host", host)
	}
	resp, b := r.Do(method, path, body, header)
	return secResponse{status: resp.StatusCode, header: resp.Header, body: b}
}

// secWant401 checks a refusal for want of a valid token: 401, the JSON
// error body with code 16 (Unauthenticated), and a Bearer challenge.
func secWant401(t *testing.T, what string, resp secResponse) {
	t.Helper()
	if resp.status != http.StatusUnauthorized {
		t.Errorf("%s = %d %s, want 401", what, resp.status, resp.body)
		return
	}
	var e servertest.APIError
	head := strings.HasPrefix(what, "HEAD ") // has no body
	if err := json.Unmarshal(resp.body, &e); !head && (err != nil || e.Code == nil || *e.Code != 16 || e.Message == "") {
		t.Errorf("%s: body %s, want JSON with code 16 and a message", what, resp.body)
	}
	if ch := resp.header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, "Bearer") {
		t.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", what, ch)
	}
	if strings.Contains(string(resp.body), "nope") {
		t.Errorf("%s: the body echoes the token sent: %s", what, resp.body)
	}
}

// secBearer is per-call credentials sending the token in plain text (the
// tests run on loopback).
type secBearer string

func (b secBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (secBearer) RequireTransportSecurity() bool { return false }

// secAPI is a gRPC client of addr sending the token, closed at the test's end.
func secAPI(t *testing.T, addr, token string) tcpgatev1.GatewayServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(secBearer(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return tcpgatev1.NewGatewayServiceClient(cc)
}

// secRouteWant is what the right token gets on a route of the mapping.
type secRouteWant struct {
	body   string
	status int
}

// secRouteWants are the answers to the right token on each route of the
// mapping today (listener sec-l exists); a route not listed must at least
// not be refused.
var secRouteWants = map[string]secRouteWant{
	"POST /v1/listeners":                     {listenerBody("sec-l2"), http.StatusOK},
	"GET /v1/listeners":                      {"", http.StatusOK},
	"GET /v1/listeners/{listener_id}":        {"", http.StatusOK},
	"GET /v1/connections":                    {"", http.StatusOK},
	"DELETE /v1/connections/{connection_id}": {"", http.StatusNotFound},
	"POST /v1/send":                          {`{"listenerId":"sec-l","text":"hi"}`, http.StatusOK},
	"GET /v1/events":                         {"", http.StatusOK},
	"DELETE /v1/listeners/{listener_id}":     {"", http.StatusOK},
}

// TestAuthEveryRoute: with a token, every REST route of the HTTP mapping
// (read from gateway_http.yaml) and every route beside it refuses a request
// without the token or with a wrong one with 401; GET /healthz and the
// preflights of an origin --cors-origins lists (which CORS answers) need
// no token.
func TestAuthEveryRoute(t *testing.T) {
	const dash = "http://dash.example"
	g, api := startREST(t, server.Config{AuthToken: secToken, CORSOrigins: []string{dash}})
	routes := secRoutes(t)
	for want := range secRouteWants {
		if !slices.ContainsFunc(routes, func(r secRoute) bool { return r.String() == want }) {
			t.Fatalf("route %s is not among those read from gateway_http.yaml: %v", want, routes)
		}
	}
	all := append(slices.Clone(routes), secExtraRoutes...)
	// Paths next to the routes and /healthz, and HEAD, get no further.
	for _, p := range []string{"/v1/no-such-route", "/healthz/../v1/listeners", "//v1/listeners", "/v1/listeners/", "/HEALTHZ"} {
		all = append(all, secRoute{method: http.MethodGet, template: p, path: p})
	}
	all = append(all, secRoute{method: http.MethodHead, template: "/v1/listeners", path: "/v1/listeners"})

	refused := []struct {
		name   string
		header http.Header
	}{
		{"no token", nil},
		{"wrong token", http.Header{"Authorization": {"Bearer nope"}}},
		{"Basic scheme", http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+secToken))}}},
		{"token without scheme", http.Header{"Authorization": {secToken}}},
		{"empty bearer", http.Header{"Authorization": {"Bearer "}}},
		{"token with suffix", http.Header{"Authorization": {"Bearer " + secToken + "x"}}},
		{"wrong and right", http.Header{"Authorization": {"Bearer nope", "Bearer " + secToken}}},
		{"token in another header", http.Header{"X-Auth-Token": {secToken}, "Grpc-Metadata-Authorization": {"Bearer " + secToken}}},
		{"configured origin without token", http.Header{"Origin": {dash}}},
	}
	t.Run("refused", func(t *testing.T) {
		for _, r := range all {
			body := ""
			if r.method == http.MethodPost || r.method == http.MethodPut || r.method == http.MethodPatch {
				body = listenerBody("must-not-start")
			}
			for _, c := range refused {
				secWant401(t, r.String()+" "+c.name, secDo(t, api, r.method, r.path, body, c.header, ""))
			}
		}
		// Nothing ran.
		resp, err := secAPI(t, g.Server.GRPCAddr(), secToken).ListListeners(secCtx(t), &tcpgatev1.ListListenersRequest{})
		if err != nil || len(resp.GetListeners()) != 0 {
			t.Fatalf("listeners after refused requests = %v, %v; want none", resp, err)
		}
	})

	t.Run("healthz without token", func(t *testing.T) {
		resp := secDo(t, api, http.MethodGet, "/healthz", "", nil, "")
		if resp.status != http.StatusOK {
			t.Fatalf("GET /healthz without token = %d %s", resp.status, resp.body)
		}
	})

	t.Run("preflight without token", func(t *testing.T) {
		for _, r := range all {
			resp := secDo(t, api, http.MethodOptions, r.path, "", http.Header{
				"Origin": {dash}, "Access-Control-Request-Method": {r.method}, "Access-Control-Request-Headers": {"authorization,content-type"},
			}, "")
			if resp.status != http.StatusNoContent || resp.header.Get("Access-Control-Allow-Origin") != dash {
				t.Errorf("preflight of %s = %d with Access-Control-Allow-Origin %q, want 204 and %s",
					r, resp.status, resp.header.Get("Access-Control-Allow-Origin"), dash)
			}
			if h := strings.ToLower(resp.header.Get("Access-Control-Allow-Headers")); !strings.Contains(h, "authorization") {
				t.Errorf("preflight of %s: Access-Control-Allow-Headers = %q, want Authorization", r, h)
			}
		}
		// A preflight runs no route: from an origin CORS does not allow,
		// it gets no further than the router.
		for _, r := range all {
			resp := secDo(t, api, http.MethodOptions, r.path, "", http.Header{
				"Origin": {"http://localhost:1"}, "Access-Control-Request-Method": {r.method},
			}, "")
			if resp.status < 300 || resp.header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("preflight of %s from an origin not allowed = %d %s with Access-Control-Allow-Origin %q",
					r, resp.status, resp.body, resp.header.Get("Access-Control-Allow-Origin"))
			}
		}
		// An OPTIONS that is no preflight is an ordinary request.
		secWant401(t, "OPTIONS without Access-Control-Request-Method", secDo(t, api, http.MethodOptions, "/v1/listeners", "", http.Header{"Origin": {dash}}, ""))
	})

	withToken := http.Header{"Authorization": {"Bearer " + secToken}}
	t.Run("token beside the mapping", func(t *testing.T) {
		for _, r := range secExtraRoutes {
			for _, h := range []http.Header{withToken, {"Authorization": {"Bearer " + secToken}, "Accept": {"text/event-stream"}}} {
				want := http.StatusOK
				if r.path == "/v1/handle" {
					want = http.StatusUpgradeRequired // past the token: a WebSocket is wanted
				}
				if resp := secDo(t, api, r.method, r.path, "", h, ""); resp.status != want {
					t.Errorf("%s with the token = %d %s, want %d", r, resp.status, resp.body, want)
				}
			}
		}
		resp := secDo(t, api, http.MethodGet, "/openapi.json", "", http.Header{"Authorization": {"bearer " + secToken}}, "")
		if resp.status != http.StatusOK {
			t.Errorf("GET /openapi.json with a lower-case scheme = %d, want 200", resp.status)
		}
	})

	t.Run("token on every route", func(t *testing.T) {
		if _, err := secAPI(t, g.Server.GRPCAddr(), secToken).StartListener(secCtx(t), &tcpgatev1.StartListenerRequest{
			ListenerId: "sec-l", Host: "127.0.0.1",
		}); err != nil {
			t.Fatalf("StartListener over gRPC with the token: %v", err)
		}
		ordered := slices.Clone(routes)
		// Deletes last, so the listener is there for the others.
		slices.SortStableFunc(ordered, func(a, b secRoute) int {
			return secBoolInt(a.method == http.MethodDelete) - secBoolInt(b.method == http.MethodDelete)
		})
		for _, r := range ordered {
			w, known := secRouteWants[r.String()]
			if !known && (r.method == http.MethodPost || r.method == http.MethodPut || r.method == http.MethodPatch) {
				w.body = "{}"
			}
			// The scheme is case-insensitive; the second request repeats
			// the first, so only its authentication is checked.
			for i, h := range []http.Header{withToken, {"Authorization": {"bearer " + secToken}}} {
				resp := secDo(t, api, r.method, r.path, w.body, h, "")
				switch {
				case resp.status == http.StatusUnauthorized:
					t.Errorf("%s with %q = 401 %s", r, h.Get("Authorization"), resp.body)
				case known && i == 0 && resp.status != w.status:
					t.Errorf("%s with the token = %d %s, want %d", r, resp.status, resp.body, w.status)
				}
			}
		}
	})
}

// secCtx is a context bounded by wait, cancelled at the test's end.
func secCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func secBoolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestDNSRebindingGuard: a loopback REST gateway answers only requests
// addressed to a loopback name, from its own origin or configured ones, so
// a page that reached it through DNS rebinding, or one served on another
// port of this host, gets 403 before anything runs.
func TestDNSRebindingGuard(t *testing.T) {
	const dash = "http://dash.example"
	g, api := startREST(t, server.Config{CORSOrigins: []string{dash}})
	_, port, err := net.SplitHostPort(g.Server.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	target := servertest.Peer(t, func(net.Conn) { reached.Add(1) })
	sendBody := `{"address":"` + target + `","text":"from a rebinding page"}`

	forbidden := func(t *testing.T, what string, resp secResponse, mentions string) {
		t.Helper()
		if resp.status != http.StatusForbidden {
			t.Errorf("%s = %d %s, want 403", what, resp.status, resp.body)
			return
		}
		var e servertest.APIError
		if err := json.Unmarshal(resp.body, &e); err != nil || e.Code == nil || *e.Code != 7 || !strings.Contains(e.Message, mentions) {
			t.Errorf("%s: body %s, want JSON with code 7 naming %s", what, resp.body, mentions)
		}
	}

	t.Run("Host", func(t *testing.T) {
		for _, host := range []string{
			"evil.example",
			"evil.example:" + port,
			"127.0.0.1.nip.io:" + port,
			"localhost.evil.example:" + port,
			"0.0.0.0:" + port,
			"10.0.0.1:" + port,
			"[fe80::1]:" + port,
		} {
			forbidden(t, "GET /v1/listeners Host "+host, secDo(t, api, http.MethodGet, "/v1/listeners", "", nil, host), "Host")
			forbidden(t, "GET /v1/events Host "+host, secDo(t, api, http.MethodGet, "/v1/events", "", nil, host), "Host")
			forbidden(t, "POST /v1/send Host "+host, secDo(t, api, http.MethodPost, "/v1/send", sendBody, nil, host), "Host")
		}
		for _, host := range []string{
			"localhost:" + port,
			"LOCALHOST:" + port,
			"localhost",
			"127.0.0.1:" + port,
			"127.0.0.2:" + port,
			"[::1]:" + port,
			"app.localhost:" + port,
		} {
			if resp := secDo(t, api, http.MethodGet, "/v1/listeners", "", nil, host); resp.status != http.StatusOK {
				t.Errorf("GET /v1/listeners Host %s = %d %s, want 200", host, resp.status, resp.body)
			}
		}
	})

	t.Run("Origin", func(t *testing.T) {
		for _, origin := range []string{
			"http://evil.example",
			"https://evil.example",
			"http://localhost.evil.example:" + port,
			"null",
			"file://",
			"http://dash.example.evil.example",
			// Pages on other ports of this host are other origins too.
			"http://localhost:3000",
			"http://127.0.0.1:8080",
			"http://[::1]:5173",
			"https://localhost",
		} {
			h := http.Header{"Origin": {origin}}
			forbidden(t, "GET /v1/listeners Origin "+origin, secDo(t, api, http.MethodGet, "/v1/listeners", "", h, ""), "Origin")
			forbidden(t, "POST /v1/send Origin "+origin, secDo(t, api, http.MethodPost, "/v1/send", sendBody, h, ""), "Origin")
			forbidden(t, "POST /v1/listeners Origin "+origin, secDo(t, api, http.MethodPost, "/v1/listeners", listenerBody("rebound"), h, ""), "Origin")
		}
		// The gateway's own origin, as the request addressed it, and the
		// one --cors-origins lists.
		for _, c := range []struct{ origin, host string }{
			{"http://127.0.0.1:" + port, ""},
			{"http://localhost:" + port, "localhost:" + port},
			{"https://localhost:" + port, "localhost:" + port},
			{"http://[::1]:" + port, "[::1]:" + port},
			{dash, ""},
		} {
			resp := secDo(t, api, http.MethodGet, "/v1/listeners", "", http.Header{"Origin": {c.origin}}, c.host)
			if resp.status != http.StatusOK {
				t.Errorf("GET /v1/listeners Origin %s Host %q = %d %s, want 200", c.origin, c.host, resp.status, resp.body)
			}
		}
	})

	// None of the refused requests ran.
	if n := reached.Load(); n != 0 {
		t.Errorf("refused sends reached the peer %d times", n)
	}
	var list tcpgatev1.ListListenersResponse
	api.Call(http.MethodGet, "/v1/listeners", "", &list)
	if len(list.GetListeners()) != 0 {
		t.Errorf("refused StartListener requests left listeners: %v", list.GetListeners())
	}
	// The gateway still works for loopback callers.
	if resp := secDo(t, api, http.MethodPost, "/v1/send", sendBody, http.Header{"Origin": {"http://localhost:" + port}}, "localhost:"+port); resp.status != http.StatusOK {
		t.Fatalf("POST /v1/send from localhost = %d %s", resp.status, resp.body)
	}
	servertest.Eventually(t, "the allowed send reaching the peer", func() bool { return reached.Load() == 1 })
}
