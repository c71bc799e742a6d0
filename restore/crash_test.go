package restore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The crash tests re-run the test binary as a child that restores a point
// and is killed with SIGKILL, either at a named point of the restore
// (SWITCHBACK_CRASH_AT) or after a random delay. The parent then runs
// Recover and checks that each root is exactly the old or the new tree,
// all roots alike, with no leftovers and a catalog matching the outcome.

const (
	envCrashDir   = "SWITCHBACK_CRASH_DIR"
	envCrashPoint = "SWITCHBACK_CRASH_POINT"
	envCrashAt    = "SWITCHBACK_CRASH_AT"
	envCrashSleep = "SWITCHBACK_CRASH_SLEEP"
	envCrashFail  = "SWITCHBACK_CRASH_FAIL"
	envNoExchange = "SWITCHBACK_NO_EXCHANGE"
)

// TestCrashChild is the child side; it does nothing unless run by the
// crash tests.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envCrashDir)
	if dir == "" {
		return
	}
	e := newEnvAt(t, dir)
	noExchange = os.Getenv(envNoExchange) != ""
	at := os.Getenv(envCrashAt)
	sleep := os.Getenv(envCrashSleep) != ""
	fail := os.Getenv(envCrashFail)
	e.m.testHook = func(point string) error {
		if at != "" && strings.HasPrefix(point, at) {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
		if fail != "" && point == fail {
			return errors.New("injected failure at " + point)
		}
		if sleep {
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		}
		return nil
	}
	if _, err := e.m.Rollback(context.Background(), os.Getenv(envCrashPoint), RollbackOptions{Trigger: "crash-test"}); err != nil && fail == "" {
		t.Fatal(err)
	}
}

// crashSetup builds a work dir with a point of the "new" state and the
// live tree in the "old" state, and returns both snapshots.
func crashSetup(t *testing.T) (dir, point, oldSnap, newSnap, cat string) {
	t.Helper()
	return crashSetupIn(t, t.TempDir())
}

// crashSetupIn is crashSetup in dir, which may hold mounts already.
func crashSetupIn(t *testing.T, dir string) (_, point, oldSnap, newSnap, cat string) {
	t.Helper()
	e := newEnvAt(t, dir)
	files := map[string]string{"app/core/empty/": "", "config/c.toml": "c=1", "data/link": "->../app/f0"}
	for i := 0; i < 150; i++ {
		files[fmt.Sprintf("app/d%d/f%d", i%10, i)] = strings.Repeat("new", i)
		files[fmt.Sprintf("data/f%d", i)] = fmt.Sprint("data", i)
	}
	writeTree(t, dir, files)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	newSnap = snapshotAll(t, e.roots()...)
	// The old state: edits, additions, removals in every root.
	for i := 0; i < 150; i += 3 {
		writeTree(t, dir, map[string]string{fmt.Sprintf("app/d%d/f%d", i%10, i): "old" + strconv.Itoa(i)})
	}
	for i := 0; i < 150; i += 5 {
		writeTree(t, dir, map[string]string{fmt.Sprintf("data/f%d", i): "old" + strconv.Itoa(i)})
	}
	writeTree(t, dir, map[string]string{"config/c.toml": "c=2", "config/extra": "x", "data/link": "->elsewhere", "data/extra/x": "x"})
	os.RemoveAll(filepath.Join(dir, "app/d3"))
	os.Remove(filepath.Join(dir, "data/f7"))
	oldSnap = snapshotAll(t, e.roots()...)
	if oldSnap == newSnap {
		t.Fatal("setup: old and new trees are the same")
	}
	return dir, p.ID, oldSnap, newSnap, catalog(t, e.st)
}

func runCrashChild(t *testing.T, dir, point string, env []string, killAfter time.Duration) (killed bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDir+"="+dir, envCrashPoint+"="+point)
	cmd.Env = append(cmd.Env, env...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if killAfter > 0 {
		timer := time.AfterFunc(killAfter, func() { cmd.Process.Signal(syscall.SIGKILL) })
		defer timer.Stop()
	}
	err := cmd.Wait()
	if err == nil {
		return false
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	t.Fatalf("child failed: %v\n%s", err, out)
	return false
}

// checkRecovered runs Recover and checks the outcome.
func checkRecovered(t *testing.T, dir, oldSnap, newSnap, cat string) string {
	t.Helper()
	e := newEnvAt(t, dir)
	recovered, err := e.m.Recover(context.Background())
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	got := snapshotAll(t, e.roots()...)
	outcome := ""
	switch got {
	case oldSnap:
		outcome = "old"
	case newSnap:
		outcome = "new"
	default:
		t.Fatalf("after recovery the tree is neither old nor new:\n%s\n--- old\n%s\n--- new\n%s", got, oldSnap, newSnap)
	}
	for _, d := range append([]string{dir, filepath.Join(dir, "logs")}, e.roots()...) {
		noLeftovers(t, d)
	}
	for _, op := range recovered {
		switch {
		case op.Status == StatusRolledBack && outcome != "old", op.Status == StatusRolledForward && outcome != "new":
			t.Errorf("op %s says %s but the tree is %s", op.ID, op.Status, outcome)
		}
	}
	if outcome == "old" {
		if got := catalog(t, e.st); got != cat {
			t.Errorf("tree is old but catalog changed:\n%s\n--- want\n%s", got, cat)
		}
	}
	// A second Recover has nothing to do, and nothing is left running.
	if again, err := e.m.Recover(context.Background()); err != nil || len(again) != 0 {
		t.Errorf("second Recover = %v, %v", again, err)
	}
	ops, _ := e.m.ListOperations(context.Background(), 0)
	for _, op := range ops {
		if op.Status == StatusRunning {
			t.Errorf("op %s still running", op.ID)
		}
	}
	e.st.Close()
	return outcome
}

func TestCrashAtNamedPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	points := []string{
		"before-catalog", // creating the pre-rollback point
		"open ",          // hashing during the pre-rollback point
		"after-fsync",    // stages complete, nothing swapped
		"swap-0-begun",   // journal says swapping root 0
		"swap-0-renamed", // root 0 swapped, not yet journalled
		"swap-1-renamed", // roots 0 and 1 swapped
		"swap-2-renamed", // all swapped, not journalled
	}
	want := map[string]string{"before-catalog": "old", "after-fsync": "old", "swap-0-begun": "new", "swap-0-renamed": "new", "swap-1-renamed": "new", "swap-2-renamed": "new"}
	for _, at := range points {
		t.Run(strings.TrimSpace(at), func(t *testing.T) {
			dir, point, oldSnap, newSnap, cat := crashSetup(t)
			if !runCrashChild(t, dir, point, []string{envCrashAt + "=" + at}, 0) {
				t.Fatalf("child was not killed at %q", at)
			}
			got := checkRecovered(t, dir, oldSnap, newSnap, cat)
			if w, ok := want[at]; ok && got != w {
				t.Errorf("crash at %q: tree is %s, want %s", at, got, w)
			}
		})
	}
}

func TestCrashAtRandomInstants(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	// Calibrate: how long does an uninterrupted child take?
	dir, point, _, newSnap, _ := crashSetup(t)
	t0 := time.Now()
	if runCrashChild(t, dir, point, []string{envCrashSleep + "=1"}, 0) {
		t.Fatal("calibration child was killed")
	}
	full := time.Since(t0)
	e := newEnvAt(t, dir)
	if got := snapshotAll(t, e.roots()...); got != newSnap {
		t.Fatal("calibration run did not restore the point")
	}
	e.st.Close()
	outcomes := map[string]int{}
	const runs = 24
	for i := 0; i < runs; i++ {
		dir, point, oldSnap, newSnap, cat := crashSetup(t)
		delay := time.Duration(rand.Int64N(int64(full)))
		killed := runCrashChild(t, dir, point, []string{envCrashSleep + "=1"}, delay)
		out := checkRecovered(t, dir, oldSnap, newSnap, cat)
		if !killed {
			out += " (not killed)"
		}
		outcomes[out]++
	}
	t.Logf("full run %s; outcomes over %d kills: %v", full, runs, outcomes)
}

// TestCrashMountRoot: kill -9 at each step of a restore whose data root
// is a mount point (its entries are exchanged from inside), and at random
// instants; recovery must leave every root all old or all new, alike,
// with nothing of the restore left inside the mount.
func TestCrashMountRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	for _, kind := range []string{"tmpfs", "bind", "tmpfs-rename"} {
		t.Run(kind, func(t *testing.T) {
			var env []string
			if kind == "tmpfs-rename" {
				// As on a filesystem without RENAME_EXCHANGE.
				env = []string{envNoExchange + "=1"}
			}
			setup := func(t *testing.T) (string, string, string, string, string) {
				dir := t.TempDir()
				mountAt(t, strings.TrimSuffix(kind, "-rename"), dir, filepath.Join(dir, "data"))
				return crashSetupIn(t, dir)
			}
			points := []string{
				"after-fsync",         // stages complete, nothing swapped
				"swap-2-begun",        // journal says swapping the mount root
				"mount-exchanged f10", // entries exchanged, the last one's old entry still in the stage
				"mount-moved f5",      // some entries swapped, some not
				"mount-moved link",    // every entry swapped; what the point lacks not yet aside
				"swap-2-renamed",      // all swapped, the root's metadata set, not journalled
			}
			want := map[string]string{"after-fsync": "old"}
			for _, at := range points {
				t.Run(at, func(t *testing.T) {
					dir, point, oldSnap, newSnap, cat := setup(t)
					if !runCrashChild(t, dir, point, append([]string{envCrashAt + "=" + at}, env...), 0) {
						t.Fatalf("child was not killed at %q", at)
					}
					got := checkRecovered(t, dir, oldSnap, newSnap, cat)
					if w := want[at]; w == "" && got != "new" || w != "" && got != w {
						t.Errorf("crash at %q: tree is %s", at, got)
					}
				})
			}
			t.Run("random", func(t *testing.T) {
				dir, point, _, _, _ := setup(t)
				t0 := time.Now()
				if runCrashChild(t, dir, point, append([]string{envCrashSleep + "=1"}, env...), 0) {
					t.Fatal("calibration child was killed")
				}
				full := time.Since(t0)
				// When the stages were complete: half the kills land in
				// the swap and after it, where the mount root's entries
				// are exchanged.
				tail := full / 2
				e := newEnvAt(t, dir)
				if ops, _ := e.m.ListOperations(context.Background(), 0); len(ops) > 0 && ops[0].Finished != nil {
					for _, s := range ops[0].Steps {
						if s.Name == "fsync" {
							tail = full - ops[0].Finished.Sub(s.Start)
						}
					}
				}
				e.st.Close()
				outcomes := map[string]int{}
				for i := 0; i < 12; i++ {
					dir, point, oldSnap, newSnap, cat := setup(t)
					delay := time.Duration(rand.Int64N(int64(full)))
					if i%2 == 1 {
						delay = tail + time.Duration(rand.Int64N(int64(full-tail)+1))
					}
					killed := runCrashChild(t, dir, point, append([]string{envCrashSleep + "=1"}, env...), delay)
					out := checkRecovered(t, dir, oldSnap, newSnap, cat)
					if !killed {
						out += " (not killed)"
					}
					outcomes[out]++
				}
				t.Logf("full run %s, stages complete from %s; outcomes: %v", full, tail, outcomes)
			})
		})
	}
}

// TestCrashWhileReverting: a swap that fails after two of three roots
// were swapped is undone; killed in the undo (after the first root was put
// back, or before any), recovery must go on backwards, so every root ends
// old: the reverting phase was durable before the first undo. Had the
// journal still said swapping, recovery would roll the roots still new
// forward over the one already put back, or stop.
func TestCrashWhileReverting(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	for _, at := range []string{"revert-0", "revert-1", "revert-2"} {
		t.Run(at, func(t *testing.T) {
			dir, point, oldSnap, newSnap, cat := crashSetup(t)
			if !runCrashChild(t, dir, point, []string{envCrashFail + "=swap-1-renamed", envCrashAt + "=" + at}, 0) {
				t.Fatalf("child was not killed at %q", at)
			}
			e := newEnvAt(t, dir)
			ops, _ := e.m.ListOperations(context.Background(), 0)
			if len(ops) == 0 || ops[0].Journal == nil || ops[0].Journal.Phase != PhaseReverting {
				t.Fatalf("the killed revert's journal is %+v, want phase reverting", ops[0].Journal)
			}
			e.st.Close()
			if got := checkRecovered(t, dir, oldSnap, newSnap, cat); got != "old" {
				t.Errorf("killed while reverting at %s: tree is %s, want old", at, got)
			}
		})
	}
}

// TestRecoverMountGone: a restore into a mount root is killed; at the
// next start the volume is not mounted (the directory under it is
// there, empty). Recovery must not touch that directory (nor take its
// emptiness for the restore's result): it refuses, naming the root.
func TestRecoverMountGone(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	for _, at := range []string{"staging", "mount-moved f5"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			mountAt(t, "bind", dir, data)
			os.Chmod(data, 0o750)
			dir, point, _, _, _ := crashSetupIn(t, dir)
			kill := at
			if at == "staging" {
				kill = "link " + data + "/" // staging the mount root
			}
			if !runCrashChild(t, dir, point, []string{envCrashAt + "=" + kill}, 0) {
				t.Fatal("child was not killed")
			}
			if err := unix.Unmount(data, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			var before unix.Stat_t
			unix.Lstat(data, &before)
			e := newEnvAt(t, dir)
			ops, err := e.m.Recover(context.Background())
			if err == nil || !strings.Contains(err.Error(), data+" (inode") {
				t.Fatalf("Recover with the volume gone = %v, %v; want a refusal naming %s", ops, err, data)
			}
			var after unix.Stat_t
			unix.Lstat(data, &after)
			if after.Mode != before.Mode || after.Mtim != before.Mtim || after.Ctim != before.Ctim {
				t.Errorf("recovery changed the directory under the mount: %+v -> %+v", before, after)
			}
		})
	}
}
