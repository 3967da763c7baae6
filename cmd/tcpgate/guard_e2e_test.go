package main_test

// The HTTP guard against the built binary, with curl: the profiling
// endpoint's preflight bypass, and the requests a web page can forge.

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// debugAddrLine reads the profiling address from the daemon's log.
var debugAddrLine = regexp.MustCompile(`msg="profiling served" .*\bdebug_addr=(\S+)`)

// waitLogged waits for the daemon to log a line re matches and returns its
// first group.
func waitLogged(t *testing.T, d *daemon, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		if m := re.FindStringSubmatch(d.stderr.String()); m != nil {
			return strings.Trim(m[1], `"`)
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcpgate logged nothing matching %s within %v:\n%s", re, startTimeout, d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDebugPreflightNeedsToken runs the repro against the binary
// with --debug-addr and a token:
//
//	curl -X OPTIONS -H 'Access-Control-Request-Method: GET' $D/debug/pprof/goroutine?debug=2
//
// returned every goroutine's stack without the token, and profiles, traces
// and the command line leaked the same way, unlogged. Each is now a 401,
// logged and counted; with the token the profiles are still there.
func TestDebugPreflightNeedsToken(t *testing.T) {
	t.Parallel()
	curl := requireTool(t, "curl")
	const token = "debug-e2e-token-0123456789"
	d := startDaemon(t, hermeticEnv("TCPGATE_AUTH_TOKEN="+token),
		"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0")
	d.waitServing(t)
	debug := restClient{curl: curl, base: "http://" + waitLogged(t, d, debugAddrLine)}
	rest := restClient{curl: curl, base: "http://" + waitLogged(t, d, httpAddrLine)}
	bearer := []string{"-H", "Authorization: Bearer " + token}

	paths := []string{
		"/debug/pprof/goroutine?debug=2",
		"/debug/pprof/goroutine",
		"/debug/pprof/heap",
		"/debug/pprof/allocs",
		"/debug/pprof/profile?seconds=1",
		"/debug/pprof/trace?seconds=1",
		"/debug/pprof/cmdline",
		"/debug/pprof/symbol",
		"/debug/pprof/",
	}
	for _, path := range paths {
		status, body := debug.do(t, "OPTIONS", path, "", "-H", "Access-Control-Request-Method: GET")
		guardRefused(t, "curl -X OPTIONS -H 'Access-Control-Request-Method: GET' $D"+path, status, body, 401)
	}
	// A preflight from the gateway's own origin, or with the headers a
	// browser adds, is no different.
	status, body := debug.do(t, "OPTIONS", paths[0], "", "-H", "Access-Control-Request-Method: GET",
		"-H", "Origin: "+debug.base, "-H", "Access-Control-Request-Headers: authorization")
	guardRefused(t, "a browser's preflight of "+paths[0], status, body, 401)
	refused := len(paths) + 1

	// With the token, OPTIONS is no way to a profile either, and GET works.
	status, body = debug.do(t, "OPTIONS", paths[0], "", bearer...)
	if status != 405 || strings.Contains(body, "goroutine ") {
		t.Errorf("OPTIONS %s with the token = %d %.200q, want 405 and no profile", paths[0], status, body)
	}
	status, body = debug.do(t, "GET", paths[0], "", bearer...)
	if status != 200 || !strings.Contains(body, "goroutine ") {
		t.Errorf("GET %s with the token = %d %.200q, want the stacks", paths[0], status, body)
	}

	// Each refusal is logged, with its method and path, and counted.
	logged := regexp.MustCompile(`msg="HTTP request refused" status=401 method=OPTIONS path=/debug/pprof/`).FindAllString(d.stderr.String(), -1)
	if len(logged) != refused {
		t.Errorf("%d refused OPTIONS logged, want %d:\n%s", len(logged), refused, d.stderr.String())
	}
	_, metrics := rest.do(t, "GET", "/metrics", "", bearer...)
	if want := `tcpgate_http_refused_total{status="401"} ` + strconv.Itoa(refused) + "\n"; !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %q:\n%s", want, grepLines(metrics, "tcpgate_http_refused_total"))
	}
	d.stop(t)
}

// TestForgedRequestsCurl: the simple requests a web page can make a
// browser send, made with curl against the binary without a token. Each
// started a listener before; now a body that is not JSON is a 415 saying
// how to send JSON, and a request from another origin is a 403, while
// curl --json (no Origin) and the origin --cors-origins lists get in.
func TestForgedRequestsCurl(t *testing.T) {
	t.Parallel()
	const dash = "http://dash.example"
	g, h := startRESTGateway(t, "--cors-origins", dash)
	listener := func(id string) string { return `{"listenerId": "` + id + `", "host": "127.0.0.1", "port": 0}` }
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"curl -d (a form)", []string{"-d", listener("form")}, 415},
		{"text/plain", []string{"-H", "Content-Type: text/plain", "-d", listener("plain")}, 415},
		{"multipart", []string{"-F", "x=" + listener("multipart")}, 415},
		{"no Content-Type", []string{"-H", "Content-Type:", "-d", listener("none")}, 415},
		{"a page on another localhost port", []string{"-H", "Origin: http://localhost:3000", "-H", "Sec-Fetch-Site: same-site", "--json", listener("page")}, 403},
		{"Sec-Fetch-Site cross-site", []string{"-H", "Sec-Fetch-Site: cross-site", "--json", listener("cross")}, 403},
		{"curl --json", []string{"--json", listener("json")}, 200},
		{"-H Content-Type", []string{"-H", "Content-Type: application/json; charset=utf-8", "-d", listener("header")}, 200},
		{"the allowed origin", []string{"-H", "Origin: " + dash, "-H", "Sec-Fetch-Site: cross-site", "--json", listener("dash")}, 200},
	} {
		status, body := h.do(t, "POST", "/v1/listeners", "", tc.args...)
		if status != tc.want {
			t.Errorf("%s: POST /v1/listeners = %d %s, want %d", tc.name, status, body, tc.want)
			continue
		}
		switch tc.want {
		case 415:
			for _, s := range []string{"curl --json", "-H 'Content-Type: application/json'"} {
				if !strings.Contains(body, s) {
					t.Errorf("%s: the 415 %s does not say %q", tc.name, body, s)
				}
			}
		case 403:
			if !strings.Contains(body, "--cors-origins") {
				t.Errorf("%s: the 403 %s does not name --cors-origins", tc.name, body)
			}
		}
	}
	var list struct {
		Listeners []listenerJSON `json:"listeners"`
	}
	h.mustDo(t, "GET", "/v1/listeners", "", &list)
	var ids []string
	for _, l := range list.Listeners {
		ids = append(ids, l.ListenerID)
	}
	if strings.Join(ids, ",") != "json,header,dash" {
		t.Errorf("listeners = %v, want only json, header and dash", ids)
	}
	g.d.stop(t)
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// guardLeaks are what a profile shows: a goroutine's stack, the daemon's
// command line (NUL-separated), a trace's or profile's binary header.
var guardLeaks = []string{"goroutine ", "runtime.", "serve\x00", "--debug-addr", "go 1.", "\x1f\x8b"}

func guardRefused(t *testing.T, what string, status int, body string, want int) {
	t.Helper()
	if status != want {
		t.Errorf("%s = %d %.200q, want %d", what, status, body, want)
	}
	for _, leak := range guardLeaks {
		if strings.Contains(body, leak) {
			t.Errorf("%s: the body shows %q: %.200q", what, leak, body)
		}
	}
	var e struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Code == nil || e.Message == "" {
		t.Errorf("%s: body %.200q, want the JSON error body", what, body)
	}
}
