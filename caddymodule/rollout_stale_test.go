package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/leanvibe/switchback/state"
)

// advancedOnOne starts a rollout of cfg on two gateways and lets gw-a
// advance it to its second step, which gw-b, not following the store
// since, has not seen.
func advancedOnOne(t *testing.T, cfg *Rollout) (a, b *Handler) {
	t.Helper()
	a, b, _ = startedRolloutPair(t, cfg)
	var clock stateClock
	a.evaluateRollout(context.Background(), &clock, time.Now(), 1e12)
	if got := follow(t, a); got.Rollout.Step != 1 {
		t.Fatalf("gw-a did not advance: step %d", got.Rollout.Step)
	}
	return a, b
}

// TestRolloutActionOnStaleView: an operator's action reaches a gateway
// that has not yet seen the step another gateway just entered (its watch
// lags). The action was judged on the step before, so it must not be
// written over the new one: it wrote the stale record, and the fleet went
// back a step with the advance gone from the record.
func TestRolloutActionOnStaleView(t *testing.T) {
	ctx := context.Background()
	cfg := &Rollout{Steps: []state.Weight{100, 5000, 10000}, Hold: caddy.Duration(time.Minute), MinRequests: -1}
	for _, action := range []string{"pause", "abort", "promote", "retry"} {
		a, b := advancedOnOne(t, cfg)
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/switchback/switches/main/rollout", strings.NewReader(`{"action": "`+action+`", "reason": "stale"}`))
		err := b.app.handleRollout(w, r, "main")
		got, _, _ := state.GetSwitch(ctx, a.app.store, "main")
		if got.Rollout.Step != 1 || got.Weight != 5000 || got.Rollout.State != state.RolloutRunning {
			t.Fatalf("%s through the stale gateway (%v) put the fleet at step %d, %s%%, %s", action, err, got.Rollout.Step, got.Weight, got.Rollout.State)
		}
		if apiStatus(err) != http.StatusConflict || !strings.Contains(err.Error(), "changed meanwhile") {
			t.Errorf("%s through the stale gateway: %v, want a 409 saying the rollout changed", action, err)
		}
		if b.sw.rec.Rollout.Step != 1 {
			t.Errorf("%s: the stale gateway did not take the store's record", action)
		}
		// Judged again on what it now sees, the action applies.
		w = httptest.NewRecorder()
		r = httptest.NewRequest(http.MethodPost, "/switchback/switches/main/rollout", strings.NewReader(`{"action": "`+action+`", "reason": "fresh"}`))
		if err := b.app.handleRollout(w, r, "main"); err != nil {
			t.Errorf("%s on the fresh view: %v", action, err)
		}
	}
}

// TestWeightChangeOnStaleView: a weight set by hand through a gateway
// that has not yet seen another's advance is applied to the stored
// record, not written as made on the stale one: the advance stays in the
// record (it was undone, and a resume then went back a step).
func TestWeightChangeOnStaleView(t *testing.T) {
	ctx := context.Background()
	cfg := &Rollout{Steps: []state.Weight{100, 5000, 10000}, Hold: caddy.Duration(time.Minute), MinRequests: -1}
	a, b := advancedOnOne(t, cfg)
	if _, err := b.sw.change(ctx, b.app, func(cur *state.Switch) bool {
		cur.Weight, cur.By, cur.Since = 3000, "admin", later(cur.Since)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	got, _, _ := state.GetSwitch(ctx, a.app.store, "main")
	if got.Weight != 3000 || got.Rollout.Step != 1 || got.Rollout.Decisions[len(got.Rollout.Decisions)-1].Kind != "advance" {
		t.Fatalf("weight by hand through the stale gateway: weight %s, step %d, last decision %s; want 30, step 1, the advance kept",
			got.Weight, got.Rollout.Step, got.Rollout.Decisions[len(got.Rollout.Decisions)-1].Kind)
	}
	if b.sw.rec.Rollout.Step != 1 || b.sw.rec.Weight != 3000 {
		t.Errorf("the stale gateway holds step %d at %s%%", b.sw.rec.Rollout.Step, b.sw.rec.Weight)
	}
}
