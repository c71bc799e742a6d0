package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// gcGrace protects objects and manifests written recently from garbage
// collection, so a point being created concurrently (whose catalog record
// does not exist yet) keeps its content.
const gcGrace = time.Hour

// CleanupOptions control Cleanup. Zero KeepCount or KeepDays mean the
// configured retention.
type CleanupOptions struct {
	KeepCount int
	KeepDays  int
	DryRun    bool
}

// CleanupReport says what Cleanup removed (or, in a dry run, would).
type CleanupReport struct {
	KeepCount int      `json:"keep_count"`
	KeepDays  int      `json:"keep_days"`
	DryRun    bool     `json:"dry_run,omitempty"`
	Kept      []string `json:"kept"`
	Removed   []string `json:"removed"`
	// Why maps a kept point to the rule that kept it.
	Why            map[string]string `json:"why,omitempty"`
	ObjectsRemoved int               `json:"objects_removed"`
	BytesFreed     int64             `json:"bytes_freed"`
	// ManifestsRemoved counts orphaned manifest files removed.
	ManifestsRemoved int `json:"manifests_removed,omitempty"`
	// OtherHosts counts the points of other hosts, left alone.
	OtherHosts int `json:"other_hosts,omitempty"`
}

// Cleanup removes points that no retention rule keeps: it keeps the
// KeepCount newest, every point younger than KeepDays days, every tagged
// point and the newest full_system point; then it deletes objects that no
// remaining point references. Cleanup takes the restore lock, so it never
// runs during a restore, and the object lease, so it never removes what a
// point being created reuses. It considers only this host's points.
func (m *Manager) Cleanup(ctx context.Context, opts CleanupOptions) (CleanupReport, error) {
	if opts.KeepCount < 0 || opts.KeepDays < 0 {
		return CleanupReport{}, userErr(nil, "keep-count and keep-days must not be negative")
	}
	if opts.KeepCount == 0 {
		opts.KeepCount = m.cfg.Retention.KeepCount
	}
	if opts.KeepDays == 0 {
		opts.KeepDays = m.cfg.Retention.KeepDays
	}
	op, err := m.newOp(ctx, KindCleanup, "", "")
	if err != nil {
		return CleanupReport{}, err
	}
	rep := CleanupReport{KeepCount: opts.KeepCount, KeepDays: opts.KeepDays, DryRun: opts.DryRun, Kept: []string{}, Removed: []string{}}
	op.DryRun = opts.DryRun
	err = m.cleanup(ctx, op, opts, &rep)
	op.Cleanup = &rep
	m.finish(ctx, op, err)
	return rep, passCanceled(ctx, err)
}

func (m *Manager) cleanup(ctx context.Context, op *Operation, opts CleanupOptions, rep *CleanupReport) error {
	if !opts.DryRun {
		lock, err := m.lockStep(ctx, op, 0)
		if err != nil {
			return err
		}
		defer lock.Unlock()
	}
	var pts []Point
	err := m.step(ctx, op, "select", func(s *Step) error {
		var err error
		all, err := m.listPoints(ctx)
		if err != nil {
			return err
		}
		// Another host's points are its own to keep or remove: their
		// objects are on its disk.
		pts = nil
		for _, p := range all {
			if m.ownPoint(p) {
				pts = append(pts, p)
			} else {
				rep.OtherHosts++
			}
		}
		rep.Why = retain(pts, opts.KeepCount, opts.KeepDays, m.now())
		for _, p := range pts {
			if _, ok := rep.Why[p.ID]; ok {
				rep.Kept = append(rep.Kept, p.ID)
			} else {
				rep.Removed = append(rep.Removed, p.ID)
			}
		}
		s.Detail = fmt.Sprintf("keep %d, remove %d", len(rep.Kept), len(rep.Removed))
		return nil
	})
	if err != nil {
		return err
	}
	err = m.step(ctx, op, "remove_points", func(s *Step) error {
		if opts.DryRun {
			s.Detail = "dry run"
			return nil
		}
		for _, id := range rep.Removed {
			if err := m.deletePoint(ctx, id); err != nil {
				return fmt.Errorf("removing point %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.step(ctx, op, "gc", func(s *Step) error {
		err := m.gc(ctx, opts.DryRun, rep)
		s.Detail = fmt.Sprintf("%d objects, %d bytes, %d orphaned manifests", rep.ObjectsRemoved, rep.BytesFreed, rep.ManifestsRemoved)
		return err
	})
}

// objectLease takes the object store's lease (see leaseFile): shared for
// a create or a repair, exclusive for cleanup's collection. A wait that
// runs out is a user error saying who holds it.
func (m *Manager) objectLease(ctx context.Context, exclusive bool) (*objectLease, error) {
	hook := "lease-wait"
	if exclusive {
		hook = "gc-wait"
	}
	l, err := m.objects.lease(ctx, exclusive, m.objects.leaseWait, func() { m.hook(hook) })
	switch {
	case errors.Is(err, errLeaseHeld) && exclusive:
		return nil, userErr(err, "objects not collected: a rollback point is still being created on this host after %v (%s is held); run cleanup again later",
			m.objects.leaseWait, filepath.Join(m.objects.dir, leaseFile))
	case errors.Is(err, errLeaseHeld):
		return nil, userErr(err, "cleanup is still collecting objects on this host after %v (%s is held)", m.objects.leaseWait, filepath.Join(m.objects.dir, leaseFile))
	}
	return l, passCanceled(ctx, err)
}

// retain decides which points to keep. pts is newest first.
func retain(pts []Point, keepCount, keepDays int, now time.Time) (keep map[string]string) {
	keep = map[string]string{}
	cutoff := now.Add(-time.Duration(keepDays) * 24 * time.Hour)
	newestFull := ""
	for i, p := range pts {
		switch {
		case len(p.Tags) > 0:
			keep[p.ID] = "tagged " + strings.Join(p.Tags, ",")
		case i < keepCount:
			keep[p.ID] = fmt.Sprintf("among the %d newest", keepCount)
		case p.Created.After(cutoff):
			keep[p.ID] = fmt.Sprintf("younger than %d days", keepDays)
		}
		if p.Type == TypeFullSystem && newestFull == "" {
			newestFull = p.ID
			if _, ok := keep[p.ID]; !ok {
				keep[p.ID] = "newest full_system"
			}
		}
	}
	return keep
}

// gc removes objects no manifest references and manifests no catalog
// record references, sparing anything younger than gcGrace. It decides
// under the exclusive object lease, from the catalog as it is then (a
// point committed since the select step counts; in a dry run, the points
// it would remove do not), so no point being created loses its content.
// Only this host's points count: another host's objects are on its disk.
func (m *Manager) gc(ctx context.Context, dryRun bool, rep *CleanupReport) error {
	if !dryRun {
		lease, err := m.objectLease(ctx, true)
		if err != nil {
			return err
		}
		defer lease.release()
	}
	pts, err := m.listPoints(ctx)
	if err != nil {
		return err
	}
	ids := map[string]bool{}
	used := map[string]bool{}
	for _, p := range pts {
		if (dryRun && slices.Contains(rep.Removed, p.ID)) || !m.ownPoint(p) {
			continue
		}
		ids[p.ID] = true
		mf, err := m.loadManifest(p, true)
		if err != nil {
			// Without the manifest we cannot know what it references:
			// keep every object rather than guess.
			return fmt.Errorf("not collecting objects: %w", err)
		}
		for _, r := range mf.Roots {
			for _, e := range r.Entries {
				if e.Type == EntryFile {
					used[e.Digest] = true
				}
			}
		}
	}
	cutoff := time.Now().Add(-gcGrace)
	rep.BytesFreed += m.objects.removeStaleTemps(cutoff, dryRun)
	err = m.objects.walk(ctx, func(d string, info fs.FileInfo) error {
		if used[d] || info.ModTime().After(cutoff) {
			return nil
		}
		rep.ObjectsRemoved++
		rep.BytesFreed += info.Size()
		if dryRun {
			return nil
		}
		return m.objects.remove(d)
	})
	if err != nil {
		return err
	}
	dir := filepath.Join(m.cfg.Backups, "manifests")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || ids[id] || !strings.HasPrefix(id, "rollback-") {
			continue
		}
		info, err := e.Info()
		if err != nil || info.ModTime().After(cutoff) {
			continue
		}
		rep.ManifestsRemoved++
		if !dryRun {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
