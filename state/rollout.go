package state

import (
	"fmt"
	"strconv"
	"time"
)

// RolloutState is where a progressive rollout stands.
type RolloutState string

// The states of a rollout.
const (
	RolloutIdle            RolloutState = "idle"             // configured, not started
	RolloutRunning         RolloutState = "running"          // walking the steps
	RolloutPaused          RolloutState = "paused"           // held by an operator
	RolloutWaitingApproval RolloutState = "waiting_approval" // the next step has a manual gate
	RolloutAborted         RolloutState = "aborted"          // a trip or an operator stopped it
	RolloutCompleted       RolloutState = "completed"        // the last step held, or promoted
)

// Active says whether the rollout is under way (running, paused or
// waiting for an approval): a trip aborts it and the engine watches it.
func (s RolloutState) Active() bool {
	return s == RolloutRunning || s == RolloutPaused || s == RolloutWaitingApproval
}

// DecisionLimit is how many decisions a rollout record keeps.
const DecisionLimit = 50

// Rollout is the durable state of a switch's progressive rollout, part of
// its record, so every gateway serves the same step and a gateway that
// starts mid-rollout joins it. The plan (Steps, Hold, MinRequests, Gates)
// is copied from the config when the rollout starts or is retried: a
// config that changes it while the rollout runs takes effect only at the
// next retry (PlanChanged says so meanwhile).
type Rollout struct {
	State RolloutState `json:"state"`

	// Steps are the weights walked through, strictly increasing.
	Steps []Weight `json:"steps"`

	// Step is the index in Steps of the current step, and StepStarted
	// when the fleet entered it.
	Step        int       `json:"step"`
	StepStarted time.Time `json:"step_started,omitzero"`

	// Hold is the least time at each step (a Go duration string), and
	// MinRequests the least consolidated requests at each step, fleet-wide.
	Hold        string `json:"hold"`
	MinRequests int    `json:"min_requests"`

	// Gates are the steps that need a manual approval before they are
	// entered.
	Gates []Weight `json:"gates,omitempty"`

	// Approvals are the approvals given in this run.
	Approvals []Approval `json:"approvals,omitempty"`

	// Waiting says, for people, what the current step waits for ("waiting:
	// 312/500 requests"). It is filled when the switch is shown, not
	// stored.
	Waiting string `json:"waiting,omitempty"`

	// Plan fingerprints the plan in force; PlanChanged is set when the
	// config's plan differs from it, until a retry applies the new one.
	Plan        string `json:"plan,omitempty"`
	PlanChanged bool   `json:"plan_changed,omitempty"`

	// Decisions are the last DecisionLimit decisions, oldest first.
	Decisions []Decision `json:"decisions,omitempty"`
}

// Approval is an operator's approval of a gated step.
type Approval struct {
	Step Weight    `json:"step"`
	By   string    `json:"by"`
	At   time.Time `json:"at"`
}

// Decision is one thing that happened to a rollout, with what it was based
// on. Kind is one of start, advance, hold, approve, pause, resume, abort,
// retry, promote, complete and trip.
type Decision struct {
	Kind     string    `json:"kind"`
	At       time.Time `json:"at"`
	By       string    `json:"by,omitempty"`
	Gateway  string    `json:"gateway,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	From     Weight    `json:"from"`
	To       Weight    `json:"to"`
	Step     int       `json:"step"` // index of the step the decision was taken at
	Rule     string    `json:"rule,omitempty"`
	Evidence *Evidence `json:"evidence,omitempty"`
}

// Evidence is what a decision was based on: each arm's counts at the
// step (or, for a trip, in this gateway's window), and which gateways
// they came from.
type Evidence struct {
	Arms      map[string]ArmEvidence `json:"arms"`
	PValue    *float64               `json:"p_value,omitempty"`
	Gateways  []string               `json:"gateways,omitempty"`
	Rule      string                 `json:"rule,omitempty"`
	Threshold string                 `json:"threshold,omitempty"`
	Shadow    *ShadowEvidence        `json:"shadow,omitempty"`
}

// ArmEvidence is one arm's numbers.
type ArmEvidence struct {
	Requests  uint64  `json:"requests"`
	Failures  uint64  `json:"failures"`
	ErrorRate float64 `json:"error_rate"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
}

// ShadowEvidence is the shadow comparison's numbers at the step.
type ShadowEvidence struct {
	Compared     uint64  `json:"compared"`
	Mismatched   uint64  `json:"mismatched"`
	MismatchRate float64 `json:"mismatch_rate"`
	WorstRoute   string  `json:"worst_route,omitempty"`
}

// StepID names the current step of one run of the rollout: its index and
// the time it began. Stats counted at a step carry it, so counts from an
// earlier step, or an earlier run, are never added to this one's.
func (r *Rollout) StepID() string {
	return strconv.Itoa(r.Step) + "@" + strconv.FormatInt(r.StepStarted.UnixNano(), 10)
}

// Weight returns the weight of the current step.
func (r *Rollout) Weight() Weight {
	if r.Step < 0 || r.Step >= len(r.Steps) {
		return 0
	}
	return r.Steps[r.Step]
}

// Gated says whether entering step i needs an approval, and approved
// whether it has one in this run.
func (r *Rollout) Gated(i int) (gated, approved bool) {
	if i < 0 || i >= len(r.Steps) {
		return false, false
	}
	w := r.Steps[i]
	for _, g := range r.Gates {
		if g == w {
			gated = true
		}
	}
	for _, a := range r.Approvals {
		if a.Step == w {
			approved = true
		}
	}
	return gated, approved
}

// Decide appends d, dropping the oldest decision past DecisionLimit.
func (r *Rollout) Decide(d Decision) {
	r.Decisions = append(r.Decisions, d)
	if n := len(r.Decisions) - DecisionLimit; n > 0 {
		r.Decisions = append([]Decision(nil), r.Decisions[n:]...)
	}
}

// Clone returns a deep copy of r (nil for nil), so a copy of a record can
// be changed without touching the original.
func (r *Rollout) Clone() *Rollout {
	if r == nil {
		return nil
	}
	c := *r
	c.Steps = append([]Weight(nil), r.Steps...)
	c.Gates = append([]Weight(nil), r.Gates...)
	c.Approvals = append([]Approval(nil), r.Approvals...)
	c.Decisions = append([]Decision(nil), r.Decisions...)
	return &c
}

// Check reports a rollout record that cannot be walked.
func (r *Rollout) Check() error {
	if r == nil {
		return nil
	}
	switch r.State {
	case RolloutIdle, RolloutRunning, RolloutPaused, RolloutWaitingApproval, RolloutAborted, RolloutCompleted:
	default:
		return fmt.Errorf("rollout: unknown state %q", r.State)
	}
	if err := CheckSteps(r.Steps); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if r.Step < 0 || r.Step >= len(r.Steps) {
		return fmt.Errorf("rollout: step %d out of range of %d steps", r.Step, len(r.Steps))
	}
	if r.Hold != "" {
		if d, err := time.ParseDuration(r.Hold); err != nil || d < 0 {
			return fmt.Errorf("rollout: invalid hold %q", r.Hold)
		}
	}
	if r.MinRequests < 0 {
		return fmt.Errorf("rollout: min_requests %d is negative", r.MinRequests)
	}
	return nil
}

// CheckSteps reports steps that are not 1 to 100 weights, each in (0%,
// 100%] and strictly increasing.
func CheckSteps(steps []Weight) error {
	if len(steps) == 0 {
		return fmt.Errorf("no steps")
	}
	if len(steps) > 100 {
		return fmt.Errorf("%d steps: at most 100", len(steps))
	}
	for i, w := range steps {
		if w <= 0 || w > WeightMax {
			return fmt.Errorf("step %s%%: each step must be above 0%% and at most 100%%", w)
		}
		if i > 0 && w <= steps[i-1] {
			return fmt.Errorf("step %s%% after %s%%: steps must increase", w, steps[i-1])
		}
	}
	return nil
}

// Copy returns a deep copy of s: history and rollout of its own.
func (s Switch) Copy() Switch {
	s.History = append([]Event(nil), s.History...)
	s.Rollout = s.Rollout.Clone()
	return s
}
