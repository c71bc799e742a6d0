package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPreRestoreRunsFirst: pre_restore (which stops the application) runs
// before the pre-rollback point is read, so an application still writing
// is stopped first. The hook here leaves a mark the point must hold.
func TestPreRestoreRunsFirst(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	e.m.cfg.Hooks.PreRestore = "echo stopped > " + filepath.Join(e.dir, "data", "app-stopped")
	op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mf, err := e.m.loadManifest(mustPoint(t, e.m, op.PreRollbackPoint), false)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range mf.Roots {
		for _, en := range r.Entries {
			found = found || strings.HasSuffix(r.Path, "data") && en.Path == "app-stopped"
		}
	}
	if !found {
		t.Error("the pre-rollback point was taken before pre_restore ran")
	}
}

// TestPreRollbackPointFailure: a plain rollback refuses when the
// pre-rollback point cannot be made, and says --force goes on; forced,
// and in an emergency, the restore goes on and records the failure.
func TestPreRollbackPointFailure(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	changed := filepath.Join(e.dir, "app", "main.py")
	e.m.cfg.Hooks.PostRestore = "true"
	failing := errors.New("injected: cannot store the pre-rollback point")
	e.m.testHook = func(point string) error {
		if point == "before-catalog" {
			return failing
		}
		return nil
	}
	os.WriteFile(changed, []byte("changed"), 0o644)
	op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{})
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("plain rollback: %v, want a refusal naming --force", err)
	}
	if b, _ := os.ReadFile(changed); string(b) != "changed" || op.Status != StatusFailed {
		t.Fatalf("refused rollback changed the tree (%q) or says %s", b, op.Status)
	}
	for _, run := range []struct {
		name string
		do   func() (Operation, error)
	}{
		{"forced", func() (Operation, error) { return e.m.Rollback(ctx, p.ID, RollbackOptions{Force: true}) }},
		{"emergency", func() (Operation, error) { return e.m.Emergency(ctx, EmergencyOptions{Reason: "test"}) }},
	} {
		os.WriteFile(changed, []byte("changed"), 0o644)
		op, err := run.do()
		if err != nil || op.Status != StatusCompleted {
			t.Fatalf("%s: %v, %s", run.name, err, op.Status)
		}
		if b, _ := os.ReadFile(changed); string(b) == "changed" {
			t.Errorf("%s did not restore", run.name)
		}
		if op.PreRollbackPoint != "" || len(op.Errors) == 0 || !strings.Contains(op.Errors[0], "WITHOUT a pre-rollback point") {
			t.Errorf("%s: the failure is not recorded: pre %q, errors %v", run.name, op.PreRollbackPoint, op.Errors)
		}
	}
}

func mustPoint(t *testing.T, m *Manager, id string) Point {
	t.Helper()
	p, err := m.GetPoint(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
