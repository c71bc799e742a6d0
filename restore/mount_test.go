package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/leanvibe/switchback/state/local"
)

// mountTmpfs mounts a tmpfs of size at dir for the test. It needs root:
// under CI=true (which runs as root) a failure fails the test, elsewhere
// it skips.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mounting a tmpfs at %s (CI runs as root): %v", dir, err)
		}
		t.Skipf("needs root to mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// envWithRoots is a Manager whose full_system point covers roots.
func envWithRoots(t *testing.T, dir string, roots ...string) *Manager {
	t.Helper()
	st, err := local.Open(filepath.Join(dir, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := New(st, Config{
		Backups: filepath.Join(dir, "backups"),
		Logs:    filepath.Join(dir, "logs"),
		Types:   map[string][]string{TypeFullSystem: roots},
	}, Options{Host: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSpaceCheckPerFilesystem: the space check counts what each root's
// stage writes on that root's filesystem. One root on a small tmpfs needs
// more than it has; the bytes of the other roots (on the big filesystem)
// must not dilute it. The old check split the total evenly across the
// roots, passed, and the restore failed later with the disk full.
func TestSpaceCheckPerFilesystem(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	mountTmpfs(t, mnt, "10m")
	m := envWithRoots(t, dir, filepath.Join(dir, "app"), filepath.Join(dir, "config"), filepath.Join(mnt, "data"))
	big := strings.Repeat("x", 6<<20)
	writeTree(t, dir, map[string]string{"app/a": "1", "config/c": "1", "mnt/data/filler": strings.Repeat("f", 2<<20), "mnt/data/big": big})
	p := mustCreate(t, m, CreateOptions{Type: TypeFullSystem})
	os.Remove(filepath.Join(mnt, "data/big"))
	// 4 MiB free on the tmpfs: not enough to stage the 6 MiB file back.
	writeTree(t, dir, map[string]string{"mnt/data/new": strings.Repeat("n", 4<<20)})
	op, err := m.Rollback(context.Background(), p.ID, RollbackOptions{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "not enough disk space on the filesystem of "+mnt) {
		t.Fatalf("restore: %v; want the pre-check to refuse for lack of space on %s", err, mnt)
	}
	if last := op.Steps[len(op.Steps)-1]; last.Name != "pre_checks" {
		t.Errorf("refused at %s, want pre_checks", last.Name)
	}
}
