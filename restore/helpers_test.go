package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

// env is a test setup: a work dir with app/, config/ and data/, a local
// state store, and a Manager.
type env struct {
	dir string
	st  state.Store
	m   *Manager
	cfg Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	return newEnvAt(t, dir)
}

func newEnvAt(t *testing.T, dir string) *env {
	t.Helper()
	st, err := local.Open(filepath.Join(dir, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := Config{
		Backups: filepath.Join(dir, "backups"),
		Logs:    filepath.Join(dir, "logs"),
		Types: map[string][]string{
			TypeFullSystem:        {filepath.Join(dir, "app"), filepath.Join(dir, "config"), filepath.Join(dir, "data")},
			TypeConfigurationOnly: {filepath.Join(dir, "config")},
			TypeData:              {filepath.Join(dir, "data")},
		},
		Components: map[string][]string{
			"core": {filepath.Join(dir, "app", "core")},
			"hub":  {filepath.Join(dir, "app", "hub.py")},
		},
	}
	m, err := New(st, cfg, Options{Host: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	return &env{dir: dir, st: st, m: m, cfg: cfg}
}

// writeTree creates files from a map of relative path to content; a value
// starting with "->" makes a symlink, a path ending in "/" a directory.
func writeTree(t *testing.T, base string, files map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := filepath.Join(base, k)
		v := files[k]
		if strings.HasSuffix(k, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if target, ok := strings.CutPrefix(v, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) sampleTree(t *testing.T) {
	t.Helper()
	writeTree(t, e.dir, map[string]string{
		"app/main.py":          "print('v1')\n",
		"app/core/orch.py":     "orchestrator v1\n",
		"app/core/empty/":      "",
		"app/hub.py":           "hub v1\n",
		"app/link":             "->core/orch.py",
		"app/abs-link":         "->/etc/passwd",
		"config/settings.toml": "a = 1\n",
		"data/db.json":         `{"rows": 1}`,
		"data/dup1":            "same",
		"data/dup2":            "same",
	})
}

// snapshot describes the tree at root exactly: every entry's type, mode,
// owner, xattrs, mtime (files and dirs), size, content hash, link target,
// and which files are one inode.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	entries, absent, err := liveEntries(context.Background(), root, true)
	if err != nil {
		t.Fatal(err)
	}
	if absent {
		return "<absent>"
	}
	var b strings.Builder
	firstName := map[uint64]string{}
	for _, e := range entries {
		fmt.Fprintf(&b, "%q %s %o %d:%d", e.Path, e.Type, e.Mode, e.UID, e.GID)
		abs := joinRel(root, e.Path)
		switch e.Type {
		case EntryFile:
			data, err := os.ReadFile(abs)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			fmt.Fprintf(&b, " %d %s %d", e.Size, hex.EncodeToString(sum[:8]), e.MTime)
			if first, ok := firstName[e.Ino]; ok {
				fmt.Fprintf(&b, " =%q", first)
			} else {
				firstName[e.Ino] = e.Path
			}
		case EntryDir, EntryFIFO:
			fmt.Fprintf(&b, " %d", e.MTime)
		case EntrySymlink:
			fmt.Fprintf(&b, " -> %q", e.Target)
		}
		for _, x := range e.Xattrs {
			fmt.Fprintf(&b, " %q=%q", x.Name, x.Value)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// snapshotAll snapshots several roots.
func snapshotAll(t *testing.T, roots ...string) string {
	t.Helper()
	var b strings.Builder
	for _, r := range roots {
		fmt.Fprintf(&b, "== %s\n%s", r, snapshot(t, r))
	}
	return b.String()
}

// catalog returns the points namespace as raw bytes for byte-exact
// comparison.
func catalog(t *testing.T, st state.Store) string {
	t.Helper()
	entries, err := st.List(context.Background(), state.NSPoints)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %s\n", e.Key, e.Value)
	}
	return b.String()
}

func (e *env) roots() []string {
	return []string{filepath.Join(e.dir, "app"), filepath.Join(e.dir, "config"), filepath.Join(e.dir, "data")}
}

func mustCreate(t *testing.T, m *Manager, opts CreateOptions) Point {
	t.Helper()
	p, err := m.CreatePoint(context.Background(), opts)
	if err != nil {
		t.Fatalf("CreatePoint(%+v): %v", opts, err)
	}
	return p
}

// tickClock makes successive point ids distinct without sleeping.
func tickClock(m *Manager) {
	var n int64
	base := time.Date(2025, 8, 18, 14, 30, 22, 0, time.UTC)
	m.opts.Now = func() time.Time {
		n++
		return base.Add(time.Duration(n) * time.Second)
	}
}

// overwriteObject replaces the content of object d in s, making the
// read-only object writable first.
func overwriteObject(t *testing.T, s *objectStore, d string, data []byte) {
	t.Helper()
	p := s.path(d)
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// noLeftovers reports any staging or old tree a restore left in dir.
func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, d := range ents {
		if strings.Contains(d.Name(), "switchback-") {
			t.Errorf("leftover %s", d.Name())
		}
	}
}
