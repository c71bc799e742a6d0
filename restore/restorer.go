package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/leanvibe/switchback/state"
)

// RollbackOptions control a restore.
type RollbackOptions struct {
	// Trigger says what asked for the restore ("manual", "error_rate"...).
	Trigger string
	// Reason is a free-text explanation kept in the record.
	Reason string
	// Force skips the pre-checks (manifest digest, object integrity, disk
	// space), and lets the restore go on when the automatic pre-rollback
	// point cannot be made.
	Force bool
	// DryRun runs the pre-checks and returns the plan without changing
	// anything.
	DryRun bool
	// Only restricts the restore to these paths (absolute, or relative to
	// the working directory), each a root of the point or below one. The
	// rest of each root is kept as it is live.
	Only []string
	// LockWait is how long to wait for the restore lock while another
	// restore holds it (zero: fail at once with ErrRestoreInProgress).
	// Automatic restores wait, so a fleet restores one host at a time.
	LockWait time.Duration
}

// Plan is what a restore changes, by absolute path. Directories whose only
// difference is their mtime are not listed.
type Plan struct {
	Added    []string `json:"added"`
	Removed  []string `json:"removed"`
	Modified []string `json:"modified"`
	// Counts are the full lengths, which stay right when the lists are
	// truncated to fit a record.
	AddedCount    int  `json:"added_count"`
	RemovedCount  int  `json:"removed_count"`
	ModifiedCount int  `json:"modified_count"`
	Truncated     bool `json:"truncated,omitempty"`
	// BytesToWrite is the size of the files that must be copied from
	// objects; Linked counts files hard-linked from the live tree.
	BytesToWrite int64 `json:"bytes_to_write"`
	Linked       int64 `json:"linked,omitempty"`
	Copied       int64 `json:"copied,omitempty"`
}

func (p Plan) truncated(n int) Plan {
	if len(p.Added) > n || len(p.Removed) > n || len(p.Modified) > n {
		p.Truncated = true
	}
	p.Added, p.Removed, p.Modified = truncate(p.Added, n), truncate(p.Removed, n), truncate(p.Modified, n)
	return p
}

// Journal phases; see doc.go.
const (
	PhaseStaging   = "staging"
	PhaseSwapping  = "swapping"
	PhaseSwapped   = "swapped"
	PhaseReverting = "reverting"
	PhaseDone      = "done"
)

// Journal is the crash journal of a restore, saved (store and log file)
// before every change to a live path.
type Journal struct {
	Phase string        `json:"phase"`
	Roots []JournalRoot `json:"roots"`
	// PreHookRan is set once the pre_restore hook has run, so recovery
	// knows to run post_restore.
	PreHookRan bool `json:"pre_hook_ran,omitempty"`
}

// JournalRoot is the swap state of one live path.
type JournalRoot struct {
	Path  string `json:"path"`
	Stage string `json:"stage"`
	Old   string `json:"old"`
	// TargetAbsent means the point does not have this path: restoring
	// removes it.
	TargetAbsent bool `json:"target_absent,omitempty"`
	// StageIno and LiveIno identify the new and the old tree (0: none).
	StageIno uint64 `json:"stage_ino,omitempty"`
	LiveIno  uint64 `json:"live_ino,omitempty"`
	// State is "", "swapping" (renames may have begun) or "swapped".
	State string `json:"state,omitempty"`
	// Mount says the root is a mount point: Stage and Old are inside it,
	// its entries are exchanged rather than the root itself, and Swap is
	// its swap list (see mountswap.go).
	Mount bool   `json:"mount,omitempty"`
	Swap  string `json:"swap,omitempty"`
}

// Rollback restores point id. See doc.go for the steps and the crash
// behaviour. A failed restore leaves every live path and the catalog as
// they were (the automatic pre-rollback point is removed again).
func (m *Manager) Rollback(ctx context.Context, id string, opts RollbackOptions) (Operation, error) {
	p, err := m.GetPoint(ctx, id)
	if err != nil {
		return Operation{}, err
	}
	op, err := m.newOp(ctx, KindRollback, opts.Trigger, opts.Reason)
	if err != nil {
		return Operation{}, err
	}
	op.Point, op.Force, op.DryRun = id, opts.Force, opts.DryRun
	err = m.restore(ctx, op, p, opts)
	m.finish(ctx, op, err)
	return *op, passCanceled(ctx, err)
}

// target is one root being restored.
type target struct {
	root    string
	desired RootManifest
	only    []string // rel paths restored; nil means the whole root

	// Set by diff: writeBytes is what staging copies next to the root;
	// preBytes the live files the restore replaces or removes, which the
	// pre-rollback point may store as new objects.
	writeBytes, preBytes int64
	// changed says the plan adds, removes or modifies something in it.
	changed bool
	// special lists the live sockets and devices, which no point records:
	// staging keeps them where the restored tree still has their
	// directory (see keepSpecial).
	special []string
}

// restore runs the restore steps for p on op.
func (m *Manager) restore(ctx context.Context, op *Operation, p Point, opts RollbackOptions) error {
	var (
		mf      *Manifest
		targets []target
		plan    Plan
	)
	// Step 1: pre-checks.
	err := m.step(ctx, op, "pre_checks", func(s *Step) error {
		if !m.ownPoint(p) {
			return foreignPointErr(p)
		}
		var err error
		mf, err = m.loadManifest(p, opts.Force)
		if err != nil {
			return err
		}
		if targets, err = m.targets(mf, opts.Only); err != nil {
			return err
		}

		op.Only = opts.Only
		var toCopy map[string]bool
		if plan, toCopy, err = m.diff(ctx, targets); err != nil {
			return err
		}
		op.Plan = &plan
		if err := checkMountPoints(targets); err != nil {
			return err
		}
		if opts.Force {
			s.Detail = "skipped (forced)"
			return nil
		}
		if _, err := m.checkObjects(ctx, op.ID, p.ID, mf, toCopy); err != nil {
			return err
		}
		if err := m.checkSpace(targets, plan); err != nil {
			return err
		}
		s.Detail = fmt.Sprintf("%d added, %d removed, %d modified, %d bytes to write", plan.AddedCount, plan.RemovedCount, plan.ModifiedCount, plan.BytesToWrite)
		return nil
	})
	if err != nil || opts.DryRun {
		return err
	}

	// Step 2: the lock, then this host's unfinished restores.
	lock, err := m.lockStep(ctx, op, opts.LockWait)
	if err != nil {
		return err
	}
	defer m.unlock(op, lock)
	return m.restoreLocked(ctx, op, p, opts, targets, lock.Lost())
}

// lockPoll bounds the pause between two tries for a held lock.
const lockPoll = 2 * time.Second

// lockStep takes the restore lock as a step of op, waiting up to wait
// while another holder has it. Holding it, it recovers this host's
// unfinished restores first (a stale journal must never be finished
// over this restore's result later), and refuses if one remains.
func (m *Manager) lockStep(ctx context.Context, op *Operation, wait time.Duration) (state.Lock, error) {
	var lock state.Lock
	err := m.step(ctx, op, "lock", func(s *Step) error {
		h, _ := json.Marshal(holder{Host: m.opts.Host, Op: op.ID, PID: m.pid})
		t0 := time.Now()
		deadline := t0.Add(wait)
		pause := 100 * time.Millisecond
		for {
			var err error
			lock, err = m.st.Lock(ctx, state.RestoreLock, h)
			if err == nil {
				break
			}
			if !errors.Is(err, state.ErrLockHeld) || wait <= 0 || !time.Now().Add(pause).Before(deadline) {
				if wait > 0 && errors.Is(err, state.ErrLockHeld) {
					return fmt.Errorf("waited %s for the lock: %w", wait, lockHeldErr(err))
				}
				return lockHeldErr(passCanceled(ctx, err))
			}
			if pause == 100*time.Millisecond {
				m.log.Info("restore lock held; waiting", "op", op.ID, "holder", string(lockHolder(err)), "wait", wait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause + time.Duration(rand.Int64N(int64(pause)))):
			}
			pause = min(pause*2, lockPoll)
		}
		waited := time.Since(t0)
		op.Lock = &LockSpan{Acquired: m.now(), Waited: Duration(waited)}
		if waited > time.Second {
			s.Detail = fmt.Sprintf("waited %s", waited.Round(time.Millisecond))
		}
		rec, rerr := m.recoverLocked(ctx)
		for _, r := range rec {
			s.Detail = strings.TrimPrefix(s.Detail+fmt.Sprintf("; first finished this host's interrupted %s: %s", r.ID, r.Status), "; ")
		}
		if rerr != nil {
			// The failed operation is marked failed and never finished
			// later, so it cannot undo this restore; say so loudly.
			op.Errors = append(op.Errors, "recovering this host's interrupted restores: "+rerr.Error())
			m.warn(fmt.Errorf("op %s: recovering this host's interrupted restores first: %w", op.ID, rerr))
		}
		if err := m.checkNoUnfinished(ctx, op); err != nil {
			m.unlock(op, lock)
			return err
		}
		return nil
	})
	return lock, err
}

// checkNoUnfinished refuses while this host has a dead restore that
// recovery could not finish.
func (m *Manager) checkNoUnfinished(ctx context.Context, op *Operation) error {
	ops, err := m.ListOperations(ctx, 0)
	if err != nil {
		return err
	}
	for _, o := range ops {
		if o.ID == op.ID || !m.ownOp(o) || o.Kind != KindRollback && o.Kind != KindEmergency {
			continue
		}
		if o.Status == StatusRunning && !m.opAlive(o) {
			return userErr(ErrUnfinished, "restore %s of this host is unfinished and could not be recovered (%s); fix it first, see switchback ops show %s", o.ID, strings.Join(o.Errors, "; "), o.ID)
		}
	}
	return nil
}

// unlock records when op let the lock go, then lets it go.
func (m *Manager) unlock(op *Operation, lock state.Lock) {
	if op.Lock != nil && op.Lock.Released == nil {
		now := m.now()
		op.Lock.Released = &now
	}
	lock.Unlock()
}

// lockHolder returns the holder a lock error names.
func lockHolder(err error) []byte {
	var lh *state.LockHeldError
	if errors.As(err, &lh) {
		return lh.Holder
	}
	return nil
}

// restoreLocked runs steps 3 to 9 under the restore lock.
func (m *Manager) restoreLocked(ctx context.Context, op *Operation, p Point, opts RollbackOptions, targets []target, lost <-chan struct{}) error {
	check := func() error {
		select {
		case <-lost:
			return userErr(ErrLockLost, "restore lock lost; stopped before changing more")
		default:
		}
		return ctx.Err()
	}
	j := &Journal{}
	op.Journal = j
	var pre Point
	var preMf *Manifest
	preHookRan := false
	runPost := func() {
		if preHookRan {
			m.runHookStep(ctx, op, "post_restore", m.cfg.Hooks.PostRestore, p.ID)
		}
	}
	// abort undoes everything before the swap and restores the catalog.
	abort := func(err error) error {
		m.step(ctx, op, "abort", func(s *Step) error {
			var errs []error
			for i, jr := range j.Roots {
				m.hook(fmt.Sprintf("revert-%d", i))
				if e := rollBackRoot(jr); e != nil {
					errs = append(errs, e)
				}
			}
			if pre.ID != "" {
				if e := m.deletePoint(ctx, pre.ID); e != nil {
					errs = append(errs, e)
				}
			}
			j.Phase = PhaseDone
			s.Detail = "live paths left as they were"
			return errors.Join(errs...)
		})
		runPost()
		return err
	}

	// Step 3: the pre_restore hook, first, so an application that is
	// still writing is stopped before its files are read. The journal
	// says it ran, so recovery starts the application again.
	if err := check(); err != nil {
		return abort(err)
	}
	// It is saved before the hook starts: a process killed while the hook
	// is stopping the application must still have recovery start it.
	j.PreHookRan = m.cfg.Hooks.PreRestore != ""
	if j.PreHookRan {
		if err := m.saveOp(ctx, op); err != nil {
			j.PreHookRan = false
			return abort(err)
		}
	}
	if err := m.runHookStep(ctx, op, "pre_restore", m.cfg.Hooks.PreRestore, p.ID); err != nil {
		j.PreHookRan = false
		return abort(err)
	}
	preHookRan = j.PreHookRan

	// Step 4: the automatic point of the current state. An emergency
	// never stops for it: it records the failure loudly and restores. A
	// plain rollback refuses, unless forced.
	roots := make([]string, len(targets))
	for i, t := range targets {
		roots[i] = t.root
	}
	err := m.step(ctx, op, "pre_rollback_point", func(s *Step) error {
		if err := check(); err != nil {
			return err
		}
		meta, _ := json.Marshal(map[string]string{"auto": AutoPreRollback, "for": p.ID})
		var err error
		pre, preMf, err = m.createPointManifest(ctx, op.ID, pointSpec{
			typ: p.Type, components: p.Components, roots: roots, metadata: meta,
			trigger: "pre-rollback", auto: AutoPreRollback,
		})
		s.Detail = pre.ID
		op.PreRollbackPoint = pre.ID
		return err
	})
	if err != nil {
		if check() != nil || op.Kind != KindEmergency && !opts.Force {
			if op.Kind != KindEmergency {
				err = fmt.Errorf("%w (--force restores without the pre-rollback point)", err)
			}
			return abort(err)
		}
		msg := fmt.Sprintf("restoring WITHOUT a pre-rollback point: the state before this restore is not saved: %v", err)
		op.Errors = append(op.Errors, msg)
		m.warn(fmt.Errorf("op %s: %s", op.ID, msg))
		m.log.Error("pre-rollback point failed; restoring anyway", "op", op.ID, "kind", op.Kind, "force", opts.Force, "error", err)
		pre, preMf = Point{}, &Manifest{}
		op.PreRollbackPoint = ""
	}
	live := map[string]RootManifest{}
	for _, r := range preMf.Roots {
		live[r.Path] = r
	}

	// Step 5: staging trees. The journal names them first, so a crash
	// while staging leaves names recovery can clean up.
	var stagers []*stager
	for _, t := range targets {
		lr := live[t.root]
		if t.only != nil {
			t.desired = mergeOnly(lr, t.desired, t.only)
		}
		if sameTree(lr, t.desired) {
			continue
		}
		base := filepath.Base(t.root)
		dir := filepath.Dir(t.root)
		jr := JournalRoot{
			Path:         t.root,
			Stage:        filepath.Join(dir, "."+base+".switchback-stage-"+op.ID),
			Old:          filepath.Join(dir, "."+base+".switchback-old-"+op.ID),
			TargetAbsent: t.desired.Absent,
		}
		if mp, err := isMountPoint(t.root); err != nil {
			return abort(err)
		} else if mp {
			if err := mountRestorable(t); err != nil {
				return abort(err)
			}
			if jr, err = mountJournalRoot(t.root, op.ID, m.cfg.Logs, len(j.Roots), t.desired.Absent); err != nil {
				return abort(err)
			}
		}
		j.Roots = append(j.Roots, jr)
		stagers = append(stagers, &stager{m: m, opID: op.ID, t: t, live: lr, check: check})
	}
	// j.Roots is complete: point each stager at its root's entry.
	for i := range stagers {
		stagers[i].jr = &j.Roots[i]
	}
	j.Phase = PhaseStaging
	if err := m.saveOp(ctx, op); err != nil {
		return abort(err)
	}
	var copied, linked int64
	err = m.step(ctx, op, "stage", func(s *Step) error {
		for _, st := range stagers {
			if err := st.build(ctx); err != nil {
				return err
			}
			copied += st.copied.Load()
			linked += st.linked.Load()
			op.Warnings = append(op.Warnings, st.warnings()...)
		}
		s.Detail = fmt.Sprintf("%d roots, %d files copied, %d linked", len(stagers), copied, linked)
		return nil
	})
	if op.Plan != nil {
		op.Plan.Copied, op.Plan.Linked = copied, linked
	}
	if err != nil {
		return abort(err)
	}

	// Step 6: fsync.
	err = m.step(ctx, op, "fsync", func(s *Step) error {
		for _, st := range stagers {
			if err := st.sync(ctx); err != nil {
				return err
			}
		}
		return m.hook("after-fsync")
	})
	if err != nil {
		return abort(err)
	}
	if err := check(); err != nil {
		return abort(err)
	}

	// Step 7: swap, journalling each root.
	j.Phase = PhaseSwapping
	if err := m.saveOp(ctx, op); err != nil {
		return abort(err)
	}
	err = m.step(ctx, op, "swap", func(s *Step) error {
		for i := range j.Roots {
			jr := &j.Roots[i]
			if err := check(); err != nil {
				return err
			}
			jr.State = "swapping"
			if err := m.saveOp(ctx, op); err != nil {
				return err
			}
			if err := m.hook(fmt.Sprintf("swap-%d-begun", i)); err != nil {
				return err
			}
			if err := m.rollForwardRoot(*jr, false); err != nil {
				return err
			}
			if err := m.hook(fmt.Sprintf("swap-%d-renamed", i)); err != nil {
				return err
			}
			jr.State = "swapped"
			if err := m.saveOp(ctx, op); err != nil {
				return err
			}
		}
		s.Detail = fmt.Sprintf("%d roots swapped", len(j.Roots))
		return nil
	})
	if err != nil {
		// Put back what was swapped: the live paths must be all old or
		// all new, and we could not finish. The reverting phase must be
		// durable before the first undo: a crash in the undo must go on
		// backwards, not forward over half-removed stages.
		j.Phase = PhaseReverting
		if serr := m.saveOpRetry(ctx, op); serr != nil {
			// The journal still says swapping: leave the roots for
			// recovery, which finishes them all forward (or all back).
			j.Phase = PhaseSwapping
			m.abandon(op)
			return fmt.Errorf("%w; could not record the revert (%v): left for recovery, which the next restore or gateway start runs", err, serr)
		}
		return abort(err)
	}
	j.Phase = PhaseSwapped
	if err := m.saveOp(ctx, op); err != nil {
		m.warn(err)
	}
	m.step(ctx, op, "remove_old", func(s *Step) error {
		var errs []error
		for _, jr := range j.Roots {
			errs = append(errs, finishRoot(jr))
		}
		j.Phase = PhaseDone
		if err := errors.Join(errs...); err != nil {
			return err
		}
		// What the swap left, for the next point (restored.go): after the
		// old trees are gone (their removal moves the linked files'
		// ctime), before post_restore starts the application.
		for _, st := range stagers {
			if st.t.only == nil {
				m.recordRestored(ctx, op.ID, p, st.t.desired)
			}
		}
		return nil
	})

	// Step 8: post_restore hook.
	hookErr := m.runHookStep(ctx, op, "post_restore", m.cfg.Hooks.PostRestore, p.ID)

	// Step 9: validate.
	var valErr error
	m.step(ctx, op, "validate", func(s *Step) error {
		rep := m.validateRestored(ctx, targets)
		op.Validation = &rep
		if !rep.OK {
			valErr = userErr(ErrValidationFailed, "restored %s, but validation failed: %s", p.ID, strings.Join(rep.Failures, "; "))
		}
		return valErr
	})
	return errors.Join(hookErr, valErr)
}

// targets resolves the roots to restore: the point's roots, each of which
// must be a configured path, narrowed by only.
func (m *Manager) targets(mf *Manifest, only []string) ([]target, error) {
	configured := m.cfg.allRoots()
	var out []target
	var absOnly []string
	for _, o := range only {
		a, err := filepath.Abs(o)
		if err != nil {
			return nil, err
		}
		absOnly = append(absOnly, a)
	}
	used := make([]bool, len(absOnly))
	for _, r := range mf.Roots {
		if !configured[r.Path] {
			return nil, userErr(nil, "point covers %s, which is not a configured path; refusing to restore it", r.Path)
		}
		t := target{root: r.Path, desired: r}
		if len(absOnly) > 0 {
			t.only = []string{}
			for i, a := range absOnly {
				if !within(a, r.Path) {
					continue
				}
				used[i] = true
				rel, _ := filepath.Rel(r.Path, a)
				rel = filepath.ToSlash(rel)
				if rel == "." {
					t.only = nil
					break
				}
				t.only = append(t.only, rel)
			}
			if t.only != nil && len(t.only) == 0 {
				continue
			}
		}
		out = append(out, t)
	}
	for i, u := range used {
		if !u {
			return nil, userErr(nil, "%s is not inside any path of the point", only[i])
		}
	}
	return out, nil
}

// underAny reports whether rel is one of prefixes or below one.
func underAny(rel string, prefixes []string) bool {
	for _, p := range prefixes {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return false
}

// ancestorOf reports whether rel is a strict ancestor of one of prefixes.
func ancestorOf(rel string, prefixes []string) bool {
	for _, p := range prefixes {
		if rel == "." || strings.HasPrefix(p, rel+"/") {
			return true
		}
	}
	return false
}

// mergeOnly returns the live tree with the paths in only (and the
// directories leading to them) taken from the point.
func mergeOnly(live, point RootManifest, only []string) RootManifest {
	out := RootManifest{Path: live.Path}
	byPath := map[string]Entry{}
	for _, e := range live.Entries {
		if !underAny(e.Path, only) {
			byPath[e.Path] = e
		}
	}
	for _, e := range point.Entries {
		switch {
		case underAny(e.Path, only):
			byPath[e.Path] = e
		case ancestorOf(e.Path, only) && e.Type == EntryDir:
			if l, ok := byPath[e.Path]; ok && l.Type == EntryDir {
				continue // keep the live directory as it is
			}
			byPath[e.Path] = e
		}
	}
	// Drop entries whose parent is no longer a directory.
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sortEntryPaths(paths)
	types := map[string]string{}
	for _, p := range paths {
		if p != "." && types[path.Dir(p)] != EntryDir {
			continue
		}
		types[p] = byPath[p].Type
		out.Entries = append(out.Entries, byPath[p])
	}
	if len(out.Entries) == 0 || out.Entries[0].Path != "." {
		return RootManifest{Path: live.Path, Absent: true}
	}
	return out
}

// sortEntryPaths sorts so every directory comes right before its contents.
func sortEntryPaths(paths []string) {
	key := func(p string) string {
		if p == "." {
			return ""
		}
		return strings.ReplaceAll(p, "/", "\x00")
	}
	sort.Slice(paths, func(i, j int) bool { return key(paths[i]) < key(paths[j]) })
}

// sameEntry reports whether two entries need no change: type, mode,
// owner, xattrs, content and link target equal, mtime equal for files
// and directories. Hard-link groups are compared by sameTree.
func sameEntry(a, b Entry) bool {
	if a.Type != b.Type || a.Mode != b.Mode || a.UID != b.UID || a.GID != b.GID || !slices.Equal(a.Xattrs, b.Xattrs) {
		return false
	}
	switch a.Type {
	case EntryFile:
		return a.Digest == b.Digest && a.Size == b.Size && a.MTime == b.MTime
	case EntrySymlink:
		return a.Target == b.Target
	}
	return a.MTime == b.MTime
}

// sameTree reports whether a root needs no change at all.
func sameTree(a, b RootManifest) bool {
	if a.Absent != b.Absent || len(a.Entries) != len(b.Entries) {
		return false
	}
	for i := range a.Entries {
		if a.Entries[i].Path != b.Entries[i].Path || a.Entries[i].Link != b.Entries[i].Link || !sameEntry(a.Entries[i], b.Entries[i]) {
			return false
		}
	}
	return true
}

// diff compares the live paths with the targets by metadata (no hashing),
// extended attributes included. It also returns the digests of the files
// staging will copy from objects: those added or modified (any file whose
// type, mode, owner, size, mtime or xattrs differ from the live one). A file that matches by metadata is linked
// from the live tree when its digest matches too; see doc.go.
func (m *Manager) diff(ctx context.Context, targets []target) (Plan, map[string]bool, error) {
	toCopy := map[string]bool{}
	p := Plan{Added: []string{}, Removed: []string{}, Modified: []string{}}
	for ti := range targets {
		t := &targets[ti]
		before := p.BytesToWrite
		nchanges := len(p.Added) + len(p.Removed) + len(p.Modified)
		entries, special, _, err := liveEntriesSpecial(ctx, t.root, true)
		if err != nil {
			return p, nil, passCanceled(ctx, err)
		}
		t.special = special
		live := make(map[string]Entry, len(entries))
		for _, e := range entries {
			live[e.Path] = e
		}
		in := func(rel string) bool { return t.only == nil || underAny(rel, t.only) }
		abs := func(rel string) string {
			if rel == "." {
				return t.root
			}
			return t.root + "/" + rel
		}
		want := map[string]bool{}
		for _, e := range t.desired.Entries {
			if !in(e.Path) {
				continue
			}
			want[e.Path] = true
			l, ok := live[e.Path]
			switch {
			case !ok:
				p.Added = append(p.Added, abs(e.Path))
				p.BytesToWrite += e.Size
				if e.Type == EntryFile {
					toCopy[e.Digest] = true
				}
			case metaDiff(l, e, true) != "":
				p.Modified = append(p.Modified, abs(e.Path))
				t.preBytes += l.Size
				if e.Type == EntryFile {
					p.BytesToWrite += e.Size
					toCopy[e.Digest] = true
				}
			}
		}
		var removed []string
		for rel := range live {
			if in(rel) && !want[rel] {
				removed = append(removed, abs(rel))
				t.preBytes += live[rel].Size
			}
		}
		// A socket or device is kept where the point still has its
		// directory and not its name (keepSpecial), else removed.
		dirs := map[string]bool{}
		for _, e := range t.desired.Entries {
			if in(e.Path) && e.Type == EntryDir {
				dirs[e.Path] = true
			}
		}
		for rel, l := range live {
			if !in(rel) && l.Type == EntryDir {
				dirs[rel] = true
			}
		}
		for _, rel := range special {
			if in(rel) && (rel == "." || want[rel] || !dirs[path.Dir(rel)]) {
				removed = append(removed, abs(rel))
			}
		}
		sort.Strings(removed)
		p.Removed = append(p.Removed, removed...)
		t.writeBytes = p.BytesToWrite - before
		t.changed = len(p.Added)+len(p.Removed)+len(p.Modified) > nchanges
	}
	p.AddedCount, p.RemovedCount, p.ModifiedCount = len(p.Added), len(p.Removed), len(p.Modified)
	return p, toCopy, nil
}

// checkSpace checks that each filesystem has room for what the restore
// writes there, with a margin of 5% and 1 MiB.
func (m *Manager) checkSpace(targets []target, plan Plan) error {
	type fsNeed struct {
		path string
		need uint64
		free uint64
	}
	needs := map[[2]int32]*fsNeed{}
	addNeed := func(path string, n int64) error {
		free, id, err := freeSpace(path)
		if err != nil {
			return fmt.Errorf("checking free space on %s: %w", path, err)
		}
		if needs[id] == nil {
			needs[id] = &fsNeed{path: path, free: free}
		}
		needs[id].need += uint64(n)
		return nil
	}
	// Staging writes each root's copied files on the filesystem of its
	// stage; the pre-rollback point stores the live files the restore
	// replaces or removes as new objects (at most), in the object store.
	// Needs add up per filesystem, whichever roots share one.
	var pre int64
	for _, t := range targets {
		dir := filepath.Dir(t.root)
		if mp, _ := isMountPoint(t.root); mp {
			dir = t.root // staged inside it
		}
		if err := addNeed(dir, t.writeBytes); err != nil {
			return err
		}
		pre += t.preBytes
	}
	if err := addNeed(m.objects.dir, pre); err != nil {
		return err
	}
	for _, n := range needs {
		want := n.need + n.need/20 + 1<<20
		if n.free < want {
			return userErr(syscall.ENOSPC, "not enough disk space on the filesystem of %s: %d bytes free, the restore needs about %d", n.path, n.free, want)
		}
	}
	return nil
}

// stager builds the staging tree of one root through an os.Root on its
// parent directory, so nothing it writes can land outside it.
type stager struct {
	m     *Manager
	opID  string
	t     target
	live  RootManifest
	jr    *JournalRoot
	check func() error

	copied atomic.Int64
	linked atomic.Int64
	// usedLive holds the live inodes linked into the stage: each may be
	// used once, or two files the point has apart would become one.
	usedLive sync.Map
	notes    stageNotes
	// swap is a mount root's swap list (jr.Mount).
	swap *swapList
}

// stageNotes collects what a restore could not give back as recorded
// (running as a user who cannot set an owner, a setuid bit or an xattr);
// they go into the operation record's warnings.
type stageNotes struct {
	mu        sync.Mutex
	owners    int      // entries whose owner was not restored
	setid     []string // entries whose setuid or setgid bit was dropped
	setidN    int
	xattrs    int // xattrs not restored
	xattrPath string
	extra     []string // sentences as they are (keepSpecial)
}

func (n *stageNotes) add(root string, e Entry, skippedXattrs []string) {
	if canChown(e.UID, e.GID) && len(skippedXattrs) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !canChown(e.UID, e.GID) {
		n.owners++
		if e.Mode&0o6000 != 0 {
			n.setidN++
			if len(n.setid) < 10 {
				n.setid = append(n.setid, joinRel(root, e.Path))
			}
		}
	}
	if len(skippedXattrs) > 0 {
		n.xattrs += len(skippedXattrs)
		if n.xattrPath == "" {
			n.xattrPath = joinRel(root, e.Path) + " (" + strings.Join(skippedXattrs, ", ") + ")"
		}
	}
}

// warnings returns the notes as sentences for the operation record.
func (st *stager) warnings() []string {
	n := &st.notes
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	if n.owners > 0 {
		out = append(out, fmt.Sprintf("%s: not running as root, so the recorded owner of %d entries was not restored (they belong to uid %d)", st.t.root, n.owners, euid))
	}
	if n.setidN > 0 {
		out = append(out, fmt.Sprintf("%s: the setuid/setgid bit of %d entries was not restored, since their owner could not be: %s", st.t.root, n.setidN, strings.Join(n.setid, ", ")))
	}
	if n.xattrs > 0 {
		out = append(out, fmt.Sprintf("%s: %d extended attributes need privileges this process lacks and were not restored, first on %s", st.t.root, n.xattrs, n.xattrPath))
	}
	return append(out, n.extra...)
}

func (st *stager) build(ctx context.Context) error {
	if st.jr.TargetAbsent {
		if info, err := os.Lstat(st.jr.Path); err == nil {
			st.jr.LiveIno = inoOf(info)
		}
		return nil
	}
	// The stage is built next to the root, through a handle on its
	// parent, or inside it if it is a mount point (base "."), after its
	// swap list records the entries it has now.
	parent := filepath.Dir(st.t.root)
	base := filepath.Base(st.t.root)
	if st.jr.Mount {
		parent, base = st.t.root, "."
		meta, inos, err := readRootMeta(st.t.root)
		if err != nil {
			return fmt.Errorf("staging %s: %w", st.t.root, err)
		}
		st.swap = &swapList{old: inos, oldMeta: meta}
		if err := writeSwapList(st.jr.Swap, st.swap); err != nil {
			return fmt.Errorf("staging %s: %w", st.t.root, err)
		}
	}
	stageName := filepath.Base(st.jr.Stage)
	r, err := os.OpenRoot(parent)
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	defer r.Close()
	liveBy := make(map[string]Entry, len(st.live.Entries))
	for _, e := range st.live.Entries {
		liveBy[e.Path] = e
	}
	name := func(rel string) string {
		if rel == "." {
			return stageName
		}
		return stageName + "/" + rel
	}
	entries := st.t.desired.Entries
	// Files and FIFOs are staged per directory, through a handle on the
	// stage directory and one on the live directory, so each link or
	// create resolves a single name instead of the whole path. Further
	// names of a hard-linked file are linked to its first once all are
	// staged.
	var units []*dirUnit
	unitOf := map[string]*dirUnit{}
	var rootFile *Entry
	leaders := map[uint64]int{}
	var members []int
	for i, e := range entries {
		if err := st.check(); err != nil {
			return err
		}
		switch e.Type {
		case EntryDir:
			if err := r.Mkdir(name(e.Path), 0o700); err != nil {
				return fmt.Errorf("staging %s: %w", st.t.root, err)
			}
		case EntrySymlink:
			if err := r.Symlink(e.Target, name(e.Path)); err != nil {
				return fmt.Errorf("staging %s: %w", st.t.root, err)
			}
			if err := st.metaAt(r, name(e.Path), e); err != nil {
				return err
			}
		case EntryFile, EntryFIFO:
			if e.Path == "." {
				rootFile = &entries[i]
				continue
			}
			if e.Link != 0 {
				if _, ok := leaders[e.Link]; ok {
					members = append(members, i)
					continue
				}
				leaders[e.Link] = i
			}
			d := path.Dir(e.Path)
			u := unitOf[d]
			if u == nil {
				u = &dirUnit{dir: d}
				unitOf[d] = u
				units = append(units, u)
			}
			u.files = append(u.files, i)
		}
	}
	nfiles := len(members)
	for _, u := range units {
		nfiles += len(u.files)
	}
	if rootFile != nil {
		nfiles++
	}
	pr := st.m.progress(st.opID, "stage "+st.t.root, int64(nfiles), 0)
	defer pr.done()
	if rootFile != nil {
		pd, err := r.Open(".")
		if err != nil {
			return fmt.Errorf("staging %s: %w", st.t.root, err)
		}
		if rootFile.Type == EntryFIFO {
			err = st.fifoAt(int(pd.Fd()), stageName, *rootFile)
		} else {
			err = st.copyObjectAt(int(pd.Fd()), stageName, *rootFile)
		}
		pd.Close()
		if err != nil {
			return err
		}
		st.copied.Add(1)
		pr.add(1, rootFile.Size)
	}
	// Biggest directories first, so the workers finish together.
	sort.SliceStable(units, func(i, j int) bool { return len(units[i].files) > len(units[j].files) })
	err = parallel(ctx, st.m.opts.Workers*2, len(units), func(k int) error {
		return st.stageDir(r, base, name, liveBy, units[k], pr)
	})
	if err != nil {
		return err
	}
	for _, i := range members {
		e := entries[i]
		if err := r.Link(name(entries[leaders[e.Link]].Path), name(e.Path)); err != nil {
			return fmt.Errorf("staging %s: %w", st.t.root, err)
		}
		pr.add(1, 0)
	}
	st.keepSpecial(r, base, name)
	// Directory owners, xattrs, modes and mtimes last, deepest first,
	// once filled.
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if e.Type != EntryDir || e.Path == "." && st.jr.Mount {
			continue // a mount root gets its own once swapped
		}
		if err := st.dirMeta(r, name(e.Path), e); err != nil {
			return err
		}
	}
	info, err := r.Lstat(stageName)
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	st.jr.StageIno = inoOf(info)
	if info, err := os.Lstat(st.jr.Path); err == nil {
		st.jr.LiveIno = inoOf(info)
	}
	if st.jr.Mount {
		return st.completeSwapList(r, stageName)
	}
	return nil
}

// completeSwapList adds the staged entries and the root's metadata from
// the point to a mount root's swap list.
func (st *stager) completeSwapList(r *os.Root, stageName string) error {
	d, err := r.Open(stageName)
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	defer d.Close()
	if st.swap.new, err = childInodes(int(d.Fd()), st.jr.Stage); err != nil {
		return err
	}
	e := st.t.desired.Entries[0]
	st.swap.newMeta = rootMeta{Mode: restorableMode(e), UID: e.UID, GID: e.GID, MTime: e.MTime, Xattrs: e.Xattrs}
	st.swap.complete = true
	if err := writeSwapList(st.jr.Swap, st.swap); err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	return nil
}

// keepSpecial hard-links into the stage the live sockets and devices (a
// point cannot record them: an application's socket, a device node in a
// container's tree) whose directory the restored tree still has and whose
// name it does not use, so a restore does not silently delete them with
// the old tree. One that is gone by now (pre_restore stopped its
// application) is left out. The record's warnings name what was kept and
// what was not.
func (st *stager) keepSpecial(r *os.Root, base string, name func(string) string) {
	if len(st.t.special) == 0 {
		return
	}
	types := make(map[string]string, len(st.t.desired.Entries))
	for _, e := range st.t.desired.Entries {
		types[e.Path] = e.Type
	}
	var kept, dropped []string
	for _, rel := range st.t.special {
		if rel == "." || types[rel] != "" || types[path.Dir(rel)] != EntryDir {
			dropped = append(dropped, rel)
			continue
		}
		if err := r.Link(path.Join(base, rel), name(rel)); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				dropped = append(dropped, rel)
			}
			continue
		}
		kept = append(kept, rel)
	}
	list := func(rels []string) string {
		out := make([]string, 0, min(len(rels), 5))
		for _, r := range rels[:min(len(rels), 5)] {
			out = append(out, joinRel(st.t.root, r))
		}
		if len(rels) > 5 {
			out = append(out, fmt.Sprintf("and %d more", len(rels)-5))
		}
		return strings.Join(out, ", ")
	}
	st.notes.mu.Lock()
	defer st.notes.mu.Unlock()
	if len(kept) > 0 {
		st.notes.extra = append(st.notes.extra, fmt.Sprintf("%s: kept %d sockets or devices, which a point cannot record: %s", st.t.root, len(kept), list(kept)))
	}
	if len(dropped) > 0 {
		st.notes.extra = append(st.notes.extra, fmt.Sprintf("%s: removed %d sockets or devices, which a point cannot record and the restored tree has no place for: %s", st.t.root, len(dropped), list(dropped)))
	}
}

// dirMeta gives the staged directory at name e's owner, xattrs, mode and
// mtime.
func (st *stager) dirMeta(r *os.Root, name string, e Entry) error {
	d, err := r.OpenFile(name, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	err = st.metaFd(int(d.Fd()), e)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		t := time.Unix(0, e.MTime)
		err = r.Chtimes(name, t, t)
	}
	if err != nil {
		return fmt.Errorf("staging %s/%s: %w", st.t.root, e.Path, err)
	}
	return nil
}

// metaFd gives the open staged entry fd e's owner (where this process
// may), then its xattrs, then its mode: chown clears setuid, setgid and
// security.capability, so it comes first. Times are set by the caller.
func (st *stager) metaFd(fd int, e Entry) error {
	skipped, err := applyMeta(fd, e)
	if err == nil {
		st.notes.add(st.t.root, e, skipped)
	}
	return err
}

// applyMeta gives the open entry fd e's owner (where this process may),
// xattrs and mode, in that order, and returns the xattrs it may not set.
func applyMeta(fd int, e Entry) (skipped []string, err error) {
	if canChown(e.UID, e.GID) {
		if err := unix.Fchown(fd, int(e.UID), int(e.GID)); err != nil {
			return nil, err
		}
	}
	skipped, err = fdXattrs(fd).apply(e.Xattrs)
	if err != nil {
		return nil, fmt.Errorf("setting extended attributes: %w", err)
	}
	return skipped, unix.Fchmod(fd, restorableMode(e))
}

// metaAt does what metaFd does for an entry that cannot be opened (a
// symlink), by name, and sets its times.
func (st *stager) metaAt(r *os.Root, name string, e Entry) error {
	dir, leaf := path.Split(name)
	d, err := r.OpenFile(strings.TrimSuffix(dir, "/"), os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	defer d.Close()
	return st.metaAtFd(int(d.Fd()), leaf, e)
}

func (st *stager) metaAtFd(dirFd int, leaf string, e Entry) error {
	err := func() error {
		if canChown(e.UID, e.GID) {
			if err := unix.Fchownat(dirFd, leaf, int(e.UID), int(e.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		skipped, err := atXattrs(dirFd, leaf).apply(e.Xattrs)
		if err != nil {
			return fmt.Errorf("setting extended attributes: %w", err)
		}
		st.notes.add(st.t.root, e, skipped)
		if e.Type != EntrySymlink {
			// Symlinks have no mode of their own on Linux.
			if err := unix.Fchmodat(dirFd, leaf, restorableMode(e), 0); err != nil {
				return err
			}
		}
		ts := unix.NsecToTimespec(e.MTime)
		return unix.UtimesNanoAt(dirFd, leaf, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}()
	if err != nil {
		return fmt.Errorf("staging %s/%s: %w", st.t.root, e.Path, err)
	}
	return nil
}

// fifoAt creates FIFO e as leaf in the stage directory dirFd.
func (st *stager) fifoAt(dirFd int, leaf string, e Entry) error {
	if err := unix.Mkfifoat(dirFd, leaf, 0o600); err != nil {
		return fmt.Errorf("staging %s/%s: %w", st.t.root, e.Path, err)
	}
	return st.metaAtFd(dirFd, leaf, e)
}

// dirUnit is one directory of a stage and the indexes of its files.
type dirUnit struct {
	dir   string
	files []int
}

// stageDir links or copies the files (and makes the FIFOs) of one
// directory. The live directory is used only if it is still the directory
// the pre-rollback point recorded (same inode), and only regular files
// whose content that point proved are linked from it.
func (st *stager) stageDir(r *os.Root, base string, name func(string) string, liveBy map[string]Entry, u *dirUnit, pr *progressReporter) error {
	sd, err := r.Open(name(u.dir))
	if err != nil {
		return fmt.Errorf("staging %s: %w", st.t.root, err)
	}
	defer sd.Close()
	stageFd := int(sd.Fd())
	liveFd := -1
	liveRel := path.Join(base, u.dir)
	if l, ok := liveBy[u.dir]; ok && l.Type == EntryDir {
		if ld, err := r.OpenFile(liveRel, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0); err == nil {
			defer ld.Close()
			if info, err := ld.Stat(); err == nil && info.IsDir() && inoOf(info) == l.Ino {
				liveFd = int(ld.Fd())
			}
		}
	}
	entries := st.t.desired.Entries
	for _, i := range u.files {
		if err := st.check(); err != nil {
			return err
		}
		e := entries[i]
		leaf := path.Base(e.Path)
		if e.Type == EntryFIFO {
			if err := st.fifoAt(stageFd, leaf, e); err != nil {
				return err
			}
			pr.add(1, 0)
			continue
		}
		if l, ok := liveBy[e.Path]; ok && liveFd >= 0 && st.linkLive(liveFd, stageFd, leaf, l, e) {
			st.linked.Add(1)
			pr.add(1, 0)
			continue
		}
		if err := st.copyObjectAt(stageFd, leaf, e); err != nil {
			return err
		}
		st.copied.Add(1)
		pr.add(1, e.Size)
	}
	return nil
}

// linkLive hard-links live file leaf of liveFd into the stage directory
// stageFd when its content is proven to be e's: the pre-rollback point
// recorded it (l) with e's digest, owner, mode, xattrs and mtime, not as
// changed while read, and it is still that file (inode, size, mtime,
// ctime). Since the name could be swapped between that check and the
// link, the staged link is checked again (inode, size, mtime; the link
// itself moves ctime) and removed if it is not that file. It reports
// whether it linked.
func (st *stager) linkLive(liveFd, stageFd int, leaf string, l, e Entry) bool {
	if !sameEntry(l, e) || l.Changed || l.Ino == 0 {
		return false
	}
	var s unix.Stat_t
	if unix.Fstatat(liveFd, leaf, &s, unix.AT_SYMLINK_NOFOLLOW) != nil || s.Mode&unix.S_IFMT != unix.S_IFREG ||
		s.Ino != l.Ino || s.Size != l.Size || s.Mtim.Nano() != l.MTime || s.Ctim.Nano() != l.CTime {
		return false
	}
	if _, used := st.usedLive.LoadOrStore(s.Ino, true); used {
		return false
	}
	if err := st.m.hook("link " + joinRel(st.t.root, e.Path)); err != nil {
		return false
	}
	if unix.Linkat(liveFd, leaf, stageFd, leaf, 0) != nil {
		return false
	}
	if unix.Fstatat(stageFd, leaf, &s, unix.AT_SYMLINK_NOFOLLOW) == nil && s.Mode&unix.S_IFMT == unix.S_IFREG &&
		s.Ino == l.Ino && s.Size == l.Size && s.Mtim.Nano() == l.MTime {
		return true
	}
	unix.Unlinkat(stageFd, leaf, 0)
	return false
}

// copyObjectAt writes entry e's content from the object store to leaf in
// the stage directory dirFd, checking the content against its digest as it
// copies, then its owner, xattrs, mode and mtime. The fsync step makes it
// durable.
func (st *stager) copyObjectAt(dirFd int, leaf string, e Entry) error {
	src, err := st.m.objects.open(e.Digest)
	if err != nil {
		return userErr(ErrVerifyFailed, "content of %s/%s: %v", st.t.root, e.Path, err)
	}
	defer src.Close()
	fd, err := unix.Openat(dirFd, leaf, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("staging %s/%s: %w", st.t.root, e.Path, err)
	}
	dst := os.NewFile(uintptr(fd), leaf)
	var w io.Writer = dst
	if st.m.newWriter != nil {
		w = st.m.newWriter(dst)
	}
	d, n, err := copyHashing(w, src)
	if err == nil && n != e.Size {
		err = userErr(ErrVerifyFailed, "object %s has %d bytes, manifest says %d", short(e.Digest), n, e.Size)
	}
	if err == nil && d != e.Digest {
		err = userErr(ErrVerifyFailed, "content of %s/%s: object %s is corrupt", st.t.root, e.Path, short(e.Digest))
	}
	if err == nil {
		err = st.metaFd(fd, e)
	}
	if err == nil {
		ts := unix.NsecToTimespec(e.MTime)
		err = unix.UtimesNanoAt(dirFd, leaf, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return userErr(err, "disk full while staging %s/%s: %v", st.t.root, e.Path, err)
	}
	if err != nil {
		var ue *Error
		if errors.As(err, &ue) {
			return err
		}
		return fmt.Errorf("staging %s/%s: %w", st.t.root, e.Path, err)
	}
	return nil
}

// sync makes the stage tree durable: every file written, link made and
// directory created.
func (st *stager) sync(ctx context.Context) error {
	if st.jr.TargetAbsent {
		return nil
	}
	// One syncfs for the whole stage (and the directory that will hold
	// it) rather than an fsync for each file and directory written: the
	// same guarantee, one journal commit instead of thousands.
	dir := filepath.Dir(st.t.root)
	if st.jr.Mount {
		dir = st.t.root
	}
	if err := syncFS(dir); err != nil {
		return fmt.Errorf("syncing staged %s: %w", st.t.root, err)
	}
	return ctx.Err()
}

func inoOf(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// lstatIno returns the inode at p, or 0 and false if nothing is there.
func lstatIno(p string) (uint64, bool, error) {
	info, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return inoOf(info), true, nil
}

// swapNames puts the tree at from in place of live. When live exists it is
// exchanged atomically (renameat2 RENAME_EXCHANGE), so the old tree ends
// up at from; where the filesystem cannot exchange, live is first renamed
// to old. Every state in between is one recovery understands.
func swapNames(from, live, old string, liveExists bool) error {
	if !liveExists {
		return os.Rename(from, live)
	}
	err := exchange(from, live)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOSYS) && !errors.Is(err, syscall.EOPNOTSUPP) {
		return fmt.Errorf("swapping %s: %w", live, err)
	}
	if err := os.Rename(live, old); err != nil {
		return fmt.Errorf("swapping %s: %w", live, err)
	}
	if err := os.Rename(from, live); err != nil {
		return fmt.Errorf("swapping %s: %w", live, err)
	}
	return nil
}

// rollForwardRoot makes the new tree live for jr, from any state a crash
// can leave: before the swap, after it, or between the two renames of the
// fallback. With cleanup it also removes the old tree.
func (m *Manager) rollForwardRoot(jr JournalRoot, cleanup bool) error {
	if jr.Mount {
		var hook func(string) error
		if m != nil {
			hook = m.hook
		}
		if err := rollForwardMount(jr, hook); err != nil {
			return err
		}
		if cleanup {
			return finishRoot(jr)
		}
		return nil
	}
	liveIno, liveOK, err := lstatIno(jr.Path)
	if err != nil {
		return err
	}
	if jr.TargetAbsent {
		if liveOK {
			dest := jr.Stage
			if _, ok, _ := lstatIno(dest); ok {
				dest = jr.Old
			}
			if err := os.Rename(jr.Path, dest); err != nil {
				return fmt.Errorf("removing %s: %w", jr.Path, err)
			}
		}
	} else if !(liveOK && jr.StageIno != 0 && liveIno == jr.StageIno) {
		stageIno, stageOK, err := lstatIno(jr.Stage)
		if err != nil {
			return err
		}
		if !stageOK || stageIno != jr.StageIno || jr.StageIno == 0 {
			return fmt.Errorf("cannot complete restore of %s: the staged tree %s is gone", jr.Path, jr.Stage)
		}
		if err := swapNames(jr.Stage, jr.Path, jr.Old, liveOK); err != nil {
			return err
		}
	}
	if err := syncDir(filepath.Dir(jr.Path)); err != nil {
		return err
	}
	if cleanup {
		return removeLeftovers(jr)
	}
	return nil
}

// rollBackRoot makes the old tree live again for jr and removes the stage.
func rollBackRoot(jr JournalRoot) error {
	if jr.Mount {
		return rollBackMount(jr)
	}
	liveIno, liveOK, err := lstatIno(jr.Path)
	if err != nil {
		return err
	}
	// Where is the old tree, if not live?
	findOld := func() string {
		for _, p := range []string{jr.Stage, jr.Old} {
			if ino, ok, _ := lstatIno(p); ok && jr.LiveIno != 0 && ino == jr.LiveIno {
				return p
			}
		}
		return ""
	}
	switch {
	case liveOK && jr.StageIno != 0 && liveIno == jr.StageIno:
		// The new tree is live.
		if old := findOld(); old != "" {
			if err := exchange(old, jr.Path); err != nil {
				// Without exchange: new tree aside, old back.
				trash := jr.Old + ".new"
				if err := os.Rename(jr.Path, trash); err != nil {
					return err
				}
				if err := os.Rename(old, jr.Path); err != nil {
					return err
				}
				defer os.RemoveAll(trash)
			}
		} else if jr.LiveIno != 0 {
			return fmt.Errorf("cannot put back %s: its old tree is gone; the restored tree stays", jr.Path)
		} else {
			// The path did not exist before.
			dest := jr.Stage
			if _, ok, _ := lstatIno(dest); ok {
				dest = jr.Old
			}
			if err := os.Rename(jr.Path, dest); err != nil {
				return err
			}
		}
	case !liveOK:
		if old := findOld(); old != "" {
			if err := os.Rename(old, jr.Path); err != nil {
				return err
			}
		}
	}
	if err := syncDir(filepath.Dir(jr.Path)); err != nil {
		return err
	}
	return removeLeftovers(jr)
}

// removeLeftovers removes whatever is left at the stage and old names once
// the live path holds the tree that should stay.
func removeLeftovers(jr JournalRoot) error {
	var errs []error
	paths := []string{jr.Stage, jr.Old, jr.Old + ".new"}
	if jr.Swap != "" {
		// With the temp files of a write the crash cut (writeFileAtomic).
		tmps, _ := filepath.Glob(filepath.Join(filepath.Dir(jr.Swap), "."+filepath.Base(jr.Swap)+".tmp-*"))
		paths = append(append(paths, jr.Swap), tmps...)
	}
	for _, p := range paths {
		if !strings.Contains(filepath.Base(p), ".switchback-") {
			continue
		}
		if err := removeTree(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// finishRoot removes the leftovers of jr once its new tree is live; a
// mount root then gets its recorded metadata again, since removing its
// restore names moved its mtime.
func finishRoot(jr JournalRoot) error {
	if !jr.Mount {
		return removeLeftovers(jr)
	}
	l, err := loadSwapList(jr)
	if err != nil {
		return err
	}
	if l == nil || !l.complete {
		return removeLeftovers(jr)
	}
	return finishMount(jr, l.newMeta)
}

// removeTree removes the tree at p like os.RemoveAll, in parallel: the
// entries of its top two levels are removed by concurrent workers. It
// works through directory handles opened with O_NOFOLLOW, name by name,
// so it never follows a symlink. Whatever it leaves is then given to
// os.RemoveAll, whose error is returned.
//
// It refuses a tree with a mount point inside (rm -r would delete the
// files of the mounted filesystem), leaving it for the operator.
func removeTree(p string) error {
	if below, err := mountsBelow(p); err != nil {
		return err
	} else if len(below) > 0 {
		return fmt.Errorf("not removing %s: %s inside it is a mount point; unmount it, then remove %s", p, below[0], p)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		removeChildren(fd, 2)
		unix.Close(fd)
	}
	return os.RemoveAll(p)
}

// removeChildren removes what the directory dirFd holds; the first levels
// (while parallelLevels > 0) in parallel.
func removeChildren(dirFd int, parallelLevels int) {
	names, err := readNames(dirFd)
	if err != nil {
		return
	}
	removeOne := func(i int) error {
		name := names[i]
		if unix.Unlinkat(dirFd, name, 0) == nil {
			return nil
		}
		fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil
		}
		removeChildren(fd, parallelLevels-1)
		unix.Close(fd)
		unix.Unlinkat(dirFd, name, unix.AT_REMOVEDIR)
		return nil
	}
	if parallelLevels > 0 {
		parallel(context.Background(), 2*defaultWorkers(), len(names), removeOne)
		return
	}
	for i := range names {
		removeOne(i)
	}
}

// readNames lists the directory dirFd without closing it.
func readNames(dirFd int) ([]string, error) {
	dup, err := unix.Dup(dirFd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "")
	defer f.Close()
	return f.Readdirnames(-1)
}
