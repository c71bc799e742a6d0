package restore

import (
	"context"
	"errors"
	"fmt"
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
	type ref struct{ root, path string }
	refs := map[string][]ref{}
	sizes := map[string]int64{}
	var digests []string
	for _, r := range mf.Roots {
		for _, e := range r.Entries {
			if e.Type != EntryFile {
				continue
			}
			if _, ok := refs[e.Digest]; !ok {
				digests = append(digests, e.Digest)
				sizes[e.Digest] = e.Size
			}
			refs[e.Digest] = append(refs[e.Digest], ref{r.Path, e.Path})
		}
	}
	// Biggest first, so the workers finish together.
	sort.Slice(digests, func(i, j int) bool { return sizes[digests[i]] > sizes[digests[j]] })
	var total int64
	for _, d := range digests {
		if hash == nil || hash[d] {
			total += sizes[d]
		}
	}
	pr := m.progress(opID, "verify "+id, int64(len(digests)), total)
	var mu sync.Mutex
	var bytes atomic.Int64
	// Twice as many workers as cores: small objects cost an open and a
	// read each, which overlap with hashing.
	err := parallel(ctx, 2*m.opts.Workers, len(digests), func(i int) error {
		d := digests[i]
		var missing bool
		var err error
		if hash == nil || hash[d] {
			missing, err = m.objects.check(d, sizes[d])
		} else {
			missing, err = m.objects.checkSize(d, sizes[d])
		}
		if err != nil {
			kind := "corrupt"
			if missing {
				kind = "missing"
			}
			mu.Lock()
			for _, r := range refs[d] {
				rep.Problems = append(rep.Problems, Problem{Root: r.root, Path: r.path, Digest: d, Kind: kind, Error: err.Error()})
			}
			mu.Unlock()
		} else if hash == nil || hash[d] {
			bytes.Add(sizes[d])
		}
		if hash == nil || hash[d] {
			pr.add(1, sizes[d])
		} else {
			pr.add(1, 0)
		}
		return nil
	})
	pr.done()
	rep.Objects = len(digests)
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
