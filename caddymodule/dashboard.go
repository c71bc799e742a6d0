package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("switchback_dashboard", parseDashboard)
	// Like metrics, the dashboard answers the request itself; it sits
	// with the terminal handlers, after any authentication.
	httpcaddyfile.RegisterDirectiveOrder("switchback_dashboard", httpcaddyfile.After, "metrics")
}

// Dashboard is http.handlers.switchback_dashboard: the switchback dashboard
// and its API, served in a site, behind whatever authentication, TLS and
// logging the site has. The page's URLs are relative, so it works at a
// site's root or under a prefix stripped by handle_path:
//
//	handle_path /switchback-ui/* {
//		basic_auth {
//			oncall <hash>
//		}
//		switchback_dashboard
//	}
//
// The page is at the handler's root and the API at api/ below it, with
// the same routes as the admin endpoint's /switchback/. Every change is
// recorded as made by the authenticated user "via dashboard". A request
// that changes something must come from the page itself: same-origin
// (Origin or Sec-Fetch-Site) and with the X-Switchback-Action header,
// which a cross-site form cannot set; anything else gets 403.
type Dashboard struct {
	// ReadOnly serves the page without its actions, for a wall screen:
	// every request that would change something gets 403 (default false).
	ReadOnly bool `json:"read_only,omitempty"`

	// User names the authenticated user, recorded as the author of each
	// change; placeholders are expanded per request (default
	// "{http.auth.user.id}", which basic_auth sets). Behind forward_auth,
	// name the header it copies: "{http.request.header.Remote-User}".
	User string `json:"user,omitempty"`

	app *App
}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.switchback_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// DefaultDashboardUser is the placeholder Dashboard.User defaults to.
const DefaultDashboardUser = "{http.auth.user.id}"

// ActionHeader is the header every state-changing dashboard request must
// carry. A cross-site HTML form cannot set a header, and a cross-site
// script that sets one needs a CORS preflight, which the dashboard never
// grants.
const ActionHeader = "X-Switchback-Action"

// Provision finds the switchback app.
func (d *Dashboard) Provision(ctx caddy.Context) error {
	if d.User == "" {
		d.User = DefaultDashboardUser
	}
	app, err := ctx.App("switchback")
	if err != nil {
		return fmt.Errorf("switchback_dashboard: loading switchback app: %w", err)
	}
	d.app = app.(*App)
	return nil
}

// ServeHTTP serves the page, its assets and the API.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	rel := strings.TrimPrefix(r.URL.Path, "/")
	api, isAPI := strings.CutPrefix(rel, "api/")
	if !isAPI {
		return writeAPIError(w, serveUI(w, r, uiDashboard, "/"+rel))
	}
	setUIHeaders(w.Header())
	req := dashboardRequest{user: d.user(r), readOnly: d.ReadOnly}
	req.actor = dashboardActor(req.user, r)
	if r.Method != http.MethodGet {
		if err := d.checkAction(r); err != nil {
			return writeAPIError(w, err)
		}
	}
	r = r.WithContext(context.WithValue(r.Context(), dashboardKey{}, req))
	return writeAPIError(w, d.app.serveAPI(w, r, api))
}

// checkAction refuses a request that changes something unless the page
// itself sent it: same-origin and with ActionHeader. It also refuses every
// change on a read-only dashboard.
func (d *Dashboard) checkAction(r *http.Request) error {
	if d.ReadOnly {
		return apiErr(http.StatusForbidden, "this dashboard is read-only (switchback_dashboard read_only): %s %s refused", r.Method, r.URL.Path)
	}
	if r.Header.Get(ActionHeader) == "" {
		return apiErr(http.StatusForbidden, "a change needs the %s header, which the dashboard page sends and a cross-site form cannot: %s %s refused", ActionHeader, r.Method, r.URL.Path)
	}
	site, origin := r.Header.Get("Sec-Fetch-Site"), r.Header.Get("Origin")
	if site == "" && origin == "" {
		return apiErr(http.StatusForbidden, "a change must show that it comes from this site: send an Origin header (%s %s refused)", r.Method, r.URL.Path)
	}
	if site != "" && site != "same-origin" {
		return apiErr(http.StatusForbidden, "cross-site request refused: Sec-Fetch-Site is %q, want same-origin", site)
	}
	if origin != "" && !sameHost(origin, r) {
		return apiErr(http.StatusForbidden, "cross-origin request refused: Origin %q is not this site (%s)", origin, r.Host)
	}
	return nil
}

// sameHost says whether origin (scheme://host[:port]) names the host the
// request was sent to. The scheme is not compared: behind a proxy that
// terminates TLS, the request reaches Caddy over plain HTTP.
func sameHost(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") {
		return false
	}
	return strings.EqualFold(withoutDefaultPort(u.Host, u.Scheme), withoutDefaultPort(r.Host, u.Scheme))
}

func withoutDefaultPort(host, scheme string) string {
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		return host
	}
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		return h
	}
	return host
}

// user expands the User placeholder for r.
func (d *Dashboard) user(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	return cleanName(repl.ReplaceAll(d.User, ""))
}

// cleanName bounds a user name taken from a request and drops control
// characters, so it is safe in records and logs.
func cleanName(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if len(s) > 128 {
		s = s[:128]
	}
	return s
}

// dashboardActor is the author of a change made on the dashboard: "oncall
// via dashboard", or with no authenticated user "anonymous from 10.0.0.7
// via dashboard".
func dashboardActor(user string, r *http.Request) string {
	if user != "" {
		return user + " via dashboard"
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "anonymous from " + host + " via dashboard"
}

// dashboardKey is the context key of a dashboardRequest.
type dashboardKey struct{}

// dashboardRequest is what the dashboard handler knows of a request.
type dashboardRequest struct {
	user     string // the authenticated user, "" if none
	actor    string // the author recorded on changes
	readOnly bool
}

// actorFrom returns the author of a change the dashboard handler passes on,
// if r came through it.
func actorFrom(r *http.Request) (string, bool) {
	d, ok := r.Context().Value(dashboardKey{}).(dashboardRequest)
	return d.actor, ok
}

// Session is the body of GET session: who the page acts as, and whether it
// may act at all.
type Session struct {
	// Via is "dashboard" (the switchback_dashboard handler) or "admin"
	// (the admin endpoint).
	Via string `json:"via"`
	// User is the authenticated user on the dashboard ("" if none).
	User string `json:"user,omitempty"`
	// Actor is how changes from this page are recorded ("by").
	Actor string `json:"actor"`
	// ReadOnly says the page may not change anything.
	ReadOnly bool `json:"read_only"`
	// ActionHeader is the header every change must carry.
	ActionHeader string `json:"action_header"`
}

// GET session
func (a *App) handleSession(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	s := Session{Via: "admin", Actor: who(r, "dashboard"), ActionHeader: ActionHeader}
	if d, ok := r.Context().Value(dashboardKey{}).(dashboardRequest); ok {
		s.Via, s.User, s.Actor, s.ReadOnly = "dashboard", d.user, d.actor, d.readOnly
	}
	return writeJSON(w, http.StatusOK, s)
}

// writeAPIError writes an API error as the admin endpoint does, as
// {"error": "..."} with its status, so the page can show it in words. A
// client that went away gets nothing.
func writeAPIError(w http.ResponseWriter, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	var ae caddy.APIError
	if !errors.As(err, &ae) {
		ae = caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	msg := ae.Message
	if msg == "" && ae.Err != nil {
		msg = ae.Err.Error()
	}
	return writeJSON(w, ae.HTTPStatus, map[string]string{"error": msg})
}

// parseDashboard parses the switchback_dashboard directive. Syntax:
//
//	switchback_dashboard [<matcher>] [{
//		read_only
//		user <placeholder>
//	}]
func parseDashboard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := new(Dashboard)
	if err := d.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return d, nil
}

// UnmarshalCaddyfile sets up the dashboard from Caddyfile tokens; see
// parseDashboard for the syntax.
func (d *Dashboard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // directive name
	if disp.NextArg() {
		return disp.Errf("switchback_dashboard takes no arguments, got '%s' (options go in a block: read_only, user)", disp.Val())
	}
	seen := map[string]bool{}
	for disp.NextBlock(0) {
		opt := disp.Val()
		if seen[opt] {
			return disp.Errf("duplicate switchback_dashboard option '%s'", opt)
		}
		seen[opt] = true
		switch opt {
		case "read_only":
			if disp.NextArg() {
				return disp.ArgErr()
			}
			d.ReadOnly = true
		case "user":
			if !disp.NextArg() {
				return disp.ArgErr()
			}
			d.User = disp.Val()
			if disp.NextArg() {
				return disp.ArgErr()
			}
		default:
			return disp.Errf("unknown switchback_dashboard option '%s': want read_only or user", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Dashboard)(nil)
	_ caddyhttp.MiddlewareHandler = (*Dashboard)(nil)
	_ caddyfile.Unmarshaler       = (*Dashboard)(nil)
)
