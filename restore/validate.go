package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// Validation levels.
const (
	LevelBasic         = "basic"
	LevelStandard      = "standard"
	LevelComprehensive = "comprehensive"
)

// sampleRequests is how many requests comprehensive validation sends to
// each validate URL.
const sampleRequests = 20

// ValidationReport is the result of ValidateSystem or of a restore's
// validate step.
type ValidationReport struct {
	Level   string    `json:"level"`
	Checked time.Time `json:"checked"`
	OK      bool      `json:"ok"`
	Checks  []Check   `json:"checks"`
	// Failures repeats the failed checks' messages.
	Failures []string `json:"failures,omitempty"`
}

// Check is one validation check.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func (r *ValidationReport) add(name string, err error, detail string) {
	c := Check{Name: name, OK: err == nil, Detail: detail}
	if err != nil {
		c.Detail = err.Error()
		r.Failures = append(r.Failures, name+": "+err.Error())
	}
	r.Checks = append(r.Checks, c)
}

// ValidateSystem checks the live system at level basic (configured paths
// exist, validate URLs answer as expected), standard (basic, plus the live
// files match the point restored last, by metadata) or comprehensive
// (standard, plus live contents re-hashed against that point, every point
// verified, and error rate and latency sampled from the validate URLs).
// It returns an error wrapping ErrValidationFailed when a check fails.
func (m *Manager) ValidateSystem(ctx context.Context, level string) (ValidationReport, error) {
	if level == "" {
		level = LevelBasic
	}
	if level != LevelBasic && level != LevelStandard && level != LevelComprehensive {
		return ValidationReport{}, userErr(nil, "unknown validation level %q: want basic, standard or comprehensive", level)
	}
	rep := ValidationReport{Level: level, Checked: m.now()}
	roots := make([]string, 0)
	for r := range m.cfg.allRoots() {
		roots = append(roots, r)
	}
	sort.Strings(roots)
	for _, r := range roots {
		_, err := os.Lstat(r)
		rep.add("exists "+r, err, "")
	}
	m.checkURLs(ctx, &rep, level == LevelComprehensive)
	if level != LevelBasic {
		last, mf, err := m.lastRestored(ctx)
		switch {
		case err != nil:
			rep.add("last restored point", err, "")
		case mf == nil:
			rep.add("last restored point", nil, "no restore recorded; nothing to compare")
		default:
			for _, r := range mf.Roots {
				n, err := compareLive(ctx, r, level == LevelComprehensive)
				rep.add("matches "+last+" "+r.Path, err, fmt.Sprintf("%d entries", n))
			}
		}
	}
	if level == LevelComprehensive {
		_, err := m.VerifyAll(ctx)
		rep.add("verify all points", err, "")
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.OK = len(rep.Failures) == 0
	if !rep.OK {
		return rep, userErr(ErrValidationFailed, "validation (%s) failed: %s", level, strings.Join(rep.Failures, "; "))
	}
	return rep, nil
}

// validateRestored is a restore's validate step: basic checks plus the
// restored roots compared with what was restored, by metadata.
func (m *Manager) validateRestored(ctx context.Context, targets []target) ValidationReport {
	rep := ValidationReport{Level: LevelBasic, Checked: m.now()}
	for _, t := range targets {
		d := t.desired
		if t.only != nil {
			// Only part was restored; compare that part.
			d = filterOnly(d, t.only)
		}
		n, err := compareLive(ctx, d, false)
		rep.add("matches "+t.root, err, fmt.Sprintf("%d entries", n))
	}
	m.checkURLs(ctx, &rep, false)
	rep.OK = len(rep.Failures) == 0
	return rep
}

func filterOnly(r RootManifest, only []string) RootManifest {
	out := RootManifest{Path: r.Path, Absent: r.Absent}
	for _, e := range r.Entries {
		if underAny(e.Path, only) {
			out.Entries = append(out.Entries, e)
		}
	}
	return out
}

// lastRestored returns the point of the newest successful restore and its
// manifest (nil if there was none).
func (m *Manager) lastRestored(ctx context.Context) (string, *Manifest, error) {
	ops, err := m.ListOperations(ctx, 0)
	if err != nil {
		return "", nil, err
	}
	for _, op := range ops {
		if (op.Kind == KindRollback || op.Kind == KindEmergency) && !op.DryRun && len(op.Only) == 0 &&
			(op.Status == StatusCompleted || op.Status == StatusRolledForward || op.Status == StatusFailed && op.Journal != nil && op.Journal.Phase == PhaseDone && op.Validation != nil) {
			p, err := m.GetPoint(ctx, op.Point)
			if err != nil {
				return op.Point, nil, err
			}
			mf, err := m.loadManifest(p, false)
			return p.ID, mf, err
		}
	}
	return "", nil, nil
}

// compareLive checks the live tree at r.Path against r: same entries, types,
// modes, sizes, file mtimes and link targets; with hash, file contents
// too. Directory mtimes are not compared (they change with any edit).
func compareLive(ctx context.Context, r RootManifest, hash bool) (int, error) {
	var diffs []string
	n := 0
	for _, e := range r.Entries {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		n++
		p := r.Path
		if e.Path != "." {
			p += "/" + e.Path
		}
		info, err := os.Lstat(p)
		if err != nil {
			diffs = append(diffs, p+" missing")
			continue
		}
		l := entryFromInfo(e.Path, info)
		switch {
		case l.Type != e.Type:
			diffs = append(diffs, fmt.Sprintf("%s is a %s, want %s", p, l.Type, e.Type))
		case l.Mode != e.Mode:
			diffs = append(diffs, fmt.Sprintf("%s has mode %o, want %o", p, l.Mode, e.Mode))
		case e.Type == EntryFile && (l.Size != e.Size || l.MTime != e.MTime):
			diffs = append(diffs, p+" size or mtime differs")
		case e.Type == EntrySymlink:
			if t, _ := os.Readlink(p); t != e.Target {
				diffs = append(diffs, p+" link target differs")
			}
		case e.Type == EntryFile && hash:
			if d, _, err := hashFile(p); err != nil || d != e.Digest {
				diffs = append(diffs, p+" content differs")
			}
		}
	}
	if r.Absent {
		if _, err := os.Lstat(r.Path); !errors.Is(err, fs.ErrNotExist) {
			diffs = append(diffs, r.Path+" exists, want absent")
		}
	} else if len(r.Entries) > 0 && r.Entries[0].Type == EntryDir && r.Entries[0].Path == "." {
		// Extra entries: count what is there.
		live := 0
		walkDir(ctx, r.Path, "", func(rel, abs string, info fs.FileInfo) error { live++; return nil })
		if live != len(r.Entries)-1 {
			diffs = append(diffs, fmt.Sprintf("%s has %d entries, want %d", r.Path, live, len(r.Entries)-1))
		}
	}
	if len(diffs) > 0 {
		more := ""
		if len(diffs) > 5 {
			more = fmt.Sprintf(" and %d more", len(diffs)-5)
			diffs = diffs[:5]
		}
		return n, errors.New(strings.Join(diffs, ", ") + more)
	}
	return n, nil
}

// checkURLs requests every validate URL once, or sampleRequests times with
// sample, and checks status, error rate and latency.
func (m *Manager) checkURLs(ctx context.Context, rep *ValidationReport, sample bool) {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, v := range m.cfg.ValidateURLs {
		want := v.Status
		if want == 0 {
			want = http.StatusOK
		}
		n := 1
		if sample {
			n = sampleRequests
		}
		var failures int
		var lat []time.Duration
		var firstErr error
		for i := 0; i < n && ctx.Err() == nil; i++ {
			t0 := time.Now()
			err := get(ctx, client, v.URL, want)
			lat = append(lat, time.Since(t0))
			if err != nil {
				failures++
				if firstErr == nil {
					firstErr = err
				}
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		detail := fmt.Sprintf("status %d", want)
		if sample && len(lat) > 0 {
			p50 := lat[len(lat)/2]
			p95 := lat[min(len(lat)-1, len(lat)*95/100)]
			detail = fmt.Sprintf("%d requests, error rate %.1f%%, p50 %s, p95 %s", len(lat), 100*float64(failures)/float64(len(lat)), p50.Round(time.Microsecond), p95.Round(time.Microsecond))
			if failures > 0 {
				firstErr = fmt.Errorf("%s; first error: %v", detail, firstErr)
			}
		}
		rep.add("url "+v.URL, firstErr, detail)
	}
}

func get(ctx context.Context, c *http.Client, url string, want int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("status %d, want %d", resp.StatusCode, want)
	}
	return nil
}
