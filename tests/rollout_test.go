package tests

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// rolloutRecord is a switch with its rollout, as the admin API shows it.
type rolloutRecord struct {
	Mode    string  `json:"mode"`
	Weight  float64 `json:"weight"`
	Tripped bool    `json:"tripped"`
	Rule    string  `json:"rule"`
	Rollout *struct {
		State       string    `json:"state"`
		Steps       []float64 `json:"steps"`
		Step        int       `json:"step"`
		StepStarted time.Time `json:"step_started"`
		Waiting     string    `json:"waiting"`
		PlanChanged bool      `json:"plan_changed"`
		Approvals   []struct {
			Step float64 `json:"step"`
			By   string  `json:"by"`
		} `json:"approvals"`
		Decisions []rolloutDecision `json:"decisions"`
	} `json:"rollout"`
}

type rolloutDecision struct {
	Kind     string    `json:"kind"`
	At       time.Time `json:"at"`
	By       string    `json:"by"`
	Gateway  string    `json:"gateway"`
	Reason   string    `json:"reason"`
	From     float64   `json:"from"`
	To       float64   `json:"to"`
	Step     int       `json:"step"`
	Rule     string    `json:"rule"`
	Evidence *struct {
		Arms map[string]struct {
			Requests  uint64  `json:"requests"`
			Failures  uint64  `json:"failures"`
			ErrorRate float64 `json:"error_rate"`
			P50       float64 `json:"p50_ms"`
			P99       float64 `json:"p99_ms"`
		} `json:"arms"`
		Gateways  []string `json:"gateways"`
		Rule      string   `json:"rule"`
		Threshold string   `json:"threshold"`
	} `json:"evidence"`
}

func readRollout(t testing.TB, g *Gateway) rolloutRecord {
	t.Helper()
	var r rolloutRecord
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &r); code != 200 {
		t.Fatalf("GET switch: status %d", code)
	}
	if r.Rollout == nil {
		t.Fatal("switch main shows no rollout")
	}
	return r
}

// rolloutAPI posts a rollout action and returns the status and error.
func rolloutAPI(t testing.TB, g *Gateway, action, reason string) (int, string) {
	t.Helper()
	var out struct {
		Error string `json:"error"`
	}
	code := g.AdminJSON(t, http.MethodPost, "/switchback/switches/main/rollout", map[string]any{"action": action, "reason": reason}, &out)
	return code, out.Error
}

func lastDecision(r rolloutRecord) rolloutDecision {
	if n := len(r.Rollout.Decisions); n > 0 {
		return r.Rollout.Decisions[n-1]
	}
	return rolloutDecision{}
}

// TestRolloutAbortsOnFault runs a 3-step rollout under 300 req/s on one
// gateway and breaks consolidated at step 2: the trip must abort the
// rollout within 1s of consolidated's first failing answer, no client may
// see an error (GETs are replayed on legacy), and the record must name
// the step, the rule and the evidence.
func TestRolloutAbortsOnFault(t *testing.T) {
	const opts = `		trip {
			error_rate 20%
			min_requests 20
		}
		rollout {
			steps 10% 50% 100%
			hold 1s
			min_requests 50
		}`
	e := startFailover(t, "split", 0, opts)
	if r := readRollout(t, e.g); r.Rollout.State != "idle" || len(r.Rollout.Steps) != 3 {
		t.Fatalf("before start: %+v", r.Rollout)
	}
	l := startLoad(t, e.g, 300, 32)
	if code, msg := rolloutAPI(t, e.g, "start", "test"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	Eventually(t, 30*time.Second, "step 2 (50%)", func() bool {
		r := readRollout(t, e.g)
		return r.Rollout.Step == 1 && r.Weight == 50
	})
	advance := lastDecision(readRollout(t, e.g))
	if advance.Kind != "advance" || advance.From != 10 || advance.To != 50 || advance.Evidence == nil {
		t.Fatalf("the advance to 50%% recorded %+v", advance)
	}
	if n := advance.Evidence.Arms["consolidated"].Requests; n < 50 || len(advance.Evidence.Gateways) != 1 || advance.Evidence.Gateways[0] != "gw-test" {
		t.Errorf("advance evidence: %d consolidated requests (want >= 50) from %v", n, advance.Evidence.Gateways)
	}
	time.Sleep(300 * time.Millisecond) // the step's own traffic
	e.consolidated.Fail(http.StatusInternalServerError)
	Eventually(t, 10*time.Second, "the rollout aborted", func() bool {
		r := readRollout(t, e.g)
		return r.Rollout.State == "aborted"
	})
	time.Sleep(500 * time.Millisecond)
	l.stop()
	r := readRollout(t, e.g)
	d := lastDecision(r)
	first, last := e.consolidated.FaultWindow()
	if first.IsZero() {
		t.Fatal("consolidated never failed")
	}
	t.Logf("aborted at step %d by %s (%s): decision %v and last request on consolidated %v after its first failing answer; %d GETs at %.0f/s, %d errors",
		d.Step+1, d.Rule, d.Reason, d.At.Sub(first), last.Sub(first), l.sent.Load(), l.rate(), l.errs.Load())
	if r.Mode != "legacy" || !r.Tripped {
		t.Errorf("after the abort: mode %s tripped %v, want legacy, tripped", r.Mode, r.Tripped)
	}
	if d.Kind != "trip" || d.Step != 1 || d.From != 50 || d.Rule == "" || !strings.Contains(d.Reason, "step 2/3") {
		t.Errorf("abort decision = %+v; want a trip at step 2 naming its rule", d)
	}
	if d.Evidence == nil || d.Evidence.Rule != d.Rule || d.Evidence.Threshold == "" || d.Evidence.Arms["consolidated"].Failures == 0 {
		t.Errorf("abort evidence = %+v; want the rule, its threshold and consolidated's failures", d.Evidence)
	}
	if took := d.At.Sub(first); took > time.Second {
		t.Errorf("the abort came %v after the first failing answer, want at most 1s", took)
	}
	if took := last.Sub(first); took > time.Second {
		t.Errorf("consolidated still got requests %v after its first failing answer, want at most 1s", took)
	}
	if l.rate() < 200 {
		t.Errorf("load reached only %.0f req/s, want at least 200", l.rate())
	}
	l.checkNoErrors(t)
	m := e.g.metrics(t)
	for _, want := range []string{`switchback_rollout_state{switch="main",state="aborted"} 1`, `switchback_rollout_decisions_total{switch="main",kind="trip",rule="` + d.Rule + `"} 1`,
		`switchback_rollout_decisions_total{switch="main",kind="advance",rule=""} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// hookSink receives webhook events.
type hookSink struct {
	mu     sync.Mutex
	events []map[string]any
	srv    *httptest.Server
}

func newHookSink(t *testing.T) *hookSink {
	h := &hookSink{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var ev map[string]any
		json.Unmarshal(b, &ev)
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookSink) count(event string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.events {
		if e["event"] == event {
			n++
		}
	}
	return n
}

// TestRolloutGateAndControl walks a rollout with a manual gate by the
// admin API and the CLI: the gate holds until approved; pause holds the
// step; resume, retry, abort and promote do what they say; a wrong action
// for the state is a clear 4xx; on_step and on_complete run once each.
func TestRolloutGateAndControl(t *testing.T) {
	hooks := newHookSink(t)
	opts := `		rollout {
			steps 10% 50% 100%
			hold 1s
			min_requests off
			gate 50% manual
			on_step webhook ` + hooks.srv.URL + `
			on_complete webhook ` + hooks.srv.URL + `
		}`
	e := startFailover(t, "split", 0, opts)
	g := e.g
	for _, tc := range []struct {
		action, reason string
		status         int
		msg            string
	}{
		{"resume", "", 409, "only a paused rollout"},
		{"approve", "", 409, "nothing to approve"},
		{"retry", "", 409, "use start"},
		{"promote", "", 400, "needs a reason"},
		{"jump", "", 400, "unknown rollout action"},
		{"", "", 400, "missing action"},
	} {
		if code, msg := rolloutAPI(t, g, tc.action, tc.reason); code != tc.status || !strings.Contains(msg, tc.msg) {
			t.Errorf("%q on an idle rollout: %d %q; want %d and %q", tc.action, code, msg, tc.status, tc.msg)
		}
	}

	if code, msg := rolloutAPI(t, g, "start", "go"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	if code, msg := rolloutAPI(t, g, "start", ""); code != 409 || !strings.Contains(msg, "started already") {
		t.Errorf("second start: %d %q", code, msg)
	}
	Eventually(t, 10*time.Second, "waiting for approval of 50%", func() bool {
		return readRollout(t, g).Rollout.State == "waiting_approval"
	})
	time.Sleep(1500 * time.Millisecond)
	r := readRollout(t, g)
	if r.Rollout.Step != 0 || r.Weight != 10 || r.Rollout.Waiting != "waiting: approval for 50%" {
		t.Fatalf("the gate did not hold: step %d weight %v waiting %q", r.Rollout.Step, r.Weight, r.Rollout.Waiting)
	}
	// A reload keeps the rollout where it is; a changed rollout block
	// does not touch the running plan, only marks it, until a retry.
	reload := func(options string) {
		t.Helper()
		g.WriteConfig(GatewayConfig{Template: failoverTemplate, Legacy: e.legacy, Consolidated: e.consolidated,
			Extra: map[string]string{"MODE": "split", "WEIGHT": "0", "OPTIONS": options}})
		if _, errOut, code := RunCLI(t, g.Dir, "reload", "--config", g.Caddyfile, "--address", g.Admin); code != 0 {
			t.Fatalf("reload: exit %d: %s", code, errOut)
		}
	}
	decisions := len(r.Rollout.Decisions)
	reload(strings.Replace(opts, "steps 10% 50% 100%", "steps 10% 40% 50% 100%", 1))
	time.Sleep(500 * time.Millisecond)
	if r := readRollout(t, g); r.Rollout.State != "waiting_approval" || len(r.Rollout.Steps) != 3 || !r.Rollout.PlanChanged || len(r.Rollout.Decisions) != decisions {
		t.Fatalf("after a reload with other steps: %s, steps %v, plan_changed %v, %d decisions (was %d)", r.Rollout.State, r.Rollout.Steps, r.Rollout.PlanChanged, len(r.Rollout.Decisions), decisions)
	}
	if out, _, _ := g.CLI(t, "rollout", "status"); !strings.Contains(out, "rollout retry' applies it") {
		t.Errorf("rollout status does not say the block changed:\n%s", out)
	}
	reload(opts)
	Eventually(t, 5*time.Second, "plan_changed cleared by the original block", func() bool { return !readRollout(t, g).Rollout.PlanChanged })

	out, stderr, code := g.CLI(t, "rollout", "status")
	if code != 0 || !strings.Contains(out, "waiting: approval for 50%") || !strings.Contains(out, "[10%]--50%(gate)--100%") {
		t.Errorf("rollout status: exit %d\n%s%s", code, out, stderr)
	}
	if out, stderr, code := g.CLI(t, "rollout", "approve", "--reason", "QA signed"); code != 0 {
		t.Fatalf("rollout approve: exit %d: %s %s", code, out, stderr)
	}
	Eventually(t, 10*time.Second, "step 50%", func() bool { return readRollout(t, g).Weight == 50 })
	r = readRollout(t, g)
	if len(r.Rollout.Approvals) != 1 || r.Rollout.Approvals[0].Step != 50 || !strings.HasPrefix(r.Rollout.Approvals[0].By, "cli ") {
		t.Errorf("approvals = %+v", r.Rollout.Approvals)
	}

	// Pause holds the step past its hold; resume lets it go on to the end.
	if code, msg := rolloutAPI(t, g, "pause", "look"); code != 200 {
		t.Fatalf("pause: %d %s", code, msg)
	}
	time.Sleep(2 * time.Second)
	if r := readRollout(t, g); r.Rollout.State != "paused" || r.Weight != 50 {
		t.Fatalf("paused rollout moved: %s at %v", r.Rollout.State, r.Weight)
	}
	if _, _, code := g.CLI(t, "rollout", "resume"); code != 0 {
		t.Fatal("rollout resume failed")
	}
	Eventually(t, 15*time.Second, "completed at 100%", func() bool {
		r := readRollout(t, g)
		return r.Rollout.State == "completed" && r.Weight == 100
	})
	Eventually(t, 10*time.Second, "on_step and on_complete webhooks", func() bool {
		return hooks.count("rollout_step") == 2 && hooks.count("rollout_complete") == 1
	})

	// Retry starts again at the first step; abort sends everyone to legacy.
	if code, msg := rolloutAPI(t, g, "retry", "again"); code != 200 {
		t.Fatalf("retry: %d %s", code, msg)
	}
	if r := readRollout(t, g); r.Rollout.State != "running" && r.Rollout.State != "waiting_approval" || r.Rollout.Step != 0 || r.Weight != 10 || len(r.Rollout.Approvals) != 0 {
		t.Fatalf("after retry: %s step %d weight %v approvals %v", r.Rollout.State, r.Rollout.Step, r.Weight, r.Rollout.Approvals)
	}
	if out, stderr, code := g.CLI(t, "rollout", "abort", "--reason", "stop"); code != 0 {
		t.Fatalf("rollout abort: exit %d: %s %s", code, out, stderr)
	}
	if r := readRollout(t, g); r.Rollout.State != "aborted" || r.Mode != "legacy" {
		t.Fatalf("after abort: %s, mode %s", r.Rollout.State, r.Mode)
	}
	if _, stderr, code := g.CLI(t, "rollout", "resume"); code == 0 || !strings.Contains(stderr, "only a paused rollout") {
		t.Errorf("CLI resume of an aborted rollout: exit %d: %s", code, stderr)
	}
	if _, stderr, code := g.CLI(t, "rollout", "promote"); code != 2 || !strings.Contains(stderr, "--reason") {
		t.Errorf("CLI promote without a reason: exit %d: %s", code, stderr)
	}
	if out, stderr, code := g.CLI(t, "rollout", "promote", "--reason", "urgent fix"); code != 0 {
		t.Fatalf("rollout promote: exit %d: %s %s", code, out, stderr)
	}
	r = readRollout(t, g)
	if r.Rollout.State != "completed" || r.Weight != 100 || r.Mode != "split" || lastDecision(r).Kind != "promote" || lastDecision(r).Reason != "urgent fix" {
		t.Fatalf("after promote: %s weight %v mode %s, decision %+v", r.Rollout.State, r.Weight, r.Mode, lastDecision(r))
	}
	var kinds []string
	for _, d := range r.Rollout.Decisions {
		kinds = append(kinds, d.Kind)
	}
	if got := strings.Join(kinds, " "); got != "start hold approve advance pause resume advance complete retry hold abort promote" && got != "start hold approve advance pause resume advance complete retry abort promote" {
		t.Errorf("decisions: %s", got)
	}
	if out, _, _ := g.CLI(t, "traffic", "status"); !strings.Contains(out, "rollout completed, step 3/3 (100%)") {
		t.Errorf("traffic status does not show the rollout:\n%s", out)
	}
	// A restart keeps the rollout where it is.
	g.Restart()
	if r := readRollout(t, g); r.Rollout.State != "completed" || r.Weight != 100 || len(r.Rollout.Decisions) != len(kinds) {
		t.Fatalf("after a restart: %s weight %v, %d decisions", r.Rollout.State, r.Weight, len(r.Rollout.Decisions))
	}
}
