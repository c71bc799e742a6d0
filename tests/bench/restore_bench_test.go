// Restore benchmark: switchback's rollback points against cp -a, tar and
// restic on a copy of $(go env GOROOT)/src. It reports figures; it is not
// a timed pass/fail test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestRestoreBench$' -v -count=1 -timeout 30m ./tests/bench/
//
// SWITCHBACK_BENCH_TREE=/some/dir benchmarks another tree instead.
package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state/local"
)

func TestRestoreBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the restore benchmark")
	}
	src := os.Getenv("SWITCHBACK_BENCH_TREE")
	if src == "" {
		src = filepath.Join(runtime.GOROOT(), "src")
	}
	work := t.TempDir()
	live := filepath.Join(work, "live")
	run := func(name string, args ...string) time.Duration {
		t.Helper()
		t0 := time.Now()
		cmd := exec.Command(name, args...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "RESTIC_PASSWORD=bench")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return time.Since(t0)
	}
	run("cp", "-a", src, live)
	var files int
	var bytes int64
	var paths []string
	filepath.Walk(live, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			files++
			bytes += info.Size()
			paths = append(paths, p)
		}
		return nil
	})
	drop := func() { exec.Command("sync").Run() }

	type row struct {
		tool, op string
		d        time.Duration
		note     string
	}
	var rows []row
	add := func(tool, op string, d time.Duration, note string) {
		rows = append(rows, row{tool, op, d, note})
		t.Logf("%-12s %-28s %10s %s", tool, op, d.Round(time.Millisecond), note)
	}

	// Peers.
	drop()
	cpD := run("cp", "-a", live, filepath.Join(work, "cp-copy"))
	add("cp -a", "copy tree", cpD, "")
	os.RemoveAll(filepath.Join(work, "cp-copy"))
	drop()
	add("tar", "cf (backup)", run("tar", "cf", "bench.tar", "-C", work, "live"), "")
	os.Mkdir(filepath.Join(work, "untar"), 0o755)
	drop()
	add("tar", "xf (restore)", run("tar", "xf", "bench.tar", "-C", filepath.Join(work, "untar")), "")
	os.RemoveAll(filepath.Join(work, "untar"))
	os.Remove(filepath.Join(work, "bench.tar"))
	if _, err := exec.LookPath("restic"); err == nil {
		repo := filepath.Join(work, "restic-repo")
		run("restic", "-q", "init", "--repo", repo)
		drop()
		add("restic", "backup (first)", run("restic", "-q", "backup", "--repo", repo, live), "")
		drop()
		add("restic", "backup (unchanged second)", run("restic", "-q", "backup", "--repo", repo, live), "")
		drop()
		add("restic", "restore latest", run("restic", "-q", "restore", "latest", "--repo", repo, "--target", filepath.Join(work, "restic-out")), "")
		os.RemoveAll(filepath.Join(work, "restic-out"))
		os.RemoveAll(repo)
	} else {
		t.Log("restic not on PATH; skipping it")
	}

	// switchback.
	ctx := context.Background()
	m := benchManager(t, work, live)
	drop()
	t0 := time.Now()
	p1, err := m.CreatePoint(ctx, restore.CreateOptions{Type: restore.TypeFullSystem})
	if err != nil {
		t.Fatal(err)
	}
	first := time.Since(t0)
	add("switchback", "create (first)", first, fmt.Sprintf("%d files, %.0f MB", p1.Files, float64(p1.Size)/1e6))
	drop()
	time.Sleep(1100 * time.Millisecond) // a new point id
	t0 = time.Now()
	if _, err := m.CreatePoint(ctx, restore.CreateOptions{Type: restore.TypeFullSystem}); err != nil {
		t.Fatal(err)
	}
	second := time.Since(t0)
	add("switchback", "create (unchanged second)", second, fmt.Sprintf("%.3f× first", second.Seconds()/first.Seconds()))
	t0 = time.Now()
	rep, err := m.VerifyPoint(ctx, p1.ID)
	if err != nil {
		t.Fatal(err)
	}
	vd := time.Since(t0)
	add("switchback", "verify", vd, fmt.Sprintf("%.2f GB/s hashing (%.2f GB/s wall)", rep.BytesPerSecond/1e9, float64(rep.Bytes)/vd.Seconds()/1e9))

	// Change ~1% of the files, then restore p1.
	r := rand.New(rand.NewPCG(1, 2))
	changed := 0
	for _, i := range r.Perm(len(paths))[:len(paths)/100] {
		if err := os.WriteFile(paths[i], []byte(fmt.Sprintf("changed %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		changed++
	}
	// cp -a of the live tree, warm, just before the restore: the fair
	// baseline, since the first cp -a above reads GOROOT/src with whatever
	// the page cache holds (it ranged from 0.75 s to 3.4 s here).
	drop()
	cpWarm := run("cp", "-a", live, filepath.Join(work, "cp-warm"))
	add("cp -a", "copy tree (warm, before restore)", cpWarm, "")
	os.RemoveAll(filepath.Join(work, "cp-warm"))
	drop()
	t0 = time.Now()
	op, err := m.Rollback(ctx, p1.ID, restore.RollbackOptions{Trigger: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	rd := time.Since(t0)
	add("switchback", "restore (1% changed)", rd, fmt.Sprintf("%.2f× warm cp -a; %d copied, %d linked", rd.Seconds()/cpWarm.Seconds(), op.Plan.Copied, op.Plan.Linked))
	var steps []string
	for _, s := range op.Steps {
		steps = append(steps, fmt.Sprintf("%s %s", s.Name, time.Duration(s.Duration).Round(time.Millisecond)))
	}
	t.Logf("restore steps: %s", strings.Join(steps, ", "))

	// Restore into a tree with everything changed: the worst case.
	os.RemoveAll(live)
	os.Mkdir(live, 0o755)
	drop()
	t0 = time.Now()
	if _, err := m.Rollback(ctx, p1.ID, restore.RollbackOptions{Trigger: "bench"}); err != nil {
		t.Fatal(err)
	}
	fd := time.Since(t0)
	add("switchback", "restore (into empty dir)", fd, fmt.Sprintf("%.2f× warm cp -a", fd.Seconds()/cpWarm.Seconds()))

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "tree: %s (%d files, %.0f MB), %d CPUs, %d files changed\n", src, files, float64(bytes)/1e6, runtime.NumCPU(), changed)
	fmt.Fprintln(tw, "tool\toperation\twall\tnote")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.tool, r.op, r.d.Round(time.Millisecond), r.note)
	}
	tw.Flush()
	t.Log("\n" + b.String())
	t.Logf("targets: restore/cp -a = %.2f against the cp -a just before it, %.2f against the first (≤1.5), second/first create = %.3f (≤0.2), verify = %.2f GB/s (≥1)",
		rd.Seconds()/cpWarm.Seconds(), rd.Seconds()/cpD.Seconds(), second.Seconds()/first.Seconds(), rep.BytesPerSecond/1e9)
}

// TestVerifyLargeBench verifies a point of large files, where SHA-256
// rather than per-file system calls bounds verify, next to sha256sum over
// the same files. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestVerifyLargeBench$' -v -count=1 ./tests/bench/
func TestVerifyLargeBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the verify benchmark")
	}
	work := t.TempDir()
	live := filepath.Join(work, "live")
	if err := os.Mkdir(live, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 8<<20)
	var total int64
	var paths []string
	for i := range 24 {
		for j := 0; j < len(buf); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		p := filepath.Join(live, fmt.Sprintf("blob-%02d", i))
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		total += int64(len(buf))
	}
	m := benchManager(t, work, live)
	ctx := context.Background()
	p, err := m.CreatePoint(ctx, restore.CreateOptions{Type: restore.TypeFullSystem})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		t0 := time.Now()
		rep, err := m.VerifyPoint(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(t0)
		t.Logf("switchback verify: %d objects, %.0f MB in %v: %.2f GB/s hashing (%.2f GB/s wall)",
			rep.Objects, float64(rep.Bytes)/1e6, d.Round(time.Millisecond), rep.BytesPerSecond/1e9, float64(rep.Bytes)/d.Seconds()/1e9)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		half := len(paths) / 2
		t0 := time.Now()
		a := exec.Command("sha256sum", paths[:half]...)
		b := exec.Command("sha256sum", paths[half:]...)
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		if err := b.Run(); err != nil {
			t.Fatal(err)
		}
		if err := a.Wait(); err != nil {
			t.Fatal(err)
		}
		d := time.Since(t0)
		t.Logf("sha256sum, 2 processes: %.0f MB in %v: %.2f GB/s", float64(total)/1e6, d.Round(time.Millisecond), float64(total)/d.Seconds()/1e9)
	}
}

// benchManager returns a restore manager on a bbolt store in work, whose
// full_system points hold live.
func benchManager(t *testing.T, work, live string) *restore.Manager {
	t.Helper()
	st, err := local.Open(filepath.Join(work, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m, err := restore.New(st, restore.Config{
		Backups: filepath.Join(work, "backups"),
		Logs:    filepath.Join(work, "logs"),
		Types:   map[string][]string{restore.TypeFullSystem: {live}},
	}, restore.Options{Host: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
