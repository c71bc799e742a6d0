package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
// files match the point restored last, by metadata and by content,
// re-hashed: an edit can keep size and mtime, as cp -p and touch -r do) or
// comprehensive (standard, plus every point verified, and error rate and
// latency sampled from the validate URLs).
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
				n, err := compareLive(ctx, r, true)
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

// compareLive checks the live tree at r.Path against r: same entries,
// types, modes, owners, xattrs, sizes, file mtimes, link targets and
// hard-link groups (what this process may restore of them; see
// restorableMode); with hash, file contents too. Directory mtimes are not
// compared (they change with any edit).
func compareLive(ctx context.Context, r RootManifest, hash bool) (int, error) {
	var diffs []string
	entries, absent, err := liveEntries(ctx, r.Path, true)
	if err != nil {
		return 0, err
	}
	live := make(map[string]Entry, len(entries))
	for _, e := range entries {
		live[e.Path] = e
	}
	var pfd = -1
	if hash && !absent {
		if pfd, err = unix.Open(filepath.Dir(r.Path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return 0, err
		}
		defer unix.Close(pfd)
	}
	groupIno := map[uint64]uint64{}
	n := 0
	for _, e := range r.Entries {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		n++
		p := joinRel(r.Path, e.Path)
		l, ok := live[e.Path]
		if !ok {
			diffs = append(diffs, p+" missing")
			continue
		}
		if d := metaDiff(l, e, true); d != "" {
			diffs = append(diffs, p+" "+d)
			continue
		}
		if e.Link != 0 {
			if ino, ok := groupIno[e.Link]; !ok {
				groupIno[e.Link] = l.Ino
			} else if ino != l.Ino {
				diffs = append(diffs, p+" is not hard-linked to the rest of its group")
				continue
			}
		}
		if e.Type == EntryFile && hash {
			rel := filepath.Base(r.Path)
			if e.Path != "." {
				rel += "/" + e.Path
			}
			if d, err := hashBeneath(pfd, rel); err != nil || d != e.Digest {
				diffs = append(diffs, p+" content differs")
			}
		}
	}
	if r.Absent {
		if !absent {
			diffs = append(diffs, r.Path+" exists, want absent")
		}
	} else if !absent && len(r.Entries) > 0 && r.Entries[0].Path == "." && len(entries) != len(r.Entries) {
		diffs = append(diffs, fmt.Sprintf("%s has %d entries, want %d", r.Path, len(entries), len(r.Entries)))
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

// metaDiff says how live entry l differs from e by metadata, or "" if it
// does not: type, mode, owner, size and mtime of files, link target, and
// with xattrs the extended attributes. Only what this process could have
// restored counts: as another user than root, the owner and setuid bits
// of entries it cannot chown, and xattrs it may not set, are left out.
func metaDiff(l, e Entry, xattrs bool) string {
	switch {
	case l.Type != e.Type:
		return fmt.Sprintf("is a %s, want %s", l.Type, e.Type)
	case e.Type != EntrySymlink && l.Mode != restorableMode(e):
		return fmt.Sprintf("has mode %o, want %o", l.Mode, restorableMode(e))
	case canChown(e.UID, e.GID) && (l.UID != e.UID || l.GID != e.GID):
		return fmt.Sprintf("is owned by %d:%d, want %d:%d", l.UID, l.GID, e.UID, e.GID)
	case e.Type == EntryFile && (l.Size != e.Size || l.MTime != e.MTime):
		return "size or mtime differs"
	case e.Type == EntrySymlink && l.Target != e.Target:
		return "link target differs"
	case xattrs && !slices.Equal(restorableXattrs(l.Xattrs), restorableXattrs(e.Xattrs)):
		return "extended attributes differ"
	}
	return ""
}

// restorableXattrs returns the xattrs of xs this process may set.
func restorableXattrs(xs []Xattr) []Xattr {
	if euid == 0 {
		return xs
	}
	var out []Xattr
	for _, x := range xs {
		if xattrRestorable(x.Name) {
			out = append(out, x)
		}
	}
	return out
}

// hashBeneath hashes the regular file at rel below the directory pfd,
// reached without following symlinks.
func hashBeneath(pfd int, rel string) (string, error) {
	fd, err := openBeneath(pfd, rel, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		return "", errors.New("not a regular file")
	}
	d, _, err := copyHashing(io.Discard, f)
	return d, err
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
