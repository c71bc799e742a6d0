package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

// rolloutGateway is one gateway's handler of switch "main" on the store
// file path, with the rollout cfg, for driving the engine by hand.
func rolloutGateway(t *testing.T, path, gateway string, cfg *Rollout) *Handler {
	t.Helper()
	st, err := local.Open(path, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := &App{store: st, logger: zap.NewNop(), rt: new(appRuntime), gateway: gateway, registry: map[string]*Switch{}}
	sw := newSwitch("main")
	a.registry["main"] = sw
	h := &Handler{Name: "main", app: a, sw: sw, logger: zap.NewNop(), Rollout: cfg}
	sw.handler.Store(h)
	return h
}

// follow makes h's switch take the stored record, as the sync loop does.
func follow(t *testing.T, h *Handler) state.Switch {
	t.Helper()
	rec, _, err := state.GetSwitch(context.Background(), h.app.store, "main")
	if err != nil {
		t.Fatal(err)
	}
	h.sw.adopt(rec)
	return rec
}

// startedRolloutPair starts two gateways, gw-a and gw-b, on one bbolt
// store, with a rollout of cfg started an hour ago (at t0) and seen by both.
func startedRolloutPair(t *testing.T, cfg *Rollout) (a, b *Handler, t0 time.Time) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	a = rolloutGateway(t, path, "gw-a", cfg)
	b = rolloutGateway(t, path, "gw-b", cfg)
	t0 = time.Now().UTC().Add(-time.Hour).Round(0)
	rec := state.Switch{Name: "main", Mode: state.ModeSplit, Since: t0}
	rec.Rollout = cfg.plan()
	if _, err := rolloutControl(&rec, rolloutRequest{Action: "start"}, cfg.plan(), "test", "gw-a", t0); err != nil {
		t.Fatal(err)
	}
	putSwitch(t, a.app.store, rec)
	follow(t, a)
	follow(t, b)
	return a, b, t0
}

// TestRolloutEngine drives the engine's state machine with injected time:
// the hold, min_requests and a hook gate each hold a step and say so; two
// gateways judging the same step at once advance it exactly once; the
// last step completes; a weight moved by hand pauses the rollout.
func TestRolloutEngine(t *testing.T) {
	ctx := context.Background()
	cfg := &Rollout{Steps: []state.Weight{100, 5000, 10000}, Hold: 60 * 1e9, MinRequests: 5}
	a, b, t0 := startedRolloutPair(t, cfg)
	if a.sw.view.Load().weight != 100 || a.sw.step.Load() == nil {
		t.Fatalf("started rollout: weight %v, tally %v", a.sw.view.Load().weight, a.sw.step.Load())
	}

	var clockA, clockB stateClock
	mono0 := int64(1e12)
	at := func(h *Handler, c *stateClock, d time.Duration) string {
		h.evaluateRollout(ctx, c, t0.Add(d), mono0+int64(d))
		if v := h.sw.rollout.Load(); v != nil {
			return v.waiting
		}
		return ""
	}
	if w := at(a, &clockA, 20*time.Second); w != "waiting: hold 40s" {
		t.Errorf("at 20s: %q, want the hold", w)
	}
	if w := at(a, &clockA, 61*time.Second); w != "waiting: 0/5 requests" {
		t.Errorf("at 61s with no requests: %q", w)
	}
	// Three consolidated requests on gw-a, two on gw-b: with the local
	// store each sees only its own, so neither may advance.
	for range 3 {
		a.sw.step.Load().arms[1].Observe(time.Millisecond, false)
	}
	for range 2 {
		b.sw.step.Load().arms[1].Observe(time.Millisecond, false)
	}
	if w := at(a, &clockA, 62*time.Second); w != "waiting: 3/5 requests" {
		t.Errorf("gw-a with 3 requests: %q", w)
	}
	for range 2 {
		a.sw.step.Load().arms[1].Observe(time.Millisecond, false)
		b.sw.step.Load().arms[1].Observe(time.Millisecond, false)
		b.sw.step.Load().arms[1].Observe(time.Millisecond, false)
	}
	a.stepGates = []stepGate{func(ev *state.Evidence) string {
		if ev.Arms[armConsolidated].Requests < 5 {
			t.Errorf("gate called before min_requests was met")
		}
		return "waiting: shadow mismatch 2% over 1%"
	}}
	if w := at(a, &clockA, 63*time.Second); w != "waiting: shadow mismatch 2% over 1%" {
		t.Errorf("with a hook gate holding: %q", w)
	}
	a.stepGates = nil

	// Both judge the step at once: exactly one advances it.
	at(b, &clockB, 0) // b first sees the step now...
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); at(a, &clockA, 64*time.Second) }()
	go func() { defer wg.Done(); at(b, &clockB, 64*time.Second) }() // ...so its hold still runs
	wg.Wait()
	b.evaluateRollout(ctx, &clockB, t0.Add(64*time.Second), mono0+int64(200*time.Second))
	got := follow(t, a)
	follow(t, b)
	advances := 0
	for _, d := range got.Rollout.Decisions {
		if d.Kind == "advance" {
			advances++
			if d.Evidence == nil || d.Evidence.Arms[armConsolidated].Requests < 5 || d.From != 100 || d.To != 5000 {
				t.Errorf("advance decision %+v", d)
			}
		}
	}
	if advances != 1 || got.Rollout.Step != 1 || got.Weight != 5000 {
		t.Fatalf("after both judged step 1: %d advances, step %d, weight %v; want exactly one advance to 50%%", advances, got.Rollout.Step, got.Weight)
	}
	if a.sw.step.Load().id != got.Rollout.StepID() || a.sw.step.Load().arms[1].Counts().Requests != 0 {
		t.Error("the new step did not get a fresh tally")
	}

	// A weight moved by hand pauses the rollout.
	if _, err := a.sw.change(ctx, a.app, func(cur *state.Switch) bool {
		cur.Weight, cur.By, cur.Since = 2000, "admin", later(cur.Since)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	var clock stateClock
	a.evaluateRollout(ctx, &clock, time.Now(), mono0)
	got = follow(t, a)
	if got.Rollout.State != state.RolloutPaused || !strings.Contains(got.Rollout.Decisions[len(got.Rollout.Decisions)-1].Reason, "moved by hand") {
		t.Fatalf("after a manual weight change: %s, %+v", got.Rollout.State, got.Rollout.Decisions[len(got.Rollout.Decisions)-1])
	}
}

// TestRolloutControl checks each action against each state: what applies
// and what is refused, and with which status.
func TestRolloutControl(t *testing.T) {
	cfg := &Rollout{Steps: []state.Weight{100, 5000, 10000}, Gates: []state.Weight{5000}}
	now := time.Unix(1000, 0).UTC()
	in := func(s state.RolloutState, step int) state.Switch {
		rec := state.Switch{Name: "main", Mode: state.ModeSplit, Rollout: cfg.plan()}
		rec.Rollout.State, rec.Rollout.Step = s, step
		rec.Weight = rec.Rollout.Weight()
		return rec
	}
	for _, tc := range []struct {
		from   state.RolloutState
		step   int
		action string
		reason string
		want   state.RolloutState // "" for refused
		status int
	}{
		{state.RolloutIdle, 0, "start", "", state.RolloutRunning, 0},
		{state.RolloutRunning, 0, "start", "", "", 409},
		{state.RolloutCompleted, 2, "start", "", "", 409},
		{state.RolloutIdle, 0, "retry", "", "", 409},
		{state.RolloutAborted, 1, "retry", "", state.RolloutRunning, 0},
		{state.RolloutRunning, 1, "pause", "", state.RolloutPaused, 0},
		{state.RolloutWaitingApproval, 0, "pause", "", state.RolloutPaused, 0},
		{state.RolloutPaused, 1, "pause", "", "", 409},
		{state.RolloutPaused, 1, "resume", "", state.RolloutRunning, 0},
		{state.RolloutRunning, 1, "resume", "", "", 409},
		{state.RolloutWaitingApproval, 0, "approve", "", state.RolloutRunning, 0},
		{state.RolloutRunning, 0, "approve", "", state.RolloutRunning, 0}, // approving ahead
		{state.RolloutRunning, 1, "approve", "", "", 409},                 // 100% has no gate
		{state.RolloutRunning, 1, "abort", "", state.RolloutAborted, 0},
		{state.RolloutAborted, 1, "abort", "", "", 409},
		{state.RolloutRunning, 1, "promote", "", "", 400},
		{state.RolloutAborted, 1, "promote", "fix", state.RolloutCompleted, 0},
		{state.RolloutRunning, 1, "jump", "", "", 400},
	} {
		rec := in(tc.from, tc.step)
		before := rec.Copy()
		d, err := rolloutControl(&rec, rolloutRequest{Action: tc.action, Reason: tc.reason}, cfg.plan(), "op", "gw", now)
		name := string(tc.from) + " " + tc.action
		if tc.want == "" {
			if err == nil || apiStatus(err) != tc.status {
				t.Errorf("%s: err %v (status %d), want status %d", name, err, apiStatus(err), tc.status)
			}
			if rec.Rollout.State != before.Rollout.State || len(rec.Rollout.Decisions) != 0 {
				t.Errorf("%s: a refused action changed the record", name)
			}
			continue
		}
		if err != nil || rec.Rollout.State != tc.want || d.Kind != tc.action {
			t.Errorf("%s: %v, state %s, decision %+v; want %s", name, err, rec.Rollout.State, d, tc.want)
			continue
		}
		switch tc.action {
		case "start", "retry":
			if rec.Rollout.Step != 0 || rec.Weight != 100 || !rec.Rollout.StepStarted.Equal(now) {
				t.Errorf("%s: step %d weight %v", name, rec.Rollout.Step, rec.Weight)
			}
		case "abort":
			if rec.Mode != state.ModeLegacy {
				t.Errorf("%s: mode %s, want legacy", name, rec.Mode)
			}
		case "promote":
			if rec.Weight != state.WeightMax || rec.Mode != state.ModeSplit {
				t.Errorf("%s: weight %v mode %s", name, rec.Weight, rec.Mode)
			}
		case "approve":
			if len(rec.Rollout.Approvals) != 1 || rec.Rollout.Approvals[0].Step != 5000 {
				t.Errorf("%s: approvals %+v", name, rec.Rollout.Approvals)
			}
		}
	}
}

func apiStatus(err error) int {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae.HTTPStatus
	}
	return 0
}

// BenchmarkServeHTTPRolloutStep is a split request while a rollout runs:
// the answer is counted in the step's tally too. It must allocate nothing.
func BenchmarkServeHTTPRolloutStep(b *testing.B) {
	ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
	h := testHandler(b, state.ModeSplit, 50, ok, ok)
	h.sw.step.Store(&stepTally{id: "0@1"})
	r := request("GET", "")
	_, val := h.signer.Load().issue()
	r.Header.Set("Cookie", "sb_user="+val)
	w := discardWriter{h: http.Header{}}
	h.ServeHTTP(w, r, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		h.ServeHTTP(w, r, nil)
	}
	if st := h.sw.step.Load(); st.arms[0].Counts().Requests+st.arms[1].Counts().Requests == 0 {
		b.Fatal("the step's tally counted nothing")
	}
}

// TestRolloutPlanChange checks how a changed rollout block reaches the
// record: an idle rollout takes it at once; a running one keeps its plan,
// marked plan_changed, until a retry applies the new one.
func TestRolloutPlanChange(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	oldCfg := &Rollout{Steps: []state.Weight{100, 10000}}
	newCfg := &Rollout{Steps: []state.Weight{50, 2500, 10000}, Hold: 1e9}
	h := rolloutGateway(t, path, "gw-a", oldCfg)
	putSwitch(t, h.app.store, state.Switch{Name: "main", Mode: state.ModeSplit, Since: time.Now().UTC()})
	follow(t, h)
	if !h.syncPlan(ctx) {
		t.Fatal("syncPlan did not settle")
	}
	if rec := follow(t, h); rec.Rollout == nil || rec.Rollout.State != state.RolloutIdle || len(rec.Rollout.Steps) != 2 {
		t.Fatalf("first config: %+v", rec.Rollout)
	}
	// Idle: the new plan replaces the old.
	h.Rollout = newCfg
	h.syncPlan(ctx)
	if rec := follow(t, h); len(rec.Rollout.Steps) != 3 || rec.Rollout.PlanChanged || rec.Rollout.Hold != "1s" {
		t.Fatalf("idle rollout after a config change: %+v", rec.Rollout)
	}
	// Running: the plan stays, marked changed, until a retry.
	rec, _ := h.sw.Record()
	if _, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		_, err := rolloutControl(cur, rolloutRequest{Action: "start"}, newCfg.plan(), "op", "gw-a", time.Now().UTC())
		return err == nil
	}); err != nil || rec.Rollout == nil {
		t.Fatal(err)
	}
	h.Rollout = oldCfg
	h.syncPlan(ctx)
	got := follow(t, h)
	if got.Rollout.State != state.RolloutRunning || len(got.Rollout.Steps) != 3 || !got.Rollout.PlanChanged || got.Weight != 50 {
		t.Fatalf("running rollout after a config change: %s, steps %v, plan_changed %v, weight %v", got.Rollout.State, got.Rollout.Steps, got.Rollout.PlanChanged, got.Weight)
	}
	if _, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		_, err := rolloutControl(cur, rolloutRequest{Action: "retry"}, oldCfg.plan(), "op", "gw-a", time.Now().UTC())
		return err == nil
	}); err != nil {
		t.Fatal(err)
	}
	got = follow(t, h)
	if len(got.Rollout.Steps) != 2 || got.Rollout.PlanChanged || got.Weight != 100 || got.Rollout.Step != 0 {
		t.Fatalf("after retry: steps %v, plan_changed %v, weight %v, step %d", got.Rollout.Steps, got.Rollout.PlanChanged, got.Weight, got.Rollout.Step)
	}
}

// TestStatsWithoutRollout: a switch with no rollout block still publishes
// this gateway's counters, so the store holds the fleet's evidence of
// every switch.
func TestStatsWithoutRollout(t *testing.T) {
	h := rolloutGateway(t, filepath.Join(t.TempDir(), "state.db"), "gw-a", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.statsLoop(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "gw-a's stats in the store", func() bool {
		got, err := h.app.store.ListStats(context.Background(), "main")
		return err == nil && got["gw-a"] != nil
	})
}
