package tests

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// grafanaTemplate enables everything the Grafana dashboard charts: switch
// main with a rollout and shadow traffic, switch trippy whose consolidated
// arm fails so it trips, and a points block so an operation is recorded.
const grafanaTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		points {
			full_system {DIR}/app
		}
	}
}
http://{HTTP} {
	handle /trip/* {
		switchback trippy {
			weight 100
			mode split
			legacy {
				reverse_proxy {TRIP_LEGACY}
			}
			consolidated {
				reverse_proxy {TRIP_CONSOLIDATED}
			}
			trip {
				error_rate 50%
				min_requests 5
				window 10s
			}
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
			rollout {
				steps 1% 5% 25% 50% 100%
				hold 1h
			}
			shadow {
				sample 100%
			}
		}
	}
}
`

// grafanaDashboard is the part of docs/grafana/switchback.json the test
// reads.
type grafanaDashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

// grafanaPanel is one panel of the dashboard.
type grafanaPanel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

var metricNameRE = regexp.MustCompile(`\bswitchback_[a-zA-Z0-9_]+`)

// TestGrafanaDashboardQueriesExistingMetrics checks that
// docs/grafana/switchback.json imports as is (a Prometheus datasource
// variable, every panel on it) and that every metric it queries is in a
// running gateway's /switchback/metrics.
func TestGrafanaDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := os.ReadFile("../docs/grafana/switchback.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash grafanaDashboard
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("docs/grafana/switchback.json is not valid JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("dashboard title %q uid %q: both are needed to import", dash.Title, dash.UID)
	}
	var hasDS bool
	var exprs []string
	for _, v := range dash.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			hasDS = true
		}
		exprs = append(exprs, string(v.Query))
	}
	if !hasDS {
		t.Errorf("no Prometheus datasource variable named datasource: the dashboard would not import as is")
	}
	want := map[string][]string{} // metric -> panels
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q is not on the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metricNameRE.FindAllString(tg.Expr, -1) {
				want[m] = append(want[m], p.Title)
			}
		}
	}
	for _, e := range exprs {
		for _, m := range metricNameRE.FindAllString(e, -1) {
			want[m] = append(want[m], "variables")
		}
	}
	for _, title := range []string{"Traffic share per arm", "Error rate per arm", "p99 latency per arm", "Trips", "Rollout step", "Shadow mismatch", "Store health"} {
		if !slices.ContainsFunc(dash.Panels, func(p grafanaPanel) bool {
			return p.Title == title
		}) {
			t.Errorf("no panel %q", title)
		}
	}

	// A gateway with every feature on, some traffic, a trip and an
	// operation.
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	tripLegacy, tripConsolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	tripConsolidated.Fail(http.StatusInternalServerError)
	dir := t.TempDir()
	if err := os.MkdirAll(dir+"/app", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/app/settings", []byte("x=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := StartGateway(t, GatewayConfig{Template: grafanaTemplate, Legacy: legacy, Consolidated: consolidated, Dir: dir,
		Extra: map[string]string{"TRIP_LEGACY": tripLegacy.Addr(), "TRIP_CONSOLIDATED": tripConsolidated.Addr()}})
	armsOf(t, g, 40)
	Eventually(t, 20*time.Second, "switch trippy to trip", func() bool {
		g.Get(t, "/trip/x", nil)
		return g.Switch(t, "trippy").Tripped
	})
	if _, errOut, code := g.CLI(t, "point", "create", "--type", "full_system"); code != 0 {
		t.Fatalf("point create: exit %d: %s", code, errOut)
	}

	resp, err := Client.Get("http://" + g.Admin + "/switchback/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	have := map[string]bool{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			have[l[:i]] = true
		}
	}
	var missing []string
	for m, panels := range want {
		if !have[m] {
			missing = append(missing, m+" (panels: "+strings.Join(slices.Compact(panels), ", ")+")")
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("the Grafana dashboard queries metrics that /switchback/metrics does not serve:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(want) < 10 {
		t.Errorf("found only %d metric names in the dashboard's queries: the parsing is broken", len(want))
	}
}
