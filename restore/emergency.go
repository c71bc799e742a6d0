package restore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// EmergencyOptions control Emergency.
type EmergencyOptions struct {
	// Reason is recorded and passed to the hooks.
	Reason string
	// Trigger says what started it (default "emergency").
	Trigger string
	// ForceLegacy is step 1: move every switch to legacy, through the admin
	// API or the state store. The caller supplies it; it returns a short
	// description for the record. Nil records the step as skipped.
	ForceLegacy func(ctx context.Context) (string, error)
	// LockWait is how long the restore waits for the restore lock held by
	// another host (see RollbackOptions.LockWait).
	LockWait time.Duration
}

// Emergency moves traffic to legacy, then restores the best point and
// validates. Candidates, in order: verified full_system points, verified
// partial_component points, then any full_system and any partial_component
// point, newest first within each group. Automatic pre-rollback points are
// never candidates (they hold the state being rolled back from), nor are
// points of other hosts (their objects are not here). The first
// candidate whose pre-checks pass is restored; the steps record each one
// tried. A failure of step 1 is recorded but does not stop the restore.
func (m *Manager) Emergency(ctx context.Context, opts EmergencyOptions) (Operation, error) {
	trigger := opts.Trigger
	if trigger == "" {
		trigger = "emergency"
	}
	op, err := m.newOp(ctx, KindEmergency, trigger, opts.Reason)
	if err != nil {
		return Operation{}, err
	}
	var legacyErr error
	m.step(ctx, op, "force_legacy", func(s *Step) error {
		if opts.ForceLegacy == nil {
			s.Detail = "skipped: no switch control given"
			return nil
		}
		s.Detail, legacyErr = opts.ForceLegacy(ctx)
		return legacyErr
	})
	if legacyErr != nil {
		op.Errors = append(op.Errors, "force legacy: "+legacyErr.Error())
	}
	err = m.emergency(ctx, op, opts)
	m.finish(ctx, op, err)
	return *op, passCanceled(ctx, err)
}

func (m *Manager) emergency(ctx context.Context, op *Operation, opts EmergencyOptions) error {
	var cands []Point
	err := m.step(ctx, op, "select_point", func(s *Step) error {
		pts, err := m.listPoints(ctx)
		if err != nil {
			return err
		}
		cands = emergencyCandidates(m.ownNewestFirst(pts))
		if len(cands) == 0 {
			return userErr(ErrNotFound, "no full_system or partial_component rollback point of this host (%s) to restore", m.opts.Host)
		}
		ids := make([]string, 0, 5)
		for _, p := range cands[:min(5, len(cands))] {
			ids = append(ids, p.ID)
		}
		s.Detail = "candidates " + strings.Join(ids, ", ")
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range cands {
		op.Point = p.ID
		err := m.restore(ctx, op, p, RollbackOptions{Trigger: op.Trigger, Reason: op.Reason, LockWait: opts.LockWait})
		if err == nil || ctx.Err() != nil {
			return err
		}
		// Only a failed pre-check moves on to the next candidate; anything
		// later means this point was being restored.
		if !failedPreCheck(op) {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.ID, err))
		m.warn(fmt.Errorf("emergency: skipping %s: %w", p.ID, err))
	}
	return userErr(errors.Join(errs...), "emergency: no usable rollback point (%d tried): %v", len(cands), errors.Join(errs...))
}

// failedPreCheck reports whether op's last step is a failed pre_checks.
func failedPreCheck(op *Operation) bool {
	n := len(op.Steps)
	return n > 0 && op.Steps[n-1].Name == "pre_checks" && op.Steps[n-1].Error != ""
}

// emergencyCandidates orders the points Emergency may restore. pts is
// newest first.
func emergencyCandidates(pts []Point) []Point {
	var groups [4][]Point
	for _, p := range pts {
		if p.Auto != "" {
			continue
		}
		verified := p.LastVerified != nil && p.Verified
		switch {
		case p.Type == TypeFullSystem && verified:
			groups[0] = append(groups[0], p)
		case p.Type == TypePartialComponent && verified:
			groups[1] = append(groups[1], p)
		case p.Type == TypeFullSystem:
			groups[2] = append(groups[2], p)
		case p.Type == TypePartialComponent:
			groups[3] = append(groups[3], p)
		}
	}
	var out []Point
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}
