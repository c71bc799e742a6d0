package caddymodule

import (
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

// serveUI serves GET /switchback/ui and its assets. The page drives the
// admin API from the admin origin, so Caddy's origin enforcement applies to
// its POSTs like any other client's.
func serveUI(w http.ResponseWriter, r *http.Request, rest []string) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	name := path.Clean(strings.Join(rest, "/"))
	if name == "." || name == "" {
		name = "index.html"
	}
	b, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil {
		return apiErr(http.StatusNotFound, "no such dashboard file: %s", name)
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
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	_, err = w.Write(b)
	return err
}
