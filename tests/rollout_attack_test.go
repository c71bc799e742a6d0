package tests

// Attacks on the progressive rollout from a hostile or unlucky world:
// reloads mid-rollout, records written by hand or by an older version,
// admin bodies written without reading the docs, and two gateways
// racing the same action.

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul/consultest"
	"github.com/leanvibe/switchback/state/local"
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
	if v := readPlan(t, g); v.Rollout.Hold != "1h" || v.Weight != 10 || v.Rollout.PlanChanged || v.Rollout.Step != 0 {
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

// adminRaw posts a raw body to the admin API and returns the status and
// the error it says.
func adminRaw(t *testing.T, g *Gateway, path, body string) (int, string) {
	t.Helper()
	var out struct {
		Error string `json:"error"`
	}
	code := g.AdminJSON(t, http.MethodPost, path, body, &out)
	return code, out.Error
}

// TestRolloutHostileInput: admin bodies written without reading the
// docs get a clear 4xx and change nothing; a weight set by hand during a
// rollout pauses it, and resume walks on from the step's weight; a trip
// while a manual gate waits aborts the rollout.
func TestRolloutHostileInput(t *testing.T) {
	opts := "\t\trollout {\n\t\t\tsteps 10% 50% 100%\n\t\t\thold 1s\n\t\t\tmin_requests off\n\t\t\tgate 100% manual\n\t\t}\n\t\ttrip {\n\t\t\tconsecutive_failures 5\n\t\t}"
	e := startFailover(t, "split", 0, opts)
	g := e.g
	const ro, wt = "/switchback/switches/main/rollout", "/switchback/switches/main/weight"
	for _, tc := range []struct {
		path, body string
		status     int
		msg        string
	}{
		{wt, `{"weight": "5%"}`, 400, "number of percent"},
		{wt, `{"weight": 1e400}`, 400, "invalid weight"},
		{wt, `{"weight": 1e-400}`, 400, "more than 2 decimals"},
		{wt, `{"weight": 12.345}`, 400, "more than 2 decimals"},
		{wt, `{"weight": -0}`, 400, "between 0 and 100"},
		{wt, `{"weight": 100.01}`, 400, "between 0 and 100"},
		{wt, `{"weight": 5} {"weight": 6}`, 400, "extra data"},
		{wt, `{"weight": 5`, 400, "malformed JSON"},
		{wt, `{"weight": null}`, 400, "weight"},
		{wt, `{"Weight": 5, "weight": 6}`, 0, ""}, // encoding/json folds case; see below
		{ro, `{"action": "START"}`, 400, `unknown rollout action "START"`},
		{ro, `{"action": "start", "action": "abort"}`, 0, ""},
		{ro, `{"action": ["start"]}`, 400, `field "action" must be a string`},
		{ro, `{"action": "start", "force": true}`, 400, `unknown field "force"`},
		{ro, `{"action": "start"}garbage`, 400, "extra data"},
		{ro, `{"action": "start", "reason": "` + strings.Repeat("x", 2<<20) + `"}`, 413, "over"},
		{ro, `{}`, 400, "missing action"},
		{ro, `[]`, 400, "invalid request body"},
		{"/switchback/switches/nope/rollout", `{"action": "start"}`, 404, "nope"},
		{ro, `{"action": "approve"}`, 409, "nothing to approve"},
		{ro, `{"action": "promote", "reason": "   "}`, 400, "needs a reason"},
	} {
		if tc.status == 0 {
			continue
		}
		code, msg := adminRaw(t, g, tc.path, tc.body)
		if code != tc.status || !strings.Contains(msg, tc.msg) {
			t.Errorf("POST %s %.60s: %d %q; want %d and %q", tc.path, tc.body, code, msg, tc.status, tc.msg)
		}
	}
	if r := readRollout(t, g); r.Rollout.State != "idle" || r.Weight != 0 || len(r.Rollout.Decisions) != 0 {
		t.Fatalf("bad bodies changed the switch: %s weight %v, %d decisions", r.Rollout.State, r.Weight, len(r.Rollout.Decisions))
	}

	if code, msg := rolloutAPI(t, g, "start", "go"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	// A weight set by hand during the rollout pauses it.
	if code, msg := adminRaw(t, g, wt, `{"weight": 30, "reason": "by hand"}`); code != 200 {
		t.Fatalf("weight by hand: %d %s", code, msg)
	}
	Eventually(t, 10*time.Second, "the rollout paused by the hand-set weight", func() bool {
		return readRollout(t, g).Rollout.State == "paused"
	})
	if r := readRollout(t, g); r.Weight != 30 || !strings.Contains(lastDecision(r).Reason, "moved by hand") {
		t.Fatalf("after the hand-set weight: weight %v, %+v", r.Weight, lastDecision(r))
	}
	// resume goes on with the plan: the step's weight, then the next step.
	if code, msg := rolloutAPI(t, g, "resume", "back to plan"); code != 200 {
		t.Fatalf("resume: %d %s", code, msg)
	}
	Eventually(t, 15*time.Second, "the gate before 100% waiting", func() bool {
		r := readRollout(t, g)
		return r.Rollout.State == "waiting_approval" && r.Weight == 50
	})
	// A trip while the gate waits aborts the rollout to legacy.
	e.consolidated.Fail(http.StatusInternalServerError)
	Eventually(t, 15*time.Second, "a trip during the pending gate", func() bool {
		for range 20 {
			g.Get(t, "/", nil)
		}
		return readRollout(t, g).Tripped
	})
	e.consolidated.Fail(0)
	r := readRollout(t, g)
	if r.Rollout.State != "aborted" || r.Mode != "legacy" || lastDecision(r).Kind != "trip" || lastDecision(r).Rule == "" {
		t.Fatalf("trip during the gate: %s mode %s, %+v", r.Rollout.State, r.Mode, lastDecision(r))
	}
	if code, msg := rolloutAPI(t, g, "approve", "late"); code != 409 {
		t.Errorf("approve after the abort: %d %q", code, msg)
	}
}

// putRecord writes a switch record by hand into a gateway's bbolt file,
// as an older version (or an operator) would have.
func putRecord(t *testing.T, dir, record string) {
	t.Helper()
	st, err := local.Open(filepath.Join(dir, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Put(context.Background(), state.Key(state.NSSwitches, "main"), []byte(record)); err != nil {
		t.Fatal(err)
	}
}

// TestOldRecords: a switch record written by the previous version
// (integer weights, no rollout field) reads, keeps its weight and gets an
// idle rollout; one with a weight of 12.345 written by hand reads at the
// nearest 0.01% (it stopped the gateway at load, and the CLI that could
// fix it, before) and can be changed.
func TestOldRecords(t *testing.T) {
	e := &failoverEnv{legacy: NewUpstream(t, "legacy"), consolidated: NewUpstream(t, "consolidated")}
	cfg := failoverConfig(e, rolloutOpts("10% 50% 100%", "1h"))
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	old := `{"name":"main","mode":"split","weight":25,"reason":"by hand","by":"alice","since":"` + since +
		`","config_mode":"split","config_weight":0,"recover_weight":25,"history":[{"kind":"weight","mode":"split","weight":25,"at":"` + since + `"}]}`

	dir := t.TempDir()
	putRecord(t, dir, old)
	cfg.Dir = dir
	g := StartGateway(t, cfg)
	r := readRollout(t, g)
	if r.Weight != 25 || r.Mode != "split" || r.Rollout.State != "idle" {
		t.Fatalf("old record read as weight %v mode %s rollout %s", r.Weight, r.Mode, r.Rollout.State)
	}
	if code, msg := rolloutAPI(t, g, "start", "go"); code != 200 || readRollout(t, g).Weight != 10 {
		t.Fatalf("start on an old record: %d %s", code, msg)
	}
	g.Stop()

	bad := strings.Replace(old, `"weight":25,"reason"`, `"weight":12.345,"reason"`, 1)
	dir2 := t.TempDir()
	putRecord(t, dir2, bad)
	g2 := *g
	g2.Dir, g2.Caddyfile = dir2, filepath.Join(dir2, "Caddyfile")
	g2.WriteConfig(cfg)
	g2.start(Binary(t))
	t.Cleanup(g2.Stop)
	if sw := g2.Switch(t, "main"); sw.Weight != 12.35 {
		t.Fatalf("a record with weight 12.345 read as %v, want 12.35", sw.Weight)
	}
	if out, errOut, code := g2.CLI(t, "traffic", "split", "--weight", "12", "--switch", "main", "--reason", "fix"); code != 0 {
		t.Fatalf("fixing the weight: exit %d: %s %s", code, out, errOut)
	}
	if sw := g2.Switch(t, "main"); sw.Weight != 12 {
		t.Fatalf("weight after the fix: %v", sw.Weight)
	}
}

// raceTemplate is a fleet gateway whose rollout waits, at once, for an
// approval of its second step.
var raceTemplate = strings.Replace(strings.Replace(fleetTemplate, "weight 50", "weight 0", 1), "		legacy {\n", `		rollout {
			steps 10% 50% 100%
			hold 1s
			min_requests off
			gate 50% manual
		}
		legacy {
`, 1)

// race posts one rollout action through each gateway at the same moment
// and returns the statuses.
func race(t *testing.T, gws []*Gateway, action string) []int {
	t.Helper()
	codes := make([]int, len(gws))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			codes[i], _ = rolloutAPI(t, g, action, "race "+strconv.Itoa(i))
		}()
	}
	close(start)
	wg.Wait()
	return codes
}

func countKind(r rolloutRecord, kind string) int {
	n := 0
	for _, d := range r.Rollout.Decisions {
		if d.Kind == kind {
			n++
		}
	}
	return n
}

// TestFleetRolloutRaces: the same rollout action sent through two
// gateways of one Consul at the same moment is taken exactly once: one
// gets 200, the other 409, and the record holds one decision of it.
func TestFleetRolloutRaces(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleetWith(t, raceTemplate, agent.Addr, agent.Addr)
	ok := func(codes []int) bool {
		n := 0
		for _, c := range codes {
			if c == 200 {
				n++
			} else if c != 409 {
				return false
			}
		}
		return n == 1
	}
	for round := range 3 {
		first := "start"
		if round > 0 {
			first = "retry"
		}
		before := countKind(readRollout(t, f.gws[0]), first)
		codes := race(t, f.gws, first)
		wins := 0
		for _, c := range codes {
			if c == 200 {
				wins++
			}
		}
		// Two retries may both be taken when the second was judged on
		// the run the first started (the requests did not overlap after
		// all): retry is valid on a running rollout. Each 200 must then
		// be a decision of its own in the record; what may never happen
		// is a 200 for a retry that was not applied, or one applied twice.
		if !ok(codes) && !(first == "retry" && wins == 2) {
			t.Fatalf("round %d: %s from both gateways: %v; want one 200 and one 409", round, first, codes)
		}
		Eventually(t, 10*time.Second, fmt.Sprintf("%d %s decision(s) more in the record", wins, first), func() bool {
			return countKind(readRollout(t, f.gws[0]), first) == before+wins
		})
		if wins == 2 {
			t.Logf("round %d: the two retries did not overlap; both were taken, one after the other", round)
		}
		Eventually(t, 20*time.Second, "the gate waiting", func() bool { return readRollout(t, f.gws[0]).Rollout.State == "waiting_approval" })
		f.waitAll(t, 10*time.Second, "the rollout seen at 10%", func(s SwitchState) bool { return s.Weight == 10 })
		Eventually(t, 10*time.Second, "both gateways see the gate", func() bool { return readRollout(t, f.gws[1]).Rollout.State == "waiting_approval" })
		if codes := race(t, f.gws, "approve"); !ok(codes) {
			t.Fatalf("round %d: approve from both gateways: %v; want one 200 and one 409", round, codes)
		}
		Eventually(t, 20*time.Second, "the step after the gate", func() bool { return readRollout(t, f.gws[1]).Weight >= 50 })
		Eventually(t, 10*time.Second, "both gateways at 50% or more", func() bool { return readRollout(t, f.gws[0]).Weight >= 50 })
		if codes := race(t, f.gws, "abort"); !ok(codes) {
			t.Fatalf("round %d: abort from both gateways: %v; want one 200 and one 409", round, codes)
		}
		Eventually(t, 10*time.Second, "both gateways see the abort", func() bool {
			return readRollout(t, f.gws[0]).Rollout.State == "aborted" && readRollout(t, f.gws[1]).Rollout.State == "aborted"
		})
		r := readRollout(t, f.gws[0])
		if n := countKind(r, "approve"); n != round+1 {
			t.Errorf("round %d: %d approve decisions, want %d", round, n, round+1)
		}
		if n := countKind(r, "abort"); n != round+1 {
			t.Errorf("round %d: %d abort decisions, want %d", round, n, round+1)
		}
		if len(r.Rollout.Approvals) > 1 {
			t.Errorf("round %d: approvals %+v", round, r.Rollout.Approvals)
		}
	}
}

// overrideArm sends one request with the override header and returns the
// arm that answered.
func overrideArm(t *testing.T, g *Gateway, val, xff string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+"/", nil)
	req.Header.Set("X-Force", val)
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatalf("GET with override %q: %v", val, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET with override %q: status %d", val, resp.StatusCode)
	}
	return resp.Header.Get("X-Switchback-Arm")
}

// TestOverrideHostileValues: without trusted_proxies, X-Forwarded-For
// naming a trusted address does not make a client trusted; values that
// are huge, dotted, not UTF-8 or signed badly are ignored (the request
// goes by its pick) and never fail the request. The loopback, trusted,
// shows the override works at all.
func TestOverrideHostileValues(t *testing.T) {
	e := startFailover(t, "split", 0, "\t\toverride header X-Force trusted 10.0.0.0/8")
	for _, v := range []struct{ val, xff string }{
		{"consolidated", "10.0.0.5"},
		{"consolidated", "10.0.0.5, 127.0.0.1"},
		{strings.Repeat("consolidated.", 500), ""},
		{"consolidated.....", ""},
		{"consolidated.99999999999.AAAAAAAAAAAAAAAAAAAAAA", ""},
		{"consolidated.1." + strings.Repeat("A", 22), ""},
		{"consolidated\xff\xfe", ""},
		{"\xffconsolidated", ""},
		{"CONSOLIDATED", ""},
	} {
		if arm := overrideArm(t, e.g, v.val, v.xff); arm != "legacy" {
			t.Errorf("override %.40q from %q: served by %q, want legacy (weight 0)", v.val, v.xff, arm)
		}
	}
	trusted := startFailover(t, "split", 0, "\t\toverride header X-Force trusted 127.0.0.1/32")
	if arm := overrideArm(t, trusted.g, "consolidated", ""); arm != "consolidated" {
		t.Fatalf("override from a trusted loopback: served by %q", arm)
	}
}

// TestRolloutHoldsWhileBothUnhealthy: while both arms fail alike (a
// shared dependency down) the relative rules rightly do not trip, but the
// rollout must not walk on meanwhile: its step waits, saying why, and
// goes on once the arms recover.
func TestRolloutHoldsWhileBothUnhealthy(t *testing.T) {
	legacy, legacyFail := NewFlakyUpstream(t, "legacy")
	cons, consFail := NewFlakyUpstream(t, "consolidated")
	opts := strings.Replace(relativeOnly, "}", " window 4s\n}", 1) + "\n" + rolloutOpts("30% 60% 100%", "1s")
	g := StartGateway(t, GatewayConfig{Template: failoverTemplate, Legacy: legacy, Consolidated: cons,
		Extra: map[string]string{"MODE": "split", "WEIGHT": "0", "OPTIONS": opts}})
	l := startLoad(t, g, 300, 128)
	defer l.stop()
	if code, msg := rolloutAPI(t, g, "start", "go"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	if code, msg := rolloutAPI(t, g, "pause", "wait"); code != 200 {
		t.Fatalf("pause: %d %s", code, msg)
	}
	Eventually(t, 15*time.Second, "traffic on both arms", func() bool { return cons.Hits.Load() >= 300 })
	legacyFail(5)
	consFail(5)
	var s relativeStatus
	Eventually(t, 15*time.Second, "both arms unhealthy", func() bool {
		g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s)
		return s.BothUnhealthy
	})
	if code, msg := rolloutAPI(t, g, "resume", "go on"); code != 200 {
		t.Fatalf("resume: %d %s", code, msg)
	}
	time.Sleep(4 * time.Second) // four holds
	r := readRollout(t, g)
	if r.Weight != 30 || r.Rollout.Step != 0 || !strings.Contains(r.Rollout.Waiting, "both arms unhealthy") {
		t.Fatalf("with both arms unhealthy the rollout went on: weight %v step %d, waiting %q", r.Weight, r.Rollout.Step, r.Rollout.Waiting)
	}
	legacyFail(0)
	consFail(0)
	Eventually(t, 30*time.Second, "the rollout going on once the arms recover", func() bool { return readRollout(t, g).Weight > 30 })
}

// TestFleetRolloutConsulDown: Consul goes down while a step is due. The
// fleet keeps serving at the step's weight, no gateway walks on alone,
// the status says what the step waits for, and once Consul is back the
// rollout goes on to the end with each step taken once.
func TestFleetRolloutConsulDown(t *testing.T) {
	c := consultest.StartCluster(t, 1)
	addr := c.Addrs()[0]
	tpl := strings.Replace(raceTemplate, "\t\t\tgate 50% manual\n", "", 1)
	f := startFleetWith(t, tpl, addr, addr)
	if code, msg := rolloutAPI(t, f.gws[0], "start", "go"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	f.waitAll(t, 10*time.Second, "at 10%", func(s SwitchState) bool { return s.Weight == 10 })
	c.Agents[0].Stop()
	time.Sleep(4 * time.Second) // four holds
	for i, g := range f.gws {
		r := readRollout(t, g)
		if r.Weight != 10 || r.Rollout.Step != 0 || r.Rollout.State != "running" {
			t.Fatalf("gw-%d with Consul down: weight %v step %d %s", i, r.Weight, r.Rollout.Step, r.Rollout.State)
		}
		if !strings.Contains(r.Rollout.Waiting, "evidence") {
			t.Errorf("gw-%d with Consul down waits for %q", i, r.Rollout.Waiting)
		}
		for u := range 20 {
			if _, _, err := fleetGet(g, "user-"+strconv.Itoa(u)); err != nil {
				t.Fatalf("gw-%d with Consul down: %v", i, err)
			}
		}
	}
	c.Agents[0].Start()
	Eventually(t, 60*time.Second, "the rollout completed once Consul is back", func() bool {
		return readRollout(t, f.gws[1]).Rollout.State == "completed"
	})
	r := readRollout(t, f.gws[0])
	if n := countKind(r, "advance"); n != 2 {
		t.Errorf("%d advances for 3 steps, want 2", n)
	}
	if n := countKind(r, "complete"); n != 1 {
		t.Errorf("%d completes, want 1", n)
	}
}

// TestCLIUnknownSubcommand: a mistyped subcommand is a usage error (exit
// 2) naming the known ones; it printed the help and exited 0, so a
// script's "rollout abrot" passed.
func TestCLIUnknownSubcommand(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"rollout", "abrot"}, {"rollout", "abrot", "--reason", "x"}, {"traffic", "legcy"}, {"override", "sing", "consolidated"}} {
		_, errOut, code := RunCLI(t, dir, args...)
		if code != 2 || !strings.Contains(errOut, "unknown command "+strconv.Quote(args[1])) {
			t.Errorf("switchback %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
	}
	if out, _, code := RunCLI(t, dir, "rollout"); code != 0 || !strings.Contains(out, "Available Commands") {
		t.Errorf("switchback rollout alone: exit %d: %s", code, out)
	}
}
