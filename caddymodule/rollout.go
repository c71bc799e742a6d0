package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

// Rollout walks a switch's weight through steps while consolidated proves
// itself, fleet-wide. A step is left for the next when its hold has
// passed, the fleet has sent it MinRequests consolidated requests, no
// gate holds it (a manual gate on the next step, a hook such as shadow's
// max_mismatch), and no trip rule fired; any trip aborts the rollout. The
// next step is taken with a CAS on the switch record, so exactly one
// gateway advances the fleet, and that gateway runs OnStep (or
// OnComplete).
type Rollout struct {
	// Steps are the weights to walk through, strictly increasing, each in
	// (0%, 100%], e.g. [1, 5, 25, 50, 100]. Required.
	Steps []state.Weight `json:"steps"`

	// Hold is the least time at each step (default 5m).
	Hold caddy.Duration `json:"hold,omitempty"`

	// MinRequests is the least number of consolidated requests each step
	// must see, summed over the fleet, before it is left (default 500).
	// Zero means the default; -1 means none are needed.
	MinRequests int `json:"min_requests,omitempty"`

	// Gates are steps that wait for a manual approval before they are
	// entered.
	Gates []state.Weight `json:"gates,omitempty"`

	// OnStep runs when the fleet enters a step after the first,
	// OnComplete when the rollout completes (the last step held, or a
	// promote), and OnAbort when it is aborted (a trip or an operator).
	// They run once for the fleet, on the gateway whose write won, under
	// the config's context.
	OnStep     []Action `json:"on_step,omitempty"`
	OnComplete []Action `json:"on_complete,omitempty"`
	OnAbort    []Action `json:"on_abort,omitempty"`
}

// Defaults of a rollout.
const (
	DefaultRolloutHold        = 5 * time.Minute
	DefaultRolloutMinRequests = 500
)

// rolloutEvery is how often the engine judges the current step, and
// statsEvery how often a gateway publishes its counters (the issue asks
// for at least every 2s).
const (
	rolloutEvery = 200 * time.Millisecond
	statsEvery   = time.Second
)

func (r *Rollout) check() error {
	if r == nil {
		return nil
	}
	if err := state.CheckSteps(r.Steps); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if r.Hold < 0 {
		return fmt.Errorf("rollout: hold %s must not be negative", time.Duration(r.Hold))
	}
	if r.MinRequests < -1 {
		return fmt.Errorf("rollout: min_requests %d must not be negative", r.MinRequests)
	}
	for i, g := range r.Gates {
		j := slices.Index(r.Steps, g)
		switch {
		case j < 0:
			return fmt.Errorf("rollout: gate %s%% is not one of the steps", g)
		case j == 0:
			return fmt.Errorf("rollout: gate %s%% is the first step, which start itself approves", g)
		case slices.Contains(r.Gates[:i], g):
			return fmt.Errorf("rollout: gate %s%% is given twice", g)
		}
	}
	for _, list := range [][]Action{r.OnStep, r.OnComplete, r.OnAbort} {
		for _, a := range list {
			if err := a.check(); err != nil {
				return fmt.Errorf("rollout: %w", err)
			}
		}
	}
	return nil
}

// plan returns the config's plan as a rollout record in state idle.
func (r *Rollout) plan() *state.Rollout {
	hold := time.Duration(r.Hold)
	if hold == 0 {
		hold = DefaultRolloutHold
	}
	minReq := r.MinRequests
	switch minReq {
	case 0:
		minReq = DefaultRolloutMinRequests
	case -1:
		minReq = 0
	}
	p := &state.Rollout{
		State: state.RolloutIdle, Steps: slices.Clone(r.Steps), Hold: shortDuration(hold),
		MinRequests: minReq, Gates: slices.Clone(r.Gates),
	}
	p.Plan = planPrint(p)
	return p
}

// shortDuration formats d as people write it: "5m", "1h30m", "500ms".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// planPrint fingerprints a rollout's plan.
func planPrint(r *state.Rollout) string {
	return fmt.Sprintf("steps=%v hold=%s min_requests=%d gates=%v", r.Steps, r.Hold, r.MinRequests, r.Gates)
}

// holdOf is a rollout record's hold.
func holdOf(r *state.Rollout) time.Duration {
	d, _ := time.ParseDuration(r.Hold) // checked when decoded
	return d
}

// stepTally counts each arm's answers at one step of a rollout. The
// request path adds to it without a lock; a new step gets a new tally.
type stepTally struct {
	id   string // state.Rollout.StepID
	arms [2]health.Tally
}

// syncStep gives the switch a fresh tally when its record enters a new
// step, and none when no rollout is under way. Callers hold sw.mu.
func (sw *Switch) syncStep(ro *state.Rollout) {
	if ro == nil || !ro.State.Active() {
		if sw.step.Load() != nil {
			sw.step.Store(nil)
		}
		return
	}
	if cur := sw.step.Load(); cur == nil || cur.id != ro.StepID() {
		sw.step.Store(&stepTally{id: ro.StepID()})
	}
}

// ShadowStepStats are the shadow comparison's counts at the current step,
// published with the switch's stats so a step can be gated on them
// fleet-wide. Routes maps a route ("GET /items/:id") to [compared,
// mismatched].
type ShadowStepStats struct {
	Compared   uint64               `json:"compared"`
	Mismatched uint64               `json:"mismatched"`
	Routes     map[string][2]uint64 `json:"routes,omitempty"`
}

// stepGate is a condition on leaving a step, beside the hold,
// min_requests and the manual gates. It is given the fleet's evidence at
// the step and returns what it waits for ("waiting: mismatch 2.1% over
// 1%"), or "" when the step may be left.
//
// Hooks for other parts of the switch (shadow's max_mismatch):
//   - a handler's Provision appends to h.stepGates; the handler's engine
//     loop calls them on every evaluation, from one goroutine, so a gate
//     needs no lock of its own;
//   - the switch's shadowCounts, set with sw.setShadowCounts at commit
//     (nil to remove), returns this gateway's shadow counts for the step
//     named by its argument (a state.Rollout.StepID: counts from another
//     step must not be returned). They are published in the stats record
//     ("shadow": {"step": ...}) and summed into Evidence.Shadow.
type stepGate func(ev *state.Evidence) (waiting string)

// setShadowCounts registers the function that reports shadow counts at
// a step; nil removes it.
func (sw *Switch) setShadowCounts(fn func(stepID string) *ShadowStepStats) {
	if fn == nil {
		sw.shadowCounts.Store(nil)
		return
	}
	sw.shadowCounts.Store(&fn)
}

// statsRecord is what a gateway publishes at stats/<switch>/<gateway>:
// each arm's counts over its trip window and at the rollout's current
// step (named by Step, so counts of an earlier step are never summed
// with this one's).
type statsRecord struct {
	Gateway string                   `json:"gateway"`
	At      time.Time                `json:"at"`
	Window  map[string]health.Counts `json:"window"`
	Step    string                   `json:"step,omitempty"`
	AtStep  map[string]health.Counts `json:"step_counts,omitempty"`
	Shadow  *shadowStats             `json:"shadow,omitempty"`
}

// shadowStats is the shadow part of a stats record.
type shadowStats struct {
	Step *ShadowStepStats `json:"step,omitempty"`
}

// stats returns this gateway's stats record of the switch now.
func (sw *Switch) stats(gateway string) statsRecord {
	rec := statsRecord{Gateway: gateway, At: time.Now().UTC(), Window: map[string]health.Counts{}}
	if w := sw.win.Load(); w != nil {
		now := health.Now()
		for _, arm := range []string{armLegacy, armConsolidated} {
			rec.Window[arm] = w.arm(arm).Counts(now)
		}
	}
	if st := sw.step.Load(); st != nil {
		rec.Step = st.id
		rec.AtStep = map[string]health.Counts{
			armLegacy:       st.arms[0].Counts(),
			armConsolidated: st.arms[1].Counts(),
		}
		if fn := sw.shadowCounts.Load(); fn != nil {
			if s := (*fn)(st.id); s != nil {
				rec.Shadow = &shadowStats{Step: s}
			}
		}
	}
	return rec
}

// publishStats writes this gateway's stats record to the store.
func (h *Handler) publishStats(ctx context.Context) error {
	raw, err := json.Marshal(h.sw.stats(h.app.gateway))
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return h.app.store.PublishStats(pctx, h.Name, h.app.gateway, raw)
}

// fleetEvidence sums every live gateway's counts at the rollout's current
// step, this gateway's own taken fresh from memory. With the local store
// it is this gateway's alone.
func (h *Handler) fleetEvidence(ctx context.Context, ro *state.Rollout) (*state.Evidence, error) {
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	raw, err := h.app.store.ListStats(lctx, h.Name)
	if err != nil {
		return nil, err
	}
	recs := make(map[string]statsRecord, len(raw)+1)
	for gw, b := range raw {
		var r statsRecord
		if json.Unmarshal(b, &r) != nil {
			h.logger.Warn("unreadable stats record ignored", zap.String("gateway", gw))
			continue
		}
		recs[gw] = r
	}
	recs[h.app.gateway] = h.sw.stats(h.app.gateway)
	id := ro.StepID()
	var sum [2]health.Counts
	var shadow *state.ShadowEvidence
	routes := map[string][2]uint64{}
	var gateways []string
	for gw, r := range recs {
		if r.Step != id {
			continue // another step's counts, or none
		}
		bad := false
		for _, arm := range []string{armLegacy, armConsolidated} {
			if r.AtStep[arm].Check() != nil {
				bad = true
			}
		}
		if bad {
			h.logger.Warn("stats record with impossible counts ignored", zap.String("gateway", gw))
			continue
		}
		gateways = append(gateways, gw)
		sum[0].Add(r.AtStep[armLegacy])
		sum[1].Add(r.AtStep[armConsolidated])
		if r.Shadow != nil && r.Shadow.Step != nil {
			if shadow == nil {
				shadow = &state.ShadowEvidence{}
			}
			shadow.Compared += r.Shadow.Step.Compared
			shadow.Mismatched += r.Shadow.Step.Mismatched
			for route, c := range r.Shadow.Step.Routes {
				t := routes[route]
				routes[route] = [2]uint64{t[0] + c[0], t[1] + c[1]}
			}
		}
	}
	sort.Strings(gateways)
	ev := &state.Evidence{Arms: map[string]state.ArmEvidence{
		armLegacy:       armEvidence(sum[0]),
		armConsolidated: armEvidence(sum[1]),
	}, Gateways: gateways}
	if shadow != nil {
		if shadow.Compared > 0 {
			shadow.MismatchRate = float64(shadow.Mismatched) / float64(shadow.Compared)
		}
		worst := 0.0
		for route, c := range routes {
			if c[0] > 0 && c[1] > 0 {
				if r := float64(c[1]) / float64(c[0]); r > worst || (r == worst && route < shadow.WorstRoute) {
					worst, shadow.WorstRoute = r, route
				}
			}
		}
		ev.Shadow = shadow
	}
	return ev, nil
}

func armEvidence(c health.Counts) state.ArmEvidence {
	return state.ArmEvidence{
		Requests: c.Requests, Failures: c.Failures, ErrorRate: c.ErrorRate(),
		P50: ms(c.Quantile(0.5)), P99: ms(c.Quantile(0.99)),
	}
}

// windowEvidence is this gateway's own window, the evidence of a trip
// (trips stay local and immediate).
func (h *Handler) windowEvidence(rule, threshold string) *state.Evidence {
	ev := &state.Evidence{Arms: map[string]state.ArmEvidence{}, Gateways: []string{h.app.gateway}, Rule: rule, Threshold: threshold}
	if w := h.sw.win.Load(); w != nil {
		now := health.Now()
		for _, arm := range []string{armLegacy, armConsolidated} {
			ev.Arms[arm] = armEvidence(w.arm(arm).Counts(now))
		}
	}
	return ev
}

// rolloutView is what the engine last saw of the current step, for the
// admin API and the dashboard: what it waits for, on what evidence.
type rolloutView struct {
	step     string
	waiting  string
	evidence *state.Evidence
}

// statsLoop publishes this gateway's counters of a switch that has no
// rollout block, every statsEvery, for the config's lifetime: the fleet's
// evidence of every switch is in the store, rollout or not.
func (h *Handler) statsLoop(ctx context.Context) {
	tick := time.NewTicker(statsEvery)
	defer tick.Stop()
	var publishErr string
	for {
		h.publishStatsLogged(ctx, &publishErr)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// publishStatsLogged publishes this gateway's stats and logs a failure
// once, until it changes; last holds the failure logged.
func (h *Handler) publishStatsLogged(ctx context.Context, last *string) {
	err := h.publishStats(ctx)
	switch {
	case err != nil && err.Error() != *last && ctx.Err() == nil:
		h.logger.Warn("stats not published; the fleet's evidence lacks this gateway", zap.Error(err))
		*last = err.Error()
	case err == nil:
		*last = ""
	}
}

// rolloutLoop is a switch's rollout engine, on every gateway of the
// fleet, for the config's lifetime. It publishes this gateway's counters
// and, while the rollout runs, judges the current step on the fleet's.
func (h *Handler) rolloutLoop(ctx context.Context) {
	timer := time.NewTimer(rolloutEvery)
	defer timer.Stop()
	var clock stateClock
	var published time.Time
	planned := false
	var publishErr string
	for {
		if !planned {
			planned = h.syncPlan(ctx)
		}
		if time.Since(published) >= statsEvery {
			published = time.Now()
			h.publishStatsLogged(ctx, &publishErr)
		}
		// A hold that ends before the next tick is judged when it ends.
		wait := rolloutEvery
		if left := h.evaluateRollout(ctx, &clock, time.Now(), health.Now()); left > 0 && left < wait {
			wait = left + time.Millisecond
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// syncPlan puts the config's plan in the switch record: a switch that
// had no rollout gets one, idle; a rollout not under way takes a changed
// plan; a rollout under way keeps its plan, marked PlanChanged, until a
// retry. It reports whether the record is settled (written, or the
// change held pending for the store).
func (h *Handler) syncPlan(ctx context.Context) bool {
	plan := h.Rollout.plan()
	_, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		ro := cur.Rollout
		switch {
		case ro == nil:
			cur.Rollout = plan.Clone()
		case ro.Plan == plan.Plan:
			if !ro.PlanChanged {
				return false
			}
			ro.PlanChanged = false
		case ro.State.Active():
			if ro.PlanChanged {
				return false
			}
			ro.PlanChanged = true
			h.logger.Warn("rollout block changed while the rollout runs: it keeps its plan until a retry", zap.String("running", ro.Plan), zap.String("config", plan.Plan))
		default:
			n := plan.Clone()
			n.State, n.Decisions, n.Approvals = ro.State, ro.Decisions, ro.Approvals
			n.Step = min(ro.Step, len(n.Steps)-1)
			n.StepStarted = ro.StepStarted
			cur.Rollout = n
		}
		cur.Since = later(cur.Since)
		return true
	})
	return err == nil || h.sw.pendingNow()
}

// pauseOrphanRollout pauses a rollout that the record says is running,
// or waiting for an approval, when the config has no rollout block: no
// engine walks it any more, and it must not say "running" for ever. It
// stays where it is, at its weight; adding the block back and resuming
// walks it on, abort ends it.
func (h *Handler) pauseOrphanRollout(ctx context.Context) {
	const reason = "the config has no rollout block: paused where it is (add the block back and resume, or abort)"
	var d state.Decision
	rec, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		ro := cur.Rollout
		if ro == nil || (ro.State != state.RolloutRunning && ro.State != state.RolloutWaitingApproval) {
			return false
		}
		now := later(cur.Since)
		ro.State = state.RolloutPaused
		d = state.Decision{Kind: "pause", At: now, By: "config", Gateway: h.app.gateway, Reason: reason, From: ro.Weight(), To: cur.Weight, Step: ro.Step}
		ro.Decide(d)
		cur.Reason, cur.By, cur.Gateway, cur.Since = "rollout paused: "+reason, "config", h.app.gateway, now
		cur.Record(state.Event{Kind: "rollout_pause", Mode: cur.Mode, Weight: cur.Weight, Reason: reason, By: "config", Gateway: h.app.gateway, At: now})
		return true
	})
	if d.Kind == "" || (err != nil && !errors.Is(err, state.ErrUnavailable)) {
		return
	}
	h.rolloutDecided(rec, d)
}

// pendingNow says whether the switch holds a change the store has not
// taken.
func (sw *Switch) pendingNow() bool {
	_, pending := sw.Record()
	return pending
}

// evaluateRollout judges the current step once: it records what the step
// waits for, and advances (or completes) the rollout when nothing does.
// It returns how much of the step's hold is left, 0 when none is.
func (h *Handler) evaluateRollout(ctx context.Context, clock *stateClock, wall time.Time, mono int64) (holdLeft time.Duration) {
	rec, pending := h.sw.Record()
	ro := rec.Rollout
	if ro == nil || ro.State != state.RolloutRunning {
		h.sw.rollout.Store(nil)
		return 0
	}
	if pending || rec.Tripped {
		return 0 // a local change (a trip) is on its way to the store first
	}
	if rec.Mode != state.ModeSplit || rec.Weight != ro.Weight() {
		h.rolloutWrite(ctx, ro, state.RolloutRunning, "pause", func(cur *state.Switch, ro *state.Rollout, d *state.Decision) {
			ro.State = state.RolloutPaused
			d.Reason = fmt.Sprintf("the switch was moved by hand to %s at %s%% (by %s), off the step's %s%%: paused", cur.Mode, cur.Weight, cur.By, ro.Weight())
			cur.Reason = "rollout paused: " + d.Reason
		})
		return 0
	}
	ev, err := h.fleetEvidence(ctx, ro)
	if err != nil {
		h.sw.rollout.Store(&rolloutView{step: ro.StepID(), waiting: "waiting: the fleet's evidence (" + err.Error() + ")"})
		return 0
	}
	age := clock.age(ro.StepStarted, stepStampWall(ro, h.app.gateway, wall), mono)
	holdLeft = max(holdOf(ro)-age, 0)
	waiting, approval := h.stepWaiting(ro, ev, age)
	h.sw.rollout.Store(&rolloutView{step: ro.StepID(), waiting: waiting, evidence: ev})
	switch {
	case approval:
		h.rolloutWrite(ctx, ro, state.RolloutRunning, "hold", func(cur *state.Switch, ro *state.Rollout, d *state.Decision) {
			ro.State = state.RolloutWaitingApproval
			d.Reason, d.Evidence = waiting, ev
			cur.Reason = "rollout " + waiting
		})
	case waiting != "":
	case ro.Step == len(ro.Steps)-1:
		h.rolloutWrite(ctx, ro, state.RolloutRunning, "complete", func(cur *state.Switch, ro *state.Rollout, d *state.Decision) {
			ro.State = state.RolloutCompleted
			d.Evidence = ev
			d.Reason = fmt.Sprintf("last step %s%% held %s with %d consolidated requests", ro.Weight(), roundAge(age), ev.Arms[armConsolidated].Requests)
			cur.Reason = "rollout complete: " + d.Reason
		})
	default:
		h.rolloutWrite(ctx, ro, state.RolloutRunning, "advance", func(cur *state.Switch, ro *state.Rollout, d *state.Decision) {
			d.Evidence = ev
			d.Reason = fmt.Sprintf("step %s%% held %s with %d consolidated requests (%.2f%% failed)", ro.Weight(), roundAge(age),
				ev.Arms[armConsolidated].Requests, ev.Arms[armConsolidated].ErrorRate*100)
			ro.Step++
			ro.StepStarted = d.At
			d.To = ro.Weight()
			cur.Weight = ro.Weight()
			cur.Reason = fmt.Sprintf("rollout step %d/%d: %s%%", ro.Step+1, len(ro.Steps), ro.Weight())
		})
	}
	return holdLeft
}

// stepStampWall is the wall time from which a gateway judges, at first sight,
// how long the current step has run. The step's start is stamped by the
// clock of the gateway that entered it; another gateway's clock may be
// behind or ahead of that one, and one whose clock runs behind would stamp
// a step as begun long ago, so the rest of the fleet would skip its hold.
// So only the gateway that entered the step trusts the stamp (a restart
// keeps its hold); any other times the step from when it first saw it, on
// its monotonic clock: a gateway that is up when the step begins sees it
// within the watch's delay, and one that starts mid-step waits a whole
// hold, which is late but never early.
func stepStampWall(ro *state.Rollout, gateway string, wall time.Time) time.Time {
	for i := len(ro.Decisions) - 1; i >= 0; i-- {
		if d := ro.Decisions[i]; d.At.Equal(ro.StepStarted) {
			if d.Gateway == gateway {
				return wall
			}
			break
		}
	}
	return ro.StepStarted // age 0 at first sight
}

func roundAge(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

// stepWaiting says what the current step waits for, first unmet first:
// its hold, its min_requests, a hook's gate, both arms unhealthy (as this
// gateway judges), then an approval of the next step (approval is then true: everything else is met).
func (h *Handler) stepWaiting(ro *state.Rollout, ev *state.Evidence, age time.Duration) (waiting string, approval bool) {
	if hold := holdOf(ro); age < hold {
		left := (hold - age).Round(time.Second)
		if hold-age < time.Second {
			left = (hold - age).Round(10 * time.Millisecond)
		}
		return "waiting: hold " + left.String(), false
	}
	if n := ev.Arms[armConsolidated].Requests; n < uint64(ro.MinRequests) {
		return fmt.Sprintf("waiting: %d/%d requests", n, ro.MinRequests), false
	}
	for _, g := range h.stepGates {
		if w := g(ev); w != "" {
			return w, false
		}
	}
	if h.sw.both.Load() {
		// The relative rules hold while both arms fail alike; more traffic
		// to consolidated proves nothing then.
		return "waiting: both arms unhealthy", false
	}
	if gated, approved := ro.Gated(ro.Step + 1); gated && !approved {
		return fmt.Sprintf("waiting: approval for %s%%", ro.Steps[ro.Step+1]), true
	}
	return "", false
}

// rolloutWrite makes one decision of the engine with a CAS on the switch
// record, straight in the store: it applies only if the record is still
// at the step (and in the state) this gateway judged, so of the gateways
// that judge a step alike, exactly one writes it. That one logs it,
// counts it, emits its event and runs its actions.
func (h *Handler) rolloutWrite(ctx context.Context, seen *state.Rollout, want state.RolloutState, kind string, fn func(cur *state.Switch, ro *state.Rollout, d *state.Decision)) {
	id := seen.StepID()
	var d state.Decision
	won := false
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	written, err := state.UpdateSwitch(wctx, h.app.store, h.Name, func(cur state.Switch, exists bool) (state.Switch, bool) {
		won = false
		if !exists || cur.Rollout == nil || cur.Rollout.StepID() != id || cur.Rollout.State != want || cur.Tripped {
			return cur, false
		}
		// The engine pauses a switch moved off its step by hand, and
		// decides anything else only on a switch still at its step.
		if onStep := cur.Mode == state.ModeSplit && cur.Weight == cur.Rollout.Weight(); onStep == (kind == "pause") {
			return cur, false
		}
		n := cur.Copy()
		now := later(cur.Since)
		d = state.Decision{Kind: kind, At: now, By: "rollout", Gateway: h.app.gateway, From: n.Rollout.Weight(), To: n.Rollout.Weight(), Step: n.Rollout.Step}
		fn(&n, n.Rollout, &d)
		n.Rollout.Decide(d)
		n.Since, n.By, n.Gateway = now, "rollout", h.app.gateway
		n.Record(state.Event{Kind: "rollout_" + kind, Mode: n.Mode, Weight: n.Weight, Reason: d.Reason, By: n.By, Gateway: h.app.gateway, At: now})
		won = true
		return n, true
	})
	if err != nil {
		if ctx.Err() == nil {
			h.logger.Warn("rollout decision not written", zap.String("decision", kind), zap.Error(err))
		}
		return
	}
	if !won {
		return // another gateway decided first, or the rollout moved on
	}
	h.app.storeOK()
	h.sw.mu.Lock()
	if !h.sw.pending && !h.sw.rec.Supersedes(written) {
		h.sw.applyLocked(written, false)
	}
	h.sw.mu.Unlock()
	h.app.cache.touch()
	h.rolloutDecided(written, d)
}

// rolloutDecided logs, counts and announces a decision this gateway
// wrote, and runs the rollout's actions for it.
func (h *Handler) rolloutDecided(rec state.Switch, d state.Decision) {
	h.sw.metrics.rolloutDecision(h.Name, d.Kind, d.Rule).Inc()
	fields := []zap.Field{zap.String("decision", d.Kind), zap.Stringer("from", d.From), zap.Stringer("to", d.To), zap.String("reason", d.Reason), zap.String("by", d.By)}
	if d.Rule != "" {
		fields = append(fields, zap.String("rule", d.Rule))
	}
	if d.Evidence != nil {
		fields = append(fields, zap.Any("evidence", d.Evidence))
	}
	if d.Kind == "abort" || d.Kind == "trip" {
		h.logger.Error("rollout aborted", fields...)
	} else {
		h.logger.Info("rollout decision", fields...)
	}
	event := "switchback.rollout_" + d.Kind
	var actions []Action
	list := ""
	cfg := h.Rollout
	if cfg == nil {
		cfg = &Rollout{} // the record has a rollout, this config none: no actions
	}
	switch d.Kind {
	case "advance":
		event, actions, list = "switchback.rollout_step", cfg.OnStep, "on_step"
	case "complete", "promote":
		actions, list = cfg.OnComplete, "on_complete"
		if d.Kind == "promote" {
			event = "switchback.rollout_complete"
		}
	case "abort", "trip":
		event, actions, list = "switchback.rollout_abort", cfg.OnAbort, "on_abort"
	}
	data := map[string]any{
		"event": strings.TrimPrefix(event, "switchback."), "switch": h.Name, "decision": d.Kind, "reason": d.Reason,
		"rule": d.Rule, "gateway": h.app.gateway, "by": d.By, "from": d.From.Percent(), "to": d.To.Percent(),
		"step": d.Step, "weight": rec.Weight.Percent(), "evidence": d.Evidence,
	}
	h.app.emit(event, data)
	if len(actions) > 0 {
		goTask(h.logger, taskActions, func() { h.runActions(h.ctx, list, actions, data) })
	}
}

// abortOnTrip aborts a rollout under way in a trip's change of the
// record: the record says which step was aborted, by which rule, on what
// evidence. It returns the decision, or false when no rollout was under
// way.
func abortOnTrip(cur *state.Switch, v health.Verdict, ev *state.Evidence, gateway string, now time.Time) (state.Decision, bool) {
	ro := cur.Rollout
	if ro == nil || !ro.State.Active() {
		return state.Decision{}, false
	}
	ro.State = state.RolloutAborted
	d := state.Decision{
		Kind: "trip", At: now, By: "trip " + v.Rule, Gateway: gateway, From: ro.Weight(), To: 0, Step: ro.Step,
		Rule: v.Rule, Reason: fmt.Sprintf("step %d/%d (%s%%) aborted: %s", ro.Step+1, len(ro.Steps), ro.Weight(), v.Reason), Evidence: ev,
	}
	ro.Decide(d)
	return d, true
}

// rolloutMetrics are a switch's rollout series.
type rolloutMetrics struct {
	mu        sync.Mutex
	decisions map[[2]string]*metrics.Counter // by kind and rule
}

// addRolloutMetrics registers the rollout's gauges of a switch.
func (m *switchMetrics) addRolloutMetrics(sw *Switch) {
	sl := fmt.Sprintf(`{switch=%q}`, sw.name)
	for _, st := range []state.RolloutState{state.RolloutIdle, state.RolloutRunning, state.RolloutPaused, state.RolloutWaitingApproval, state.RolloutAborted, state.RolloutCompleted} {
		m.set.NewGauge(fmt.Sprintf(`switchback_rollout_state{switch=%q,state=%q}`, sw.name, st), func() float64 {
			rec, _ := sw.Record()
			return b2f(rec.Rollout != nil && rec.Rollout.State == st)
		})
	}
	m.set.NewGauge("switchback_rollout_step"+sl, func() float64 {
		rec, _ := sw.Record()
		if rec.Rollout == nil {
			return -1
		}
		return float64(rec.Rollout.Step)
	})
	m.set.NewGauge("switchback_rollout_step_weight"+sl, func() float64 {
		rec, _ := sw.Record()
		if rec.Rollout == nil {
			return 0
		}
		return rec.Rollout.Weight().Percent()
	})
	m.set.NewGauge("switchback_rollout_step_seconds"+sl, func() float64 {
		rec, _ := sw.Record()
		if rec.Rollout == nil || !rec.Rollout.State.Active() || rec.Rollout.StepStarted.IsZero() {
			return 0
		}
		return max(time.Since(rec.Rollout.StepStarted).Seconds(), 0)
	})
	m.rollout.decisions = map[[2]string]*metrics.Counter{}
}

// rolloutDecision returns the decisions counter of a kind and rule.
func (m *switchMetrics) rolloutDecision(name, kind, rule string) *metrics.Counter {
	m.rollout.mu.Lock()
	defer m.rollout.mu.Unlock()
	k := [2]string{kind, rule}
	c, ok := m.rollout.decisions[k]
	if !ok {
		c = m.set.NewCounter(fmt.Sprintf(`switchback_rollout_decisions_total{switch=%q,kind=%q,rule=%q}`, name, kind, rule))
		m.rollout.decisions[k] = c
	}
	return c
}

// tripEvidence is the evidence a trip records when it aborts a rollout
// under way: this gateway's windows and the rule's threshold. It is nil
// when no rollout is under way, so a trip without one costs nothing more.
func (h *Handler) tripEvidence(v health.Verdict) *state.Evidence {
	rec, _ := h.sw.Record()
	if rec.Rollout == nil || !rec.Rollout.State.Active() {
		return nil
	}
	return h.windowEvidence(v.Rule, ruleThreshold(h.monitor.Rules(), v.Rule))
}

// ruleThreshold describes a rule's limit for the evidence: "5%", "p99
// 250ms", "10 in a row".
func ruleThreshold(r health.Rules, rule string) string {
	switch rule {
	case health.RuleErrorRate:
		return fmt.Sprintf("%g%% over %s, min_requests %d", r.ErrorRate*100, r.Window, r.MinRequests)
	case health.RuleLatency:
		return fmt.Sprintf("p%g %s over %s, min_requests %d", r.LatencyQuantile*100, r.LatencyLimit, r.Window, r.MinRequests)
	case health.RuleConsecutiveFailures:
		return fmt.Sprintf("%d in a row", r.ConsecutiveFailures)
	}
	return ""
}
