package restore

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const dg = "0000000000000000000000000000000000000000000000000000000000000000"

func manifestJSON(root string, entries ...string) []byte {
	return []byte(`{"version":1,"roots":[{"path":"` + root + `","entries":[{"path":".","type":"dir","mode":493,"mtime":1}` + strings.Join(append([]string{""}, entries...), ",") + `]}]}`)
}

func TestDecodeManifestPathSafety(t *testing.T) {
	file := func(p string) string {
		return `{"path":"` + p + `","type":"file","mode":420,"mtime":1,"digest":"` + dg + `"}`
	}
	tests := []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"ok", manifestJSON("/srv/app", `{"path":"d","type":"dir","mode":493,"mtime":1}`, file("d/f")), ""},
		{"absolute", manifestJSON("/srv/app", file("/etc/passwd")), "absolute"},
		{"dotdot", manifestJSON("/srv/app", file("../x")), `".." segment`},
		{"inner dotdot", manifestJSON("/srv/app", `{"path":"d","type":"dir","mode":493,"mtime":1}`, file("d/../../x")), `".." segment`},
		{"empty segment", manifestJSON("/srv/app", `{"path":"d","type":"dir","mode":493,"mtime":1}`, file("d//f")), "empty segment"},
		{"dot segment", manifestJSON("/srv/app", file("./f")), `"." segment`},
		{"through symlink", manifestJSON("/srv/app", `{"path":"l","type":"symlink","mode":511,"mtime":1,"target":"/etc"}`, file("l/passwd")), "not a directory"},
		{"parent missing", manifestJSON("/srv/app", file("d/f")), "not a directory"},
		{"duplicate", manifestJSON("/srv/app", file("f"), file("f")), "listed twice"},
		{"bad digest", manifestJSON("/srv/app", `{"path":"f","type":"file","mode":420,"mtime":1,"digest":"../../x"}`), "invalid object name"},
		{"relative root", manifestJSON("srv/app"), "clean absolute"},
		{"root slash", manifestJSON("/"), "clean absolute"},
		{"unclean root", manifestJSON("/srv/../etc"), "clean absolute"},
		{"nul", manifestJSON("/srv/app", file("a\\u0000b")), "unsafe"},
		{"bad mode", manifestJSON("/srv/app", `{"path":"f","type":"file","mode":99999,"mtime":1,"digest":"`+dg+`"}`), "invalid mode"},
		{"unknown type", manifestJSON("/srv/app", `{"path":"f","type":"socket","mode":420,"mtime":1}`), "unknown type"},
		{"unknown field", []byte(`{"version":1,"roots":[],"x":1}`), "unknown field"},
		{"version", []byte(`{"version":3,"roots":[]}`), "version 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeManifest(tt.b)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzDecodeManifest(f *testing.F) {
	f.Add(manifestJSON("/srv/app", `{"path":"d","type":"dir","mode":493,"mtime":1}`, `{"path":"d/f","type":"file","mode":420,"mtime":1,"digest":"`+dg+`"}`))
	f.Add(manifestJSON("/srv/app", `{"path":"../x","type":"file","mode":420,"mtime":1,"digest":"`+dg+`"}`))
	f.Add(manifestJSON("/srv/app", `{"path":"l","type":"symlink","mode":511,"mtime":1,"target":".."}`))
	f.Add([]byte(`{"version":1,"roots":[{"path":"/a","absent":true}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		mf, err := decodeManifest(b)
		if err != nil {
			return
		}
		for _, r := range mf.Roots {
			if !filepath.IsAbs(r.Path) || filepath.Clean(r.Path) != r.Path {
				t.Fatalf("accepted root %q", r.Path)
			}
			dirs := map[string]bool{".": true}
			for i, e := range r.Entries {
				if i == 0 {
					continue
				}
				if strings.HasPrefix(e.Path, "/") || strings.Contains("/"+e.Path+"/", "/../") || strings.Contains(e.Path, "//") || !dirs[filepath.Dir(e.Path)] {
					t.Fatalf("accepted unsafe path %q", e.Path)
				}
				if !strings.HasPrefix(filepath.Join(r.Path, e.Path), r.Path+"/") {
					t.Fatalf("%q escapes %q", e.Path, r.Path)
				}
				if e.Type == EntryDir {
					dirs[e.Path] = true
				}
				if e.Type == EntryFile && checkDigest(e.Digest) != nil {
					t.Fatalf("accepted digest %q", e.Digest)
				}
			}
		}
	})
}

// TestRestoreRefusesUnconfiguredRoot: a manifest naming a path outside the
// configuration is refused even with a matching digest.
func TestRestoreRefusesUnconfiguredRoot(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	evil := filepath.Join(e.dir, "elsewhere")
	b := manifestJSON(evil)
	if err := os.WriteFile(e.m.manifestPath(p.ID), b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Force: true})
	if err == nil || !strings.Contains(err.Error(), "not a configured path") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Lstat(evil); !os.IsNotExist(err) {
		t.Fatal("wrote outside the configured paths")
	}
}

func TestTwoRestoresAtOnce(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	writeTree(t, e.dir, map[string]string{"app/main.py": "v2"})
	gate := filepath.Join(e.dir, "gate")
	e.m.cfg.Hooks.PreRestore = "while [ ! -e " + gate + " ]; do sleep 0.02; done"
	var wg sync.WaitGroup
	var first Operation
	var firstErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		first, firstErr = e.m.Rollback(ctx, p.ID, RollbackOptions{})
	}()
	// Wait until the first holds the lock.
	var running Operation
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ops, _ := e.m.ListOperations(ctx, 0)
		if len(ops) > 0 && ops[0].Kind == KindRollback && len(ops[0].Steps) >= 2 {
			running = ops[0]
			break
		}
	}
	if running.ID == "" {
		t.Fatal("first restore did not start")
	}
	second := newEnvAt(t, e.dir) // another Manager, another lock file handle
	_, err := second.m.Rollback(ctx, p.ID, RollbackOptions{})
	want := "restore in progress on test-host (op " + running.ID + ")"
	if !errors.Is(err, ErrRestoreInProgress) || err.Error() != want {
		t.Errorf("second restore: %v, want %q", err, want)
	}
	os.WriteFile(gate, nil, 0o644)
	wg.Wait()
	if firstErr != nil || first.Status != StatusCompleted {
		t.Fatalf("first restore: %v %s", firstErr, first.Status)
	}
}

func TestRunCommand(t *testing.T) {
	ctx := context.Background()
	out, err := RunCommand(ctx, CommandOptions{Command: `echo "$SWITCHBACK_OP $FOO"; echo err >&2`, Env: []string{"SWITCHBACK_OP=op-1", "FOO=bar"}})
	if err != nil || out != "op-1 bar\nerr\n" {
		t.Errorf("out %q err %v", out, err)
	}
	t0 := time.Now()
	_, err = RunCommand(ctx, CommandOptions{Command: "sleep 5 & sleep 5", Timeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "timed out") || time.Since(t0) > 4*time.Second {
		t.Errorf("timeout: %v after %s", err, time.Since(t0))
	}
	out, _ = RunCommand(ctx, CommandOptions{Command: "head -c 100000 /dev/zero | tr '\\0' a; echo END"})
	if len(out) > MaxOutput+10 || !strings.HasSuffix(out, "END\n") {
		t.Errorf("output not truncated to its tail: %d bytes", len(out))
	}
	if _, err := RunCommand(ctx, CommandOptions{Command: "exit 7"}); err == nil || !strings.Contains(err.Error(), "exit status 7") {
		t.Errorf("exit: %v", err)
	}
}

func TestHooksSeeEnvAndOutputIsRecorded(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	e.m.cfg.Hooks.PostRestore = `echo "post $SWITCHBACK_OP $SWITCHBACK_POINT $SWITCHBACK_REASON"`
	op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{Reason: "because"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range op.Steps {
		if s.Name == "post_restore" {
			if want := "post " + op.ID + " " + p.ID + " because\n"; s.Output != want {
				t.Errorf("output %q, want %q", s.Output, want)
			}
			return
		}
	}
	t.Error("no post_restore step")
}

func TestEmergencyPicksVerifiedFullSystem(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	tickClock(e.m)
	good := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if _, err := e.m.VerifyPoint(ctx, good.ID); err != nil {
		t.Fatal(err)
	}
	want := snapshotAll(t, e.roots()...)
	writeTree(t, e.dir, map[string]string{"app/main.py": "broken"})
	mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem}) // newer, unverified
	mustCreate(t, e.m, CreateOptions{Type: TypeData})
	writeTree(t, e.dir, map[string]string{"app/main.py": "more broken"})
	legacy := false
	op, err := e.m.Emergency(ctx, EmergencyOptions{Reason: "error rate", ForceLegacy: func(context.Context) (string, error) {
		legacy = true
		return "2 switches to legacy", nil
	}})
	if err != nil {
		t.Fatalf("Emergency: %v", err)
	}
	if !legacy || op.Point != good.ID || op.Kind != KindEmergency {
		t.Fatalf("op = %+v", op)
	}
	if got := snapshotAll(t, e.roots()...); got != want {
		t.Fatal("emergency did not restore the verified point")
	}
	if op.Steps[0].Name != "force_legacy" || op.Steps[1].Name != "select_point" {
		t.Errorf("steps %v", op.Steps)
	}
	r := e.m.Report(op)
	for _, s := range []string{"INCIDENT REPORT - ROLLBACK EXECUTED", "**Rollback Type:** Emergency", good.ID, "| force_legacy |", "error rate", "**Status:** Completed"} {
		if !strings.Contains(r, s) {
			t.Errorf("report lacks %q:\n%s", s, r)
		}
	}
	// Candidates: never an automatic point.
	pts, _ := e.m.ListPoints(ctx, ListOptions{})
	for _, c := range emergencyCandidates(pts) {
		if c.Auto != "" {
			t.Errorf("candidate %s is automatic", c.ID)
		}
	}
}

func TestValidateSystem(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	var status = 200
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }))
	defer srv.Close()
	e.m.cfg.ValidateURLs = []ValidateURL{{URL: srv.URL + "/health", Status: 200}}
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, level := range []string{LevelBasic, LevelStandard, LevelComprehensive} {
		rep, err := e.m.ValidateSystem(ctx, level)
		if err != nil || !rep.OK {
			t.Errorf("%s: %v %+v", level, err, rep)
		}
	}
	writeTree(t, e.dir, map[string]string{"config/settings.toml": "tampered"})
	if _, err := e.m.ValidateSystem(ctx, LevelBasic); err != nil {
		t.Errorf("basic should not look at contents: %v", err)
	}
	if _, err := e.m.ValidateSystem(ctx, LevelStandard); !errors.Is(err, ErrValidationFailed) {
		t.Errorf("standard = %v", err)
	}
	status = 503
	rep, err := e.m.ValidateSystem(ctx, LevelBasic)
	if !errors.Is(err, ErrValidationFailed) || !strings.Contains(err.Error(), "status 503") {
		t.Errorf("basic with 503 = %v %+v", err, rep)
	}
	if _, err := e.m.ValidateSystem(ctx, "extreme"); err == nil {
		t.Error("unknown level accepted")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{Backups: "b", Logs: "l", Types: map[string][]string{TypeData: {"./data"}}}, ""},
		{"no backups", Config{Logs: "l"}, "backups directory is required"},
		{"unknown type", Config{Backups: "b", Logs: "l", Types: map[string][]string{"all": {"x"}}}, `unknown point type "all"`},
		{"overlap", Config{Backups: "b", Logs: "l", Types: map[string][]string{TypeFullSystem: {"app", "app/core"}}}, "overlaps"},
		{"contains backups", Config{Backups: "app/b", Logs: "l", Types: map[string][]string{TypeFullSystem: {"app"}}}, "contains app/b"},
		{"bad url", Config{Backups: "b", Logs: "l", ValidateURLs: []ValidateURL{{URL: "ftp://x"}}}, "invalid validate url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestOnlyRestoresPart(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	want := snapshot(t, filepath.Join(e.dir, "app", "core"))
	writeTree(t, e.dir, map[string]string{"app/core/orch.py": "v2", "app/core/new": "n", "app/main.py": "keep me", "data/db.json": "keep too"})
	otherBefore := snapshot(t, filepath.Join(e.dir, "data"))
	mainBefore, _ := os.ReadFile(filepath.Join(e.dir, "app", "main.py"))
	if _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Only: []string{filepath.Join(e.dir, "app", "core")}}); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(t, filepath.Join(e.dir, "app", "core")); got != want {
		t.Errorf("core not restored:\n%s\n--- want\n%s", got, want)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, "app", "main.py")); string(got) != string(mainBefore) {
		t.Errorf("main.py changed to %q", got)
	}
	if got := snapshot(t, filepath.Join(e.dir, "data")); got != otherBefore {
		t.Error("data changed")
	}
}
