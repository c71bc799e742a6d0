package restore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCreateAndRollbackRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	before := snapshotAll(t, e.roots()...)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem, Metadata: json.RawMessage(`{"phase":"pre"}`), Tags: []string{"keep"}})
	if !strings.HasPrefix(p.ID, "rollback-") || p.Files != 7 {
		t.Fatalf("point = %+v", p)
	}
	// Change things: edit, add, remove, retarget, chmod.
	writeTree(t, e.dir, map[string]string{
		"app/main.py":      "print('v2')\n",
		"app/new.py":       "new\n",
		"app/link":         "->main.py",
		"data/new/deep/x":  "x",
		"config/extra.cfg": "extra",
	})
	os.Remove(filepath.Join(e.dir, "data/dup2"))
	os.RemoveAll(filepath.Join(e.dir, "app/core/empty"))
	os.Chmod(filepath.Join(e.dir, "app/hub.py"), 0o600)

	dry, err := e.m.Rollback(ctx, p.ID, RollbackOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Plan == nil || dry.Plan.AddedCount != 2 || dry.Plan.ModifiedCount != 3 || dry.Plan.RemovedCount != 5 {
		t.Fatalf("dry-run plan = %+v", dry.Plan)
	}
	if got := snapshotAll(t, e.roots()...); got == before {
		t.Fatal("dry run changed the tree")
	}
	changed := snapshotAll(t, e.roots()...)

	op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Trigger: "test", Reason: "round trip"})
	if err != nil {
		t.Fatalf("Rollback: %v\n%+v", err, op.Steps)
	}
	if got := snapshotAll(t, e.roots()...); got != before {
		t.Fatalf("restored tree differs:\n--- got\n%s\n--- want\n%s", got, before)
	}
	if op.Status != StatusCompleted || op.PreRollbackPoint == "" {
		t.Fatalf("op = %+v", op)
	}
	var names []string
	for _, s := range op.Steps {
		names = append(names, s.Name)
	}
	want := "pre_checks lock pre_restore pre_rollback_point stage fsync swap remove_old post_restore validate"
	if strings.Join(names, " ") != want {
		t.Fatalf("steps = %v, want %s", names, want)
	}
	// The pre-rollback point brings back the changed state.
	if _, err := e.m.Rollback(ctx, op.PreRollbackPoint, RollbackOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := snapshotAll(t, e.roots()...); got != changed {
		t.Fatalf("pre-rollback point restore differs:\n--- got\n%s\n--- want\n%s", got, changed)
	}
	noLeftovers(t, e.dir)
	// The log file exists and says completed.
	b, err := os.ReadFile(filepath.Join(e.dir, "logs", "rollback-"+op.ID+".json"))
	if err != nil || !strings.Contains(string(b), `"status": "completed"`) {
		t.Fatalf("log: %v %s", err, b)
	}
}

func TestUnknownPoint(t *testing.T) {
	e := newEnv(t)
	for _, id := range []string{"rollback-20990101-000000", "../etc", ""} {
		_, err := e.m.Rollback(context.Background(), id, RollbackOptions{})
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "not found") {
			t.Errorf("Rollback(%q) = %v", id, err)
		}
		if _, err := e.m.VerifyPoint(context.Background(), id); !errors.Is(err, ErrNotFound) {
			t.Errorf("VerifyPoint(%q) = %v", id, err)
		}
	}
}

// TestRollbackSingleFileRoot: a root that is one file (a component such as
// app/hub.py) is restored with its content, mode and mtime.
func TestRollbackSingleFileRoot(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	hub := filepath.Join(e.dir, "app", "hub.py")
	before := snapshotAll(t, hub)
	p := mustCreate(t, e.m, CreateOptions{Type: TypePartialComponent, Component: "hub"})
	if p.Files != 1 {
		t.Fatalf("point = %+v", p)
	}
	if err := os.WriteFile(hub, []byte("hub v2, longer than before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Trigger: "test"}); err != nil {
		t.Fatalf("Rollback: %v\n%+v", err, op.Steps)
	}
	if got := snapshotAll(t, hub); got != before {
		t.Fatalf("restored file differs:\n--- got\n%s\n--- want\n%s", got, before)
	}
}

// TestDryRunPlanCountsXattrs: a file whose only change is an extended
// attribute is in the plan as modified (the restore does rewrite it); the
// old plan compared metadata without xattrs and left it out.
func TestDryRunPlanCountsXattrs(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	f := filepath.Join(e.dir, "data/db.json")
	if err := unix.Setxattr(f, "user.origin", []byte("v1"), 0); err != nil {
		t.Fatalf("setxattr (the test dir's filesystem needs user xattrs): %v", err)
	}
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	unix.Setxattr(f, "user.origin", []byte("v2"), 0)
	op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if op.Plan == nil || op.Plan.ModifiedCount != 1 || op.Plan.Modified[0] != f {
		t.Fatalf("plan = %+v, want %s modified", op.Plan, f)
	}
	if _, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := make([]byte, 8); func() string { n, _ := unix.Getxattr(f, "user.origin", v); return string(v[:max(n, 0)]) }() != "v1" {
		t.Errorf("the restore did not give back the xattr")
	}
}
