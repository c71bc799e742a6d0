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

// TestMountPointRoot: a root that is a mount point (a tmpfs here, and a
// bind mount) is refused at the pre-check when the restore would have to
// swap it, before any work, and left as it is; a restore that leaves it
// unchanged goes ahead. The old code staged everything, then failed the
// swap with EBUSY.
func TestMountPointRoot(t *testing.T) {
	for _, kind := range []string{"tmpfs", "bind"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			switch kind {
			case "tmpfs":
				mountTmpfs(t, data, "16m")
			case "bind":
				src := filepath.Join(dir, "volume")
				os.MkdirAll(src, 0o755)
				os.MkdirAll(data, 0o755)
				if err := unix.Mount(src, data, "", unix.MS_BIND, ""); err != nil {
					if os.Getenv("CI") == "true" {
						t.Fatalf("bind mount (CI runs as root): %v", err)
					}
					t.Skipf("needs root to bind mount: %v", err)
				}
				t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
			}
			if mp, err := isMountPoint(data); err != nil || !mp {
				t.Fatalf("isMountPoint(%s) = %v, %v", data, mp, err)
			}
			if mp, err := isMountPoint(dir); err != nil || mp {
				t.Fatalf("isMountPoint(%s) = %v, %v", dir, mp, err)
			}
			m := envWithRoots(t, dir, filepath.Join(dir, "app"), data)
			writeTree(t, dir, map[string]string{"app/a": "1", "data/db": "v1"})
			p := mustCreate(t, m, CreateOptions{Type: TypeFullSystem})
			// Only app changed: the mount root is not swapped.
			writeTree(t, dir, map[string]string{"app/a": "2"})
			if _, err := m.Rollback(context.Background(), p.ID, RollbackOptions{}); err != nil {
				t.Fatalf("restore leaving the mount root alone: %v", err)
			}
			writeTree(t, dir, map[string]string{"data/db": "v2"})
			before := snapshotAll(t, filepath.Join(dir, "app"), data)
			op, err := m.Rollback(context.Background(), p.ID, RollbackOptions{Force: true})
			if !errors.Is(err, ErrMountPoint) || !strings.Contains(err.Error(), data+" is a mount point") {
				t.Fatalf("restore into a mount root: %v", err)
			}
			if last := op.Steps[len(op.Steps)-1]; last.Name != "pre_checks" {
				t.Errorf("refused at %s, want pre_checks", last.Name)
			}
			if got := snapshotAll(t, filepath.Join(dir, "app"), data); got != before {
				t.Errorf("the refused restore changed the trees")
			}
		})
	}
}
