package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/leanvibe/switchback/state"
)

// Point is a rollback point's catalog record, stored at points/<id>.
type Point struct {
	ID         string   `json:"id"`
	Type       string   `json:"type"`
	Components []string `json:"components,omitempty"`
	// Roots are the absolute paths the point covers.
	Roots   []string  `json:"roots"`
	Created time.Time `json:"created"`
	// Size is the total size of the point's files, Files their number.
	Size  int64 `json:"size"`
	Files int   `json:"files"`
	// ManifestDigest is the SHA-256 of the manifest file.
	ManifestDigest string          `json:"manifest_digest"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	Tags           []string        `json:"tags,omitempty"`
	Trigger        string          `json:"trigger,omitempty"`
	Host           string          `json:"host,omitempty"`
	// HostID is the id of the host that created the point, whose disk
	// holds its objects (see Options.HostIDFile).
	HostID string `json:"host_id,omitempty"`
	// Parent is the point whose digests were reused, if any.
	Parent string `json:"parent,omitempty"`
	// Auto is "pre-rollback" for the automatic point a restore makes.
	Auto string `json:"auto,omitempty"`
	// Op is the operation that created the point. Recovery uses it to
	// find the pre-rollback point of a restore that died before its record
	// named it.
	Op string `json:"op,omitempty"`
	// Seq is this host's creation order: one more than the highest of its
	// points when it was made. "Newest" (emergency, a new point's parent)
	// goes by it, so a clock stepped back does not make an older point
	// look newer. 0 in points made before it was recorded.
	Seq uint64 `json:"seq,omitempty"`
	// ChangedCount counts the files that kept changing while they were
	// read: the point holds what the last read saw (see
	// Entry.Changed). Changed lists the first of them.
	ChangedCount int      `json:"changed_count,omitempty"`
	Changed      []string `json:"changed,omitempty"`
	// LastVerified is when VerifyPoint last ran; Verified is its result.
	LastVerified *time.Time `json:"last_verified,omitempty"`
	Verified     bool       `json:"verified"`
	VerifyError  string     `json:"verify_error,omitempty"`
}

// CreateOptions describe a point to create.
type CreateOptions struct {
	// Type is one of the point types. Required.
	Type string
	// Component names the component of a partial_component point; empty
	// means all components.
	Component string
	// Metadata, if set, must be a JSON object.
	Metadata json.RawMessage
	// Tags mark a point to keep forever.
	Tags []string
	// Trigger says what asked for the point ("manual", "daily"...).
	Trigger string
}

// AutoPreRollback is the Auto value of the point a restore makes first.
const AutoPreRollback = "pre-rollback"

// maxChangedListed bounds Point.Changed so its record fits in the store.
const maxChangedListed = 20

// maxMetadata bounds a point's metadata so its record fits in the store.
const maxMetadata = 64 << 10

// CreatePoint snapshots the paths of opts.Type into a new point. Files
// unchanged since the newest point of the same path (same size, mtime,
// ctime and inode, neither time racy; see scanRoot) reuse its digests. Nothing is added to the catalog unless every
// file was read and stored.
func (m *Manager) CreatePoint(ctx context.Context, opts CreateOptions) (Point, error) {
	meta, err := checkMetadata(opts.Metadata)
	if err != nil {
		return Point{}, err
	}
	for _, t := range opts.Tags {
		if err := state.CheckName(t); err != nil {
			return Point{}, userErr(nil, "invalid tag: %v", err)
		}
	}
	roots, comps, err := m.cfg.roots(opts.Type, opts.Component)
	if err != nil {
		return Point{}, err
	}
	op, err := m.newOp(ctx, KindCreate, opts.Trigger, "")
	if err != nil {
		return Point{}, err
	}
	var p Point
	err = m.step(ctx, op, "create_point", func(s *Step) error {
		p, err = m.createPoint(ctx, op.ID, pointSpec{
			typ: opts.Type, components: comps, roots: roots, metadata: meta,
			tags: opts.Tags, trigger: opts.Trigger,
		})
		s.Detail = fmt.Sprintf("%s: %d files, %d bytes", p.ID, p.Files, p.Size)
		return err
	})
	op.Point = p.ID
	m.finish(ctx, op, err)
	return p, passCanceled(ctx, err)
}

// checkMetadata checks that raw is empty or a JSON object, and compacts it.
func checkMetadata(raw json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, userErr(nil, "metadata must be a JSON object, like {\"phase\":\"pre-migration\"}; got %.60q", string(raw))
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, userErr(nil, "metadata must be a JSON object: %v", err)
	}
	if buf.Len() > maxMetadata {
		return nil, userErr(nil, "metadata is %d bytes; at most %d allowed", buf.Len(), maxMetadata)
	}
	return buf.Bytes(), nil
}

type pointSpec struct {
	typ        string
	components []string
	roots      []string
	metadata   json.RawMessage
	tags       []string
	trigger    string
	auto       string
}

// createPoint scans spec.roots, stores new content, writes the manifest
// and then, last, the catalog record. It returns the point and the
// manifest.
func (m *Manager) createPoint(ctx context.Context, opID string, spec pointSpec) (Point, error) {
	p, _, err := m.createPointManifest(ctx, opID, spec)
	return p, err
}

func (m *Manager) createPointManifest(ctx context.Context, opID string, spec pointSpec) (Point, *Manifest, error) {
	// The object lease, shared, from before the parent is chosen until the
	// point is committed: cleanup cannot remove the objects it reuses.
	lease, err := m.objectLease(ctx, false)
	if err != nil {
		return Point{}, nil, err
	}
	defer lease.release()
	all, err := m.listPoints(ctx)
	if err != nil {
		return Point{}, nil, err
	}
	mf := &Manifest{Version: ManifestVersion}
	var size int64
	var files int
	parents := map[string]bool{}
	// New content goes into one batch, made durable with one sync before
	// the manifest names it.
	objs := m.objects.batch()
	defer objs.abort()
	var changed []string
	for _, root := range spec.roots {
		rm, parent, ch, err := m.scanRoot(ctx, opID, root, all, objs)
		if err != nil {
			return Point{}, nil, err
		}
		changed = append(changed, ch...)
		if parent != "" {
			parents[parent] = true
		}
		for _, e := range rm.Entries {
			if e.Type == EntryFile {
				size += e.Size
				files++
			}
		}
		mf.Roots = append(mf.Roots, rm)
	}
	if err := objs.commit(); err != nil {
		return Point{}, nil, err
	}
	b, digest, err := mf.encode()
	if err != nil {
		return Point{}, nil, err
	}
	p := Point{
		Type: spec.typ, Components: spec.components, Roots: spec.roots,
		Created: m.now(), Size: size, Files: files, ManifestDigest: digest,
		Metadata: spec.metadata, Tags: spec.tags, Trigger: spec.trigger,
		Host: m.opts.Host, HostID: m.hostID, Auto: spec.auto, Op: opID,
		ChangedCount: len(changed), Changed: truncate(changed, maxChangedListed),
	}
	for _, q := range all {
		if m.ownPoint(q) {
			p.Seq = max(p.Seq, q.Seq)
		}
	}
	p.Seq++
	for par := range parents {
		p.Parent = par // one root's parent; informational
	}
	if err := m.hook("before-catalog"); err != nil {
		return Point{}, nil, err
	}
	if err := m.commitPoint(ctx, &p, b); err != nil {
		return Point{}, nil, err
	}
	return p, mf, nil
}

// commitPoint picks an unused id, writes the manifest file under it and
// then CAS-creates the catalog record. The manifest file is linked into
// place (failing if the name is taken), so two creators never share one.
func (m *Manager) commitPoint(ctx context.Context, p *Point, manifest []byte) error {
	dir := filepath.Join(m.cfg.Backups, "manifests")
	tmp, err := os.CreateTemp(dir, ".tmp-manifest-*")
	if err != nil {
		return fmt.Errorf("writing manifest: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	_, err = tmp.Write(manifest)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing manifest: %w", err)
	}
	base := "rollback-" + p.Created.Format("20060102-150405")
	for n := 0; n < 1000; n++ {
		id := base
		if n > 0 {
			id += "-" + strconv.Itoa(n)
		}
		if err := os.Link(tmpName, m.manifestPath(id)); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return fmt.Errorf("writing manifest: %w", err)
		}
		if err := syncDir(dir); err != nil {
			os.Remove(m.manifestPath(id))
			return fmt.Errorf("writing manifest: %w", err)
		}
		p.ID = id
		b, err := json.Marshal(p)
		if err == nil && len(b) >= state.MaxValueSize {
			err = userErr(nil, "point record is %d bytes, over the store's limit; use less metadata", len(b))
		}
		if err != nil {
			os.Remove(m.manifestPath(id))
			return err
		}
		_, err = m.st.CAS(context.WithoutCancel(ctx), state.Key(state.NSPoints, id), b, 0)
		if errors.Is(err, state.ErrConflict) {
			os.Remove(m.manifestPath(id))
			continue
		}
		if err != nil {
			os.Remove(m.manifestPath(id))
			return fmt.Errorf("recording point %s: %w", id, err)
		}
		return nil
	}
	return errors.New("recording point: no free id")
}

// scanRoot records root: every entry below it, storing the content of
// files that changed since the parent point. It walks by directory
// handles (walkTree) and reads each file through a handle opened below
// the root's parent without following any symlink (openBeneath), checked
// against what the walk saw. It returns the root's manifest, the parent
// point whose digests it reused, and the paths recorded as changed
// while they were read.
func (m *Manager) scanRoot(ctx context.Context, opID, root string, all []Point, objs *objectBatch) (RootManifest, string, []string, error) {
	rm := RootManifest{Path: root, Scanned: fsNow()}
	if m.fsClock != nil {
		rm.Scanned = m.fsClock()
	}
	parentID, prev, parentScanned := m.parentEntries(root, all)

	type job struct {
		idx int
		rel string
		st  unix.Stat_t
	}
	var jobs []job
	var total int64
	groups := map[[2]uint64]uint64{} // device and inode → hard-link group
	add := func(dirFd int, name, rel string, st *unix.Stat_t, fd int) error {
		e := entryFromStat(rel, st)
		abs := joinRel(root, rel)
		if e.Type == "" {
			m.warn(fmt.Errorf("skipping %s: %s", abs, kindOf(st)))
			return nil
		}
		// Unchanged since the parent point read it: ctime moves with any
		// change of content, mode, owner, links or xattrs, and a time not
		// older than the parent's scan may hide a change made in the same
		// clock tick, after the parent read it.
		pe, ok := prev[rel]
		same := ok && pe.Type == e.Type && pe.Ino == e.Ino && e.Ino != 0 && pe.MTime == e.MTime && pe.CTime == e.CTime &&
			pe.CTime != 0 && !pe.Changed && e.MTime < parentScanned && e.CTime < parentScanned
		if same {
			e.Xattrs = pe.Xattrs
		}
		var err error
		switch e.Type {
		case EntryFile:
			if st.Nlink > 1 && rel != "." {
				k := [2]uint64{st.Dev, st.Ino}
				if g, ok := groups[k]; ok {
					// A further name of a file already recorded: it gets
					// the first one's content once that is read.
					e.Link = g
					rm.Entries = append(rm.Entries, e)
					return nil
				}
				e.Link = uint64(len(groups) + 1)
				groups[k] = e.Link
			}
			if same && pe.Size == e.Size && !objs.isFlagged(pe.Digest) {
				e.Digest = pe.Digest
			} else {
				e.Xattrs = nil
				jobs = append(jobs, job{len(rm.Entries), rel, *st})
				total += e.Size
			}
		case EntryDir:
			if !same {
				e.Xattrs, err = listXattrsFd(fd)
			}
		case EntrySymlink:
			if e.Target, err = readlinkAt(dirFd, name); err != nil {
				return userErr(err, "cannot read link %s: %v", abs, err)
			}
			fallthrough
		case EntryFIFO:
			if !same {
				e.Xattrs, err = listXattrsAt(dirFd, name)
			}
		}
		if err != nil {
			return userErr(err, "cannot read the extended attributes of %s: %v", abs, err)
		}
		rm.Entries = append(rm.Entries, e)
		return nil
	}
	vanished := func(rel string) {
		m.warn(fmt.Errorf("%s vanished while the point was being made; it is not in the point", joinRel(root, rel)))
	}
	if err := walkTree(ctx, root, add, vanished); err != nil {
		if errors.Is(err, errRootAbsent) {
			return RootManifest{Path: root, Absent: true}, "", nil, nil
		}
		return rm, "", nil, passCanceled(ctx, err)
	}
	pfd, err := unix.Open(filepath.Dir(root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return rm, "", nil, userErr(err, "cannot read %s: %v", filepath.Dir(root), err)
	}
	defer unix.Close(pfd)
	base := filepath.Base(root)
	beneath := func(rel string) string {
		if rel == "." {
			return base
		}
		return base + "/" + rel
	}
	pr := m.progress(opID, "hash "+root, int64(len(jobs)), total)
	defer pr.done()
	var mu sync.Mutex
	var changed []string
	read := func(j job) error {
		e := &rm.Entries[j.idx]
		abs := joinRel(root, j.rel)
		gone, unstable, err := m.readFile(pfd, beneath(j.rel), abs, e, j.st, objs)
		if err != nil {
			return err
		}
		if gone {
			vanished(j.rel)
			e.Type = "" // dropped below
		}
		if unstable {
			mu.Lock()
			changed = append(changed, abs)
			mu.Unlock()
		}
		pr.add(1, e.Size)
		return nil
	}
	err = parallel(ctx, m.opts.Workers, len(jobs), func(i int) error { return read(jobs[i]) })
	if err != nil {
		return rm, "", nil, passCanceled(ctx, err)
	}
	if len(groups) > 0 {
		if err := m.linkGroups(&rm, func(i int) error { return read(job{i, rm.Entries[i].Path, unix.Stat_t{}}) }); err != nil {
			return rm, "", nil, passCanceled(ctx, err)
		}
	}
	if len(rm.Entries) == 0 || rm.Entries[0].Type == "" {
		// The root itself vanished while it was read.
		return RootManifest{Path: root, Absent: true}, "", nil, nil
	}
	rm.Entries = slices.DeleteFunc(rm.Entries, func(e Entry) bool { return e.Type == "" })
	sort.Strings(changed)
	return rm, parentID, changed, nil
}

// linkGroups completes the hard-link groups of rm: every further name of
// a file gets the content and metadata read for its first name (reading
// it with read if the first vanished), and groups left with one name are
// dissolved. Groups are renumbered in order.
func (m *Manager) linkGroups(rm *RootManifest, read func(i int) error) error {
	leader := map[uint64]int{}
	count := map[uint64]int{}
	for i := range rm.Entries {
		e := &rm.Entries[i]
		if e.Link == 0 || e.Type == "" {
			continue
		}
		count[e.Link]++
		k, ok := leader[e.Link]
		if !ok {
			if e.Digest == "" {
				// Its first name vanished before it was read.
				if err := read(i); err != nil {
					return err
				}
				if e.Type == "" {
					count[e.Link]--
					continue
				}
			}
			leader[e.Link] = i
			continue
		}
		l := rm.Entries[k]
		e.Mode, e.UID, e.GID, e.MTime, e.CTime, e.Ino = l.Mode, l.UID, l.GID, l.MTime, l.CTime, l.Ino
		e.Size, e.Digest, e.Xattrs, e.Changed = l.Size, l.Digest, l.Xattrs, l.Changed
	}
	renum := map[uint64]uint64{}
	for i := range rm.Entries {
		e := &rm.Entries[i]
		if e.Link == 0 || e.Type == "" {
			continue
		}
		if count[e.Link] < 2 {
			e.Link = 0
			continue
		}
		if renum[e.Link] == 0 {
			renum[e.Link] = uint64(len(renum) + 1)
		}
		e.Link = renum[e.Link]
	}
	return nil
}

// readFile stores the content of the regular file at rel below the
// directory pfd (abs names it in messages) and completes e from the
// handle it read: an opened handle that is not the walked file (device,
// inode, type) is not read, and a read the file changed under (size,
// mtime or ctime differ after it, or fewer bytes than its size) is
// retried. After maxReadAttempts, e keeps what the last read saw, marked
// Changed, with a warning, and unstable is true. gone reports the file
// vanished.
func (m *Manager) readFile(pfd int, rel, abs string, e *Entry, walked unix.Stat_t, objs *objectBatch) (gone, unstable bool, err error) {
	want := walked
	for attempt := 1; ; attempt++ {
		if err := m.hook("open " + abs); err != nil {
			return false, false, userErr(err, "cannot read %s: %v", abs, err)
		}
		fd, err := openBeneath(pfd, rel, unix.O_RDONLY|unix.O_NONBLOCK)
		switch {
		case errors.Is(err, unix.ENOENT):
			return true, false, nil
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR):
			return false, false, userErr(err, "cannot read %s: it or a directory above it was replaced by a symlink or a file while the point was being made", abs)
		case err != nil:
			return false, false, userErr(err, "cannot read %s: %v", abs, err)
		}
		f := os.NewFile(uintptr(fd), abs)
		var pre, post unix.Stat_t
		if err := unix.Fstat(fd, &pre); err != nil {
			f.Close()
			return false, false, userErr(err, "cannot read %s: %v", abs, err)
		}
		if pre.Mode&unix.S_IFMT != unix.S_IFREG || pre.Dev != want.Dev || pre.Ino != want.Ino {
			// Not the file walked: something was swapped in. It is not
			// read (a FIFO would block); what is there now is looked at
			// again, and a file that stays put is read.
			f.Close()
			if attempt >= maxReadAttempts {
				if pre.Mode&unix.S_IFMT != unix.S_IFREG {
					return false, false, userErr(nil, "%s was replaced by %s while the point was being made", abs, kindOf(&pre))
				}
				return false, false, userErr(nil, "%s kept being replaced while the point was being made", abs)
			}
			want = pre
			continue
		}
		if err := m.hook("opened " + abs); err != nil {
			f.Close()
			return false, false, userErr(err, "cannot read %s: %v", abs, err)
		}
		xs, xerr := listXattrsFd(fd)
		d, n, err := objs.add(f)
		if err == nil {
			err = unix.Fstat(fd, &post)
		}
		f.Close()
		if err == nil {
			err = xerr
		}
		if err != nil {
			if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EIO) {
				return false, false, userErr(err, "cannot read %s: %v", abs, err)
			}
			return false, false, fmt.Errorf("storing %s: %w", abs, err)
		}
		path, link := e.Path, e.Link
		*e = entryFromStat(path, &pre)
		e.Link, e.Digest, e.Size, e.Xattrs = link, d, n, xs
		if n == pre.Size && post.Size == pre.Size && post.Mtim == pre.Mtim && post.Ctim == pre.Ctim {
			return false, false, nil
		}
		if attempt >= maxReadAttempts {
			e.MTime, e.CTime, e.Changed = post.Mtim.Nano(), post.Ctim.Nano(), true
			m.warn(fmt.Errorf("%s changed while it was being read, %d times; the point holds what the last read saw, marked changed", abs, attempt))
			return false, true, nil
		}
		want = post
	}
}

// parentEntries returns the newest point of this host covering root, its
// entries for root by path, and when that root was scanned; "" and nil
// when there is none or its manifest is unusable. Points of other hosts
// are never parents: their inodes and objects are not this host's.
func (m *Manager) parentEntries(root string, all []Point) (string, map[string]Entry, int64) {
	id, prev, scanned := m.parentPoint(root, all)
	if rid, rprev, rscanned := m.restoredParent(root, all, scanned); rid != "" {
		return rid, rprev, rscanned // what a restore since left (restored.go)
	}
	return id, prev, scanned
}

// parentPoint is parentEntries from this host's newest point of root.
func (m *Manager) parentPoint(root string, all []Point) (string, map[string]Entry, int64) {
	for _, p := range m.ownNewestFirst(all) {
		if !slices.Contains(p.Roots, root) {
			continue
		}
		mf, err := m.loadManifest(p, false)
		if err != nil {
			m.warn(fmt.Errorf("not reusing digests of %s: %w", p.ID, err))
			return "", nil, 0
		}
		for _, r := range mf.Roots {
			if r.Path == root {
				prev := make(map[string]Entry, len(r.Entries))
				for _, e := range r.Entries {
					prev[e.Path] = e
				}
				return p.ID, prev, r.Scanned
			}
		}
	}
	return "", nil, 0
}

// ListOptions filter ListPoints.
type ListOptions struct {
	// Limit caps the number of points returned; 0 means all.
	Limit int
	// Type, if set, returns only points of that type.
	Type string
}

// ListPoints returns the catalog, newest first.
func (m *Manager) ListPoints(ctx context.Context, opts ListOptions) ([]Point, error) {
	if opts.Type != "" && !slices.Contains(Types, opts.Type) {
		return nil, userErr(nil, "unknown point type %q", opts.Type)
	}
	all, err := m.listPoints(ctx)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, p := range all {
		if opts.Type == "" || p.Type == opts.Type {
			out = append(out, p)
		}
	}
	if opts.Limit > 0 && len(out) > opts.Limit {
		out = out[:opts.Limit]
	}
	return out, nil
}

func (m *Manager) listPoints(ctx context.Context) ([]Point, error) {
	entries, err := m.st.List(ctx, state.NSPoints)
	if err != nil {
		return nil, fmt.Errorf("reading catalog: %w", passCanceled(ctx, err))
	}
	pts := make([]Point, 0, len(entries))
	for _, e := range entries {
		var p Point
		if err := json.Unmarshal(e.Value, &p); err != nil {
			m.warn(fmt.Errorf("skipping undecodable point record %s: %w", e.Key, err))
			continue
		}
		pts = append(pts, p)
	}
	sortPoints(pts)
	return pts, nil
}

// ownNewestFirst returns this host's points of pts, newest first by
// creation order (Seq), then by time; a clock step does not reorder them.
func (m *Manager) ownNewestFirst(pts []Point) []Point {
	own := make([]Point, 0, len(pts))
	for _, p := range pts {
		if m.ownPoint(p) {
			own = append(own, p)
		}
	}
	// pts is newest first by time already: a stable sort by Seq keeps
	// that order among equal (or absent) ones.
	sort.SliceStable(own, func(i, j int) bool { return own[i].Seq > own[j].Seq })
	return own
}

// sortPoints orders newest first; ids break ties (rollback-...-2 after -1).
func sortPoints(pts []Point) {
	sort.SliceStable(pts, func(i, j int) bool {
		if !pts[i].Created.Equal(pts[j].Created) {
			return pts[i].Created.After(pts[j].Created)
		}
		if len(pts[i].ID) != len(pts[j].ID) {
			return len(pts[i].ID) > len(pts[j].ID)
		}
		return pts[i].ID > pts[j].ID
	})
}

// GetPoint returns the catalog record of point id.
func (m *Manager) GetPoint(ctx context.Context, id string) (Point, error) {
	p, _, err := m.getPoint(ctx, id)
	return p, err
}

func (m *Manager) getPoint(ctx context.Context, id string) (Point, uint64, error) {
	if state.CheckName(id) != nil {
		return Point{}, 0, userErr(ErrNotFound, "rollback point %s not found", id)
	}
	e, err := m.st.Get(ctx, state.Key(state.NSPoints, id))
	if errors.Is(err, state.ErrNotFound) {
		return Point{}, 0, userErr(ErrNotFound, "rollback point %s not found", id)
	}
	if err != nil {
		return Point{}, 0, passCanceled(ctx, err)
	}
	var p Point
	if err := json.Unmarshal(e.Value, &p); err != nil {
		return Point{}, 0, fmt.Errorf("decoding point %s: %w", id, err)
	}
	return p, e.Version, nil
}

// updatePoint applies fn to point id's record with CAS.
func (m *Manager) updatePoint(ctx context.Context, id string, fn func(p *Point)) error {
	ctx = context.WithoutCancel(ctx)
	for attempt := 0; attempt < 20; attempt++ {
		p, version, err := m.getPoint(ctx, id)
		if err != nil {
			return err
		}
		fn(&p)
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		_, err = m.st.CAS(ctx, state.Key(state.NSPoints, id), b, version)
		if !errors.Is(err, state.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("updating point %s: %w", id, state.ErrConflict)
}

// deletePoint removes a point's catalog record and then its manifest.
func (m *Manager) deletePoint(ctx context.Context, id string) error {
	if err := m.st.Delete(context.WithoutCancel(ctx), state.Key(state.NSPoints, id)); err != nil {
		return err
	}
	if err := os.Remove(m.manifestPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
