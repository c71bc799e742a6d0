package caddymodule

import "github.com/leanvibe/switchback/state"

// addShadowGate makes max_mismatch a condition on leaving a rollout step:
// the step waits while the fleet's mismatch rate at the step is above it,
// or while fewer than the rollout's min_requests pairs were compared.
// Provision calls it once the shadow and the rollout are known.
func (h *Handler) addShadowGate() {
	run := h.shadowRun
	if run == nil || run.maxMismatch < 0 || h.Rollout == nil {
		return
	}
	minRequests, maxMismatch := h.Rollout.plan().MinRequests, run.maxMismatch
	h.stepGates = append(h.stepGates, func(ev *state.Evidence) string {
		sh := ev.Shadow
		if sh == nil {
			sh = &state.ShadowEvidence{}
		}
		return run.gateWaiting(sh.Compared, sh.Mismatched, sh.WorstRoute, minRequests, maxMismatch)
	})
}

// publishShadowCounts hands the rollout's fleet stats this gateway's
// shadow counts at a step (or none, without a shadow block). commit calls
// it, so the config in force decides.
func (h *Handler) publishShadowCounts() {
	if h.shadowRun == nil {
		h.sw.setShadowCounts(nil)
		return
	}
	sw := h.sw
	sw.setShadowCounts(func(stepID string) *ShadowStepStats {
		sc := sw.shadowStepAt(stepID)
		return &ShadowStepStats{Compared: sc.Compared, Mismatched: sc.Mismatched, Routes: sc.Routes}
	})
}
