package tests

// Attacks on the progressive rollout from a hostile or unlucky world:
// reloads mid-rollout, records written by hand or by an older version,
// admin bodies written without reading the docs, and two gateways
// racing the same action.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rolloutOpts is a rollout block for failoverTemplate.
func rolloutOpts(steps, hold string) string {
	return "\t\trollout {\n\t\t\tsteps " + steps + "\n\t\t\thold " + hold + "\n\t\t\tmin_requests off\n\t\t}"
}

func failoverConfig(e *failoverEnv, options string) GatewayConfig {
	return GatewayConfig{Template: failoverTemplate, Legacy: e.legacy, Consolidated: e.consolidated,
		Extra: map[string]string{"MODE": "split", "WEIGHT": strconv.Itoa(0), "OPTIONS": options}}
}

type planView struct {
	Weight  float64 `json:"weight"`
	Rollout *struct {
		State       string    `json:"state"`
		Step        int       `json:"step"`
		StepStarted time.Time `json:"step_started"`
		Hold        string    `json:"hold"`
		PlanChanged bool      `json:"plan_changed"`
	} `json:"rollout"`
}

func readPlan(t *testing.T, g *Gateway) planView {
	t.Helper()
	var v planView
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &v); code != 200 {
		t.Fatalf("GET switch: %d", code)
	}
	return v
}

func reloadCLI(t *testing.T, g *Gateway) {
	t.Helper()
	if _, errOut, code := RunCLI(t, g.Dir, "reload", "--config", g.Caddyfile, "--address", g.Admin); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, errOut)
	}
}

// TestRolloutThroughReloads: a rejected reload leaves a running rollout
// where it is; a reload that changes the rollout block does not restart
// it (it keeps its plan, marked plan_changed, until a retry applies the
// new one); a reload that drops the rollout block does not leave a
// rollout that says "running" with no engine to walk it.
func TestRolloutThroughReloads(t *testing.T) {
	e := startFailover(t, "split", 0, rolloutOpts("10% 50% 100%", "4s"))
	g := e.g
	if code, msg := rolloutAPI(t, g, "start", "go"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	before := readPlan(t, g)
	if before.Rollout.State != "running" || before.Weight != 10 {
		t.Fatalf("after start: %+v", before.Rollout)
	}

	// A config Caddy rejects after provisioning the switch.
	re := &reloadEnv{g: g, legacy: e.legacy, consolidated: e.consolidated}
	if code, body := re.load(t, withUnknownModule(t, re.adapted(t, failoverConfig(e, rolloutOpts("10% 20% 100%", "1h"))))); code == 200 {
		t.Fatalf("a config with an unknown module was accepted: %s", body)
	}
	if v := readPlan(t, g); v.Rollout.State != "running" || v.Rollout.Step != 0 || !v.Rollout.StepStarted.Equal(before.Rollout.StepStarted) || v.Rollout.PlanChanged {
		t.Fatalf("a rejected reload changed the rollout: %+v", v.Rollout)
	}

	// A reload with a changed plan: the running rollout keeps its own.
	g.WriteConfig(failoverConfig(e, rolloutOpts("10% 20% 100%", "1h")))
	reloadCLI(t, g)
	Eventually(t, 10*time.Second, "plan_changed after the reload", func() bool { return readPlan(t, g).Rollout.PlanChanged })
	if v := readPlan(t, g); v.Rollout.State != "running" || v.Rollout.Step != 0 || !v.Rollout.StepStarted.Equal(before.Rollout.StepStarted) || v.Rollout.Hold != "4s" {
		t.Fatalf("a reload restarted or changed the running rollout: %+v", v.Rollout)
	}
	Eventually(t, 20*time.Second, "the old plan's second step (50%)", func() bool { return readPlan(t, g).Weight == 50 })

	// retry applies the new plan.
	if code, msg := rolloutAPI(t, g, "retry", "new plan"); code != 200 {
		t.Fatalf("retry: %d %s", code, msg)
	}
	if v := readPlan(t, g); v.Rollout.Hold != "1h0m0s" || v.Weight != 10 || v.Rollout.PlanChanged || v.Rollout.Step != 0 {
		t.Fatalf("retry did not apply the new plan: weight %v %+v", v.Weight, v.Rollout)
	}

	// The rollout block removed: no rollout may stay "running" without
	// an engine; the switch keeps its weight.
	g.WriteConfig(failoverConfig(e, ""))
	reloadCLI(t, g)
	Eventually(t, 10*time.Second, "the rollout no longer running", func() bool {
		v := readPlan(t, g)
		return v.Rollout == nil || v.Rollout.State != "running"
	})
	if v := readPlan(t, g); v.Weight != 10 {
		t.Fatalf("dropping the rollout block moved the weight: %v", v.Weight)
	}
	if code, msg := rolloutAPI(t, g, "resume", "x"); code < 400 || !strings.Contains(msg, "rollout") {
		t.Errorf("resume with no rollout block: %d %q", code, msg)
	}
}
