package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// After a restore, the files of each restored root are new inodes
// (copied) or have a new ctime (linked, then unlinked from the old tree),
// so the newest point's digests no longer match them and the next point
// would hash them all again. A restore therefore records what it left:
// backups/restored/<root>.json holds, for each entry of a restored root
// that matches the point by metadata right after the swap (before
// post_restore starts the application again), its inode, times and the
// point's digest,
// with the time the record was taken as its scan start. The next point
// takes it as its parent where it is newer than the newest point of that
// root, and only while the restored point is in the catalog (so its
// objects are kept). The same reuse rule applies: inode, size, mtime and
// ctime equal, both times older than the record.

// restoredRecord is the file's content.
type restoredRecord struct {
	Point string `json:"point"`
	// PointDigest is the point's manifest digest: an id reused by a
	// later point (deleted, then a clock stepped back) is not the point.
	PointDigest string          `json:"point_digest"`
	Op          string          `json:"op"`
	Manifest    json.RawMessage `json:"manifest"`
}

func (m *Manager) restoredPath(root string) string {
	sum := sha256.Sum256([]byte(root))
	return filepath.Join(m.cfg.Backups, "restored", hex.EncodeToString(sum[:16])+".json")
}

// recordRestored writes the record of root, just restored from point to
// desired by op. Errors are warnings: the record only saves hashing.
func (m *Manager) recordRestored(ctx context.Context, op string, point Point, desired RootManifest) {
	if err := m.writeRestored(ctx, op, point, desired); err != nil {
		m.warn(fmt.Errorf("op %s: recording the restored %s (the next point hashes it again): %w", op, desired.Path, err))
	}
}

func (m *Manager) writeRestored(ctx context.Context, op string, point Point, desired RootManifest) error {
	p := m.restoredPath(desired.Path)
	os.Remove(p)
	if desired.Absent {
		return nil
	}
	// Wait out the clock tick of the last change the restore made (the
	// fine clock: multigrain timestamps can be ahead of the coarse one),
	// so none of its own times is racy against the record.
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_REALTIME, &ts)
	for deadline := time.Now().Add(100 * time.Millisecond); fsNow() <= ts.Nano() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	rm := RootManifest{Path: desired.Path, Scanned: fsNow()}
	if m.fsClock != nil {
		rm.Scanned = m.fsClock()
	}
	live, absent, err := liveEntries(ctx, desired.Path, true)
	if err != nil || absent {
		return err
	}
	want := make(map[string]Entry, len(desired.Entries))
	for _, e := range desired.Entries {
		want[e.Path] = e
	}
	kept := map[string]bool{}
	for _, l := range live {
		d, ok := want[l.Path]
		if !ok || d.Changed || metaDiff(l, d, true) != "" || l.Path != "." && !kept[path.Dir(l.Path)] {
			continue
		}
		if l.Type == EntryFile {
			l.Digest = d.Digest
		}
		l.Link = 0
		kept[l.Path] = true
		rm.Entries = append(rm.Entries, l)
	}
	if len(rm.Entries) == 0 {
		return nil
	}
	b, _, err := (&Manifest{Version: ManifestVersion, Roots: []RootManifest{rm}}).encode()
	if err != nil {
		return err
	}
	rec, err := json.Marshal(restoredRecord{Point: point.ID, PointDigest: point.ManifestDigest, Op: op, Manifest: b})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(p, rec, 0o600)
}

// restoredParent returns the record of root as a parent (its point, its
// entries by path and its scan start) if it is newer than scanned and
// its point is still in all; else "".
func (m *Manager) restoredParent(root string, all []Point, scanned int64) (string, map[string]Entry, int64) {
	b, err := os.ReadFile(m.restoredPath(root))
	if err != nil {
		return "", nil, 0
	}
	var rec restoredRecord
	if json.Unmarshal(b, &rec) != nil {
		return "", nil, 0
	}
	if !slices.ContainsFunc(all, func(p Point) bool {
		return p.ID == rec.Point && p.ManifestDigest == rec.PointDigest && m.ownPoint(p)
	}) {
		return "", nil, 0
	}
	mf, err := decodeManifest(rec.Manifest)
	if err != nil || len(mf.Roots) != 1 || mf.Roots[0].Path != root || mf.Roots[0].Scanned <= scanned {
		return "", nil, 0
	}
	prev := make(map[string]Entry, len(mf.Roots[0].Entries))
	for _, e := range mf.Roots[0].Entries {
		prev[e.Path] = e
	}
	return rec.Point, prev, mf.Roots[0].Scanned
}
