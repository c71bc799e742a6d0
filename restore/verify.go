package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// VerifyReport is the result of re-hashing a point's objects.
type VerifyReport struct {
	Point    string    `json:"point"`
	Checked  time.Time `json:"checked"`
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	Duration Duration  `json:"duration"`
	// BytesPerSecond is the hashing throughput.
	BytesPerSecond float64 `json:"bytes_per_second"`
	// ManifestError is set when the manifest itself is missing or corrupt.
	ManifestError string `json:"manifest_error,omitempty"`
	// Problems lists every path whose content is missing or corrupt (with
	// a repair, what is still missing or corrupt after it).
	Problems []Problem `json:"problems,omitempty"`
	// Repaired lists, with a repair, each object rewritten from a live
	// file whose content hashes to it; RepairedObjects counts them (the
	// list may be truncated in an operation record).
	Repaired        []Repair `json:"repaired,omitempty"`
	RepairedObjects int      `json:"repaired_objects,omitempty"`
	OK              bool     `json:"ok"`
}

// Repair is one object a repair rewrote.
type Repair struct {
	Digest string `json:"digest"`
	// Kind is what was wrong: "missing" or "corrupt".
	Kind string `json:"kind"`
	// Root and Path name the live file it was rewritten from.
	Root string `json:"root"`
	Path string `json:"path"`
	// Paths counts the point's paths that had this content.
	Paths int `json:"paths"`
}

// VerifyOptions control a verification.
type VerifyOptions struct {
	// Repair rewrites every missing or corrupt object from a live file of
	// the point whose content hashes to the object's name. Only such a
	// proven match is used; whatever cannot be repaired stays a problem,
	// with the reason.
	Repair bool
}

// Problem is one path whose stored content is missing or corrupt.
type Problem struct {
	Root   string `json:"root"`
	Path   string `json:"path"`
	Digest string `json:"digest"`
	// Kind is "missing" or "corrupt".
	Kind  string `json:"kind"`
	Error string `json:"error"`
	// RepairError says, after a repair, why this content was not
	// repaired.
	RepairError string `json:"repair_error,omitempty"`
}

// VerifyPoint re-hashes every object point id references and records the
// result in the point's record. It returns an error wrapping
// ErrVerifyFailed when anything is missing or corrupt; the report says what,
// by path. What it finds corrupt it flags in the object store, so the next
// create stores a fresh copy of that content instead of reusing it.
func (m *Manager) VerifyPoint(ctx context.Context, id string) (VerifyReport, error) {
	return m.verifyPoint(ctx, id, VerifyOptions{})
}

// RepairPoint is VerifyPoint with VerifyOptions.Repair: it rewrites the
// missing and corrupt objects it can from matching live files, and
// fails only for what is still missing or corrupt.
func (m *Manager) RepairPoint(ctx context.Context, id string) (VerifyReport, error) {
	return m.verifyPoint(ctx, id, VerifyOptions{Repair: true})
}

func (m *Manager) verifyPoint(ctx context.Context, id string, opts VerifyOptions) (VerifyReport, error) {
	p, err := m.GetPoint(ctx, id)
	if err != nil {
		return VerifyReport{}, err
	}
	op, err := m.newOp(ctx, KindVerify, "", "")
	if err != nil {
		return VerifyReport{}, err
	}
	op.Point = id
	var rep VerifyReport
	err = m.step(ctx, op, "verify", func(s *Step) error {
		rep, err = m.verify(ctx, op.ID, p)
		s.Detail = fmt.Sprintf("%d objects, %d bytes, %.0f MB/s", rep.Objects, rep.Bytes, rep.BytesPerSecond/1e6)
		return err
	})
	if opts.Repair && errors.Is(err, ErrVerifyFailed) && len(rep.Problems) > 0 {
		err = m.step(ctx, op, "repair", func(s *Step) error {
			err := m.repair(ctx, p, &rep)
			s.Detail = fmt.Sprintf("%d objects repaired, %d paths still missing or corrupt", rep.RepairedObjects, len(rep.Problems))
			return err
		})
	}
	if ctx.Err() == nil {
		uerr := m.updatePoint(ctx, id, func(q *Point) {
			t := rep.Checked
			q.LastVerified = &t
			q.Verified = rep.OK
			q.VerifyError = ""
			if err != nil {
				q.VerifyError = err.Error()
			}
		})
		if uerr != nil {
			m.warn(fmt.Errorf("recording verification of %s: %w", id, uerr))
		}
	}
	op.Verify = &rep
	m.finish(ctx, op, err)
	return rep, passCanceled(ctx, err)
}

// VerifyAll verifies every point, oldest objects shared between points
// being hashed once per point. It returns the reports and an error wrapping
// ErrVerifyFailed if any point failed.
func (m *Manager) VerifyAll(ctx context.Context) ([]VerifyReport, error) {
	return m.verifyAll(ctx, VerifyOptions{})
}

// RepairAll is VerifyAll with VerifyOptions.Repair.
func (m *Manager) RepairAll(ctx context.Context) ([]VerifyReport, error) {
	return m.verifyAll(ctx, VerifyOptions{Repair: true})
}

func (m *Manager) verifyAll(ctx context.Context, opts VerifyOptions) ([]VerifyReport, error) {
	pts, err := m.listPoints(ctx)
	if err != nil {
		return nil, err
	}
	var reps []VerifyReport
	var failed []string
	for _, p := range pts {
		rep, err := m.verifyPoint(ctx, p.ID, opts)
		if ctx.Err() != nil {
			return reps, ctx.Err()
		}
		reps = append(reps, rep)
		if err != nil {
			if !errors.Is(err, ErrVerifyFailed) {
				return reps, err
			}
			failed = append(failed, p.ID)
		}
	}
	if len(failed) > 0 {
		return reps, userErr(ErrVerifyFailed, "verification failed for %d of %d points: %v", len(failed), len(pts), failed)
	}
	return reps, nil
}

// verify checks p's manifest and re-hashes its objects, each once.
func (m *Manager) verify(ctx context.Context, opID string, p Point) (VerifyReport, error) {
	rep := VerifyReport{Point: p.ID, Checked: m.now()}
	t0 := time.Now()
	mf, err := m.loadManifest(p, false)
	if err != nil {
		rep.ManifestError = err.Error()
		return rep, err
	}
	rep, err = m.checkObjects(ctx, opID, p.ID, mf, nil)
	rep.Checked = m.now()
	rep.Duration = Duration(time.Since(t0))
	return rep, err
}

// checkObjects re-hashes the objects mf references, in parallel. With
// hash nil it re-hashes every object; otherwise only those in hash, and
// checks the others' presence and size (a restore reads only the objects
// it copies; see doc.go).
func (m *Manager) checkObjects(ctx context.Context, opID, id string, mf *Manifest, hash map[string]bool) (VerifyReport, error) {
	rep := VerifyReport{Point: id}
	t0 := time.Now()
	seen := map[string]bool{}
	var objs []objectCheck
	var total int64
	for _, r := range mf.Roots {
		for _, e := range r.Entries {
			if e.Type != EntryFile || seen[e.Digest] {
				continue
			}
			seen[e.Digest] = true
			o := objectCheck{digest: e.Digest, size: e.Size, sizeOnly: hash != nil && !hash[e.Digest]}
			objs = append(objs, o)
			if !o.sizeOnly {
				total += o.size
			}
		}
	}
	// Biggest first, so the workers finish together.
	slices.SortFunc(objs, func(a, b objectCheck) int { return cmp.Compare(b.size, a.size) })
	pr := m.progress(opID, "verify "+id, int64(len(objs)), total)
	type failure struct {
		kind string
		err  error
	}
	var mu sync.Mutex
	failed := map[string]failure{}
	var bytes atomic.Int64
	flagged := m.objects.flagged()
	err := m.objects.verifyObjects(ctx, m.opts.Workers, objs, func(i int, missing bool, err error) {
		o := objs[i]
		var n int64
		if !o.sizeOnly {
			n = o.size
		}
		switch {
		case err != nil:
			f := failure{"corrupt", err}
			if missing {
				f.kind = "missing"
			} else if ferr := m.objects.flag(o.digest); ferr != nil {
				m.warn(fmt.Errorf("flagging corrupt object %s: %w", short(o.digest), ferr))
			}
			mu.Lock()
			failed[o.digest] = f
			mu.Unlock()
		case flagged[o.digest] && !o.sizeOnly:
			// Good again (a repair or a create replaced it).
			m.objects.unflag(o.digest)
			fallthrough
		default:
			bytes.Add(n)
		}
		pr.add(1, n)
	})
	// Every path with failed content is a problem.
	if len(failed) > 0 {
		for _, r := range mf.Roots {
			for _, e := range r.Entries {
				if f, ok := failed[e.Digest]; ok && e.Type == EntryFile {
					rep.Problems = append(rep.Problems, Problem{Root: r.Path, Path: e.Path, Digest: e.Digest, Kind: f.kind, Error: f.err.Error()})
				}
			}
		}
	}
	pr.done()
	rep.Objects = len(objs)
	rep.Bytes = bytes.Load()
	rep.Duration = Duration(time.Since(t0))
	if s := time.Since(t0).Seconds(); s > 0 {
		rep.BytesPerSecond = float64(rep.Bytes) / s
	}
	if err != nil {
		return rep, err
	}
	sort.Slice(rep.Problems, func(i, j int) bool {
		a, b := rep.Problems[i], rep.Problems[j]
		if a.Root != b.Root {
			return a.Root < b.Root
		}
		return a.Path < b.Path
	})
	return rep, problemsErr(&rep)
}

// problemsErr sets rep.OK, and returns the error for its problems.
func problemsErr(rep *VerifyReport) error {
	rep.OK = len(rep.Problems) == 0
	if rep.OK {
		return nil
	}
	first := rep.Problems[0]
	return userErr(ErrVerifyFailed, "rollback point %s: %d files have missing or corrupt content, first %s/%s (%s)",
		rep.Point, len(rep.Problems), first.Root, first.Path, first.Kind)
}

// repair rewrites each object of rep.Problems from a live file of the
// point that hashes to it, replacing a corrupt object atomically, then
// re-hashes what it wrote. rep's problems become what is left, each with
// why it was not repaired. It holds the object lease, shared, so cleanup
// does not collect what it writes.
func (m *Manager) repair(ctx context.Context, p Point, rep *VerifyReport) error {
	lease, err := m.objectLease(ctx, false)
	if err != nil {
		return err
	}
	defer lease.release()
	configured := m.cfg.allRoots()
	type want struct {
		kind  string
		size  int64
		paths []int // indexes into rep.Problems
	}
	wants := map[string]*want{}
	var digests []string
	mf, err := m.loadManifest(p, false)
	if err != nil {
		return err
	}
	sizes := map[string]int64{}
	for _, r := range mf.Roots {
		for _, e := range r.Entries {
			if e.Type == EntryFile {
				sizes[e.Digest] = e.Size
			}
		}
	}
	for i, pr := range rep.Problems {
		w := wants[pr.Digest]
		if w == nil {
			w = &want{kind: pr.Kind, size: sizes[pr.Digest]}
			wants[pr.Digest] = w
			digests = append(digests, pr.Digest)
		}
		w.paths = append(w.paths, i)
	}
	roots := map[string]*os.Root{}
	defer func() {
		for _, r := range roots {
			if r != nil {
				r.Close()
			}
		}
	}()
	b := m.objects.batch()
	defer b.abort()
	why := map[string]string{}
	from := map[string]Problem{}
	for _, d := range digests {
		if err := ctx.Err(); err != nil {
			return err
		}
		w := wants[d]
		var reasons []string
		for _, i := range w.paths {
			pr := rep.Problems[i]
			if !configured[pr.Root] {
				reasons = append(reasons, fmt.Sprintf("%s is not a configured path", pr.Root))
				continue
			}
			err := m.repairFrom(b, roots, pr.Root, pr.Path, d, w.size)
			if err == nil {
				from[d] = pr
				break
			}
			reasons = append(reasons, err.Error())
		}
		if _, ok := from[d]; !ok {
			why[d] = "no live file matches: " + strings.Join(reasons, "; ")
		}
	}
	if err := b.commit(); err != nil {
		return err
	}
	// Trust nothing unchecked: re-hash every rewritten object.
	c := m.objects.checker()
	defer c.close()
	for d, pr := range from {
		if _, err := c.check(d, wants[d].size); err != nil {
			why[d] = "rewritten, but still fails: " + err.Error()
			delete(from, d)
			continue
		}
		rep.Repaired = append(rep.Repaired, Repair{Digest: d, Kind: wants[d].kind, Root: pr.Root, Path: pr.Path, Paths: len(wants[d].paths)})
	}
	sort.Slice(rep.Repaired, func(i, j int) bool {
		a, b := rep.Repaired[i], rep.Repaired[j]
		if a.Root != b.Root {
			return a.Root < b.Root
		}
		return a.Path < b.Path
	})
	rep.RepairedObjects = len(rep.Repaired)
	left := rep.Problems[:0]
	for _, pr := range rep.Problems {
		if _, ok := from[pr.Digest]; !ok {
			pr.RepairError = why[pr.Digest]
			left = append(left, pr)
		}
	}
	rep.Problems = left
	return problemsErr(rep)
}

// repairFrom stores the live file root/rel as object d if, as read, it
// hashes to d. The file is reached through an os.Root on root (no
// escaping it) and must be the regular file it was when looked up: a
// FIFO or device is never read, and opening never blocks.
func (m *Manager) repairFrom(b *objectBatch, roots map[string]*os.Root, root, rel, d string, size int64) error {
	where := filepath.Join(root, rel)
	var f *os.File
	var info fs.FileInfo
	var err error
	const flags = os.O_RDONLY | oNoFollow | syscall.O_NONBLOCK
	if rel == "." {
		if info, err = os.Lstat(root); err == nil && info.Mode().IsRegular() {
			f, err = os.OpenFile(root, flags, 0)
		}
	} else {
		r, ok := roots[root]
		if !ok {
			r, err = os.OpenRoot(root)
			if err != nil {
				r = nil
			}
			roots[root] = r
		}
		if r == nil {
			return fmt.Errorf("%s cannot be opened", root)
		}
		if info, err = r.Lstat(rel); err == nil && info.Mode().IsRegular() {
			f, err = r.OpenFile(rel, flags, 0)
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s is gone", where)
	case err != nil:
		return fmt.Errorf("%s: %v", where, err)
	case !info.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", where)
	}
	defer f.Close()
	got, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	if !os.SameFile(info, got) || !got.Mode().IsRegular() {
		return fmt.Errorf("%s changed while it was opened", where)
	}
	if got.Size() != size {
		return fmt.Errorf("%s has %d bytes, the point %d", where, got.Size(), size)
	}
	h, _, err := b.addAs(f, d)
	if errors.Is(err, errContentDiffers) {
		return fmt.Errorf("%s differs (hashes to %s)", where, short(h))
	}
	if err != nil {
		return fmt.Errorf("%s: %v", where, err)
	}
	return nil
}
