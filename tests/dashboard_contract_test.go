package tests

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The page's rollout and shadow views render the switch JSON's "rollout"
// object and the GET .../shadow report of the shared contract. This test
// serves the real page (caddymodule/ui) with answers shaped as the
// contract says, so the views are checked even on a gateway built without
// those features; TestSiteDashboardRolloutAndShadowViews checks them
// against the real thing.

const contractSwitch = `{
  "name": "main", "mode": "split", "weight": 12.5, "reason": "rollout step", "by": "rollout", "since": "2026-01-01T10:00:00Z",
  "arms": {
    "legacy": {"requests": 900, "failures": 1, "error_rate": 0.0011, "p50_ms": 3, "p90_ms": 8, "p99_ms": 20, "p999_ms": 30, "consecutive_failures": 0, "window": "10s"},
    "consolidated": {"requests": 120, "failures": 0, "error_rate": 0, "p50_ms": 2, "p90_ms": 6, "p99_ms": 15, "p999_ms": 25, "consecutive_failures": 0, "window": "10s"}
  },
  "rules": {"armed": true, "error_rate": 0.05, "min_requests": 20, "window": "10s"},
  "history": [{"kind": "weight", "mode": "split", "weight": 12.5, "reason": "rollout step", "by": "rollout", "at": "2026-01-01T10:00:00Z"}],
  "rollout": {
    "state": "running", "steps": [1, 12.5, 25, 50, 100], "step": 1, "step_started": "2026-01-01T10:00:00Z",
    "hold": "5m", "min_requests": 500, "gates": [50], "approvals": [],
    "waiting": "waiting: 312/500 requests",
    "decisions": [
      {"kind": "start", "at": "2026-01-01T09:50:00Z", "by": "alice via dashboard", "reason": "go", "from": 0, "to": 1},
      {"kind": "hold", "at": "2026-01-01T09:55:00Z", "by": "gw-a", "reason": "too few requests", "from": 1, "to": 1,
       "evidence": {"arms": {"legacy": {"requests": 400, "failures": 0, "error_rate": 0, "p50_ms": 3, "p99_ms": 20},
                             "consolidated": {"requests": 4, "failures": 0, "error_rate": 0, "p50_ms": 2, "p99_ms": 15}},
                    "gateways": ["gw-a", "gw-b"], "rule": "min_requests", "threshold": "500"}},
      {"kind": "advance", "at": "2026-01-01T10:00:00Z", "by": "gw-b", "rule": "error_rate 2x legacy", "from": 1, "to": 12.5,
       "evidence": {"arms": {"legacy": {"requests": 9000, "failures": 9, "error_rate": 0.001, "p50_ms": 3, "p99_ms": 21},
                             "consolidated": {"requests": 612, "failures": 1, "error_rate": 0.0016, "p50_ms": 2, "p99_ms": 17}},
                    "p_value": 0.41, "gateways": ["gw-a", "gw-b"], "rule": "error_rate 2x legacy", "threshold": "2x, floor 1%",
                    "shadow": {"compared": 300, "mismatched": 3, "mismatch_rate": 0.01, "worst_route": "GET /items/:id"}}}
    ]
  }
}`

const contractShadow = `{
  "switch": "main", "direction": "consolidated", "sampled": 400, "compared": 390, "mismatched": 12, "noise_only": 4,
  "skipped": 6, "dropped": 4, "mismatch_rate": 0.0308,
  "routes": [
    {"route": "GET /health", "compared": 200, "mismatched": 0, "mismatch_rate": 0, "paths": [], "samples": []},
    {"route": "GET /items/:id", "compared": 190, "mismatched": 12, "mismatch_rate": 0.063,
     "paths": [{"path": "/price", "count": 12, "noise": false}, {"path": "/served_at", "count": 40, "noise": true}],
     "samples": [{"request": "GET /items/3", "at": "2026-01-01T10:00:00Z",
       "serving": {"status": 200, "headers": {"Content-Type": ["application/json"]}, "body": "{\"id\": 3, \"name\": \"lamp\", \"price\": 10}"},
       "shadow": {"status": 201, "headers": {"Content-Type": ["application/json; charset=utf-8"]}, "body": "{\"id\": 3, \"name\": \"lamp\", \"price\": 12}"},
       "diffs": ["status", "header Content-Type", "/price"]}]}
  ]
}`

// contractAPI serves the page from caddymodule/ui and the API answers of
// the contract; with bare, the switch has no rollout and GET .../shadow
// is a 404, as on a gateway without those features.
type contractAPI struct {
	bare bool
	mu   sync.Mutex
	got  []*http.Request
	body []string
}

func (c *contractAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/prefix/")
	if !strings.HasPrefix(p, "api/") {
		name := p
		if name == "" {
			name = "index.html"
		}
		b, err := os.ReadFile(filepath.Join("..", "caddymodule", "ui", filepath.Clean(name)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		if name == "index.html" {
			b = bytes.Replace(b, []byte(`content=".."`), []byte(`content="api"`), 1)
		}
		switch filepath.Ext(name) {
		case ".js":
			w.Header().Set("Content-Type", "text/javascript")
		case ".css":
			w.Header().Set("Content-Type", "text/css")
		default:
			w.Header().Set("Content-Type", "text/html")
		}
		w.Write(b)
		return
	}
	sw := contractSwitch
	if c.bare {
		var m map[string]any
		json.Unmarshal([]byte(contractSwitch), &m)
		delete(m, "rollout")
		b, _ := json.Marshal(m)
		sw = string(b)
	}
	w.Header().Set("Content-Type", "application/json")
	switch p = strings.TrimPrefix(p, "api/"); {
	case r.Method == http.MethodPost:
		b, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.got, c.body = append(c.got, r), append(c.body, string(b))
		c.mu.Unlock()
		io.WriteString(w, strings.Replace(strings.Replace(sw, `"state": "running"`, `"state": "completed"`, 1), `"step": 1,`, `"step": 4,`, 1))
	case p == "session":
		io.WriteString(w, `{"via":"dashboard","user":"alice","actor":"alice via dashboard","read_only":false,"action_header":"X-Switchback-Action"}`)
	case p == "switches":
		io.WriteString(w, `{"gateway":"gw-a","store":{"backend":"local /var/lib/sb.db","status":"ok"},"switches":[`+sw+`]}`)
	case p == "switches/main":
		io.WriteString(w, sw)
	case p == "switches/main/shadow" && !c.bare:
		io.WriteString(w, contractShadow)
	case p == "points":
		io.WriteString(w, `[{"id":"rollback-1","type":"full_system","host":"gw-a","created":"2026-01-01T09:00:00Z","size":2048,"files":3}]`)
	case p == "operations":
		io.WriteString(w, `[{"id":"op-1","kind":"create","status":"completed","host":"gw-a","started":"2026-01-01T09:00:00Z"}]`)
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"no such switchback endpoint"}`)
	}
}

func TestDashboardPageRendersTheContract(t *testing.T) {
	api := &contractAPI{}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ctx := newBrowser(t)
	within(t, ctx, 20*time.Second, "loading the page",
		chromedp.Navigate(srv.URL+"/prefix/"),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] .rollout .step-bar`)),
	)
	if s := textOf(t, ctx, `[data-switch="main"] .weight-text`); s != "87.5% legacy / 12.5% consolidated" {
		t.Errorf("weight text %q, want 87.5%% legacy / 12.5%% consolidated", s)
	}
	for sel, want := range map[string]string{
		`[data-switch="main"] .rollout-state`:   "running",
		`[data-switch="main"] .step-current`:    "12.5%",
		`[data-switch="main"] .rollout-waiting`: "waiting: 312/500 requests",
		`[data-switch="main"] .step-gate`:       "50% · needs approval",
	} {
		if got := textOf(t, ctx, sel); got != want {
			t.Errorf("%s: %q, want %q", sel, got, want)
		}
	}
	counts, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`({
		steps: document.querySelectorAll('[data-switch="main"] .step').length,
		done: document.querySelectorAll('[data-switch="main"] .step-done').length,
		decisions: document.querySelectorAll('[data-switch="main"] .decision').length,
		evidenceRows: document.querySelectorAll('[data-switch="main"] .decision .evidence-arms tbody tr').length,
		buttons: document.querySelectorAll('[data-switch="main"] [data-action="rollout"]').length,
	})`))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"steps": 5, "done": 1, "decisions": 3, "evidenceRows": 4, "buttons": 3}; !equalCounts(counts, want) {
		t.Errorf("rollout view counts %v, want %v", counts, want)
	}
	if s := textOf(t, ctx, `[data-switch="main"] .decision:first-child`); !strings.Contains(s, "p = 0.41") || !strings.Contains(s, "gateways gw-a, gw-b") || !strings.Contains(s, "shadow 3/300 mismatched") {
		t.Errorf("the newest decision shows %q: want its p-value, gateways and shadow evidence", s)
	}

	// Shadow: routes by mismatch rate, the sample side by side, the
	// differing parts marked and nothing else.
	waitJS(t, ctx, 10*time.Second, "the shadow view", `document.querySelectorAll('[data-switch="main"] .shadow-routes tbody tr').length === 2`)
	if s := textOf(t, ctx, `[data-switch="main"] .shadow-routes tbody tr:first-child td`); s != "GET /items/:id" {
		t.Errorf("first shadow route %q, want the one with the highest mismatch rate", s)
	}
	marks, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`({
		status: document.querySelectorAll('[data-switch="main"] .status-line.diff').length,
		header: document.querySelectorAll('[data-switch="main"] .hdr.diff').length,
		price: document.querySelectorAll('[data-switch="main"] .line.diff[data-ptr="/price"]').length,
		name: document.querySelectorAll('[data-switch="main"] .line.diff[data-ptr="/name"]').length,
		noise: document.querySelectorAll('[data-switch="main"] .tag.noise').length,
	})`))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"status": 2, "header": 2, "price": 2, "name": 0, "noise": 1}; !equalCounts(marks, want) {
		t.Errorf("diff marks %v, want %v", marks, want)
	}
	if s := textOf(t, ctx, `[data-point="rollback-1"] .host`); s != "gw-a" {
		t.Errorf("point host %q, want gw-a", s)
	}
	screenshot(t, ctx, "dashboard-contract.png")

	// Promote asks for a reason: the dialog will not submit without one.
	within(t, ctx, 10*time.Second, "promote",
		chromedp.Click(chromedp.CSS(`[data-switch="main"] [data-rollout="promote"]`)),
		chromedp.WaitVisible(chromedp.ID("confirm-ok")),
		chromedp.Click(chromedp.ID("confirm-ok")),
		chromedp.Sleep(300*time.Millisecond),
	)
	api.mu.Lock()
	n := len(api.got)
	api.mu.Unlock()
	if n != 0 {
		t.Fatalf("promote was sent without a reason")
	}
	within(t, ctx, 10*time.Second, "promote with a reason",
		chromedp.SendKeys(chromedp.ID("confirm-reason"), "canary is clean"),
		chromedp.Click(chromedp.ID("confirm-ok")),
	)
	waitJS(t, ctx, 5*time.Second, "the result in words", `document.getElementById("message").textContent.includes("the rollout is completed at step 100%")`)
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.got) != 1 || api.got[0].URL.Path != "/prefix/api/switches/main/rollout" || api.got[0].Header.Get("X-Switchback-Action") != "1" {
		t.Fatalf("promote sent %d requests, first %v", len(api.got), api.got)
	}
	var body struct{ Action, Reason string }
	if err := json.Unmarshal([]byte(api.body[0]), &body); err != nil || body.Action != "promote" || body.Reason != "canary is clean" {
		t.Errorf("promote body %s, want action promote with the reason", api.body[0])
	}
}

func TestDashboardPageWithoutRolloutOrShadow(t *testing.T) {
	srv := httptest.NewServer(&contractAPI{bare: true})
	defer srv.Close()
	ctx := newBrowser(t)
	within(t, ctx, 20*time.Second, "loading the page",
		chromedp.Navigate(srv.URL+"/prefix/"),
		chromedp.WaitVisible(chromedp.CSS(`[data-switch="main"] [data-action="force-legacy"]`)),
	)
	// Two slow polls: the shadow endpoint answered 404 at least once.
	time.Sleep(6 * time.Second)
	state, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]bool](`({
		rollout: document.querySelector('[data-switch="main"] .rollout').classList.contains("hidden"),
		shadow: document.querySelector('[data-switch="main"] .shadow').classList.contains("hidden"),
		error: document.getElementById("message").dataset.kind === "error" && !document.getElementById("message").classList.contains("hidden"),
		banner: !document.getElementById("banner").classList.contains("hidden"),
	})`))
	if err != nil {
		t.Fatal(err)
	}
	if !state["rollout"] || !state["shadow"] || state["error"] || state["banner"] {
		t.Errorf("without rollout and shadow: %v, want both views hidden and no error", state)
	}
}

func equalCounts(got, want map[string]int) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
