package restore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestVerifyReportsByPath(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	rep, err := e.m.VerifyPoint(ctx, p.ID)
	if err != nil || !rep.OK || rep.Objects != 6 {
		t.Fatalf("clean verify = %+v, %v", rep, err)
	}
	corruptObject(t, e, p, "app/main.py", []byte("evil"))
	corruptObject(t, e, p, "config/settings.toml", nil)
	rep, err = e.m.VerifyPoint(ctx, p.ID)
	if !errors.Is(err, ErrVerifyFailed) || rep.OK {
		t.Fatalf("verify = %v", err)
	}
	var got []string
	for _, pr := range rep.Problems {
		got = append(got, filepath.Base(pr.Root)+"/"+pr.Path+":"+pr.Kind)
	}
	if want := "app/main.py:corrupt config/settings.toml:missing"; strings.Join(got, " ") != want {
		t.Errorf("problems = %v, want %s", got, want)
	}
	q, _ := e.m.GetPoint(ctx, p.ID)
	if q.LastVerified == nil || q.Verified || q.VerifyError == "" {
		t.Errorf("point after failed verify = %+v", q)
	}
	// Duplicate content: both paths are reported.
	corruptObject(t, e, p, "data/dup1", nil)
	rep, _ = e.m.VerifyPoint(ctx, p.ID)
	if len(rep.Problems) != 4 {
		t.Errorf("problems = %+v", rep.Problems)
	}
	if _, err := e.m.VerifyAll(ctx); !errors.Is(err, ErrVerifyFailed) {
		t.Errorf("VerifyAll = %v", err)
	}
}

func TestSecondCreateReusesDigests(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	var hashed []string
	var mu sync.Mutex
	e.m.testHook = func(point string) error {
		if p, ok := strings.CutPrefix(point, "open "); ok {
			mu.Lock()
			hashed = append(hashed, filepath.Base(p))
			mu.Unlock()
		}
		return nil
	}
	tickClock(e.m)
	waitTick(t)
	p1 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if len(hashed) != 7 {
		t.Fatalf("first create hashed %v", hashed)
	}
	hashed = nil
	p2 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if len(hashed) != 0 || p2.Parent != p1.ID || !sameEntries(t, e.m, p1, p2) {
		t.Fatalf("unchanged second create hashed %v; parent %s", hashed, p2.Parent)
	}
	writeTree(t, e.dir, map[string]string{"data/db.json": "changed"})
	hashed = nil
	mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if strings.Join(hashed, ",") != "db.json" {
		t.Fatalf("third create hashed %v", hashed)
	}
}

func TestListPointsAndIDs(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	fixed := time.Date(2025, 8, 18, 14, 30, 22, 0, time.UTC)
	e.m.opts.Now = func() time.Time { return fixed }
	a := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	b := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	c := mustCreate(t, e.m, CreateOptions{Type: TypePartialComponent, Component: "core"})
	if a.ID != "rollback-20250818-143022" || b.ID != "rollback-20250818-143022-1" || c.ID != "rollback-20250818-143022-2" {
		t.Fatalf("ids %s %s %s", a.ID, b.ID, c.ID)
	}
	if len(c.Components) != 1 || c.Components[0] != "core" || len(c.Roots) != 1 {
		t.Errorf("component point = %+v", c)
	}
	all, _ := e.m.ListPoints(ctx, ListOptions{})
	if len(all) != 3 || all[0].ID != c.ID || all[2].ID != a.ID {
		t.Errorf("list order: %v", ids(all))
	}
	data, _ := e.m.ListPoints(ctx, ListOptions{Type: TypeData})
	if len(data) != 1 || data[0].ID != b.ID {
		t.Errorf("type filter: %v", ids(data))
	}
	one, _ := e.m.ListPoints(ctx, ListOptions{Limit: 1})
	if len(one) != 1 {
		t.Errorf("limit: %v", ids(one))
	}
	// Every create wrote an operation record.
	ops, _ := e.m.ListOperations(ctx, 0)
	if len(ops) != 3 || ops[0].Kind != KindCreate || ops[0].Status != StatusCompleted {
		t.Errorf("ops = %+v", ops)
	}
}

func ids(pts []Point) []string {
	var out []string
	for _, p := range pts {
		out = append(out, p.ID)
	}
	return out
}

func TestRetain(t *testing.T) {
	now := time.Date(2025, 8, 18, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	pt := func(id, typ string, age time.Duration, tags ...string) Point {
		return Point{ID: id, Type: typ, Created: now.Add(-age), Tags: tags}
	}
	tests := []struct {
		name     string
		pts      []Point // newest first
		count    int
		days     int
		wantKept string
	}{
		{"keep count", []Point{pt("a", TypeData, 40*day), pt("b", TypeData, 41*day), pt("c", TypeData, 42*day)}, 2, 30, "a b"},
		{"keep young", []Point{pt("a", TypeData, day), pt("b", TypeData, 2*day), pt("c", TypeData, 42*day)}, 1, 30, "a b"},
		{"tagged forever", []Point{pt("a", TypeData, 40*day), pt("b", TypeData, 400*day, "golden")}, 1, 30, "a b"},
		{"newest full_system", []Point{pt("a", TypeData, 40*day), pt("b", TypeFullSystem, 50*day), pt("c", TypeFullSystem, 60*day)}, 1, 30, "a b"},
		{"nothing old", []Point{pt("a", TypeFullSystem, 40*day), pt("b", TypeData, 50*day)}, 1, 1, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep := retain(tt.pts, tt.count, tt.days, now)
			var got []string
			for _, p := range tt.pts {
				if _, ok := keep[p.ID]; ok {
					got = append(got, p.ID)
				}
			}
			if strings.Join(got, " ") != tt.wantKept {
				t.Errorf("kept %v, want %s (why %v)", got, tt.wantKept, keep)
			}
		})
	}
}

func TestCleanupRemovesPointsAndObjects(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tickClock(e.m)
	var pts []Point
	for i := 0; i < 4; i++ {
		writeTree(t, e.dir, map[string]string{"data/f": fmt.Sprint("version ", i)})
		pts = append(pts, mustCreate(t, e.m, CreateOptions{Type: TypeData}))
	}
	// Pretend the points are old, and so are their objects.
	e.m.opts.Now = func() time.Time { return time.Now().Add(100 * 24 * time.Hour) }
	old := time.Now().Add(-2 * gcGrace)
	e.m.objects.walk(ctx, func(d string, _ os.FileInfo) error { return os.Chtimes(e.m.objects.path(d), old, old) })
	dry, err := e.m.Cleanup(ctx, CleanupOptions{KeepCount: 2, DryRun: true})
	if err != nil || len(dry.Removed) != 2 || dry.ObjectsRemoved != 2 {
		t.Fatalf("dry run = %+v, %v", dry, err)
	}
	if all, _ := e.m.ListPoints(ctx, ListOptions{}); len(all) != 4 {
		t.Fatal("dry run removed points")
	}
	rep, err := e.m.Cleanup(ctx, CleanupOptions{KeepCount: 2})
	if err != nil || len(rep.Removed) != 2 || rep.ObjectsRemoved != 2 {
		t.Fatalf("cleanup = %+v, %v", rep, err)
	}
	all, _ := e.m.ListPoints(ctx, ListOptions{})
	if len(all) != 2 || all[1].ID != pts[2].ID {
		t.Fatalf("left %v", ids(all))
	}
	for _, p := range all {
		if _, err := e.m.VerifyPoint(ctx, p.ID); err != nil {
			t.Errorf("kept point %s broken: %v", p.ID, err)
		}
	}
	if _, err := os.Stat(e.m.manifestPath(pts[0].ID)); !os.IsNotExist(err) {
		t.Errorf("manifest of removed point still there: %v", err)
	}
}

// TestPropertyRoundTrip checks restore(create(tree)) == tree on random
// trees: contents, modes (setuid and setgid included), mtimes, owners (as
// root), xattrs, symlinks, empty dirs, FIFOs, hard links and names that
// are not UTF-8; every fourth seed with the root a mount point (a tmpfs,
// restored from inside). A restore as a user who cannot chown, and what
// it does with setuid bits, is TestSetuidNotRestoredAsNonRoot's.
func TestPropertyRoundTrip(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			e := newEnv(t)
			data := filepath.Join(e.dir, "data")
			mount := seed%4 == 1
			if mount {
				mountTmpfs(t, data, "64m")
			}
			scramble := func() {
				if !mount {
					os.RemoveAll(data)
					return
				}
				ents, _ := os.ReadDir(data)
				for _, d := range ents {
					os.RemoveAll(filepath.Join(data, d.Name()))
				}
			}
			r := rand.New(rand.NewPCG(seed, seed*7))
			var files []string
			randomTree(t, r, data, 3, &files)
			tickClock(e.m)
			want := snapshot(t, data)
			t.Logf("fifos %d, links %d, non-UTF-8 names %d, xattrs %d, other owners %d, setuid %d",
				strings.Count(want, " fifo "), strings.Count(want, " =\""), strings.Count(want, `\xff`), strings.Count(want, "user.k"),
				strings.Count(want, " 1001:")+strings.Count(want, " 65534:"), strings.Count(want, " 4755 "))
			p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
			// Scramble: replace the tree with another random one.
			scramble()
			if seed%3 != 0 || mount {
				files = nil
				randomTree(t, r, data, 2, &files)
			}
			if _, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := snapshot(t, data); got != want {
				t.Fatalf("round trip differs:\n%s\n--- want\n%s", got, want)
			}
		})
	}
}

// randomTree fills dir with random entries, depth levels deep; files
// collects the regular files made, for later hard links.
func randomTree(t *testing.T, r *rand.Rand, dir string, depth int, files *[]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	n := r.IntN(7)
	for i := 0; i < n; i++ {
		base := fmt.Sprintf("e%d", r.IntN(1000))
		if r.IntN(6) == 0 {
			base += "\xff\xfe" // not UTF-8
		}
		name := filepath.Join(dir, base)
		if _, err := os.Lstat(name); err == nil {
			continue
		}
		k := r.IntN(13)
		switch {
		case k < 5:
			data := make([]byte, r.IntN(5000))
			for j := range data {
				data[j] = byte(r.IntN(4))
			}
			os.WriteFile(name, data, 0o644)
			if root {
				id := []int{0, 1001, 65534}[r.IntN(3)]
				os.Lchown(name, id, []int{0, 1002, 65534}[r.IntN(3)])
			}
			if r.IntN(3) == 0 {
				unix.Setxattr(name, "user.k", []byte{byte(r.IntN(256)), 0, 0xff}, 0)
			}
			// After chown, which clears setuid and setgid.
			unix.Chmod(name, []uint32{0o644, 0o600, 0o755, 0o444, 0o2640, 0o4755}[r.IntN(6)])
			*files = append(*files, name)
		case k < 7 && depth > 0:
			randomTree(t, r, name, depth-1, files)
		case k < 8:
			os.Mkdir(name, 0o750) // empty
		case k < 9:
			unix.Mkfifo(name, []uint32{0o600, 0o644}[r.IntN(2)])
		case k < 10 && len(*files) > 0:
			os.Link((*files)[r.IntN(len(*files))], name)
		default:
			os.Symlink([]string{"e1", "../x", "/abs/target", "nowhere/deep", "\xff"}[r.IntN(5)], name)
		}
		if k < 9 {
			mt := time.Unix(1600000000+int64(r.IntN(1e8)), int64(r.IntN(1e9)))
			os.Chtimes(name, mt, mt)
		}
	}
	mt := time.Unix(1500000000+int64(r.IntN(1e8)), int64(r.IntN(1e9)))
	os.Chmod(dir, []os.FileMode{0o755, 0o700, 0o1777}[r.IntN(3)])
	os.Chtimes(dir, mt, mt)
}

// TestFirstCreateAfterRestoreReusesDigests: the first point after a
// restore hashes nothing the restore left as the point has it (it used to
// hash every file again: copied ones are new inodes, linked ones got a new
// ctime), and still hashes a file edited since, even one whose size and
// mtime were kept.
func TestFirstCreateAfterRestoreReusesDigests(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	tickClock(e.m)
	waitTick(t)
	p1 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	writeTree(t, e.dir, map[string]string{"app/main.py": "print('v2')\n", "data/db.json": `{"rows": 2}`})
	op, err := e.m.Rollback(ctx, p1.ID, RollbackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if op.Plan.Linked == 0 || op.Plan.Copied == 0 {
		t.Fatalf("plan %+v: the test wants linked and copied files", op.Plan)
	}
	var hashed []string
	var mu sync.Mutex
	e.m.testHook = func(point string) error {
		if p, ok := strings.CutPrefix(point, "open "); ok {
			mu.Lock()
			hashed = append(hashed, filepath.Base(p))
			mu.Unlock()
		}
		return nil
	}
	p2 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	// (Parent names one root's: p1 for a restored root, the pre-rollback
	// point for config, which the restore left alone.)
	if len(hashed) != 0 || p2.Parent != p1.ID && p2.Parent != op.PreRollbackPoint || digestsOf(t, e.m, p2) != digestsOf(t, e.m, p1) {
		t.Fatalf("first create after the restore hashed %v; parent %s, want none and %s (pre %s)", hashed, p2.Parent, p1.ID, op.PreRollbackPoint)
	}
	// An edit that keeps size and mtime, after the restore.
	f := filepath.Join(e.dir, "config/settings.toml")
	info, _ := os.Stat(f)
	os.WriteFile(f, []byte("a = 2\n"), 0o644)
	os.Chtimes(f, info.ModTime(), info.ModTime())
	hashed = nil
	mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if strings.Join(hashed, ",") != "settings.toml" {
		t.Fatalf("create after an edit hashed %v, want settings.toml", hashed)
	}
}

// digestsOf lists each file of p with its digest.
func digestsOf(t *testing.T, m *Manager, p Point) string {
	t.Helper()
	mf, err := m.loadManifest(p, false)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, r := range mf.Roots {
		for _, e := range r.Entries {
			fmt.Fprintf(&b, "%s/%s %s %s\n", r.Path, e.Path, e.Type, e.Digest)
		}
	}
	return b.String()
}
