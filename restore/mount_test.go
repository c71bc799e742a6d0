package restore

import (
	"context"
	"errors"
	"fmt"
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
	needsPrivilege(t, "mounting a tmpfs at "+dir, unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size))
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

// mountAt mounts a tmpfs, or bind-mounts a fresh directory of dir, at
// mnt for the test. It needs root: under CI=true (which runs as root) a
// failure fails the test, elsewhere it skips.
func mountAt(t *testing.T, kind, dir, mnt string) {
	t.Helper()
	switch kind {
	case "tmpfs":
		mountTmpfs(t, mnt, "16m")
	case "bind":
		src := filepath.Join(dir, ".volume-"+filepath.Base(mnt))
		os.MkdirAll(src, 0o755)
		os.MkdirAll(mnt, 0o755)
		needsPrivilege(t, "a bind mount", unix.Mount(src, mnt, "", unix.MS_BIND, ""))
		t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	default:
		t.Fatalf("mount kind %q", kind)
	}
	if mp, err := isMountPoint(mnt); err != nil || !mp {
		t.Fatalf("isMountPoint(%s) = %v, %v", mnt, mp, err)
	}
}

// TestMountPointRoot: a root that is a mount point (a tmpfs here, and a
// bind mount, as a Docker or Kubernetes volume is) is restored from
// inside: staged on the mount's filesystem (so unchanged files are
// linked, not copied), its entries exchanged, the root directory's own
// owner, mode and mtime given back, nothing of the restore left in it or
// in the logs. The old code refused it (and before that staged
// everything on the parent, then failed the swap with EBUSY). A restore
// that would remove the mount root or make it a file is refused at the
// pre-check, before any work.
func TestMountPointRoot(t *testing.T) {
	for _, kind := range []string{"tmpfs", "bind"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			mountAt(t, kind, dir, data)
			if mp, err := isMountPoint(dir); err != nil || mp {
				t.Fatalf("isMountPoint(%s) = %v, %v", dir, mp, err)
			}
			m := envWithRoots(t, dir, filepath.Join(dir, "app"), data)
			files := map[string]string{"app/a": "1", "data/db": "v1", "data/keep": "same", "data/sub/x": "x", "data/gone": "g", "data/link": "->db"}
			for i := 0; i < 20; i++ {
				files[fmt.Sprintf("data/many/f%d", i)] = strings.Repeat("m", i)
			}
			writeTree(t, dir, files)
			nonUTF8 := filepath.Join(data, "caf\xe9")
			os.WriteFile(nonUTF8, []byte("latin-1 name"), 0o640)
			mkfifo(t, filepath.Join(data, "queue"), 0o600)
			os.Link(filepath.Join(data, "keep"), filepath.Join(data, "keep2"))
			os.Chmod(data, 0o751)
			waitTick(t)
			want := snapshotAll(t, filepath.Join(dir, "app"), data)
			p := mustCreate(t, m, CreateOptions{Type: TypeFullSystem})

			// Only app changed: the mount root is not touched.
			writeTree(t, dir, map[string]string{"app/a": "2"})
			if _, err := m.Rollback(context.Background(), p.ID, RollbackOptions{}); err != nil {
				t.Fatalf("restore leaving the mount root alone: %v", err)
			}

			// Edit, add, remove, retype, and change the root itself.
			writeTree(t, dir, map[string]string{"data/db": "v2", "data/new": "n", "data/sub/y": "y", "app/a": "3"})
			os.Remove(filepath.Join(data, "gone"))
			os.RemoveAll(filepath.Join(data, "many"))
			os.WriteFile(filepath.Join(data, "many"), []byte("now a file"), 0o644)
			os.Remove(nonUTF8)
			os.Chmod(data, 0o700)
			before := snapshotAll(t, filepath.Join(dir, "app"), data)
			op, err := m.Rollback(context.Background(), p.ID, RollbackOptions{})
			if err != nil {
				t.Fatalf("restore into a mount root: %v\n%+v", err, op.Steps)
			}
			if got := snapshotAll(t, filepath.Join(dir, "app"), data); got != want {
				t.Fatalf("restored mount root differs:\n--- got\n%s\n--- want\n%s\n--- before\n%s", got, want, before)
			}
			if j := op.Journal; j == nil || len(j.Roots) != 2 || j.Roots[0].Mount || !j.Roots[1].Mount || j.Roots[1].Stage != filepath.Join(data, ".switchback-stage-"+op.ID) {
				t.Errorf("journal = %+v, want app swapped by name and data from inside", op.Journal)
			}
			if op.Plan == nil || op.Plan.Linked == 0 {
				t.Errorf("plan = %+v: unchanged files should be linked from the live tree on the mount's own filesystem", op.Plan)
			}
			noLeftovers(t, data)
			noLeftovers(t, filepath.Join(dir, "logs"))
			noLeftovers(t, dir)
			if op.Validation == nil || !op.Validation.OK {
				t.Errorf("validation = %+v", op.Validation)
			}

			// The point lacks the mount root: refused before any work.
			os.MkdirAll(filepath.Join(dir, "m2"), 0o755)
			m2 := envWithRoots(t, filepath.Join(dir, "m2"), data)
			unix.Unmount(data, unix.MNT_DETACH)
			os.RemoveAll(data)
			p2 := mustCreate(t, m2, CreateOptions{Type: TypeFullSystem})
			mountAt(t, kind, dir, data)
			writeTree(t, dir, map[string]string{"data/db": "v3"})
			before = snapshot(t, data)
			op, err = m2.Rollback(context.Background(), p2.ID, RollbackOptions{Force: true})
			if !errors.Is(err, ErrMountPoint) || !strings.Contains(err.Error(), data+" is a mount point") {
				t.Fatalf("restore removing a mount root: %v", err)
			}
			if last := op.Steps[len(op.Steps)-1]; last.Name != "pre_checks" {
				t.Errorf("refused at %s, want pre_checks", last.Name)
			}
			if got := snapshot(t, data); got != before {
				t.Errorf("the refused restore changed the tree")
			}
		})
	}
}

// TestMountSwapFailureReverts: a swap inside a mount root that fails part
// way (entries exchanged, some moved aside) is undone: every root,
// the mount root included, is exactly as it was, and nothing of the
// restore is left inside it.
func TestMountSwapFailureReverts(t *testing.T) {
	for _, at := range []string{"mount-exchanged f10", "mount-moved f5", "mount-moved link", "swap-2-renamed", "rename: mount-moved f5"} {
		t.Run(at, func(t *testing.T) {
			if a, ok := strings.CutPrefix(at, "rename: "); ok {
				// As on a filesystem without RENAME_EXCHANGE.
				at, noExchange = a, true
				defer func() { noExchange = false }()
			}
			dir := t.TempDir()
			mountAt(t, "tmpfs", dir, filepath.Join(dir, "data"))
			_, point, oldSnap, _, cat := crashSetupIn(t, dir)
			e := newEnvAt(t, dir)
			e.m.testHook = func(p string) error {
				if p == at {
					return errors.New("injected failure at " + p)
				}
				return nil
			}
			op, err := e.m.Rollback(context.Background(), point, RollbackOptions{})
			if err == nil || !strings.Contains(err.Error(), "injected failure") {
				t.Fatalf("restore: %v", err)
			}
			if got := snapshotAll(t, e.roots()...); got != oldSnap {
				t.Fatalf("after the failed swap the tree is not the old one:\n%s\n--- old\n%s", got, oldSnap)
			}
			for _, d := range append([]string{dir, filepath.Join(dir, "logs")}, e.roots()...) {
				noLeftovers(t, d)
			}
			if got := catalog(t, e.st); got != cat {
				t.Errorf("catalog changed")
			}
			if op.Status != StatusFailed {
				t.Errorf("status %s", op.Status)
			}
		})
	}
}

// TestNestedMountInRoot: a root holding a mount point below it (a volume
// mounted at app/data). Swapping the root would move the mount with the
// old tree, and removing the old tree would delete the files of the
// mounted filesystem (rm -r crosses mounts; a bind mount from the same
// filesystem even has the same device). The restore is refused at the
// pre-check, naming the mount, and the mounted files are left alone; the
// removal of a restore's leftovers never descends into a mount either.
func TestNestedMountInRoot(t *testing.T) {
	for _, kind := range []string{"tmpfs", "bind"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"app/main": "v1"})
			mnt := filepath.Join(dir, "app/data")
			mountAt(t, kind, dir, mnt)
			writeTree(t, dir, map[string]string{"app/data/db": "precious"})
			m := envWithRoots(t, dir, filepath.Join(dir, "app"))
			p := mustCreate(t, m, CreateOptions{Type: TypeFullSystem})
			writeTree(t, dir, map[string]string{"app/main": "v2"})
			op, err := m.Rollback(context.Background(), p.ID, RollbackOptions{Force: true})
			if !errors.Is(err, ErrMountPoint) || !strings.Contains(err.Error(), mnt+" is a mount point inside") {
				t.Fatalf("restore of a root with a mount inside: %v", err)
			}
			if last := op.Steps[len(op.Steps)-1]; last.Name != "pre_checks" {
				t.Errorf("refused at %s, want pre_checks", last.Name)
			}
			if b, err := os.ReadFile(filepath.Join(mnt, "db")); err != nil || string(b) != "precious" {
				t.Fatalf("the mounted file after the refused restore: %q, %v", b, err)
			}
			// The safety net: removing a tree with a mount inside refuses.
			if err := removeTree(filepath.Join(dir, "app")); err == nil || !strings.Contains(err.Error(), "mount point") {
				t.Errorf("removeTree of a tree holding a mount: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(mnt, "db")); err != nil || string(b) != "precious" {
				t.Fatalf("removeTree deleted the mounted file: %q, %v", b, err)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{`/srv/my\040app`: "/srv/my app", `/a\011b\134c`: "/a\tb\\c", `/plain`: "/plain", `/end\04`: `/end\04`} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSpaceCheckCountsPreRollbackPoint: the backups are on a small
// filesystem; the restore would remove a big live file, which the
// pre-rollback point must first store as a new object there. The space
// check counts it, on the backups' filesystem, and refuses at the
// pre-check; it used to count only the stage, pass, and fail later in
// the pre-rollback point with the disk full.
func TestSpaceCheckCountsPreRollbackPoint(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	mountTmpfs(t, small, "8m")
	st, err := local.Open(filepath.Join(dir, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := New(st, Config{
		Backups: filepath.Join(small, "backups"),
		Logs:    filepath.Join(dir, "logs"),
		Types:   map[string][]string{TypeFullSystem: {filepath.Join(dir, "app")}},
	}, Options{Host: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, dir, map[string]string{"app/a": "1"})
	p := mustCreate(t, m, CreateOptions{Type: TypeFullSystem})
	writeTree(t, dir, map[string]string{"app/big": strings.Repeat("b", 7<<20)})
	op, err := m.Rollback(context.Background(), p.ID, RollbackOptions{})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "not enough disk space on the filesystem of "+filepath.Join(small, "backups")) {
		t.Fatalf("restore: %v; want the pre-check to refuse for lack of space for the pre-rollback point", err)
	}
	if last := op.Steps[len(op.Steps)-1]; last.Name != "pre_checks" {
		t.Errorf("refused at %s, want pre_checks", last.Name)
	}
}
