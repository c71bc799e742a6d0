package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/leanvibe/switchback/state"
)

// Recover finishes this host's restores whose process died. It takes the
// restore lock (so it does nothing while a restore runs anywhere in the
// fleet) and then, for each operation of this host still "running" whose
// process is gone (pid, its start time and the boot id: see pidAlive):
//   - a restore with a journal is finished one way for all its roots
//     together: forward (the staged trees, complete and synced, are swapped
//     in; status rolled_forward) from the swap phase on, back (the live
//     paths are left or put back as they were, stages are removed and the
//     automatic pre-rollback point is dropped; status rolled_back) before
//     it or while reverting. Every root's live inode is first checked
//     against the journal; if one holds a tree the journal does not know
//     (the paths changed since), nothing is touched and the operation is
//     marked failed;
//   - in both cases the post_restore hook runs if pre_restore had run;
//   - any other operation of this host whose process is gone is marked
//     failed.
//
// Operations of other hosts are never touched, however old: their paths
// and objects are on their disks. When the lock is held it returns an
// error wrapping ErrRestoreInProgress, and the caller should try again.
//
// It returns the operations it changed.
func (m *Manager) Recover(ctx context.Context) ([]Operation, error) {
	dead, err := m.deadOps(ctx)
	if err != nil || len(dead) == 0 {
		return nil, err
	}
	h, _ := json.Marshal(holder{Host: m.opts.Host, Op: "recover", PID: m.pid})
	lock, err := m.st.Lock(ctx, state.RestoreLock, h)
	if err != nil {
		return nil, lockHeldErr(passCanceled(ctx, err))
	}
	defer lock.Unlock()
	return m.recoverLocked(ctx)
}

// deadOps returns this host's running operations whose process is gone.
func (m *Manager) deadOps(ctx context.Context) ([]Operation, error) {
	ops, err := m.ListOperations(ctx, 0)
	if err != nil {
		return nil, err
	}
	var dead []Operation
	for _, op := range ops {
		if op.Status == StatusRunning && m.ownOp(op) && !m.opAlive(op) {
			dead = append(dead, op)
		}
	}
	return dead, nil
}

// Unfinished returns the operations of other hosts that are still
// running, for display: this host never touches them.
func (m *Manager) Unfinished(ctx context.Context) ([]Operation, error) {
	ops, err := m.ListOperations(ctx, 0)
	if err != nil {
		return nil, err
	}
	var out []Operation
	for _, op := range ops {
		if op.Status == StatusRunning && !m.ownOp(op) {
			out = append(out, op)
		}
	}
	return out, nil
}

// recoverLocked recovers this host's dead operations; the caller holds
// the restore lock.
func (m *Manager) recoverLocked(ctx context.Context) ([]Operation, error) {
	dead, err := m.deadOps(ctx)
	if err != nil {
		return nil, err
	}
	var done []Operation
	var errs []error
	for _, op := range dead {
		// Re-read: it may have finished while we took the lock.
		cur, err := m.GetOperation(ctx, op.ID)
		if err != nil || cur.Status != StatusRunning {
			continue
		}
		if err := m.recoverOp(ctx, &cur); err != nil {
			errs = append(errs, fmt.Errorf("recovering %s: %w", cur.ID, err))
		}
		done = append(done, cur)
	}
	return done, errors.Join(errs...)
}

// opAlive reports whether op's process may still be running. op is this
// host's. The process is this one when pid, start time and boot all
// match (a restore running in another goroutine), unless this process
// gave the operation up (abandon); a record with this pid and another
// start time, or none, is a previous process that had the same pid (pid 1
// in a container, say).
func (m *Manager) opAlive(op Operation) bool {
	if op.PID == m.pid {
		if op.PIDStart == 0 || op.PIDStart != m.pidStart || op.BootID != m.boot {
			return false
		}
		m.abandonMu.Lock()
		defer m.abandonMu.Unlock()
		return !m.abandoned[op.ID]
	}
	return pidAlive(op.PID, op.PIDStart, op.BootID)
}

// abandon marks op, of this process, as given up: recovery may finish it
// although this process lives.
func (m *Manager) abandon(op *Operation) {
	m.abandonMu.Lock()
	defer m.abandonMu.Unlock()
	if m.abandoned == nil {
		m.abandoned = map[string]bool{}
	}
	m.abandoned[op.ID] = true
}

func (m *Manager) recoverOp(ctx context.Context, op *Operation) error {
	now := m.now()
	op.Recovered, op.RecoveredBy = &now, m.opts.Host
	j := op.Journal
	if op.Kind != KindRollback && op.Kind != KindEmergency {
		m.finish(ctx, op, errors.New("process died before finishing; nothing to recover"))
		return nil
	}
	if j == nil {
		// Died before the journal: the live paths were never touched, but
		// a pre-rollback point may have been recorded.
		err := m.step(ctx, op, "recover_roll_back", func(s *Step) error {
			s.Detail = "died before staging; live paths untouched"
			return m.dropPreRollbackPoints(ctx, op)
		})
		m.finish(ctx, op, errors.Join(errors.New("process died before staging; nothing to recover"), err))
		return err
	}
	var err error
	switch forward, derr := decideRecovery(j); {
	case derr != nil:
		err = m.step(ctx, op, "recover_refused", func(s *Step) error {
			s.Detail = "live paths left as they are"
			return derr
		})
	case forward:
		err = m.step(ctx, op, "recover_roll_forward", func(s *Step) error {
			var errs []error
			for _, jr := range j.Roots {
				errs = append(errs, m.rollForwardRoot(jr, true))
			}
			return errors.Join(errs...)
		})
		if err == nil {
			j.Phase = PhaseDone
			op.Status = StatusRolledForward
		}
	default:
		if j.Phase != PhaseReverting && j.Phase != PhaseStaging && j.Phase != "" {
			// Rolling back from the swap phase: durable first, like a
			// live revert, so a crash in it goes on backwards.
			j.Phase = PhaseReverting
			if serr := m.saveOp(ctx, op); serr != nil {
				m.finish(ctx, op, serr)
				return serr
			}
		}
		err = m.step(ctx, op, "recover_roll_back", func(s *Step) error {
			var errs []error
			for _, jr := range j.Roots {
				errs = append(errs, rollBackRoot(jr))
			}
			errs = append(errs, m.dropPreRollbackPoints(ctx, op))
			return errors.Join(errs...)
		})
		if err == nil {
			j.Phase = PhaseDone
			op.Status = StatusRolledBack
		}
	}
	if j.PreHookRan {
		m.runHookStep(ctx, op, "post_restore", m.cfg.Hooks.PostRestore, op.Point)
	}
	if err != nil {
		op.Status = StatusFailed
	}
	m.finish(ctx, op, err)
	return err
}

// Where a root of a journal stands, from the inodes at its names.
const (
	rootOld     = "old"     // the live name holds the old tree (or nothing, if there was none)
	rootNew     = "new"     // the live name holds the staged tree (or nothing, if the point lacks it)
	rootMid     = "mid"     // a fallback swap was cut between its renames: nothing live, old tree aside
	rootForeign = "foreign" // the live name holds a tree the journal does not know
)

// rootStateOf classifies jr from what is at its names now.
func rootStateOf(jr JournalRoot) (string, uint64, error) {
	ino, ok, err := lstatIno(jr.Path)
	if err != nil {
		return "", 0, err
	}
	switch {
	case jr.TargetAbsent && !ok:
		return rootNew, 0, nil
	case jr.TargetAbsent:
		if jr.LiveIno == 0 || ino == jr.LiveIno {
			return rootOld, ino, nil
		}
		return rootForeign, ino, nil
	case ok && jr.StageIno != 0 && ino == jr.StageIno:
		return rootNew, ino, nil
	case ok && (ino == jr.LiveIno || jr.LiveIno == 0 && jr.StageIno == 0):
		// StageIno and LiveIno are recorded together once a root is
		// staged: before that the live tree is the old one.
		return rootOld, ino, nil
	case !ok && jr.LiveIno == 0:
		return rootOld, 0, nil
	case !ok:
		return rootMid, 0, nil
	}
	return rootForeign, ino, nil
}

// inoAt reports whether the inode at p is want (and want is not 0).
func inoAt(p string, want uint64) bool {
	ino, ok, _ := lstatIno(p)
	return ok && want != 0 && ino == want
}

// decideRecovery decides, for all roots of j together, whether recovery
// goes forward or back. Forward is taken from the swap phase on, back
// before it and while reverting; from the swap phase, back is the
// fallback when some root's stage is gone. Where a root holds a tree the
// journal does not know, or neither way can be completed for every
// root, it returns an error and nothing may be changed.
func decideRecovery(j *Journal) (forward bool, err error) {
	canFwd, canBack := true, true
	var foreign, why []string
	for _, jr := range j.Roots {
		if jr.Mount {
			fwd, back, w, f, err := mountState(jr)
			if err != nil {
				return false, err
			}
			foreign = append(foreign, f...)
			canFwd, canBack, why = canFwd && fwd, canBack && back, append(why, w...)
			continue
		}
		st, ino, err := rootStateOf(jr)
		if err != nil {
			return false, err
		}
		switch st {
		case rootForeign:
			foreign = append(foreign, fmt.Sprintf("%s (inode %d; the journal has old %d, new %d)", jr.Path, ino, jr.LiveIno, jr.StageIno))
			continue
		case rootOld:
			if !jr.TargetAbsent && !inoAt(jr.Stage, jr.StageIno) {
				canFwd = false
				why = append(why, "the staged tree of "+jr.Path+" is gone")
			}
		case rootNew, rootMid:
			if st == rootMid && !inoAt(jr.Stage, jr.StageIno) {
				canFwd = false
				why = append(why, "the staged tree of "+jr.Path+" is gone")
			}
			if jr.LiveIno != 0 && !inoAt(jr.Stage, jr.LiveIno) && !inoAt(jr.Old, jr.LiveIno) {
				canBack = false
				why = append(why, "the old tree of "+jr.Path+" is gone")
			}
		}
	}
	if len(foreign) > 0 {
		return false, userErr(nil, "the live paths changed since this restore's journal was written: %s; nothing touched, leftovers (.switchback-* names of this operation) kept for inspection", strings.Join(foreign, ", "))
	}
	switch j.Phase {
	case PhaseSwapping:
		if canFwd {
			return true, nil
		}
		if canBack {
			return false, nil
		}
	case PhaseSwapped, PhaseDone:
		if canFwd {
			return true, nil
		}
	default: // staging, reverting
		if canBack {
			return false, nil
		}
	}
	return false, userErr(nil, "cannot finish this restore in phase %s for all roots alike: %s; nothing touched", j.Phase, strings.Join(why, "; "))
}

// dropPreRollbackPoints deletes the automatic point op made of the state
// before it: the one its record names, and any its process recorded in
// the catalog but died before naming (found by the point's op).
func (m *Manager) dropPreRollbackPoints(ctx context.Context, op *Operation) error {
	pts, err := m.listPoints(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pts {
		if p.ID == op.PreRollbackPoint || p.Auto == AutoPreRollback && p.Op == op.ID {
			if err := m.deletePoint(ctx, p.ID); err != nil && !errors.Is(err, state.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
