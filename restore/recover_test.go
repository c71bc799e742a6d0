package restore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// otherHost is a Manager of another host on e's store and paths: its own
// host id and name, as a second gateway of the fleet on one Consul.
func otherHost(t *testing.T, e *env, name string, opts Options) *Manager {
	t.Helper()
	opts.Host = name
	opts.HostIDFile = filepath.Join(t.TempDir(), "host-id")
	m, err := New(e.st, e.cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestStaleJournalThenNewerRestore is the case: a restore killed
// at its second root's swap leaves a journal; a newer restore B then runs
// on this host, and recovery comes last. B must first finish the stale
// restore, so nothing can later roll the stale stages forward over B's
// result: the trees end exactly as B's point.
func TestStaleJournalThenNewerRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	dir, point, oldSnap, newSnap, _ := crashSetup(t)
	e := newEnvAt(t, dir)
	b := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem}) // B: the old state
	e.st.Close()
	if !runCrashChild(t, dir, point, []string{envCrashAt + "=swap-1-begun"}, 0) {
		t.Fatal("child was not killed at swap-1-begun")
	}
	e = newEnvAt(t, dir)
	if got := snapshotAll(t, e.roots()...); got == oldSnap || got == newSnap {
		t.Fatal("setup: the killed restore did not leave mixed roots")
	}
	op, err := e.m.Rollback(context.Background(), b.ID, RollbackOptions{Trigger: "B"})
	if err != nil {
		t.Fatalf("restore B: %v", err)
	}
	if lock := op.Steps[1]; lock.Name != "lock" || !strings.Contains(lock.Detail, "rolled_forward") {
		t.Errorf("restore B's lock step did not finish the stale restore first: %+v", lock)
	}
	if _, err := e.m.Recover(context.Background()); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if got := snapshotAll(t, e.roots()...); got != oldSnap {
		t.Fatalf("after B and recovery the trees are not B's point:\n%s", diffSnap(got, oldSnap))
	}
	noLeftovers(t, dir)
}

// TestRecoverLeavesAChangedTree: a journal whose root no longer holds
// either of its trees (changed since, by hand or by a restore that did
// not know the journal) is not finished: no root is touched, not even the
// ones the journal still matches, and the operation is marked failed.
func TestRecoverLeavesAChangedTree(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	dir, point, _, _, _ := crashSetup(t)
	if !runCrashChild(t, dir, point, []string{envCrashAt + "=swap-1-begun"}, 0) {
		t.Fatal("child was not killed at swap-1-begun")
	}
	// Someone replaces the config root meanwhile.
	cfgRoot := filepath.Join(dir, "config")
	if err := os.Rename(cfgRoot, filepath.Join(dir, "config-aside")); err != nil {
		t.Fatal(err)
	}
	writeTree(t, dir, map[string]string{"config/hand-made": "x"})
	e := newEnvAt(t, dir)
	before := snapshotAll(t, e.roots()...)
	ops, err := e.m.Recover(context.Background())
	if err == nil || !strings.Contains(err.Error(), "changed since") {
		t.Fatalf("Recover = %v, want an error about the changed tree", err)
	}
	if len(ops) != 1 || ops[0].Status != StatusFailed {
		t.Fatalf("recovered %+v, want one failed op", ops)
	}
	if got := snapshotAll(t, e.roots()...); got != before {
		t.Errorf("recovery changed the live trees:\n%s", diffSnap(got, before))
	}
	// A later restore is not blocked by it, and nothing finishes it later.
	if again, err := e.m.Recover(context.Background()); err != nil || len(again) != 0 {
		t.Errorf("second Recover = %v, %v", again, err)
	}
}

// TestRecoverOnlyThisHostsOperations: a journal in the shared store from
// another host is never acted on here, however old, and is listed as
// unfinished; its own host recovers it, whatever that host is called now.
func TestRecoverOnlyThisHostsOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	dir, point, _, newSnap, _ := crashSetup(t)
	if !runCrashChild(t, dir, point, []string{envCrashAt + "=swap-1-begun"}, 0) {
		t.Fatal("child was not killed at swap-1-begun")
	}
	e := newEnvAt(t, dir)
	mixed := snapshotAll(t, e.roots()...)
	// Another host, two hours later, with the same paths on its disk.
	other := otherHost(t, e, "gw-b", Options{Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	got, err := other.Recover(context.Background())
	if err != nil || len(got) != 0 {
		t.Fatalf("other host's Recover = %+v, %v; want nothing done", got, err)
	}
	if s := snapshotAll(t, e.roots()...); s != mixed {
		t.Fatalf("another host's recovery changed this host's paths:\n%s", diffSnap(s, mixed))
	}
	un, err := other.Unfinished(context.Background())
	if err != nil || len(un) != 1 || un[0].Host != "test-host" {
		t.Fatalf("other host's Unfinished = %+v, %v", un, err)
	}
	// An operation of another host without a journal stays running too.
	far := otherHost(t, e, "gw-c", Options{Now: func() time.Time { return time.Now().Add(-3 * time.Hour) }})
	farOp, err := far.newOp(context.Background(), KindRollback, "manual", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if op, _ := e.m.GetOperation(context.Background(), farOp.ID); op.Status != StatusRunning {
		t.Errorf("another host's operation without a journal became %s", op.Status)
	}
	// The owner, renamed since, recovers its own.
	renamed, err := New(e.st, e.cfg, Options{Host: "test-host-renamed"})
	if err != nil {
		t.Fatal(err)
	}
	got, err = renamed.Recover(context.Background())
	if err != nil || len(got) != 1 || got[0].Status != StatusRolledForward {
		t.Fatalf("owner's Recover = %+v, %v", got, err)
	}
	if s := snapshotAll(t, e.roots()...); s != newSnap {
		t.Fatalf("owner's recovery did not finish the restore:\n%s", diffSnap(s, newSnap))
	}
}

// TestPointsOfAnotherHost: a restore of a point created elsewhere fails at
// the pre-check naming that host, and emergency only picks this host's
// points; a hostname change does not make this host's points foreign.
func TestPointsOfAnotherHost(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if p.HostID == "" || p.HostID != e.m.HostID() || p.Host != "test-host" {
		t.Fatalf("point host %q id %q, manager id %q", p.Host, p.HostID, e.m.HostID())
	}
	other := otherHost(t, e, "gw-b", Options{})
	op, err := other.Rollback(ctx, p.ID, RollbackOptions{Force: true})
	want := "point " + p.ID + " was created on test-host; its objects are not here"
	if !errors.Is(err, ErrForeignPoint) || err.Error() != want {
		t.Fatalf("foreign rollback: %v, want %q", err, want)
	}
	if len(op.Steps) != 1 || op.Steps[0].Name != "pre_checks" {
		t.Errorf("foreign rollback went past the pre-checks: %+v", op.Steps)
	}
	if _, err := other.Emergency(ctx, EmergencyOptions{Reason: "test"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("emergency on a host without points of its own: %v", err)
	}
	renamed, err := New(e.st, e.cfg, Options{Host: "renamed"})
	if err != nil {
		t.Fatal(err)
	}
	writeTree(t, e.dir, map[string]string{"app/main.py": "changed"})
	if _, err := renamed.Rollback(ctx, p.ID, RollbackOptions{}); err != nil {
		t.Fatalf("rollback after a hostname change: %v", err)
	}
}

// TestLiveness: a record is alive only while its pid runs with the start
// time it recorded; a reused pid (same pid, another start) is dead.
func TestLiveness(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	start, err := procStart(cmd.Process.Pid)
	if err != nil || start == 0 {
		t.Fatalf("procStart = %d, %v", start, err)
	}
	boot := bootID()
	if !pidAlive(cmd.Process.Pid, start, boot) {
		t.Error("a running process is not alive")
	}
	if pidAlive(cmd.Process.Pid, start+1, boot) {
		t.Error("a process with another start time (a reused pid) is alive")
	}
	if pidAlive(cmd.Process.Pid, start, "another-boot") {
		t.Error("a process of another boot is alive")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if pidAlive(cmd.Process.Pid, start, boot) {
		t.Error("a dead process is alive")
	}
	// This process: alive while it runs the operation, not once it gave
	// it up; a record of this pid with another start time is a previous
	// process's.
	e := newEnv(t)
	op := Operation{ID: "op-x", PID: e.m.pid, PIDStart: e.m.pidStart, BootID: e.m.boot}
	if !e.m.opAlive(op) {
		t.Error("this process's own operation is not alive")
	}
	e.m.abandon(&op)
	if e.m.opAlive(op) {
		t.Error("an abandoned operation is alive")
	}
	if e.m.opAlive(Operation{ID: "op-y", PID: e.m.pid, PIDStart: e.m.pidStart + 1, BootID: e.m.boot}) {
		t.Error("a previous process with this pid is alive")
	}
}

func TestParseProcStart(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		ok       bool
	}{
		{"plain", "42 (sleep) S 1 42 42 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 123456 5 6", 123456, true},
		{"spaces and parens in name", "42 (a) b (c) S 1 42 42 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 777 5", 777, true},
		{"no name", "42 S 1", 0, false},
		{"short", "42 (x) S 1 2", 0, false},
		{"not a number", "42 (x) S 1 42 42 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 zz 5", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStart([]byte(tc.in))
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("parseProcStart(%q) = %d, %v", tc.in, got, err)
			}
		})
	}
}

func FuzzParseProcStart(f *testing.F) {
	f.Add([]byte("42 (sleep) S 1 42 42 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 123456 5 6"))
	f.Add([]byte("1 ((x)) R"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseProcStart(b)
		if err != nil && v != 0 {
			t.Fatalf("error %v with value %d", err, v)
		}
	})
}

func TestHostIDFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "host-id")
	a, err := loadHostID(p)
	if err != nil || checkHostID(a) != nil {
		t.Fatalf("first load: %q, %v", a, err)
	}
	b, err := loadHostID(p)
	if err != nil || b != a {
		t.Fatalf("second load: %q, %v; want %q", b, err, a)
	}
	os.WriteFile(p, []byte("not hex!\n"), 0o600)
	if _, err := loadHostID(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("bad id file: %v", err)
	}
}

// diffSnap shows the first lines that differ between two snapshots.
func diffSnap(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	n := 0
	for i := 0; i < max(len(g), len(w)) && n < 8; i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			b.WriteString("got  " + gl + "\nwant " + wl + "\n")
			n++
		}
	}
	return b.String()
}

// TestClockStepBack: the clock is stepped back an hour between two
// points. Emergency must still restore the newer one (the point made
// last), and the newer one is the parent of the next; ordering by the
// creation time alone picked the older.
func TestClockStepBack(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	now := time.Date(2025, 8, 18, 14, 30, 0, 0, time.UTC)
	e.m.opts.Now = func() time.Time { return now }
	p1 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	now = now.Add(-time.Hour)
	writeTree(t, e.dir, map[string]string{"app/main.py": "v2"})
	want := snapshotAll(t, e.roots()...)
	p2 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if p2.Seq != p1.Seq+1 || p2.Parent != p1.ID {
		t.Errorf("p2 seq %d parent %q; p1 %s seq %d", p2.Seq, p2.Parent, p1.ID, p1.Seq)
	}
	waitTick(t)
	p3 := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	if p3.Parent != p2.ID {
		t.Errorf("after the step, the parent of a new point is %q, want the newest, %s", p3.Parent, p2.ID)
	}
	writeTree(t, e.dir, map[string]string{"app/main.py": "v3"})
	op, err := e.m.Emergency(ctx, EmergencyOptions{Reason: "clock step"})
	if err != nil {
		t.Fatal(err)
	}
	if op.Point != p2.ID {
		t.Fatalf("emergency restored %s, want the newest full_system point %s (made after the clock stepped back)", op.Point, p2.ID)
	}
	if got := snapshotAll(t, e.roots()...); got != want {
		t.Errorf("tree after the emergency:\n%s", diffSnap(got, want))
	}
}
