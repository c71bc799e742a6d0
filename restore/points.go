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
	"syscall"
	"time"

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
	// Parent is the point whose digests were reused, if any.
	Parent string `json:"parent,omitempty"`
	// Auto is "pre-rollback" for the automatic point a restore makes.
	Auto string `json:"auto,omitempty"`
	// Op is the operation that created the point. Recovery uses it to
	// find the pre-rollback point of a restore that died before its record
	// named it.
	Op string `json:"op,omitempty"`
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

// maxMetadata bounds a point's metadata so its record fits in the store.
const maxMetadata = 64 << 10

// CreatePoint snapshots the paths of opts.Type into a new point. Files
// unchanged since the newest point of the same path (same size, mtime and
// inode) reuse its digests. Nothing is added to the catalog unless every
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
	for _, root := range spec.roots {
		rm, parent, err := m.scanRoot(ctx, opID, root, all, objs)
		if err != nil {
			return Point{}, nil, err
		}
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
		Host: m.opts.Host, Auto: spec.auto, Op: opID,
	}
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
// files that changed since the parent point.
func (m *Manager) scanRoot(ctx context.Context, opID, root string, all []Point, objs *objectBatch) (RootManifest, string, error) {
	rm := RootManifest{Path: root}
	info, err := os.Lstat(root)
	if errors.Is(err, fs.ErrNotExist) {
		rm.Absent = true
		return rm, "", nil
	}
	if err != nil {
		return rm, "", userErr(err, "cannot read %s: %v", root, err)
	}
	parentID, prev := m.parentEntries(root, all)

	type job struct {
		idx  int
		path string
	}
	var jobs []job
	var total int64
	add := func(rel, abs string, info fs.FileInfo) error {
		e := entryFromInfo(rel, info)
		switch e.Type {
		case EntryFile:
			if pe, ok := prev[rel]; ok && pe.Type == EntryFile && pe.Size == e.Size && pe.MTime == e.MTime && pe.Ino == e.Ino && e.Ino != 0 &&
				!objs.isFlagged(pe.Digest) {
				e.Digest = pe.Digest
			} else {
				jobs = append(jobs, job{len(rm.Entries), abs})
				total += e.Size
			}
		case EntryDir:
		case EntrySymlink:
			t, err := os.Readlink(abs)
			if err != nil {
				return userErr(err, "cannot read link %s: %v", abs, err)
			}
			e.Target = t
		default:
			m.warn(fmt.Errorf("skipping %s: not a file, directory or symlink", abs))
			return nil
		}
		rm.Entries = append(rm.Entries, e)
		return nil
	}
	if err := add(".", root, info); err != nil {
		return rm, "", err
	}
	if info.IsDir() {
		err := walkDir(ctx, root, "", func(rel, abs string, info fs.FileInfo) error {
			return add(rel, abs, info)
		})
		if err != nil {
			return rm, "", passCanceled(ctx, err)
		}
	}
	pr := m.progress(opID, "hash "+root, int64(len(jobs)), total)
	defer pr.done()
	err = parallel(ctx, m.opts.Workers, len(jobs), func(i int) error {
		j := jobs[i]
		if err := m.hook("open " + j.path); err != nil {
			return userErr(err, "cannot read %s: %v", j.path, err)
		}
		d, n, err := objs.addFile(j.path)
		if err != nil {
			if errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.EIO) {
				return userErr(err, "cannot read %s: %v", j.path, err)
			}
			return fmt.Errorf("storing %s: %w", j.path, err)
		}
		e := &rm.Entries[j.idx]
		if n != e.Size {
			return userErr(nil, "%s changed while it was being read (%d bytes, then %d)", j.path, e.Size, n)
		}
		e.Digest = d
		pr.add(1, n)
		return nil
	})
	if err != nil {
		return rm, "", passCanceled(ctx, err)
	}
	return rm, parentID, nil
}

// walkDir calls fn for every entry below dir (not dir itself), parents
// before children, in name order, without following symlinks.
func walkDir(ctx context.Context, dir, rel string, fn func(rel, abs string, info fs.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return userErr(err, "cannot read %s: %v", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return userErr(err, "cannot read %s: %v", dir, err)
	}
	sort.Strings(names)
	for _, name := range names {
		abs := dir + "/" + name
		r := name
		if rel != "" {
			r = rel + "/" + name
		}
		info, err := os.Lstat(abs)
		if err != nil {
			return userErr(err, "cannot read %s: %v", abs, err)
		}
		if err := fn(r, abs, info); err != nil {
			return err
		}
		if info.IsDir() {
			if err := walkDir(ctx, abs, r, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// parentEntries returns the newest point covering root and its entries
// for root, by path; nil when there is none or its manifest is unusable.
func (m *Manager) parentEntries(root string, all []Point) (string, map[string]Entry) {
	for _, p := range all {
		if !slices.Contains(p.Roots, root) {
			continue
		}
		mf, err := m.loadManifest(p, false)
		if err != nil {
			m.warn(fmt.Errorf("not reusing digests of %s: %w", p.ID, err))
			return "", nil
		}
		for _, r := range mf.Roots {
			if r.Path == root {
				prev := make(map[string]Entry, len(r.Entries))
				for _, e := range r.Entries {
					prev[e.Path] = e
				}
				return p.ID, prev
			}
		}
	}
	return "", nil
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
