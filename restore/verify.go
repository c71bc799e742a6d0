package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
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
	// Problems lists every path whose content is missing or corrupt.
	Problems []Problem `json:"problems,omitempty"`
	OK       bool      `json:"ok"`
}

// Problem is one path whose stored content is missing or corrupt.
type Problem struct {
	Root   string `json:"root"`
	Path   string `json:"path"`
	Digest string `json:"digest"`
	// Kind is "missing" or "corrupt".
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

// VerifyPoint re-hashes every object point id references and records the
// result in the point's record. It returns an error wrapping
// ErrVerifyFailed when anything is missing or corrupt; the report says what,
// by path.
func (m *Manager) VerifyPoint(ctx context.Context, id string) (VerifyReport, error) {
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
	pts, err := m.listPoints(ctx)
	if err != nil {
		return nil, err
	}
	var reps []VerifyReport
	var failed []string
	for _, p := range pts {
		rep, err := m.VerifyPoint(ctx, p.ID)
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
	err := m.objects.verifyObjects(ctx, m.opts.Workers, objs, func(i int, missing bool, err error) {
		o := objs[i]
		var n int64
		if !o.sizeOnly {
			n = o.size
		}
		if err != nil {
			f := failure{"corrupt", err}
			if missing {
				f.kind = "missing"
			}
			mu.Lock()
			failed[o.digest] = f
			mu.Unlock()
		} else {
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
	if len(rep.Problems) > 0 {
		first := rep.Problems[0]
		return rep, userErr(ErrVerifyFailed, "rollback point %s: %d files have missing or corrupt content, first %s/%s (%s)",
			id, len(rep.Problems), first.Root, first.Path, first.Kind)
	}
	rep.OK = true
	return rep, nil
}
