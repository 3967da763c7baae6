// Package console is tcpgate's built-in web console: a page of plain ES
// modules, embedded in the binary, that the REST port serves at / beside
// the API. It calls the same public REST routes any client calls, from the
// same origin, so it needs no privilege and no route of its own.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// assets are the page's files. There is no build step: what is here is
// what the browser runs.
//
//go:embed assets
var assets embed.FS

// Prefix is where the page's modules and style sheet are served; the page
// itself is served at /.
const Prefix = "/console/"

// ContentSecurityPolicy is sent with every file: scripts, styles and
// connections from the gateway's own origin only, no inline script or
// style, no frames, no plugins, and forms that post nowhere else.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// contentTypes are the types of the files there are; a file of any other
// extension is not served.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// file is one asset ready to serve.
type file struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the console: GET or HEAD / is the page, /console/NAME its
// files. It answers only those paths and methods; Serves says which.
type Handler struct {
	files map[string]file // by URL path
}

// New loads the embedded assets.
func New() (*Handler, error) {
	h := &Handler{files: map[string]file{}}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			return nil
		}
		b, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		url := Prefix + strings.TrimPrefix(p, "assets/")
		if url == Prefix+"index.html" {
			url = "/"
		}
		h.files[url] = file{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Files returns the embedded assets by name, for tests that read what the
// browser gets.
func Files() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the directory is embedded: it is there
	}
	return sub
}

// Serves reports whether the request is for the console: GET or HEAD of
// one of its paths. Anything else goes on to the API's router, whose 404
// and 405 answers stay the API's.
func (h *Handler) Serves(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	_, ok := h.files[r.URL.Path]
	return ok
}

// ServeHTTP serves one file with its security and cache headers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, ok := h.files[r.URL.Path]
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", f.contentType)
	hd.Set("Content-Security-Policy", ContentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	// Revalidated on every load, so a new binary's page is never mixed
	// with an old module; the ETag keeps that a 304 while nothing changed.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", f.etag)
	if match := r.Header.Get("If-None-Match"); match != "" && match == f.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(f.body)
}
