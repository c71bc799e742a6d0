package restore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
	"github.com/leanvibe/switchback/state/consul/consultest"
	"github.com/leanvibe/switchback/state/local"
)

// ageObjects makes every object of s look older than cleanup's grace.
func ageObjects(t *testing.T, s *objectStore) {
	t.Helper()
	old := time.Now().Add(-2 * gcGrace)
	err := s.walk(context.Background(), func(d string, _ os.FileInfo) error { return os.Chtimes(s.path(d), old, old) })
	if err != nil {
		t.Fatal(err)
	}
}

// raceSetup makes an old data point P1 (whose objects are old too) and a
// newer configuration point, so a cleanup keeping one point removes P1,
// while a new data point reuses every digest of P1.
func raceSetup(t *testing.T, e *env) (p1 Point) {
	t.Helper()
	writeTree(t, e.dir, map[string]string{"data/a": "alpha", "data/b": "beta", "data/c/d": "delta", "config/x": "x"})
	e.m.opts.Now = func() time.Time { return time.Now().Add(-60 * 24 * time.Hour) }
	p1 = mustCreate(t, e.m, CreateOptions{Type: TypeData})
	e.m.opts.Now = time.Now
	mustCreate(t, e.m, CreateOptions{Type: TypeConfigurationOnly})
	ageObjects(t, e.m.objects)
	return p1
}

// TestCleanupDuringCreateKeepsReusedObjects is the race of issue 11 item
// 5, made deterministic: a create that reuses an old point's digests is
// held just before it commits its point, and a cleanup that removes that
// old point runs meanwhile. Before the object lease, cleanup removed the
// reused objects and the create committed a point whose three files
// verify reported missing. Now cleanup waits for the create and sees its
// point.
func TestCleanupDuringCreateKeepsReusedObjects(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	p1 := raceSetup(t, e)

	atCatalog, release, gcWaiting := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var once, gcOnce sync.Once
	e.m.testHook = func(point string) error {
		switch point {
		case "before-catalog":
			once.Do(func() { close(atCatalog); <-release })
		case "gc-wait":
			gcOnce.Do(func() { close(gcWaiting) })
		}
		return nil
	}
	var p2 Point
	var createErr error
	created := make(chan struct{})
	go func() {
		defer close(created)
		p2, createErr = e.m.CreatePoint(ctx, CreateOptions{Type: TypeData})
	}()
	<-atCatalog
	var rep CleanupReport
	var cleanErr error
	cleaned := make(chan struct{})
	go func() {
		defer close(cleaned)
		rep, cleanErr = e.m.Cleanup(ctx, CleanupOptions{KeepCount: 1, KeepDays: 1})
	}()
	select {
	case <-cleaned: // the old code: cleanup did not wait
	case <-gcWaiting: // cleanup waits for the create's lease
	case <-time.After(30 * time.Second):
		t.Fatal("cleanup neither finished nor waited for the create")
	}
	close(release)
	<-created
	<-cleaned
	if createErr != nil {
		t.Fatal(createErr)
	}
	if cleanErr != nil {
		t.Fatal(cleanErr)
	}
	if len(rep.Removed) != 1 || rep.Removed[0] != p1.ID {
		t.Fatalf("cleanup removed %v, want [%s]", rep.Removed, p1.ID)
	}
	if p2.Parent != p1.ID {
		t.Fatalf("the create's parent is %q, want %s (the race needs reused digests)", p2.Parent, p1.ID)
	}
	vr, err := e.m.VerifyPoint(ctx, p2.ID)
	if err != nil {
		t.Fatalf("point committed during cleanup: %v (problems %+v)", err, vr.Problems)
	}
	if vr.Objects != 3 {
		t.Errorf("verified %d objects, want 3", vr.Objects)
	}
}

// TestCreateWaitsForCollection checks the other order: a create that
// starts while cleanup holds the lease exclusively waits, then chooses its
// parent from the catalog as cleanup left it, and so never names an object
// cleanup removed.
func TestCreateWaitsForCollection(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	raceSetup(t, e)
	lease, err := e.m.objects.lease(ctx, true, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	var once sync.Once
	e.m.testHook = func(point string) error {
		if point == "lease-wait" {
			once.Do(func() { close(waiting) })
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.m.CreatePoint(ctx, CreateOptions{Type: TypeData})
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("create did not wait for the exclusive lease: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("create neither waited nor finished")
	}
	lease.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCleanupLeaseBound checks that a create that hangs holding the lease
// stops cleanup's collection only for the lease bound, with an error that
// says why, and that points were still removed.
func TestCleanupLeaseBound(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	p1 := raceSetup(t, e)
	e.m.objects.leaseWait = 200 * time.Millisecond
	hung, err := e.m.objects.lease(ctx, false, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hung.release()
	rep, err := e.m.Cleanup(ctx, CleanupOptions{KeepCount: 1, KeepDays: 1})
	var uerr *Error
	if !errors.As(err, &uerr) || !strings.Contains(err.Error(), "still being created") {
		t.Fatalf("cleanup = %v, want a user error saying a point is being created", err)
	}
	if len(rep.Removed) != 1 || rep.Removed[0] != p1.ID || rep.ObjectsRemoved != 0 {
		t.Errorf("report %+v: want %s removed and no objects", rep, p1.ID)
	}
}

const envLeaseChild = "SWITCHBACK_LEASE_CHILD_DIR"

// TestLeaseChild is the child of TestKilledCreateReleasesLease: it creates
// a point and stops just before committing it, until killed.
func TestLeaseChild(t *testing.T) {
	dir := os.Getenv(envLeaseChild)
	if dir == "" {
		return
	}
	e := newEnvAt(t, dir)
	e.m.testHook = func(point string) error {
		if point == "before-catalog" {
			os.WriteFile(filepath.Join(dir, "at-catalog"), nil, 0o644)
			select {}
		}
		return nil
	}
	e.m.CreatePoint(context.Background(), CreateOptions{Type: TypeData})
}

// TestKilledCreateReleasesLease kills a create with -9 while it holds the
// lease: cleanup must then collect at once, not wait for a dead process.
func TestKilledCreateReleasesLease(t *testing.T) {
	dir := t.TempDir()
	e := newEnvAt(t, dir)
	ctx := context.Background()
	p1 := raceSetup(t, e)
	e.st.Close() // the child opens the same bbolt file

	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envLeaseChild+"="+dir)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "at-catalog")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child never reached the catalog step:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e2 := newEnvAt(t, dir)
	e2.m.objects.leaseWait = 200 * time.Millisecond
	if _, err := e2.m.objects.lease(ctx, true, 0, nil); !errors.Is(err, errLeaseHeld) {
		t.Fatalf("lease while the child creates = %v, want it held", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	// The child re-read p1's files (their mtimes are not older than p1's
	// back-dated start, so the racy-timestamp rule re-hashes them) and so
	// freshened their objects; age them again, past cleanup's grace period,
	// so that only the lease could keep them.
	ageObjects(t, e2.m.objects)
	rep, err := e2.m.Cleanup(ctx, CleanupOptions{KeepCount: 1, KeepDays: 1})
	if err != nil {
		t.Fatalf("cleanup after the create was killed: %v", err)
	}
	if len(rep.Removed) != 1 || rep.Removed[0] != p1.ID || rep.ObjectsRemoved != 3 {
		t.Errorf("report %+v: want %s and its 3 objects removed", rep, p1.ID)
	}
}

// TestCleanupIgnoresOtherHosts runs two hosts on one catalog (a shared
// bbolt file, and a real Consul agent), each with its own tree and
// backups: host B's create in progress does not hold up host A's cleanup,
// and A neither removes B's points nor fails on their manifests, which
// are on B's disk.
func TestCleanupIgnoresOtherHosts(t *testing.T) {
	t.Run("bbolt", func(t *testing.T) {
		st, err := local.Open(filepath.Join(t.TempDir(), "state.db"), local.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		cleanupIgnoresOtherHosts(t, st)
	})
	t.Run("consul", func(t *testing.T) {
		agent := consultest.Start(t)
		st, err := consul.Open(consul.Config{Address: agent.Addr, Prefix: "switchback-test"}, consul.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		cleanupIgnoresOtherHosts(t, st)
	})
}

// hostManager is a Manager for host on st, whose data points hold
// dir/data and whose backups are in dir.
func hostManager(t *testing.T, st state.Store, dir, host string) *Manager {
	t.Helper()
	m, err := New(st, Config{
		Backups: filepath.Join(dir, "backups"),
		Logs:    filepath.Join(dir, "logs"),
		Types:   map[string][]string{TypeData: {filepath.Join(dir, "data")}},
	}, Options{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func cleanupIgnoresOtherHosts(t *testing.T, st state.Store) {
	ctx := context.Background()
	adir, bdir := t.TempDir(), t.TempDir()
	ma, mb := hostManager(t, st, adir, "host-a"), hostManager(t, st, bdir, "host-b")
	writeTree(t, adir, map[string]string{"data/a": "a"})
	writeTree(t, bdir, map[string]string{"data/b": "b"})
	mb.opts.Now = func() time.Time { return time.Now().Add(-60 * 24 * time.Hour) }
	pb := mustCreate(t, mb, CreateOptions{Type: TypeData})
	mb.opts.Now = time.Now
	// Host B now creates again and hangs before committing.
	atCatalog, release := make(chan struct{}), make(chan struct{})
	mb.testHook = func(point string) error {
		if point == "before-catalog" {
			close(atCatalog)
			<-release
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { _, err := mb.CreatePoint(ctx, CreateOptions{Type: TypeData}); done <- err }()
	<-atCatalog
	defer func() { close(release); <-done }()

	ma.objects.leaseWait = 200 * time.Millisecond
	ma.opts.Now = func() time.Time { return time.Now().Add(-60 * 24 * time.Hour) }
	pa := mustCreate(t, ma, CreateOptions{Type: TypeData})
	ma.opts.Now = time.Now
	mustCreate(t, ma, CreateOptions{Type: TypeData})
	ageObjects(t, ma.objects)
	rep, err := ma.Cleanup(ctx, CleanupOptions{KeepCount: 1, KeepDays: 1})
	if err != nil {
		t.Fatalf("host A's cleanup: %v", err)
	}
	if len(rep.Removed) != 1 || rep.Removed[0] != pa.ID || rep.OtherHosts != 1 {
		t.Errorf("host A's cleanup %+v: want only %s removed, and 1 other host's point left", rep, pa.ID)
	}
	if _, err := ma.GetPoint(ctx, pb.ID); err != nil {
		t.Errorf("host B's point after host A's cleanup: %v", err)
	}
}
