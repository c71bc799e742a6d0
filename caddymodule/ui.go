package caddymodule

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// uiFiles is the dashboard: plain HTML, CSS and JavaScript, embedded so it
// works offline with no build step.
//
//go:embed ui
var uiFiles embed.FS

// uiVariant is where the page is served from, which decides where it finds
// the API. Its URLs are relative, so it works under any path prefix.
type uiVariant struct {
	// index is index.html with its switchback-api meta tag filled in.
	index []byte
}

// uiAPIMeta is the tag in index.html that tells app.js where the API is,
// relative to the page.
const uiAPIMeta = `<meta name="switchback-api" content="..">`

var (
	// uiAdmin is the page at /switchback/ui/ on the admin endpoint: the
	// API is one level up, at /switchback/.
	uiAdmin = newUIVariant("..")
	// uiDashboard is the page served by the switchback_dashboard handler:
	// the API is below it, at api/.
	uiDashboard = newUIVariant("api")
)

func newUIVariant(api string) uiVariant {
	b, err := fs.ReadFile(uiFiles, "ui/index.html")
	if err != nil || !bytes.Contains(b, []byte(uiAPIMeta)) {
		panic("ui/index.html lacks " + uiAPIMeta)
	}
	return uiVariant{index: bytes.Replace(b, []byte(uiAPIMeta), []byte(`<meta name="switchback-api" content="`+api+`">`), 1)}
}

// serveUI serves the dashboard page and its assets; rest is the file's
// path below the page ("", "/", "/app.js"). On the admin endpoint the page
// drives the admin API from the admin origin, so Caddy's origin
// enforcement applies to its POSTs like any other client's; on a site, the
// switchback_dashboard handler checks them (see checkAction).
func serveUI(w http.ResponseWriter, r *http.Request, v uiVariant, rest string) error {
	if r.Method != http.MethodHead {
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
	}
	if rest == "" {
		// The page's URLs are relative to a directory.
		http.Redirect(w, r, path.Base(r.URL.Path)+"/", http.StatusMovedPermanently)
		return nil
	}
	name := path.Clean(strings.TrimPrefix(rest, "/"))
	if name == "." || name == "" {
		name = "index.html"
	}
	b, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil {
		return apiErr(http.StatusNotFound, "no such dashboard file: %s", name)
	}
	if name == "index.html" {
		b = v.index
	}
	switch path.Ext(name) {
	case ".html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	case ".js":
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case ".css":
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	case ".svg":
		w.Header().Set("Content-Type", "image/svg+xml")
	}
	setUIHeaders(w.Header())
	_, err = w.Write(b)
	return err
}

// uiCSP is the dashboard's Content-Security-Policy: nothing inline, nothing
// from elsewhere, never in a frame.
const uiCSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"

// setUIHeaders sets the headers of every dashboard answer.
func setUIHeaders(h http.Header) {
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
}
