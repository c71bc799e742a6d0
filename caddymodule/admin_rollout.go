package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/leanvibe/switchback/state"
)

// rolloutRequest is the body of POST /switchback/switches/{name}/rollout.
type rolloutRequest struct {
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"`
}

// rolloutActions are the verbs of rollout control, in the API, the CLI
// and the dashboard.
var rolloutActions = []string{"start", "pause", "resume", "approve", "abort", "retry", "promote"}

// rolloutControl applies an operator's rollout action to a switch record.
// plan is the config's plan, which start and retry put in force (nil when
// only the record is known, as offline: its own plan then serves). It
// returns the decision made, or an error saying why the action does not
// apply in the rollout's state; on error cur is unchanged. The admin API
// and the offline CLI both use it.
func rolloutControl(cur *state.Switch, req rolloutRequest, plan *state.Rollout, by, gateway string, now time.Time) (state.Decision, error) {
	ro := cur.Rollout
	if ro == nil {
		return state.Decision{}, apiErr(http.StatusNotFound, "switch %s has no rollout: add a rollout block to its config", cur.Name)
	}
	conflict := func(format string, args ...any) (state.Decision, error) {
		return state.Decision{}, apiErr(http.StatusConflict, "rollout is %s: %s", ro.State, fmt.Sprintf(format, args...))
	}
	d := state.Decision{Kind: req.Action, At: now, By: by, Gateway: gateway, Reason: req.Reason, From: ro.Weight(), Step: ro.Step}
	switch req.Action {
	case "start", "retry":
		switch {
		case req.Action == "start" && ro.State == state.RolloutIdle:
		case req.Action == "start" && ro.State.Active():
			return conflict("it has started already")
		case req.Action == "start":
			return conflict("use retry to run it again from the first step")
		case ro.State == state.RolloutIdle:
			return conflict("it has not started: use start")
		}
		n := ro.Clone()
		if plan != nil {
			n = plan.Clone()
			n.Decisions = ro.Decisions
		}
		n.State, n.Step, n.StepStarted, n.Approvals, n.PlanChanged = state.RolloutRunning, 0, now, nil, false
		cur.Rollout, ro = n, n
		cur.Mode, cur.Weight, cur.Tripped, cur.Rule = state.ModeSplit, n.Weight(), false, ""
		cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = false, ""
	case "pause":
		if ro.State != state.RolloutRunning && ro.State != state.RolloutWaitingApproval {
			return conflict("only a running rollout can be paused")
		}
		ro.State = state.RolloutPaused
	case "resume":
		if ro.State != state.RolloutPaused {
			return conflict("only a paused rollout can be resumed")
		}
		ro.State = state.RolloutRunning
		// The plan goes on from the step's weight: a weight or mode set by
		// hand paused it, and left there the engine would pause it again.
		cur.Mode, cur.Weight = state.ModeSplit, ro.Weight()
	case "approve":
		next := ro.Step + 1
		gated, approved := ro.Gated(next)
		if !ro.State.Active() || !gated || approved {
			if ro.State.Active() && next < len(ro.Steps) {
				return conflict("nothing to approve: step %s%% has no pending gate", ro.Steps[next])
			}
			return conflict("nothing to approve")
		}
		ro.Approvals = append(ro.Approvals, state.Approval{Step: ro.Steps[next], By: by, At: now})
		d.To = ro.Steps[next]
		if ro.State == state.RolloutWaitingApproval {
			ro.State = state.RolloutRunning
		}
	case "abort":
		if !ro.State.Active() {
			return conflict("only a rollout under way can be aborted")
		}
		ro.State = state.RolloutAborted
		cur.Mode = state.ModeLegacy
	case "promote":
		if strings.TrimSpace(req.Reason) == "" {
			return state.Decision{}, apiErr(http.StatusBadRequest, `promote jumps to 100%% and needs a reason: {"action": "promote", "reason": "..."}`)
		}
		if ro.State == state.RolloutCompleted && cur.Weight == state.WeightMax {
			return conflict("it is at 100%% already")
		}
		ro.State, ro.Step = state.RolloutCompleted, len(ro.Steps)-1
		cur.Mode, cur.Weight, cur.Tripped, cur.Rule = state.ModeSplit, state.WeightMax, false, ""
	default:
		return state.Decision{}, apiErr(http.StatusBadRequest, "unknown rollout action %q: want %s", req.Action, strings.Join(rolloutActions, ", "))
	}
	if d.To == 0 {
		d.To = cur.Weight
		if cur.Mode == state.ModeLegacy {
			d.To = 0
		}
	}
	reason := req.Reason
	if reason == "" {
		reason = "rollout " + req.Action
	}
	ro.Decide(d)
	cur.Reason, cur.By, cur.Gateway, cur.Since = reason, by, gateway, later(cur.Since)
	cur.Record(state.Event{Kind: "rollout_" + req.Action, Mode: cur.Mode, Weight: cur.Weight, Reason: reason, By: by, Gateway: gateway, At: now})
	return d, nil
}

// POST /switchback/switches/{name}/rollout
func (a *App) handleRollout(w http.ResponseWriter, r *http.Request, name string) error {
	var req rolloutRequest
	sw, err := a.postToSwitch(r, name, &req)
	if err != nil {
		return err
	}
	if req.Action == "" {
		return apiErr(http.StatusBadRequest, `missing action: send {"action": "%s"}`, strings.Join(rolloutActions, "|"))
	}
	h := sw.handler.Load()
	var plan *state.Rollout
	if h != nil && h.Rollout != nil {
		plan = h.Rollout.plan()
	} else if req.Action != "abort" {
		// No engine walks a rollout without a block; a record's rollout
		// left from an earlier config can only be aborted.
		return apiErr(http.StatusNotFound, "switch %s has no rollout block in its config: add one to %s a rollout (only abort ends one left from an earlier config)", name, req.Action)
	}
	by, now := who(r, req.By), time.Now().UTC()
	// Judge the action on the state as this gateway knows it, for a clear
	// error; the change itself is decided again on the stored record.
	probe, _ := sw.Record()
	var seen string // the run and step judged; "" without a rollout
	if probe.Rollout != nil {
		seen = probe.Rollout.StepID() + " " + string(probe.Rollout.State)
	}
	if _, err := rolloutControl(&probe, req, plan, by, a.gateway, now); err != nil {
		return err
	}
	var d state.Decision
	applied := false
	rec, err := sw.change(r.Context(), a, func(cur *state.Switch) bool {
		if cur.Rollout != nil && cur.Rollout.StepID()+" "+string(cur.Rollout.State) != seen {
			// The action applies only to the step and state it was judged
			// on. Another gateway may have moved the rollout since (an
			// advance this gateway's watch has not brought yet, or the
			// same action sent at once through it: a second retry would
			// restart the run the first began); written over that, the
			// action would take the fleet back to the step it saw.
			applied = false
			return false
		}
		var err error
		d, err = rolloutControl(cur, req, plan, by, a.gateway, now)
		applied = err == nil
		return applied
	})
	status := http.StatusOK
	out := struct {
		SwitchStatus
		Warning string `json:"warning,omitempty"`
	}{SwitchStatus: a.switchStatus(sw, false)}
	if err != nil {
		if !errors.Is(err, state.ErrUnavailable) {
			return apiErr(http.StatusInternalServerError, "%v", err)
		}
		status, out.Warning = http.StatusAccepted, err.Error()
	}
	if !applied {
		return apiErr(http.StatusConflict, "the rollout changed meanwhile (now %s); look again and retry the action", rec.Rollout.State)
	}
	if h != nil {
		h.rolloutDecided(rec, d)
	}
	return writeJSON(w, status, out)
}

// rolloutStatus fills in what a rollout waits for, from the engine's last
// look at the step.
func (sw *Switch) rolloutStatus(rec *state.Switch) {
	ro := rec.Rollout
	if ro == nil {
		return
	}
	switch ro.State {
	case state.RolloutRunning:
		if v := sw.rollout.Load(); v != nil && v.step == ro.StepID() {
			ro.Waiting = v.waiting
		}
	case state.RolloutWaitingApproval:
		if ro.Step+1 < len(ro.Steps) {
			ro.Waiting = fmt.Sprintf("waiting: approval for %s%%", ro.Steps[ro.Step+1])
		}
	case state.RolloutPaused:
		ro.Waiting = "waiting: resume (paused)"
	}
}

// rolloutEvidence is the engine's last evidence at the current step, nil
// when it has none.
func (sw *Switch) rolloutEvidence(ro *state.Rollout) *state.Evidence {
	if v := sw.rollout.Load(); v != nil && ro != nil && v.step == ro.StepID() {
		return v.evidence
	}
	return nil
}
