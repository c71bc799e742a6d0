package tests

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// siteDashboardTemplate is a gateway whose dashboard is a site handler:
// behind basic_auth, under the prefix /switchback-ui/, and read-only under
// /wall/. The admin endpoint has no origins setting: the site's dashboard
// does not need one. {HASH} is the bcrypt hash of dashboardPassword.
const siteDashboardTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	handle_path /switchback-ui/* {
		basic_auth {
			oncall {HASH}
		}
		switchback_dashboard
	}
	handle_path /wall/* {
		basic_auth {
			oncall {HASH}
		}
		switchback_dashboard {
			read_only
		}
	}
	handle {
		switchback main {
			weight 50
			mode split
			sticky cookie sb_user
			legacy {
				reverse_proxy {LEGACY}
			}
			consolidated {
				reverse_proxy {CONSOLIDATED}
			}
{EXTRA}
		}
	}
}
`

const dashboardPassword = "correct horse battery staple"

// startSiteDashboard starts a gateway with siteDashboardTemplate; extra
// goes into the switch block.
func startSiteDashboard(t *testing.T, extra string) *Gateway {
	t.Helper()
	dir := t.TempDir()
	// The lowest bcrypt cost: Caddy's default (14) costs a second or more
	// per checked request on a busy machine, and these tests are not
	// about the hash.
	out, errOut, code := RunCLI(t, dir, "hash-password", "--plaintext", dashboardPassword, "--bcrypt-cost", "4")
	if code != 0 {
		t.Fatalf("hash-password: exit %d: %s", code, errOut)
	}
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	return StartGateway(t, GatewayConfig{Template: siteDashboardTemplate, Legacy: legacy, Consolidated: consolidated, Dir: dir,
		Extra: map[string]string{"HASH": strings.TrimSpace(out), "EXTRA": extra}})
}

// basicAuth is the Authorization header of the dashboard's user.
func basicAuth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte("oncall:"+dashboardPassword))
}

// siteRequest sends a request to the gateway's site and returns the status
// and body.
func siteRequest(t *testing.T, g *Gateway, method, path, body string, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+g.HTTP+path, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// browseAs makes every request of the browser carry the dashboard user's
// credentials, as the browser does after its basic-auth prompt.
func browseAs(t *testing.T, ctx context.Context) {
	t.Helper()
	within(t, ctx, 10*time.Second, "setting the Authorization header",
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basicAuth()}})
			return err
		}))
}

// textOf reads an element's text content.
func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(tctx, chromedp.TextContent(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("reading %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// waitJS polls a JavaScript condition in the page.
func waitJS(t *testing.T, ctx context.Context, d time.Duration, what, cond string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, d+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(tctx, chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(d))); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// screenshot saves a full-page screenshot to tests/artifacts/name.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	b, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	saveArtifact(t, name, b)
}

func TestSiteDashboardNeedsTheSitesAuth(t *testing.T) {
	g := startSiteDashboard(t, "")
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/switchback-ui/"},
		{http.MethodGet, "/switchback-ui/app.js"},
		{http.MethodGet, "/switchback-ui/api/switches"},
		{http.MethodPost, "/switchback-ui/api/switches/main/mode"},
		{http.MethodGet, "/wall/"},
	} {
		code, body := siteRequest(t, g, tc.method, tc.path, `{"mode":"legacy","reason":"no auth"}`,
			map[string]string{"Origin": "http://" + g.HTTP, "X-Switchback-Action": "1", "Content-Type": "application/json"})
		if code != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: status %d (%.200s), want 401", tc.method, tc.path, code, body)
		}
	}
	if sw := g.Switch(t, "main"); sw.Mode != "split" {
		t.Errorf("an unauthenticated POST changed the mode to %q", sw.Mode)
	}
	// With credentials, the page loads with the strict CSP and finds its
	// API below it.
	code, body := siteRequest(t, g, http.MethodGet, "/switchback-ui/", "", map[string]string{"Authorization": basicAuth()})
	if code != http.StatusOK || !strings.Contains(body, `<meta name="switchback-api" content="api">`) {
		t.Fatalf("GET /switchback-ui/ with credentials: status %d, body %.300s", code, body)
	}
	code, body = siteRequest(t, g, http.MethodGet, "/switchback-ui/api/session", "", map[string]string{"Authorization": basicAuth()})
	if code != 200 || !strings.Contains(body, `"user": "oncall"`) || !strings.Contains(body, `"actor": "oncall via dashboard"`) {
		t.Errorf("GET session: %d %s, want user oncall, actor oncall via dashboard", code, body)
	}
}

func TestSiteDashboardRefusesCrossSiteChanges(t *testing.T) {
	g := startSiteDashboard(t, "")
	self := "http://" + g.HTTP
	legacy := `{"mode":"legacy","reason":"cross-site attempt"}`
	refused := []struct {
		name    string
		path    string
		body    string
		headers map[string]string
	}{
		{"another origin", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Origin": "http://evil.example", "X-Switchback-Action": "1", "Content-Type": "application/json"}},
		{"another origin, same host name, other port", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Origin": "http://127.0.0.1:1", "X-Switchback-Action": "1"}},
		{"same origin without the header", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}},
		{"a cross-site form post", "/switchback-ui/api/switches/main/mode", "mode=legacy",
			map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"}},
		{"Sec-Fetch-Site cross-site", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Sec-Fetch-Site": "cross-site", "X-Switchback-Action": "1"}},
		{"Sec-Fetch-Site same-site", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Sec-Fetch-Site": "same-site", "Origin": self, "X-Switchback-Action": "1"}},
		{"no Origin and no Sec-Fetch-Site", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"X-Switchback-Action": "1"}},
		{"Origin null", "/switchback-ui/api/switches/main/mode", legacy,
			map[string]string{"Origin": "null", "X-Switchback-Action": "1"}},
		{"emergency from another origin", "/switchback-ui/api/emergency", `{"reason":"evil"}`,
			map[string]string{"Origin": "http://evil.example", "X-Switchback-Action": "1"}},
		{"read-only dashboard", "/wall/api/switches/main/mode", legacy,
			map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin", "X-Switchback-Action": "1"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			tc.headers["Authorization"] = basicAuth()
			code, body := siteRequest(t, g, http.MethodPost, tc.path, tc.body, tc.headers)
			if code != http.StatusForbidden {
				t.Errorf("status %d (%s), want 403", code, body)
			}
			if !strings.Contains(body, `"error"`) {
				t.Errorf("a refusal should say why in words, got %q", body)
			}
			if sw := g.Switch(t, "main"); sw.Mode != "split" || sw.Weight != 50 {
				t.Fatalf("a refused request changed the switch: mode %q weight %g", sw.Mode, sw.Weight)
			}
		})
	}
	var ops []any
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/operations", nil, &ops); code != 200 || len(ops) != 0 {
		t.Errorf("operations after refused requests: status %d, %d records, want none", code, len(ops))
	}
	// The page's own kind of request is accepted, and names the user.
	code, body := siteRequest(t, g, http.MethodPost, "/switchback-ui/api/switches/main/weight", `{"weight":30,"by":"someone else"}`,
		map[string]string{"Authorization": basicAuth(), "Origin": self, "Sec-Fetch-Site": "same-origin", "X-Switchback-Action": "1", "Content-Type": "application/json"})
	if code != http.StatusOK {
		t.Fatalf("a same-origin POST with the header: status %d (%s), want 200", code, body)
	}
	sw := g.Switch(t, "main")
	if sw.Weight != 30 || sw.By != "oncall via dashboard" {
		t.Errorf("after the accepted POST: weight %g by %q, want 30 by oncall via dashboard (the body's by is not trusted)", sw.Weight, sw.By)
	}
}

func TestSiteDashboardInBrowser(t *testing.T) {
	g := startSiteDashboard(t, "")
	ctx := newBrowser(t)
	browseAs(t, ctx)

	if before := armsOf(t, g, 40); before["legacy"] == 0 || before["consolidated"] == 0 {
		t.Fatalf("at weight 50, 40 users saw %v: want both arms", before)
	}
	within(t, ctx, 20*time.Second, "loading the site dashboard",
		chromedp.Navigate("http://"+g.HTTP+"/switchback-ui/"),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-arm="legacy"] .error-rate`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-action="force-legacy"]`)),
	)
	waitJS(t, ctx, 5*time.Second, "the page to show mode split and the user",
		`document.querySelector('[data-switch="main"] .mode').textContent === "split" && document.getElementById("session").textContent.includes("oncall")`)
	waitJS(t, ctx, 5*time.Second, "both arms' request counts",
		`[...document.querySelectorAll('[data-switch="main"] .requests')].every((n) => n.textContent !== "–" && n.textContent !== "0")`)
	if s := textOf(t, ctx, `[data-switch="main"] .weight-text`); s != "50% legacy / 50% consolidated" {
		t.Errorf("weight text %q", s)
	}

	// Set the weight: the dialog confirms first, then the page says what
	// happened, and the history names the signed-in user.
	within(t, ctx, 10*time.Second, "setting the weight",
		chromedp.SetValue(chromedp.CSS(`[data-switch="main"] [data-field="weight"]`), "30"),
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-action="set-weight"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm-ok")),
	)
	if sw := g.Switch(t, "main"); sw.Weight != 50 {
		t.Fatalf("the weight changed to %g before the confirmation", sw.Weight)
	}
	within(t, ctx, 10*time.Second, "confirming the weight", chromedp.Click(chromedp.ID("confirm-ok")))
	waitJS(t, ctx, 5*time.Second, "the result message", `document.getElementById("message").textContent.includes("main is now split (70% legacy / 30% consolidated)")`)
	if sw := g.Switch(t, "main"); sw.Weight != 30 || sw.By != "oncall via dashboard" {
		t.Errorf("after set weight: weight %g by %q, want 30 by oncall via dashboard", sw.Weight, sw.By)
	}

	// Force legacy.
	within(t, ctx, 10*time.Second, "forcing legacy",
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-action="force-legacy"]`)),
		chromedp.WaitVisible(chromedp.ID("legacy-reason")),
		chromedp.SendKeys(chromedp.ID("legacy-reason"), "site dashboard test"),
		chromedp.Click(chromedp.ID("legacy-confirm")),
	)
	waitJS(t, ctx, 3*time.Second, "the page to show legacy", `document.querySelector('[data-switch="main"] .mode').textContent === "legacy"`)
	if after := armsOf(t, g, 40); after["legacy"] != 40 {
		t.Errorf("after force legacy, 40 fresh users saw %v: want all legacy", after)
	}
	sw := g.Switch(t, "main")
	if sw.Mode != "legacy" || sw.By != "oncall via dashboard" || sw.Reason != "site dashboard test" {
		t.Errorf("switch after force legacy: mode %q by %q reason %q", sw.Mode, sw.By, sw.Reason)
	}
	var weightEvent, modeEvent bool
	for _, ev := range sw.History {
		weightEvent = weightEvent || (ev.Kind == "weight" && ev.Weight == 30 && ev.By == "oncall via dashboard")
		modeEvent = modeEvent || (ev.Kind == "mode" && ev.Mode == "legacy" && ev.By == "oncall via dashboard")
	}
	if !weightEvent || !modeEvent {
		t.Errorf("history %+v: want weight 30 and mode legacy, both by oncall via dashboard", sw.History)
	}
	waitJS(t, ctx, 5*time.Second, "the history rows naming the user",
		`[...document.querySelectorAll('[data-switch="main"] .history-rows tr')].filter((r) => r.textContent.includes("oncall via dashboard")).length >= 2`)
	screenshot(t, ctx, "site-dashboard.png")

	// The incident report link is relative to the page, under api/.
	href, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(".report-link") || {}).href || ""`))
	if err != nil {
		t.Fatal(err)
	}
	if href != "" && !strings.HasPrefix(href, "http://"+g.HTTP+"/switchback-ui/api/operations/") {
		t.Errorf("report link %q is not under the dashboard's api/", href)
	}

	// The read-only dashboard shows the switch and no action at all.
	within(t, ctx, 20*time.Second, "loading the read-only dashboard",
		chromedp.Navigate("http://"+g.HTTP+"/wall/"),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-arm="legacy"] .error-rate`)),
	)
	waitJS(t, ctx, 5*time.Second, "the read-only page to show legacy", `document.querySelector('[data-switch="main"] .mode').textContent === "legacy" && document.getElementById("session").textContent.includes("read-only")`)
	visible, err := chromedp.Run(ctx, chromedp.Evaluate[int](`[...document.querySelectorAll("button[data-action]")].filter((b) => !b.closest("dialog") && b.offsetParent !== null).length`))
	if err != nil {
		t.Fatal(err)
	}
	if visible != 0 {
		t.Errorf("the read-only dashboard shows %d action buttons, want none", visible)
	}
	screenshot(t, ctx, "site-dashboard-read-only.png")
}

// TestSiteDashboardRolloutAndShadowViews needs the rollout and shadow
// features (the rollout and shadow blocks of a switch, GET .../shadow and
// POST .../rollout). Without them the gateway refuses the config, and the
// test fails.
func TestSiteDashboardRolloutAndShadowViews(t *testing.T) {
	g := startSiteDashboard(t, `			rollout {
				steps 1% 5% 25% 50% 100%
				hold 1h
				min_requests 5
				gate 50% manual
			}
			shadow {
				sample 100%
			}`)
	ctx := newBrowser(t)
	browseAs(t, ctx)
	armsOf(t, g, 40)

	within(t, ctx, 20*time.Second, "loading the site dashboard",
		chromedp.Navigate("http://"+g.HTTP+"/switchback-ui/"),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] .rollout .step-bar`)),
	)
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-switch="main"] .step-bar .step').length`)); err != nil || n != 5 {
		t.Errorf("the rollout shows %d steps (err %v), want 5", n, err)
	}
	within(t, ctx, 10*time.Second, "starting the rollout",
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-rollout="start"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm-ok")),
		chromedp.SendKeys(chromedp.ID("confirm-reason"), "browser test"),
		chromedp.Click(chromedp.ID("confirm-ok")),
	)
	waitJS(t, ctx, 5*time.Second, "the rollout to run at its first step",
		`document.querySelector('[data-switch="main"] .rollout-state').textContent === "running" && document.querySelector('[data-switch="main"] .step-current').dataset.step === "1"`)
	waitJS(t, ctx, 5*time.Second, "the start decision naming the user",
		`[...document.querySelectorAll('[data-switch="main"] .decision')].some((d) => d.dataset.kind === "start" && d.textContent.includes("oncall via dashboard"))`)
	screenshot(t, ctx, "site-dashboard-rollout.png")

	// Each control, clicked and confirmed in the page, reaches the real
	// record, and the page shows the state it leads to.
	for _, step := range []struct {
		action, state string
		weight        float64 // the switch's weight after it; -1 leaves it unchecked
	}{
		{"pause", "paused", 1},
		{"resume", "running", 1},
		{"abort", "aborted", -1},
		{"retry", "running", 1},
		{"promote", "completed", 100},
	} {
		within(t, ctx, 10*time.Second, step.action+" from the page",
			chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-rollout="`+step.action+`"]`)),
			chromedp.WaitVisible(chromedp.ID("confirm-ok")),
			chromedp.SendKeys(chromedp.ID("confirm-reason"), "browser "+step.action),
			chromedp.Click(chromedp.ID("confirm-ok")),
		)
		waitJS(t, ctx, 10*time.Second, "the page to show the rollout "+step.state+" after "+step.action,
			`document.querySelector('[data-switch="main"] .rollout-state').textContent === "`+strings.ReplaceAll(step.state, "_", " ")+`"`)
		var rec struct {
			Weight  float64 `json:"weight"`
			Rollout struct {
				State     string `json:"state"`
				Decisions []struct {
					Kind string `json:"kind"`
					By   string `json:"by"`
				} `json:"decisions"`
			} `json:"rollout"`
		}
		if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &rec); code != 200 {
			t.Fatalf("GET the switch after %s: status %d", step.action, code)
		}
		if rec.Rollout.State != step.state || (step.weight >= 0 && rec.Weight != step.weight) {
			t.Fatalf("after %s from the page: rollout %q at weight %g, want %q at %g", step.action, rec.Rollout.State, rec.Weight, step.state, step.weight)
		}
		if n := len(rec.Rollout.Decisions); n == 0 || rec.Rollout.Decisions[n-1].Kind != step.action || !strings.Contains(rec.Rollout.Decisions[n-1].By, "oncall via dashboard") {
			t.Fatalf("after %s from the page, the last decision is %+v, want %s by oncall via dashboard", step.action, rec.Rollout.Decisions, step.action)
		}
	}

	// Shadow: every request is copied to the other arm, whose answer (its
	// name) differs, so the report has a mismatching route with a sample.
	armsOf(t, g, 40)
	waitJS(t, ctx, 20*time.Second, "the shadow report with a mismatching route",
		`!document.querySelector('[data-switch="main"] .shadow').classList.contains("hidden") && document.querySelectorAll('[data-switch="main"] .shadow-routes tbody tr').length > 0`)
	within(t, ctx, 10*time.Second, "opening the samples",
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-action="shadow-route"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] .side-by-side`)),
	)
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-switch="main"] .side-by-side .diff').length`)); err != nil || n == 0 {
		t.Errorf("the side-by-side diff highlights %d parts (err %v), want some", n, err)
	}
	screenshot(t, ctx, "site-dashboard-shadow.png")
}

// forwardAuthTemplate puts the dashboard behind forward_auth, which names
// the user in the Remote-User header it copies from the auth server.
const forwardAuthTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	handle_path /switchback-ui/* {
		forward_auth {AUTH} {
			uri /verify
			copy_headers Remote-User
		}
		switchback_dashboard {
			user {http.request.header.Remote-User}
		}
	}
	handle {
		switchback main {
			weight 50
			legacy {
				reverse_proxy {LEGACY}
			}
			consolidated {
				reverse_proxy {CONSOLIDATED}
			}
		}
	}
}
`

func TestSiteDashboardBehindForwardAuth(t *testing.T) {
	auth := NewUpstream(t, "auth")
	auth.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/verify" || r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Remote-User", "bob")
	})
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: forwardAuthTemplate, Legacy: legacy, Consolidated: consolidated,
		Extra: map[string]string{"AUTH": auth.Addr()}})
	change := map[string]string{"Origin": "http://" + g.HTTP, "X-Switchback-Action": "1", "Content-Type": "application/json"}
	if code, body := siteRequest(t, g, http.MethodPost, "/switchback-ui/api/switches/main/weight", `{"weight":10}`, change); code != http.StatusUnauthorized {
		t.Errorf("without a token: status %d (%s), want the auth server's 401", code, body)
	}
	// A client's own Remote-User is dropped: forward_auth's copy wins.
	change["Authorization"], change["Remote-User"] = "Bearer good", "mallory"
	if code, body := siteRequest(t, g, http.MethodPost, "/switchback-ui/api/switches/main/weight", `{"weight":10}`, change); code != http.StatusOK {
		t.Fatalf("with a token: status %d (%s), want 200", code, body)
	}
	if sw := g.Switch(t, "main"); sw.Weight != 10 || sw.By != "bob via dashboard" {
		t.Errorf("after the change: weight %g by %q, want 10 by bob via dashboard", sw.Weight, sw.By)
	}
}
