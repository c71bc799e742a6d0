package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/leanvibe/switchback/state"
)

// unchanged asserts that fn leaves the live tree and the catalog
// byte-identical and returns fn's error.
func unchanged(t *testing.T, e *env, fn func() error) error {
	t.Helper()
	tree, cat := snapshotAll(t, e.roots()...), catalog(t, e.st)
	manifests, _ := os.ReadDir(filepath.Join(e.dir, "backups", "manifests"))
	err := fn()
	if got := snapshotAll(t, e.roots()...); got != tree {
		t.Errorf("live tree changed:\n%s\n--- want\n%s", got, tree)
	}
	if got := catalog(t, e.st); got != cat {
		t.Errorf("catalog changed:\n%s\n--- want\n%s", got, cat)
	}
	after, _ := os.ReadDir(filepath.Join(e.dir, "backups", "manifests"))
	if len(after) != len(manifests) {
		t.Errorf("manifests: %d before, %d after", len(manifests), len(after))
	}
	noLeftovers(t, e.dir)
	return err
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func(t *testing.T, e *env, p Point)
		run     func(e *env, p Point) error
		wantIs  error
		wantMsg string
	}{
		{
			name: "unknown id",
			run: func(e *env, p Point) error {
				_, err := e.m.Rollback(ctx, "rollback-19990101-000000", RollbackOptions{})
				return err
			},
			wantIs:  ErrNotFound,
			wantMsg: "rollback point rollback-19990101-000000 not found",
		},
		{
			name: "corrupt object",
			setup: func(t *testing.T, e *env, p Point) {
				corruptObject(t, e, p, "data/db.json", []byte("garbage"))
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantIs:  ErrVerifyFailed,
			wantMsg: "data/db.json (corrupt)",
		},
		{
			name: "missing object",
			setup: func(t *testing.T, e *env, p Point) {
				corruptObject(t, e, p, "app/main.py", nil)
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantIs:  ErrVerifyFailed,
			wantMsg: "app/main.py (missing)",
		},
		{
			name: "missing object, forced",
			setup: func(t *testing.T, e *env, p Point) {
				corruptObject(t, e, p, "app/main.py", nil)
			},
			run: func(e *env, p Point) error {
				_, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Force: true})
				return err
			},
			wantIs:  ErrVerifyFailed,
			wantMsg: "app/main.py",
		},
		{
			name: "corrupt manifest",
			setup: func(t *testing.T, e *env, p Point) {
				path := e.m.manifestPath(p.ID)
				b, _ := os.ReadFile(path)
				os.WriteFile(path, append(b, ' '), 0o644)
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantIs:  ErrVerifyFailed,
			wantMsg: "manifest corrupt",
		},
		{
			name: "unreadable file during create",
			setup: func(t *testing.T, e *env, p Point) {
				e.m.testHook = func(point string) error {
					if strings.HasSuffix(point, "config/new.toml") {
						return syscall.EACCES
					}
					return nil
				}
				writeTree(t, e.dir, map[string]string{"config/new.toml": "x"})
			},
			run: func(e *env, p Point) error {
				_, err := e.m.CreatePoint(ctx, CreateOptions{Type: TypeFullSystem})
				return err
			},
			wantIs:  syscall.EACCES,
			wantMsg: "cannot read ",
		},
		{
			name: "metadata not an object",
			run: func(e *env, p Point) error {
				_, err := e.m.CreatePoint(ctx, CreateOptions{Type: TypeFullSystem, Metadata: json.RawMessage(`["a"]`)})
				return err
			},
			wantMsg: "metadata must be a JSON object",
		},
		{
			name: "metadata not JSON",
			run: func(e *env, p Point) error {
				_, err := e.m.CreatePoint(ctx, CreateOptions{Type: TypeFullSystem, Metadata: json.RawMessage(`phase=1`)})
				return err
			},
			wantMsg: "metadata must be a JSON object",
		},
		{
			name: "unknown type",
			run: func(e *env, p Point) error {
				_, err := e.m.CreatePoint(ctx, CreateOptions{Type: "everything"})
				return err
			},
			wantMsg: `unknown point type "everything"`,
		},
		{
			name: "unknown component",
			run: func(e *env, p Point) error {
				_, err := e.m.CreatePoint(ctx, CreateOptions{Type: TypePartialComponent, Component: "nope"})
				return err
			},
			wantIs:  ErrNotFound,
			wantMsg: `unknown component "nope"`,
		},
		{
			name: "disk full while staging",
			setup: func(t *testing.T, e *env, p Point) {
				left := 1 // writes before the disk is "full", across all files
				e.m.opts.Workers = 1
				e.m.newWriter = func(w io.Writer) io.Writer { return &fullWriter{w: w, left: &left} }
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantIs:  syscall.ENOSPC,
			wantMsg: "no space left on device",
		},
		{
			name: "restore in progress",
			setup: func(t *testing.T, e *env, p Point) {
				l, err := e.st.Lock(ctx, state.RestoreLock, []byte(`{"host":"gw-7","op":"op-123"}`))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Unlock() })
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantIs:  ErrRestoreInProgress,
			wantMsg: "restore in progress on gw-7 (op op-123)",
		},
		{
			name: "failing pre_restore hook",
			setup: func(t *testing.T, e *env, p Point) {
				e.m.cfg.Hooks.PreRestore = "echo stopping; exit 3"
			},
			run:     func(e *env, p Point) error { _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); return err },
			wantMsg: "pre_restore hook failed",
		},
		{
			name: "only outside the point",
			run: func(e *env, p Point) error {
				_, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Only: []string{"/etc"}})
				return err
			},
			wantMsg: "/etc is not inside any path of the point",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.sampleTree(t)
			p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
			// Change the live tree so a restore would have work to do.
			writeTree(t, e.dir, map[string]string{"app/main.py": "v2", "data/db.json": "{}", "data/more": "more"})
			if tt.setup != nil {
				tt.setup(t, e, p)
			}
			err := unchanged(t, e, func() error { return tt.run(e, p) })
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			var ue *Error
			if !errors.As(err, &ue) {
				t.Errorf("error %v (%T) is not a user-facing *Error", err, err)
			}
		})
	}
}

// fullWriter fails with ENOSPC after left writes.
type fullWriter struct {
	w    io.Writer
	left *int
}

func (f *fullWriter) Write(p []byte) (int, error) {
	if *f.left <= 0 {
		return 0, &os.PathError{Op: "write", Path: "stage", Err: syscall.ENOSPC}
	}
	*f.left--
	return f.w.Write(p)
}

// corruptObject overwrites (or with nil data removes) the object of the
// entry at rel ("root/path") in point p.
func corruptObject(t *testing.T, e *env, p Point, rel string, data []byte) {
	t.Helper()
	d := entryDigest(t, e, p, rel)
	if data != nil {
		overwriteObject(t, e.m.objects, d, data)
		return
	}
	if err := os.Remove(e.m.objects.path(d)); err != nil {
		t.Fatal(err)
	}
}

// TestDiskFullTmpfs fills a real tmpfs during staging (forced, so the
// space pre-check does not stop it first), and checks the pre-check
// refuses it when not forced. It needs to mount a tmpfs: without that it
// skips, except under CI=true, where it fails.
func TestDiskFullTmpfs(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount tmpfs (CI=true, so this fails instead of skipping): %v: %s", err, out)
		}
		t.Skipf("cannot mount tmpfs (%v: %s); disk full is covered by TestBadInput's injected writer", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	e := newEnvAt(t, dir)
	live := filepath.Join(mnt, "data")
	e.m.cfg.Types[TypeData] = []string{live}
	// 1.2 MB of data, then other 1.2 MB: staging needs 1.2 MB more than
	// the 0.8 MB free.
	for i := 0; i < 6; i++ {
		writeTree(t, mnt, map[string]string{fmt.Sprintf("data/f%d", i): strings.Repeat(fmt.Sprint(i), 200<<10)})
	}
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	for i := 0; i < 6; i++ {
		writeTree(t, mnt, map[string]string{fmt.Sprintf("data/f%d", i): strings.Repeat(fmt.Sprint(i+1), 200<<10)})
	}
	before, cat := snapshot(t, live), catalog(t, e.st)
	for _, force := range []bool{false, true} {
		_, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{Force: force})
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("force=%v: err = %v, want ENOSPC", force, err)
		}
		if !force && !strings.Contains(err.Error(), "not enough disk space") {
			t.Errorf("pre-check error = %v", err)
		}
		if got := snapshot(t, live); got != before {
			t.Errorf("force=%v: live tree changed", force)
		}
		if got := catalog(t, e.st); got != cat {
			t.Errorf("force=%v: catalog changed", force)
		}
		if ents, _ := os.ReadDir(mnt); len(ents) != 1 {
			t.Errorf("force=%v: leftovers in %s: %v", force, mnt, ents)
		}
	}
}
