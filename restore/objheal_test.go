package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// entryDigest returns the digest of the entry at rel ("root/path") in p.
func entryDigest(t *testing.T, e *env, p Point, rel string) string {
	t.Helper()
	mf, err := e.m.loadManifest(p, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range mf.Roots {
		for _, en := range r.Entries {
			if filepath.Join(filepath.Base(r.Path), en.Path) == rel {
				return en.Digest
			}
		}
	}
	t.Fatalf("no entry %s", rel)
	return ""
}

// mustVerify fails unless point id verifies clean.
func mustVerify(t *testing.T, e *env, id string) {
	t.Helper()
	if rep, err := e.m.VerifyPoint(context.Background(), id); err != nil {
		t.Fatalf("verify %s: %v (%+v)", id, err, rep.Problems)
	}
}

// TestCreateReplacesCorruptObject: when a file's content is already stored
// but its object is corrupt, a new point must heal the object, not share
// the corruption. Before the fix create discarded its fresh good copy
// whenever the name existed, so every later point failed verify too.
func TestCreateReplacesCorruptObject(t *testing.T) {
	t.Run("size differs", func(t *testing.T) {
		e := newEnv(t)
		e.sampleTree(t)
		tickClock(e.m)
		p1 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
		corruptObject(t, e, p1, "data/db.json", []byte("short"))
		// A touch makes the next create read the file again.
		later := time.Now().Add(time.Minute)
		os.Chtimes(filepath.Join(e.dir, "data/db.json"), later, later)
		p2 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
		mustVerify(t, e, p2.ID)
		mustVerify(t, e, p1.ID) // the same object, healed
	})
	t.Run("flagged by verify", func(t *testing.T) {
		e := newEnv(t)
		e.sampleTree(t)
		tickClock(e.m)
		ctx := context.Background()
		p1 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
		d := entryDigest(t, e, p1, "data/db.json")
		// Same size, different bytes: only a re-hash can tell.
		corruptObject(t, e, p1, "data/db.json", []byte(`{"rows": 2}`))
		if _, err := e.m.VerifyPoint(ctx, p1.ID); !errors.Is(err, ErrVerifyFailed) {
			t.Fatalf("verify of the corrupt point = %v", err)
		}
		if !e.m.objects.flagged()[d] {
			t.Fatal("verify did not flag the corrupt object durably")
		}
		// The tree is unchanged, so the next create would reuse the
		// digest without reading the file; the flag makes it read it.
		p2 := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
		mustVerify(t, e, p2.ID)
		mustVerify(t, e, p1.ID)
		if len(e.m.objects.flagged()) != 0 {
			t.Errorf("flags left after the object was healed: %v", e.m.objects.flagged())
		}
	})
}

// TestVerifyRepair checks point verify --repair: a corrupt and a missing
// object are rewritten from live files whose content matches; an object
// whose live file changed, is a FIFO, or is now a symlink out of the root
// is not, each with its reason, and nothing hangs.
func TestVerifyRepair(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	writeTree(t, e.dir, map[string]string{"data/fifo-later": "fifo", "data/link-later": "secret", "outside": "secret"})
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	corruptObject(t, e, p, "app/main.py", []byte("print('XX')\n"))
	corruptObject(t, e, p, "config/settings.toml", nil)
	corruptObject(t, e, p, "data/db.json", []byte("x"))
	corruptObject(t, e, p, "data/fifo-later", []byte("FIFO"))
	corruptObject(t, e, p, "data/link-later", []byte("SECRET"))
	// The live copy of db.json has changed since the point: no proof.
	writeTree(t, e.dir, map[string]string{"data/db.json": `{"rows": 9}`, "data/link-later": "->../outside"})
	fifo := filepath.Join(e.dir, "data/fifo-later")
	os.Remove(fifo)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	var rep VerifyReport
	var err error
	go func() { defer close(done); rep, err = e.m.RepairPoint(ctx, p.ID) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("repair hung")
	}
	if !errors.Is(err, ErrVerifyFailed) || rep.OK {
		t.Fatalf("repair = %v, want a failure for what it could not repair", err)
	}
	var fixed []string
	for _, r := range rep.Repaired {
		fixed = append(fixed, filepath.Base(r.Root)+"/"+r.Path+":"+r.Kind)
	}
	if want := "app/main.py:corrupt config/settings.toml:missing"; strings.Join(fixed, " ") != want {
		t.Errorf("repaired %v, want %s", fixed, want)
	}
	left := map[string]string{}
	for _, pr := range rep.Problems {
		left[filepath.Base(pr.Root)+"/"+pr.Path] = pr.RepairError
	}
	for path, want := range map[string]string{
		"data/db.json":         "differs",
		"data/fifo-later":      "not a regular file",
		"data/link-later":      "not a regular file",
		"app/main.py":          "",
		"config/settings.toml": "",
	} {
		got, ok := left[path]
		if want == "" {
			if ok {
				t.Errorf("%s still a problem: %s", path, got)
			}
			continue
		}
		if !ok || !strings.Contains(got, want) {
			t.Errorf("%s: repair error %q, want it to say %q", path, got, want)
		}
	}
	// What was repaired verifies; the rest still fails, and stays flagged.
	rep2, err := e.m.VerifyPoint(ctx, p.ID)
	if !errors.Is(err, ErrVerifyFailed) || len(rep2.Problems) != 3 {
		t.Errorf("verify after repair = %v, problems %+v, want the 3 unrepairable", err, rep2.Problems)
	}
	if f := e.m.objects.flagged(); len(f) != 3 || f[entryDigest(t, e, p, "app/main.py")] {
		t.Errorf("flags after repair: %v", f)
	}
	// Put back db.json's content: a second repair heals it.
	writeTree(t, e.dir, map[string]string{"data/db.json": `{"rows": 1}`})
	rep, err = e.m.RepairPoint(ctx, p.ID)
	if len(rep.Repaired) != 1 || rep.Repaired[0].Path != "db.json" || len(rep.Problems) != 2 || err == nil {
		t.Errorf("second repair = %v, repaired %+v, problems %+v", err, rep.Repaired, rep.Problems)
	}
	q, _ := e.m.GetPoint(ctx, p.ID)
	if q.Verified {
		t.Error("point marked verified with problems left")
	}
}
