package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/leanvibe/switchback/state"
)

// Operation kinds.
const (
	KindCreate    = "create"
	KindVerify    = "verify"
	KindRollback  = "rollback"
	KindEmergency = "emergency"
	KindCleanup   = "cleanup"
)

// Operation statuses. A restore interrupted by a crash ends, after
// Recover, as StatusRolledForward (the point was fully restored) or
// StatusRolledBack (the live paths are as they were before).
const (
	StatusRunning       = "running"
	StatusCompleted     = "completed"
	StatusFailed        = "failed"
	StatusRolledForward = "rolled_forward"
	StatusRolledBack    = "rolled_back"
)

// Duration is a time.Duration that encodes to JSON as a string like "1.5s".
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		n, err2 := strconv.ParseInt(string(b), 10, 64)
		if err2 != nil {
			return err
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Step is one completed (or failed) step of an operation.
type Step struct {
	Name     string    `json:"name"`
	Start    time.Time `json:"start"`
	Duration Duration  `json:"duration"`
	Error    string    `json:"error,omitempty"`
	// Detail is a short human note: the point chosen, bytes copied...
	Detail string `json:"detail,omitempty"`
	// Output holds a hook's combined output, truncated.
	Output string `json:"output,omitempty"`
}

// Operation is the record of one create, verify, rollback, emergency or
// cleanup. It is stored at operations/<id> and in logs/rollback-<id>.json.
type Operation struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	Trigger string `json:"trigger,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Point is the point created, verified or restored.
	Point string `json:"point,omitempty"`
	// PreRollbackPoint is the automatic point of the state before a restore.
	PreRollbackPoint string   `json:"pre_rollback_point,omitempty"`
	DryRun           bool     `json:"dry_run,omitempty"`
	Force            bool     `json:"force,omitempty"`
	Only             []string `json:"only,omitempty"`
	Host             string   `json:"host"`
	// HostID is the id of the host that runs the operation (see
	// Options.HostIDFile). Only that host recovers it.
	HostID string `json:"host_id,omitempty"`
	PID    int    `json:"pid"`
	// PIDStart (the process's start time in clock ticks since boot) and
	// BootID tell the process apart from a later one reusing its pid.
	PIDStart uint64     `json:"pid_start,omitempty"`
	BootID   string     `json:"boot_id,omitempty"`
	Status   string     `json:"status"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	Duration Duration   `json:"duration,omitempty"`
	Steps    []Step     `json:"steps_completed"`
	Errors   []string   `json:"errors,omitempty"`
	// Warnings say what went through but not as recorded: for a restore,
	// owners, setuid bits and xattrs this process could not give back.
	Warnings []string `json:"warnings,omitempty"`
	// Plan is what a restore changes (or, for a dry run, would change).
	Plan *Plan `json:"plan,omitempty"`
	// Journal is the swap journal of a restore; see doc.go.
	Journal *Journal `json:"journal,omitempty"`
	// Recovered says when and by which host Recover finished this
	// operation after its process died.
	Recovered   *time.Time `json:"recovered,omitempty"`
	RecoveredBy string     `json:"recovered_by,omitempty"`
	// Lock is when the restore held the fleet's restore lock: Acquired is
	// taken just after the lock was granted and Released just before it
	// was let go, so the span lies within the time it was really held.
	Lock *LockSpan `json:"lock,omitempty"`

	Verify     *VerifyReport     `json:"verify,omitempty"`
	Cleanup    *CleanupReport    `json:"cleanup,omitempty"`
	Validation *ValidationReport `json:"validation,omitempty"`
}

// LockSpan is when an operation held the restore lock, and how long it
// waited for it first.
type LockSpan struct {
	Acquired time.Time  `json:"acquired"`
	Released *time.Time `json:"released,omitempty"`
	Waited   Duration   `json:"waited,omitempty"`
}

// newOp starts an operation record and stores it.
func (m *Manager) newOp(ctx context.Context, kind, trigger, reason string) (*Operation, error) {
	now := m.now()
	for attempt := 0; attempt < 10; attempt++ {
		var rnd [3]byte
		rand.Read(rnd[:])
		op := &Operation{
			ID:       "op-" + now.Format("20060102-150405") + "-" + hex.EncodeToString(rnd[:]),
			Kind:     kind,
			Trigger:  trigger,
			Reason:   reason,
			Host:     m.opts.Host,
			HostID:   m.hostID,
			PID:      m.pid,
			PIDStart: m.pidStart,
			BootID:   m.boot,
			Status:   StatusRunning,
			Started:  now,
			Steps:    []Step{},
		}
		b, err := m.encodeOp(op)
		if err != nil {
			return nil, err
		}
		_, err = m.st.CAS(ctx, state.Key(state.NSOperations, op.ID), b, 0)
		if errors.Is(err, state.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("recording operation: %w", passCanceled(ctx, err))
		}
		if err := writeFileAtomic(m.opLogPath(op.ID), append(b, '\n'), 0o640); err != nil {
			return nil, fmt.Errorf("writing operation log: %w", err)
		}
		return op, nil
	}
	return nil, errors.New("recording operation: could not pick a unique id")
}

func (m *Manager) opLogPath(id string) string {
	return filepath.Join(m.cfg.Logs, "rollback-"+id+".json")
}

// encodeOp marshals op, trimming plan lists and outputs until it fits in a
// store value.
func (m *Manager) encodeOp(op *Operation) ([]byte, error) {
	b, err := json.MarshalIndent(op, "", "  ")
	if err != nil || len(b) < state.MaxValueSize-1024 {
		return b, err
	}
	c := *op
	if c.Plan != nil {
		p := c.Plan.truncated(200)
		c.Plan = &p
	}
	if c.Verify != nil {
		v := *c.Verify
		v.Problems = truncate(v.Problems, 200)
		v.Repaired = truncate(v.Repaired, 200)
		c.Verify = &v
	}
	if c.Cleanup != nil {
		r := *c.Cleanup
		r.Removed = truncate(r.Removed, 500)
		r.Kept = truncate(r.Kept, 500)
		c.Cleanup = &r
	}
	c.Errors = truncate(c.Errors, 50)
	b, err = json.Marshal(&c)
	if err == nil && len(b) >= state.MaxValueSize {
		return nil, fmt.Errorf("operation record %s too large (%d bytes)", op.ID, len(b))
	}
	return b, err
}

func truncate[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// saveOp writes op to the store and to its log file. Both must succeed for
// journal updates, which is why the error is returned.
func (m *Manager) saveOp(ctx context.Context, op *Operation) error {
	ctx = context.WithoutCancel(ctx)
	b, err := m.encodeOp(op)
	if err != nil {
		return err
	}
	if _, err := m.st.Put(ctx, state.Key(state.NSOperations, op.ID), b); err != nil {
		return fmt.Errorf("recording operation %s: %w", op.ID, err)
	}
	if err := writeFileAtomic(m.opLogPath(op.ID), append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("writing operation log %s: %w", op.ID, err)
	}
	return nil
}

// saveOpRetry saves op, trying three times over about a second: for a
// journal change that must be durable before the next action.
func (m *Manager) saveOpRetry(ctx context.Context, op *Operation) error {
	var err error
	for i := 0; i < 3; i++ {
		if err = m.saveOp(ctx, op); err == nil {
			return nil
		}
		time.Sleep(time.Duration(i+1) * 150 * time.Millisecond)
	}
	return err
}

// saveOpWarn saves op and only warns on failure.
func (m *Manager) saveOpWarn(ctx context.Context, op *Operation) {
	if err := m.saveOp(ctx, op); err != nil {
		m.warn(err)
	}
}

// step runs fn as a named step of op, records it and saves op.
func (m *Manager) step(ctx context.Context, op *Operation, name string, fn func(s *Step) error) error {
	s := Step{Name: name, Start: m.now()}
	t0 := time.Now()
	err := fn(&s)
	s.Duration = Duration(time.Since(t0))
	if err != nil {
		s.Error = err.Error()
	}
	op.Steps = append(op.Steps, s)
	m.saveOpWarn(ctx, op)
	return err
}

// finish ends op with err (nil for success) and saves it.
func (m *Manager) finish(ctx context.Context, op *Operation, err error) {
	now := m.now()
	op.Finished = &now
	op.Duration = Duration(now.Sub(op.Started))
	m.abandonMu.Lock()
	abandoned := m.abandoned[op.ID]
	m.abandonMu.Unlock()
	if op.Status == StatusRunning && !abandoned {
		if err != nil {
			op.Status = StatusFailed
		} else {
			op.Status = StatusCompleted
		}
	}
	if err != nil {
		op.Errors = append(op.Errors, err.Error())
	}
	m.saveOpWarn(ctx, op)
	m.log.Info("operation finished", "op", op.ID, "kind", op.Kind, "status", op.Status, "point", op.Point, "duration", time.Duration(op.Duration))
}

// GetOperation returns the record of operation id.
func (m *Manager) GetOperation(ctx context.Context, id string) (Operation, error) {
	if state.CheckName(id) != nil {
		return Operation{}, userErr(ErrNotFound, "operation %s not found", id)
	}
	e, err := m.st.Get(ctx, state.Key(state.NSOperations, id))
	if errors.Is(err, state.ErrNotFound) {
		return Operation{}, userErr(ErrNotFound, "operation %s not found", id)
	}
	if err != nil {
		return Operation{}, passCanceled(ctx, err)
	}
	var op Operation
	if err := json.Unmarshal(e.Value, &op); err != nil {
		return Operation{}, fmt.Errorf("decoding operation %s: %w", id, err)
	}
	return op, nil
}

// ListOperations returns up to limit operation records (all if limit <= 0),
// newest first.
func (m *Manager) ListOperations(ctx context.Context, limit int) ([]Operation, error) {
	entries, err := m.st.List(ctx, state.NSOperations)
	if err != nil {
		return nil, passCanceled(ctx, err)
	}
	ops := make([]Operation, 0, len(entries))
	for _, e := range entries {
		var op Operation
		if err := json.Unmarshal(e.Value, &op); err != nil {
			m.warn(fmt.Errorf("skipping undecodable operation record %s: %w", e.Key, err))
			continue
		}
		ops = append(ops, op)
	}
	sort.SliceStable(ops, func(i, j int) bool {
		if !ops[i].Started.Equal(ops[j].Started) {
			return ops[i].Started.After(ops[j].Started)
		}
		return ops[i].ID > ops[j].ID
	})
	if limit > 0 && len(ops) > limit {
		ops = ops[:limit]
	}
	return ops, nil
}

// holder is what the restore lock's holder description contains.
type holder struct {
	Host string `json:"host"`
	Op   string `json:"op"`
	PID  int    `json:"pid,omitempty"`
}

// lockHeldErr turns a *state.LockHeldError into the user-facing error.
func lockHeldErr(err error) error {
	var lh *state.LockHeldError
	if !errors.As(err, &lh) {
		return err
	}
	var h holder
	if json.Unmarshal(lh.Holder, &h) != nil || h.Op == "" {
		who := strings.TrimSpace(string(lh.Holder))
		if who == "" {
			who = "another process"
		}
		return userErr(ErrRestoreInProgress, "restore in progress (%s)", who)
	}
	return userErr(ErrRestoreInProgress, "restore in progress on %s (op %s)", h.Host, h.Op)
}
