package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// dashboardTemplate is DefaultTemplate with weight 50 and an admin block
// that enforces origins. The empty origin "" admits requests that carry
// neither Origin nor Referer: a browser's first navigation to the page
// (Caddy checks the origin of every request with Sec-Fetch-Mode, and a
// typed URL has none) and plain clients such as the CLI and curl. A page
// on any other origin is still refused, because browsers always send its
// Origin on a cross-origin POST.
const dashboardTemplate = `{
	admin {ADMIN} {
		enforce_origin
		origins {ADMIN} ""
	}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
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
	}
}
`

// startDashboardGateway starts a gateway with dashboardTemplate in front of
// real legacy and consolidated upstreams.
func startDashboardGateway(t *testing.T) *Gateway {
	t.Helper()
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	return StartGateway(t, GatewayConfig{Template: dashboardTemplate, Legacy: legacy, Consolidated: consolidated})
}

// newBrowser starts headless Chromium for one test. Without Chromium the
// test skips, except in CI, where it fails.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if path, err = exec.LookPath("chromium-browser"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("chromium is required in CI and is missing: %v", err)
			}
			t.Skip("chromium not found: apt-get install chromium to run the dashboard browser tests")
		}
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first Run starts the browser; it must not run under a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// within runs actions with a timeout derived from the browser context.
func within(t *testing.T, ctx context.Context, d time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// saveArtifact writes b to tests/artifacts/name.
func saveArtifact(t *testing.T, name string, b []byte) {
	t.Helper()
	dir := "artifacts"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(p)
	t.Logf("saved %s", abs)
}

// armsOf counts, over n fresh users, which arm answered.
func armsOf(t *testing.T, g *Gateway, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		cookie := &http.Cookie{Name: "sb_user", Value: fmt.Sprintf("ui-user-%d-%d", time.Now().UnixNano(), i)}
		body, resp := g.Get(t, "/", cookie)
		if resp.StatusCode != 200 {
			t.Fatalf("GET / as user %d: status %d: %s", i, resp.StatusCode, body)
		}
		seen[body]++
	}
	return seen
}

func TestDashboardForceLegacy(t *testing.T) {
	g := startDashboardGateway(t)
	ctx := newBrowser(t)

	// At weight 50, fresh users land on both arms.
	if before := armsOf(t, g, 40); before["legacy"] == 0 || before["consolidated"] == 0 {
		t.Fatalf("at weight 50, 40 users saw %v: want both arms", before)
	}

	ui := "http://" + g.Admin + "/switchback/ui/"
	within(t, ctx, 15*time.Second, "loading the dashboard",
		chromedp.Navigate(ui),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-arm="legacy"] .error-rate`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-arm="consolidated"] .error-rate`)),
	)
	// The first poll has filled in the mode and both arms' windows.
	mode := func() string {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		s, err := chromedp.Run(tctx, chromedp.TextContent(chromedp.CSS(`[data-switch="main"] .mode`)))
		if err != nil {
			t.Fatalf("reading the mode: %v", err)
		}
		return strings.TrimSpace(s)
	}
	Eventually(t, 5*time.Second, "the page to show mode split", func() bool { return mode() == "split" })
	for _, arm := range []string{"legacy", "consolidated"} {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reqs, err := chromedp.Run(tctx, chromedp.Poll[string](
			fmt.Sprintf(`(document.querySelector('[data-switch="main"] [data-arm="%s"] .requests') || {}).textContent !== "–" && document.querySelector('[data-switch="main"] [data-arm="%s"] .requests').textContent`, arm, arm),
			chromedp.WithPollingTimeout(5*time.Second)))
		cancel()
		if err != nil {
			t.Fatalf("arm %s shows no request count: %v", arm, err)
		}
		if reqs == "0" {
			t.Errorf("arm %s shows 0 requests after 40 users were split across both arms", arm)
		}
	}
	store, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.ID("store-status")))
	if !strings.Contains(store, "ok") {
		t.Errorf("store status shows %q, want ok", store)
	}

	// Force legacy through the dialog, with a reason.
	within(t, ctx, 10*time.Second, "forcing legacy from the page",
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-action="force-legacy"]`)),
		chromedp.WaitVisible(chromedp.ID("legacy-reason")),
		chromedp.SendKeys(chromedp.ID("legacy-reason"), "browser test: consolidated is slow"),
	)
	clicked := time.Now()
	within(t, ctx, 5*time.Second, "confirming", chromedp.Click(chromedp.ID("legacy-confirm")))

	// (b) The page shows mode legacy within 2 s of the click.
	within(t, ctx, 3*time.Second, "waiting for the page to show legacy",
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[bool](`document.querySelector('[data-switch="main"] .mode').textContent === "legacy"`,
				chromedp.WithPollingTimeout(2*time.Second), chromedp.WithPollingInterval(20*time.Millisecond))(ctx, tg)
			return err
		}))
	shown := time.Since(clicked)
	t.Logf("the page showed legacy %v after the click", shown.Round(time.Millisecond))
	if shown > 2*time.Second {
		t.Errorf("the page showed legacy %v after the click, want within 2s", shown)
	}

	// (a) Requests now all go to legacy.
	if after := armsOf(t, g, 40); after["legacy"] != 40 {
		t.Errorf("after force legacy, 40 fresh users saw %v: want all legacy", after)
	}
	sw := g.Switch(t, "main")
	if sw.Mode != "legacy" || sw.Reason != "browser test: consolidated is slow" || !strings.HasPrefix(sw.By, "dashboard") {
		t.Errorf("switch after force legacy: mode %q reason %q by %q, want legacy, the reason typed, by dashboard", sw.Mode, sw.Reason, sw.By)
	}

	// The history shows the change, and the sparklines have samples.
	within(t, ctx, 5*time.Second, "waiting for the history row",
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] .history-rows tr[data-kind="mode"]`)))
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`+document.querySelector('[data-switch="main"] [data-arm="legacy"] svg.spark').dataset.samples`))
	if err != nil || n < 1 {
		t.Errorf("legacy sparkline has %d samples (err %v), want at least 1", n, err)
	}

	full, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	saveArtifact(t, "dashboard.png", full)

	// A phone: 390 px wide, one column.
	within(t, ctx, 10*time.Second, "phone viewport",
		chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Sleep(300*time.Millisecond))
	width, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if width > 390 {
		t.Errorf("on a 390px phone the page is %dpx wide: it scrolls sideways", width)
	}
	phone, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("phone screenshot: %v", err)
	}
	saveArtifact(t, "dashboard-phone.png", phone)
}

// TestAdminOriginEnforced shows that with enforce_origin a page on another
// origin cannot drive the admin API, while the dashboard's own origin can.
func TestAdminOriginEnforced(t *testing.T) {
	g := startDashboardGateway(t)
	post := func(headers map[string]string, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+g.Admin+"/switchback/switches/main/mode", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := Client.Do(req)
		if err != nil {
			t.Fatalf("POST mode: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	legacy := `{"mode":"legacy","reason":"origin test","by":"test"}`
	refused := []struct {
		name    string
		headers map[string]string
	}{
		{"foreign Origin", map[string]string{"Origin": "http://evil.example"}},
		{"foreign Origin on the admin port", map[string]string{"Origin": "http://evil.example:" + strings.Split(g.Admin, ":")[1]}},
		{"foreign Referer", map[string]string{"Referer": "http://evil.example/attack.html"}},
		{"browser fetch from a foreign page", map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "cross-site"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(tc.headers, legacy)
			if code != http.StatusForbidden {
				t.Errorf("status %d (%s), want 403", code, body)
			}
			if sw := g.Switch(t, "main"); sw.Mode != "split" {
				t.Fatalf("a refused request changed the mode to %q", sw.Mode)
			}
		})
	}
	t.Run("the page's own origin", func(t *testing.T) {
		code, body := post(map[string]string{"Origin": "http://" + g.Admin, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}, legacy)
		if code != http.StatusOK {
			t.Fatalf("status %d (%s), want 200", code, body)
		}
		if sw := g.Switch(t, "main"); sw.Mode != "legacy" {
			t.Errorf("mode %q after a same-origin POST, want legacy", sw.Mode)
		}
	})
	// A browser's navigation to the page carries neither Origin nor
	// Referer but does carry Sec-Fetch-Mode, which makes Caddy check the
	// origin: the "" entry in origins is what lets the page load.
	t.Run("navigation to the dashboard", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+g.Admin+"/switchback/ui/", nil)
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		req.Header.Set("Sec-Fetch-Site", "none")
		resp, err := Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("navigating to the dashboard: status %d, want 200", resp.StatusCode)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("dashboard CSP %q, want script-src 'self'", csp)
		}
	})
}
