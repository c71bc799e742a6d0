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
)

// ManifestVersion is the manifest format written by this package.
const ManifestVersion = 1

// Entry types.
const (
	EntryFile    = "file"
	EntryDir     = "dir"
	EntrySymlink = "symlink"
)

// Manifest lists what a point holds: for each root, every entry below it.
// It is stored as JSON under backups/manifests/<point>.json; the SHA-256
// of those bytes is the point's manifest digest.
type Manifest struct {
	Version int            `json:"version"`
	Roots   []RootManifest `json:"roots"`
}

// RootManifest is one configured path as it was when the point was made.
type RootManifest struct {
	// Path is the absolute live path.
	Path string `json:"path"`
	// Absent is set when the path did not exist; restoring removes it.
	Absent bool `json:"absent,omitempty"`
	// Entries lists the root itself first (path "."), then everything
	// below it, each entry after its parent directory.
	Entries []Entry `json:"entries,omitempty"`
}

// Entry is one file, directory or symlink.
type Entry struct {
	// Path is relative to the root, slash-separated; "." is the root.
	Path string `json:"path"`
	Type string `json:"type"`
	// Mode holds the permission bits with setuid, setgid and sticky, as
	// in chmod(2).
	Mode uint32 `json:"mode"`
	// MTime is the modification time in nanoseconds since the epoch.
	MTime  int64  `json:"mtime"`
	Size   int64  `json:"size,omitempty"`
	Digest string `json:"digest,omitempty"`
	Target string `json:"target,omitempty"`
	// Ino is the inode number when the point was made. The next point of
	// the same root reuses Digest when size, mtime and inode still match.
	Ino uint64 `json:"ino,omitempty"`
}

// encode returns the manifest's canonical bytes and their digest.
func (mf *Manifest) encode() ([]byte, string, error) {
	b, err := json.Marshal(mf)
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
	if mf.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest version %d not supported (want %d)", mf.Version, ManifestVersion)
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
		case EntryDir:
			if e.Digest != "" || e.Target != "" || e.Size != 0 {
				return fmt.Errorf("entry %q: directory with content", e.Path)
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
		types[e.Path] = e.Type
	}
	return nil
}

// checkRelPath refuses paths that are absolute, empty, not clean, contain
// "..", "." or empty segments, or a NUL byte.
func checkRelPath(p string) error {
	if p == "" || p == "." {
		return fmt.Errorf("invalid entry path %q", p)
	}
	if fs.ValidPath(p) && strings.IndexByte(p, 0) < 0 {
		return nil
	}
	// Say what is wrong.
	if strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return fmt.Errorf("unsafe entry path %q: absolute", p)
	}
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "":
			return fmt.Errorf("unsafe entry path %q: empty segment", p)
		case ".", "..":
			return fmt.Errorf("unsafe entry path %q: %q segment", p, seg)
		}
	}
	return fmt.Errorf("unsafe entry path %q", p)
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
