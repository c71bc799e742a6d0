package restore

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/leanvibe/switchback/state"
)

// abandonedAfter is how old a running operation of another host must be,
// without a journal, before Recover marks it failed.
const abandonedAfter = time.Hour

// Recover finishes restores whose process died. It takes the restore lock
// (so it does nothing while a restore runs anywhere), then, for each
// operation still "running":
//   - a restore whose journal reached the swap phase is rolled forward: the
//     staged trees, complete and synced, are swapped in (status
//     rolled_forward);
//   - a restore that was still staging, or reverting, is rolled back: the
//     live paths are left or put back as they were, stages are removed
//     and the automatic pre-rollback point is dropped (status rolled_back);
//   - in both cases the post_restore hook runs if pre_restore had run;
//   - any other operation whose process is gone is marked failed.
//
// It returns the operations it changed.
func (m *Manager) Recover(ctx context.Context) ([]Operation, error) {
	ops, err := m.ListOperations(ctx, 0)
	if err != nil {
		return nil, err
	}
	var running []Operation
	for _, op := range ops {
		if op.Status == StatusRunning && !m.processAlive(op) {
			running = append(running, op)
		}
	}
	if len(running) == 0 {
		return nil, nil
	}
	h := fmt.Appendf(nil, `{"host":%q,"op":"recover","pid":%d}`, m.opts.Host, m.pid)
	lock, err := m.st.Lock(ctx, state.RestoreLock, h)
	if errors.Is(err, state.ErrLockHeld) {
		return nil, nil // a restore is running; it is not ours to touch
	}
	if err != nil {
		return nil, passCanceled(ctx, err)
	}
	defer lock.Unlock()
	var done []Operation
	var errs []error
	for _, op := range running {
		// Re-read: it may have finished while we took the lock.
		cur, err := m.GetOperation(ctx, op.ID)
		if err != nil || cur.Status != StatusRunning {
			continue
		}
		if cur.Journal == nil && cur.Host != m.opts.Host && m.now().Sub(cur.Started) < abandonedAfter {
			continue // maybe still in pre-checks on another host
		}
		if err := m.recoverOp(ctx, &cur); err != nil {
			errs = append(errs, fmt.Errorf("recovering %s: %w", cur.ID, err))
		}
		done = append(done, cur)
	}
	return done, errors.Join(errs...)
}

// processAlive reports whether op's process may still be running: on this
// host, whether its pid exists. Elsewhere we cannot tell, so false: the
// restore lock, and Recover's abandonedAfter wait for an operation
// without a journal, decide.
func (m *Manager) processAlive(op Operation) bool {
	if op.Host == m.opts.Host {
		if op.PID == m.pid {
			return false // our own pid: a previous incarnation, we are not running it
		}
		err := syscall.Kill(op.PID, 0)
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	return false
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
		// Died before staging: the live paths were never touched, but a
		// pre-rollback point may have been recorded.
		err := m.step(ctx, op, "recover_roll_back", func(s *Step) error {
			s.Detail = "died before staging; live paths untouched"
			return m.dropPreRollbackPoints(ctx, op)
		})
		m.finish(ctx, op, errors.Join(errors.New("process died before staging; nothing to recover"), err))
		return err
	}
	forward := j.Phase == PhaseSwapping || j.Phase == PhaseSwapped || j.Phase == PhaseDone
	var err error
	if forward {
		err = m.step(ctx, op, "recover_roll_forward", func(s *Step) error {
			var errs []error
			for _, jr := range j.Roots {
				errs = append(errs, rollForwardRoot(jr, true))
			}
			return errors.Join(errs...)
		})
		if err == nil {
			j.Phase = PhaseDone
			op.Status = StatusRolledForward
		}
	} else {
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
