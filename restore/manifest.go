package restore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// ManifestVersion is the manifest format written by this package.
// Version 2 added ownership, ctime, extended attributes, hard-link
// groups, FIFOs, the scan start of each root, and lossless names; version
// 1 manifests are still read (their entries are never reused: they lack
// ctime).
const ManifestVersion = 2

// Entry types.
const (
	EntryFile    = "file"
	EntryDir     = "dir"
	EntrySymlink = "symlink"
	EntryFIFO    = "fifo"
)

// Manifest lists what a point holds: for each root, every entry below it.
// It is stored as JSON under backups/manifests/<point>.json; the SHA-256
// of those bytes is the point's manifest digest.
type Manifest struct {
	Version int
	Roots   []RootManifest
}

// RootManifest is one configured path as it was when the point was made.
type RootManifest struct {
	// Path is the absolute live path.
	Path string
	// Absent is set when the path did not exist; restoring removes it.
	Absent bool
	// Scanned is the filesystem clock (CLOCK_REALTIME_COARSE, which
	// stamps mtime and ctime) in nanoseconds just before the root was
	// walked; 0 in version 1. A file whose mtime or ctime is not older
	// than this may have changed after it was read within the same clock
	// tick, so the next point hashes it again (git's racy-timestamp rule).
	Scanned int64
	// Entries lists the root itself first (path "."), then everything
	// below it, each entry after its parent directory.
	Entries []Entry
}

// Entry is one file, directory, symlink or FIFO.
type Entry struct {
	// Path is relative to the root, slash-separated; "." is the root. It
	// holds the name's bytes as they are, valid UTF-8 or not.
	Path string
	Type string
	// Mode holds the permission bits with setuid, setgid and sticky, as
	// in chmod(2).
	Mode     uint32
	UID, GID uint32
	// MTime and CTime are in nanoseconds since the epoch.
	MTime, CTime int64
	Size         int64
	Digest       string
	// Target is a symlink's target, as bytes.
	Target string
	// Ino is the inode number when the point was made. The next point of
	// the same root reuses Digest when size, mtime, ctime and inode still
	// match and neither time is racy.
	Ino uint64
	// Link is the hard-link group: files of one root with the same
	// non-zero Link are one inode and are restored as hard links. 0 means
	// none.
	Link uint64
	// Xattrs are the extended attributes, sorted by name.
	Xattrs []Xattr
	// Changed is set when the file kept changing while it was read: its
	// content is what the last read saw, and it is never reused.
	Changed bool
}

// Xattr is one extended attribute. Name and Value hold bytes.
type Xattr struct {
	Name, Value string
}

// The manifest's JSON form. A name, link target or xattr name that is not
// valid UTF-8 is written base64-encoded in the _b64 field instead, since
// JSON strings cannot carry such bytes; xattr values are always base64.
type (
	wireManifest struct {
		Version int        `json:"version"`
		Roots   []wireRoot `json:"roots"`
	}
	wireRoot struct {
		Path    string      `json:"path"`
		Absent  bool        `json:"absent,omitempty"`
		Scanned int64       `json:"scanned,omitempty"`
		Entries []wireEntry `json:"entries,omitempty"`
	}
	wireEntry struct {
		Path      string      `json:"path,omitempty"`
		PathB64   []byte      `json:"path_b64,omitempty"`
		Type      string      `json:"type"`
		Mode      uint32      `json:"mode"`
		UID       uint32      `json:"uid,omitempty"`
		GID       uint32      `json:"gid,omitempty"`
		MTime     int64       `json:"mtime"`
		CTime     int64       `json:"ctime,omitempty"`
		Size      int64       `json:"size,omitempty"`
		Digest    string      `json:"digest,omitempty"`
		Target    string      `json:"target,omitempty"`
		TargetB64 []byte      `json:"target_b64,omitempty"`
		Ino       uint64      `json:"ino,omitempty"`
		Link      uint64      `json:"link,omitempty"`
		Xattrs    []wireXattr `json:"xattrs,omitempty"`
		Changed   bool        `json:"changed,omitempty"`
	}
	wireXattr struct {
		Name    string `json:"name,omitempty"`
		NameB64 []byte `json:"name_b64,omitempty"`
		Value   []byte `json:"value"`
	}
)

// lossless splits s into the string or base64 field of its JSON form.
func lossless(s string) (string, []byte) {
	if utf8.ValidString(s) {
		return s, nil
	}
	return "", []byte(s)
}

// encode returns the manifest's canonical bytes and their digest.
func (mf *Manifest) encode() ([]byte, string, error) {
	w := wireManifest{Version: mf.Version, Roots: make([]wireRoot, len(mf.Roots))}
	for i, r := range mf.Roots {
		wr := wireRoot{Path: r.Path, Absent: r.Absent, Scanned: r.Scanned}
		if len(r.Entries) > 0 {
			wr.Entries = make([]wireEntry, len(r.Entries))
		}
		for j, e := range r.Entries {
			we := wireEntry{
				Type: e.Type, Mode: e.Mode, UID: e.UID, GID: e.GID, MTime: e.MTime, CTime: e.CTime,
				Size: e.Size, Digest: e.Digest, Ino: e.Ino, Link: e.Link, Changed: e.Changed,
			}
			we.Path, we.PathB64 = lossless(e.Path)
			we.Target, we.TargetB64 = lossless(e.Target)
			for _, x := range e.Xattrs {
				wx := wireXattr{Value: []byte(x.Value)}
				wx.Name, wx.NameB64 = lossless(x.Name)
				we.Xattrs = append(we.Xattrs, wx)
			}
			wr.Entries[j] = we
		}
		w.Roots[i] = wr
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, "", err
	}
	b = append(b, '\n')
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:]), nil
}

// decodeManifest parses and checks a manifest. No path in it is trusted:
// roots must be absolute and clean and must not overlap; entry paths must
// be relative, clean, free of "..", and each entry's parent must be a
// directory listed before it, so that no entry can be reached through a
// symlink or land outside its root.
func decodeManifest(b []byte) (*Manifest, error) {
	mf, err := parseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("decoding manifest: %w", err)
	}
	if mf.Version != 1 && mf.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest version %d not supported (want 1 or %d)", mf.Version, ManifestVersion)
	}
	if len(mf.Roots) == 0 {
		return nil, errors.New("manifest has no roots")
	}
	for i, r := range mf.Roots {
		if err := checkRootPath(r.Path); err != nil {
			return nil, err
		}
		for j := 0; j < i; j++ {
			if within(r.Path, mf.Roots[j].Path) || within(mf.Roots[j].Path, r.Path) {
				return nil, fmt.Errorf("manifest roots %s and %s overlap", mf.Roots[j].Path, r.Path)
			}
		}
		if err := checkEntries(r); err != nil {
			return nil, fmt.Errorf("manifest root %s: %w", r.Path, err)
		}
	}
	return mf, nil
}

func checkRootPath(p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || filepath.Dir(p) == p || strings.ContainsRune(p, 0) {
		return fmt.Errorf("manifest root %q is not a clean absolute path below /", p)
	}
	return nil
}

func checkEntries(r RootManifest) error {
	if r.Absent {
		if len(r.Entries) != 0 {
			return errors.New("absent root has entries")
		}
		return nil
	}
	if len(r.Entries) == 0 || r.Entries[0].Path != "." {
		return errors.New(`first entry must be the root "."`)
	}
	types := make(map[string]string, len(r.Entries))
	leaders := map[uint64]int{} // hard-link group → index of its first member
	for i, e := range r.Entries {
		if i > 0 {
			if err := checkRelPath(e.Path); err != nil {
				return err
			}
			// e.Path is clean, so its parent is what precedes the last
			// slash.
			parent := "."
			if k := strings.LastIndexByte(e.Path, '/'); k >= 0 {
				parent = e.Path[:k]
			}
			if types[parent] != EntryDir {
				return fmt.Errorf("entry %q: parent %q is not a directory listed before it", e.Path, parent)
			}
			if _, dup := types[e.Path]; dup {
				return fmt.Errorf("entry %q listed twice", e.Path)
			}
		}
		if e.Mode&^0o7777 != 0 {
			return fmt.Errorf("entry %q: invalid mode %o", e.Path, e.Mode)
		}
		switch e.Type {
		case EntryFile:
			if err := checkDigest(e.Digest); err != nil {
				return fmt.Errorf("entry %q: %w", e.Path, err)
			}
			if e.Size < 0 {
				return fmt.Errorf("entry %q: negative size", e.Path)
			}
			if e.Target != "" {
				return fmt.Errorf("entry %q: file with a link target", e.Path)
			}
		case EntryDir, EntryFIFO:
			if e.Digest != "" || e.Target != "" || e.Size != 0 {
				return fmt.Errorf("entry %q: %s with content", e.Path, e.Type)
			}
		case EntrySymlink:
			if e.Target == "" || strings.ContainsRune(e.Target, 0) || len(e.Target) > 4096 {
				return fmt.Errorf("entry %q: invalid link target", e.Path)
			}
			if e.Digest != "" {
				return fmt.Errorf("entry %q: symlink with content", e.Path)
			}
		default:
			return fmt.Errorf("entry %q: unknown type %q", e.Path, e.Type)
		}
		if e.Link != 0 {
			if e.Type != EntryFile || i == 0 {
				return fmt.Errorf("entry %q: only files below the root can be hard links", e.Path)
			}
			if k, ok := leaders[e.Link]; !ok {
				leaders[e.Link] = i
			} else if l := r.Entries[k]; l.Digest != e.Digest || l.Size != e.Size || l.Mode != e.Mode || l.UID != e.UID || l.GID != e.GID || l.MTime != e.MTime {
				return fmt.Errorf("entry %q: hard link of %q with different content or metadata", e.Path, l.Path)
			}
		}
		if err := checkXattrs(e.Xattrs); err != nil {
			return fmt.Errorf("entry %q: %w", e.Path, err)
		}
		types[e.Path] = e.Type
	}
	return nil
}

// checkXattrs refuses extended attributes the kernel would: empty names,
// names with a NUL or over 255 bytes, values over 64 KiB, and repeated or
// unsorted names.
func checkXattrs(xs []Xattr) error {
	for i, x := range xs {
		if x.Name == "" || len(x.Name) > 255 || strings.IndexByte(x.Name, 0) >= 0 || !strings.Contains(x.Name, ".") {
			return fmt.Errorf("invalid xattr name %q", x.Name)
		}
		if len(x.Value) > 64<<10 {
			return fmt.Errorf("xattr %q: value of %d bytes", x.Name, len(x.Value))
		}
		if i > 0 && xs[i-1].Name >= x.Name {
			return fmt.Errorf("xattr %q: repeated or out of order", x.Name)
		}
	}
	return nil
}

// checkRelPath refuses paths that are absolute, empty, not clean, contain
// "..", "." or empty segments, or a NUL byte. Names need not be UTF-8.
func checkRelPath(p string) error {
	if p == "" || p == "." {
		return fmt.Errorf("invalid entry path %q", p)
	}
	if strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("unsafe entry path %q: absolute", p)
	}
	for rest := p; ; {
		seg, after, more := strings.Cut(rest, "/")
		switch seg {
		case "":
			return fmt.Errorf("unsafe entry path %q: empty segment", p)
		case ".", "..":
			return fmt.Errorf("unsafe entry path %q: %q segment", p, seg)
		}
		if len(seg) > 255 {
			return fmt.Errorf("unsafe entry path %q: name over 255 bytes", p)
		}
		if !more {
			return nil
		}
		rest = after
	}
}

// manifestPath is where point id's manifest is stored.
func (m *Manager) manifestPath(id string) string {
	return filepath.Join(m.cfg.Backups, "manifests", id+".json")
}

// loadManifest reads point p's manifest and checks it against the digest
// recorded in the catalog. With trust false a digest mismatch is an error
// wrapping ErrVerifyFailed; with trust true (forced restores) it is only
// a warning. Path checks are never skipped.
func (m *Manager) loadManifest(p Point, trust bool) (*Manifest, error) {
	b, err := os.ReadFile(m.manifestPath(p.ID))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, userErr(ErrVerifyFailed, "rollback point %s: manifest missing", p.ID)
		}
		return nil, fmt.Errorf("reading manifest of %s: %w", p.ID, err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != p.ManifestDigest {
		if !trust {
			return nil, userErr(ErrVerifyFailed, "rollback point %s: manifest corrupt (digest %s, catalog says %s)", p.ID, short(got), short(p.ManifestDigest))
		}
		m.warn(fmt.Errorf("rollback point %s: manifest digest mismatch ignored (forced)", p.ID))
	}
	mf, err := decodeManifest(b)
	if err != nil {
		return nil, userErr(ErrVerifyFailed, "rollback point %s: %v", p.ID, err)
	}
	return mf, nil
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// modeOf converts a FileMode to chmod(2) bits.
func modeOf(fm fs.FileMode) uint32 {
	m := uint32(fm.Perm())
	if fm&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if fm&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if fm&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// fileMode converts chmod(2) bits to a FileMode.
func fileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}
