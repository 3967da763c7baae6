package console_test

import (
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/gateway/console"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// get fetches path from the gateway's REST port with a plain client.
func get(t *testing.T, base, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading GET %s: %v", path, err)
	}
	return resp, string(b)
}

// TestServesPage checks that the REST port serves the page and its files
// with their types and security headers, and that the API is still there.
func TestServesPage(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	defer http.DefaultClient.CloseIdleConnections()
	for _, tc := range []struct {
		path, contentType, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script type="module" src="/console/app.js">`},
		{"/console/app.js", "text/javascript; charset=utf-8", "new EventSource("},
		{"/console/style.css", "text/css; charset=utf-8", "#traffic"},
		{"/console/connections.js", "text/javascript; charset=utf-8", "export function startConnections("},
		{"/console/send.js", "text/javascript; charset=utf-8", "export function startSend("},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := get(t, g.BaseURL, tc.path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s, want 200: %s", tc.path, resp.Status, body)
			}
			want := map[string]string{
				"Content-Type":            tc.contentType,
				"Content-Security-Policy": console.ContentSecurityPolicy,
				"X-Content-Type-Options":  "nosniff",
				"Cache-Control":           "no-cache",
			}
			for k, v := range want {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %s %q, want %q", tc.path, k, got, v)
				}
			}
			if !strings.Contains(body, tc.contains) {
				t.Errorf("%s does not contain %q", tc.path, tc.contains)
			}
			etag := resp.Header.Get("ETag")
			if etag == "" {
				t.Fatalf("%s: no ETag", tc.path)
			}
			again, rest := get(t, g.BaseURL, tc.path, http.Header{"If-None-Match": {etag}})
			if again.StatusCode != http.StatusNotModified || rest != "" {
				t.Errorf("%s with If-None-Match %s: %s with %d bytes, want 304 and none", tc.path, etag, again.Status, len(rest))
			}
		})
	}
	csp := console.ContentSecurityPolicy
	for _, directive := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, directive) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, directive)
		}
	}
	if strings.Contains(csp, "unsafe-") {
		t.Errorf("Content-Security-Policy %q allows unsafe sources", csp)
	}

	// The API is where it was, and an unknown path is still its 404.
	if resp, body := get(t, g.BaseURL, "/v1/listeners", nil); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("GET /v1/listeners beside the console: %s %s", resp.Status, body)
	}
	resp, body := get(t, g.BaseURL, "/console/missing.js", nil)
	servertest.WantError(t, resp, []byte(body), http.StatusNotFound, 5, `no route "GET"`)

	// The guard applies: a page of another origin gets no console either.
	resp, body = get(t, g.BaseURL, "/", http.Header{"Origin": {"http://evil.example"}, "Sec-Fetch-Site": {"cross-site"}})
	if resp.StatusCode != http.StatusForbidden || strings.Contains(body, "<html") {
		t.Errorf("GET / from a foreign origin: %s, want 403 without the page", resp.Status)
	}
}

// TestNoConsole checks that --ui=false (server.Config.NoConsole) leaves
// / to the API's router: the 404 ROUTE_NOT_FOUND error of any unknown path.
func TestNoConsole(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NoConsole: true})
	defer http.DefaultClient.CloseIdleConnections()
	for _, path := range []string{"/", "/console/app.js"} {
		resp, body := get(t, g.BaseURL, path, nil)
		e := servertest.WantError(t, resp, []byte(body), http.StatusNotFound, 5, `no route "GET"`)
		if reason, _, _ := e.Info(); reason != "ROUTE_NOT_FOUND" {
			t.Errorf("GET %s without the console: reason %s, want ROUTE_NOT_FOUND", path, reason)
		}
	}
}

// TestAssetsStayOnOrigin checks that no embedded file names a URL of
// another origin: the page loads nothing from a CDN, a font host or
// anywhere but the gateway that serves it.
func TestAssetsStayOnOrigin(t *testing.T) {
	url := regexp.MustCompile(`(?i)(https?:|wss?:)?//[a-z0-9.-]+\.[a-z]`)
	n := 0
	err := fs.WalkDir(console.Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(console.Files(), p)
		if err != nil {
			return err
		}
		for _, m := range url.FindAllString(string(b), -1) {
			t.Errorf("%s references another origin: %s", p, m)
		}
		if strings.HasSuffix(p, ".html") && regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]|\son[a-z]+=|style=`).Match(b) {
			t.Errorf("%s has inline script, an event handler attribute or an inline style, which the CSP refuses", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Fatalf("%d embedded files, want the page, its two modules and its style sheet", n)
	}
}
