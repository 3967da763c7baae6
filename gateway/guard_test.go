package gateway_test

// The guard every HTTP request passes (gateway/guard.go): OPTIONS on every
// route of the REST gateway and of the profiling endpoint, and the requests
// a web page can forge without a preflight.

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// guardRefusedTotal reads tcpgate_http_refused_total by status from /metrics.
func guardRefusedTotal(t *testing.T, api *rest, auth http.Header) map[string]int {
	t.Helper()
	resp := secDo(t, api, http.MethodGet, "/metrics", "", auth, "")
	if resp.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d %s", resp.status, resp.body)
	}
	got := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^tcpgate_http_refused_total\{status="(\d+)"\} (\d+)$`).FindAllStringSubmatch(string(resp.body), -1) {
		n, _ := strconv.Atoi(m[2])
		got[m[1]] = n
	}
	return got
}

// guardProfileHref matches a link of the pprof index page.
var guardProfileHref = regexp.MustCompile(`href='([a-z0-9_]+)\?debug=1'`)

// guardDebugRoutes are the profiling endpoint's routes, as its index page
// (read with the token) lists them, so that a profile Go adds is walked
// too. The ones that run for a while are asked for a second's worth, and
// goroutine also with debug=2, the full stack dump.
func guardDebugRoutes(t *testing.T, debug *rest, auth http.Header) []string {
	t.Helper()
	resp := secDo(t, debug, http.MethodGet, "/debug/pprof/", "", auth, "")
	if resp.status != http.StatusOK {
		t.Fatalf("GET /debug/pprof/ with the token = %d %.200s", resp.status, resp.body)
	}
	paths := []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=2"}
	for _, m := range guardProfileHref.FindAllStringSubmatch(string(resp.body), -1) {
		p := "/debug/pprof/" + m[1]
		switch m[1] {
		case "profile", "trace":
			p += "?seconds=1"
		}
		paths = append(paths, p)
	}
	for _, want := range []string{"cmdline", "goroutine", "heap", "profile", "symbol", "trace"} {
		if !slices.ContainsFunc(paths, func(p string) bool { return strings.HasPrefix(p, "/debug/pprof/"+want) }) {
			t.Fatalf("the pprof index lists no %s: %v (the page changed shape?)\n%.500s", want, paths, resp.body)
		}
	}
	return paths
}

// TestOptionsEveryRoute walks every route of the REST gateway (the HTTP
// mapping and the routes beside it) and of the profiling endpoint with
// OPTIONS, with and without the headers of a CORS preflight, without the
// token: each is refused (401 or 403, logged and counted), but for the
// preflights of an allowed origin on a REST gateway with --cors-origins,
// which get CORS's own answer and nothing else. Before, any OPTIONS with
// Access-Control-Request-Method went past the token, and pprof, which
// ignores the method, answered it with the profile.
func TestOptionsEveryRoute(t *testing.T) {
	const dash = "http://dash.example"
	for _, tc := range []struct {
		name string
		cors []string
	}{
		{"with --cors-origins", []string{dash}},
		{"without --cors-origins", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs servertest.LogSink
			g, api := startREST(t, server.Config{
				AuthToken: secToken, CORSOrigins: tc.cors, DebugAddr: "127.0.0.1:0",
				Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			debug := newREST(t, "http://"+g.Server.DebugAddr())
			withToken := http.Header{"Authorization": {"Bearer " + secToken}}

			type target struct {
				api      *rest
				rest     bool // the REST gateway, where CORS may answer
				self     string
				paths    []string
				inBodies []string // what a served route's body would show
			}
			var restPaths []string
			for _, r := range append(secRoutes(t), secExtraRoutes...) {
				restPaths = append(restPaths, r.path)
			}
			restPaths = append(restPaths, "/healthz", "/v1/no-such-route")
			targets := []target{
				{api: api, rest: true, self: api.Base, paths: restPaths, inBodies: []string{`"listeners"`, `"connections"`, `"openapi"`, "tcpgate_", `"kind"`, `"status"`}},
				{api: debug, self: debug.Base, paths: guardDebugRoutes(t, debug, withToken), inBodies: []string{"goroutine", "profile", "heap", "num_symbols", "\x00"}},
			}
			before := guardRefusedTotal(t, api, withToken)
			logged := strings.Count(logs.String(), "method=OPTIONS")

			refused := 0
			for _, tg := range targets {
				variants := []struct {
					name   string
					header http.Header
				}{
					{"bare", nil},
					{"preflight", http.Header{"Access-Control-Request-Method": {"GET"}}},
					{"preflight with headers", http.Header{"Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization"}}},
					{"preflight from the allowed origin", http.Header{"Origin": {dash}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization,content-type"}}},
					{"preflight from the same origin", http.Header{"Origin": {tg.self}, "Access-Control-Request-Method": {"GET"}}},
					{"preflight from another localhost port", http.Header{"Origin": {"http://localhost:1"}, "Access-Control-Request-Method": {"POST"}}},
					{"allowed origin, no preflight", http.Header{"Origin": {dash}}},
					{"preflight with a wrong token", http.Header{"Access-Control-Request-Method": {"GET"}, "Authorization": {"Bearer nope"}}},
				}
				for _, path := range tg.paths {
					for _, v := range variants {
						what := "OPTIONS " + tg.self + path + " (" + v.name + ")"
						resp := secDo(t, tg.api, http.MethodOptions, path, "", v.header, "")
						corsAnswers := tg.rest && len(tc.cors) > 0 && v.header.Get("Origin") == dash && v.header.Get("Access-Control-Request-Method") != ""
						if corsAnswers {
							if resp.status != http.StatusNoContent || resp.header.Get("Access-Control-Allow-Origin") != dash ||
								resp.header.Get("Access-Control-Allow-Methods") == "" || len(resp.body) != 0 {
								t.Errorf("%s = %d, Access-Control-Allow-Origin %q, body %.100q; want CORS's 204 and nothing else",
									what, resp.status, resp.header.Get("Access-Control-Allow-Origin"), resp.body)
							}
							continue
						}
						refused++
						guardWantRefused(t, what, resp, tg.inBodies)
					}
				}
				// With the token, OPTIONS is a method no route serves: no
				// profile either.
				for _, path := range tg.paths {
					what := "OPTIONS " + tg.self + path + " with the token"
					resp := secDo(t, tg.api, http.MethodOptions, path, "", withToken, "")
					if resp.status != http.StatusMethodNotAllowed && resp.status != http.StatusNotFound {
						t.Errorf("%s = %d %.100q, want 405 (404 off the routes)", what, resp.status, resp.body)
					}
					guardWantNothingServed(t, what, resp, tg.inBodies)
				}
			}

			// Every refusal is counted, as 401 or 403, and logged.
			after := guardRefusedTotal(t, api, withToken)
			if got := after["401"] + after["403"] - before["401"] - before["403"]; got != refused {
				t.Errorf("tcpgate_http_refused_total rose by %d (401: %d -> %d, 403: %d -> %d), want %d",
					got, before["401"], after["401"], before["403"], after["403"], refused)
			}
			if got := strings.Count(logs.String(), "method=OPTIONS") - logged; got != refused {
				t.Errorf("%d refused OPTIONS requests logged, want %d", got, refused)
			}
		})
	}
}

// guardWantRefused checks a refusal before anything ran: 401 or 403 with
// the JSON error body, and nothing of what a route serves.
func guardWantRefused(t *testing.T, what string, resp secResponse, inBodies []string) {
	t.Helper()
	if resp.status != http.StatusUnauthorized && resp.status != http.StatusForbidden {
		t.Errorf("%s = %d %.200q, want 401 or 403", what, resp.status, resp.body)
		return
	}
	var e servertest.APIError
	if err := json.Unmarshal(resp.body, &e); err != nil || e.Code == nil || (*e.Code != 16 && *e.Code != 7) {
		t.Errorf("%s: body %.200q, want a JSON error with code 16 or 7", what, resp.body)
	}
	guardWantNothingServed(t, what, resp, inBodies)
}

// guardWantNothingServed checks that a body shows nothing a route serves.
func guardWantNothingServed(t *testing.T, what string, resp secResponse, inBodies []string) {
	t.Helper()
	for _, s := range inBodies {
		if strings.Contains(string(resp.body), s) {
			t.Errorf("%s: the body shows %q: %.200q", what, s, resp.body)
		}
	}
}

// TestForgedRequests: without a token, a page on any port of localhost (or
// anywhere) can make a browser send a "simple" request, which needs no
// preflight: a POST of text/plain, a form or multipart, or a GET. Each must
// be refused before it runs: a body that is not application/json is 415
// with a message saying how to send JSON, and a request from another origin
// that --cors-origins does not list is 403, whatever its body. Same-origin
// requests, clients that send neither Origin nor Sec-Fetch-Site (curl,
// SDKs), and the allowed origin get in. Before, each of these POSTs
// started a listener.
func TestForgedRequests(t *testing.T) {
	const dash = "http://dash.example"
	g, api := startREST(t, server.Config{CORSOrigins: []string{dash}})
	_, port, err := net.SplitHostPort(g.Server.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	self := "http://127.0.0.1:" + port
	var reached atomic.Int64
	target := servertest.Peer(t, func(net.Conn) { reached.Add(1) })

	const (
		jsonCT  = "application/json"
		formCT  = "application/x-www-form-urlencoded"
		plainCT = "text/plain;charset=UTF-8" // what a browser sends for a string body
	)
	multipart := "multipart/form-data; boundary=xyz"
	multipartBody := "--xyz\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n" + listenerBody("x") + "\r\n--xyz--\r\n"

	type tcase struct {
		name        string
		method      string // POST /v1/listeners unless set
		path        string
		contentType string // none when ""
		body        string // a listener named after the case unless set
		header      http.Header
		want        int
	}
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	cases := []tcase{
		// Bodies a page sends without a preflight.
		{name: "text-plain", contentType: plainCT, want: 415},
		{name: "text-plain-from-localhost-page", contentType: plainCT, header: h("Origin", "http://localhost:3000", "Sec-Fetch-Site", "same-site"), want: 403},
		{name: "form", contentType: formCT, want: 415},
		{name: "multipart", contentType: multipart, body: multipartBody, want: 415},
		{name: "no-content-type", want: 415},
		{name: "json-prefix", contentType: "application/jsonx", want: 415},
		{name: "text-json", contentType: "text/json", want: 415},
		{name: "json-latin1", contentType: "application/json; charset=iso-8859-1", want: 415},
		{name: "json-extra-param", contentType: "application/json; boundary=x", want: 415},
		{name: "send-text-plain", path: "/v1/send", contentType: "text/plain", body: `{"address":"` + target + `","text":"forged"}`, want: 415},
		{name: "send-form", path: "/v1/send", contentType: formCT, body: `{"address":"` + target + `","text":"forged"}`, want: 415},
		// JSON is fine from a client that is no page...
		{name: "json", contentType: jsonCT, want: 200},
		{name: "json-charset", contentType: "application/json; charset=utf-8", want: 200},
		{name: "json-charset-upper", contentType: "Application/JSON;charset=UTF-8", want: 200},
		// ...and by Sec-Fetch-Site, from the gateway's own origin or the user.
		{name: "fetch-site-cross-site", contentType: jsonCT, header: h("Sec-Fetch-Site", "cross-site"), want: 403},
		{name: "fetch-site-same-site", contentType: jsonCT, header: h("Sec-Fetch-Site", "same-site"), want: 403},
		{name: "fetch-site-same-origin", contentType: jsonCT, header: h("Sec-Fetch-Site", "same-origin"), want: 200},
		{name: "fetch-site-none", contentType: jsonCT, header: h("Sec-Fetch-Site", "none"), want: 200},
		{name: "get-fetch-site-cross-site", method: http.MethodGet, path: "/v1/listeners", header: h("Sec-Fetch-Site", "cross-site"), want: 403},
		{name: "get-events-fetch-site-same-site", method: http.MethodGet, path: "/v1/events", header: h("Sec-Fetch-Site", "same-site"), want: 403},
		// By Origin: the gateway's own, or one --cors-origins lists.
		{name: "origin-foreign", contentType: jsonCT, header: h("Origin", "http://evil.example"), want: 403},
		{name: "origin-other-localhost-port", contentType: jsonCT, header: h("Origin", "http://localhost:3000"), want: 403},
		{name: "origin-other-loopback-port", contentType: jsonCT, header: h("Origin", "http://127.0.0.1:1"), want: 403},
		{name: "origin-null", contentType: jsonCT, header: h("Origin", "null"), want: 403},
		{name: "origin-two", contentType: jsonCT, header: h("Origin", self, "Origin", "http://evil.example"), want: 403},
		{name: "origin-same", contentType: jsonCT, header: h("Origin", self, "Sec-Fetch-Site", "same-origin"), want: 200},
		{name: "origin-same-redirected", contentType: jsonCT, header: h("Origin", self, "Sec-Fetch-Site", "cross-site"), want: 403},
		{name: "origin-allowed", contentType: jsonCT, header: h("Origin", dash, "Sec-Fetch-Site", "cross-site"), want: 200},
		{name: "origin-allowed-text-plain", contentType: plainCT, header: h("Origin", dash, "Sec-Fetch-Site", "cross-site"), want: 415},
		{name: "send-origin-foreign", path: "/v1/send", contentType: jsonCT, body: `{"address":"` + target + `","text":"forged"}`, header: h("Origin", "http://localhost:8000", "Sec-Fetch-Site", "same-site"), want: 403},
	}
	var started []string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method, path, body := c.method, c.path, c.body
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/v1/listeners"
			}
			if body == "" && method == http.MethodPost {
				body = listenerBody(c.name)
			}
			req, err := http.NewRequestWithContext(secCtx(t), method, api.Base+path, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body == "" {
				req.Body, req.ContentLength = http.NoBody, 0
			}
			if c.contentType != "" {
				req.Header.Set("Content-Type", c.contentType)
			}
			for k, vs := range c.header {
				req.Header[k] = vs
			}
			resp, err := api.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("%s %s (Content-Type %q, %v) = %d %s, want %d", method, path, c.contentType, c.header, resp.StatusCode, b.Bytes(), c.want)
			}
			if c.want == 200 {
				if method == http.MethodPost && path == "/v1/listeners" {
					started = append(started, c.name)
				}
				return
			}
			var e servertest.APIError
			if err := json.Unmarshal(b.Bytes(), &e); err != nil || e.Code == nil {
				t.Fatalf("body %s, want the JSON error body", b.Bytes())
			}
			switch c.want {
			case 415:
				for _, s := range []string{"curl --json", "-H 'Content-Type: application/json'"} {
					if !strings.Contains(e.Message, s) {
						t.Errorf("415 message %q does not say %q", e.Message, s)
					}
				}
			case 403:
				if *e.Code != 7 || !strings.Contains(e.Message, "--cors-origins") {
					t.Errorf("403 body %s, want code 7 and a message naming --cors-origins", b.Bytes())
				}
			}
		})
	}

	// Exactly the allowed listeners exist, and no forged send went out.
	var list tcpgatev1.ListListenersResponse
	api.Call(http.MethodGet, "/v1/listeners", "", &list)
	var ids []string
	for _, l := range list.GetListeners() {
		ids = append(ids, l.GetListenerId())
	}
	slices.Sort(ids)
	slices.Sort(started)
	if !slices.Equal(ids, started) {
		t.Errorf("listeners = %v, want only those of the allowed requests %v", ids, started)
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("forged sends reached the peer %d times", n)
	}
	// The refusals are counted by status.
	refused := guardRefusedTotal(t, api, nil)
	want := map[string]int{}
	for _, c := range cases {
		if c.want != 200 {
			want[strconv.Itoa(c.want)]++
		}
	}
	for status, n := range want {
		if refused[status] != n {
			t.Errorf("tcpgate_http_refused_total{status=%q} = %d, want %d", status, refused[status], n)
		}
	}
}
