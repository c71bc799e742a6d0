package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// roundTrip makes a point of the full system, lets change damage the
// tree, restores the point and checks the tree is exactly as it was and
// the point verifies. It returns the restore's record.
func roundTrip(t *testing.T, e *env, change func()) Operation {
	t.Helper()
	ctx := context.Background()
	before := snapshotAll(t, e.roots()...)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if _, err := e.m.VerifyPoint(ctx, p.ID); err != nil {
		t.Fatalf("verify: %v", err)
	}
	change()
	if got := snapshotAll(t, e.roots()...); got == before {
		t.Fatal("change changed nothing")
	}
	op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{Trigger: "test"})
	if err != nil {
		t.Fatalf("Rollback: %v\n%+v", err, op.Steps)
	}
	if got := snapshotAll(t, e.roots()...); got != before {
		t.Fatalf("restored tree differs:\n--- got\n%s\n--- want\n%s", got, before)
	}
	if _, err := e.m.ValidateSystem(ctx, LevelStandard); err != nil {
		t.Fatalf("validate standard after the restore: %v", err)
	}
	noLeftovers(t, e.dir)
	return op
}

func mkfifo(t *testing.T, p string, mode uint32) {
	t.Helper()
	if err := unix.Mkfifo(p, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, os.FileMode(mode))
}

func setxattr(t *testing.T, p, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
		t.Fatalf("setxattr %s %s: %v", p, name, err)
	}
}

// TestRoundTripLinksFIFOsXattrsNames: hard links inside a root come back
// as links, FIFOs come back (a restore used to drop them), user xattrs
// come back, and names and link targets that are not UTF-8 keep their
// bytes (JSON used to turn them into U+FFFD, so two such names collided).
// None of this needs root.
func TestRoundTripLinksFIFOsXattrsNames(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	d := filepath.Join(e.dir, "data")
	writeTree(t, e.dir, map[string]string{"data/links/a": "linked content", "data/other/": ""})
	for _, n := range []string{"links/b", "other/c"} {
		if err := os.Link(filepath.Join(d, "links/a"), filepath.Join(d, n)); err != nil {
			t.Fatal(err)
		}
	}
	mkfifo(t, filepath.Join(d, "queue"), 0o620)
	for _, n := range []string{"caf\xe9", "caf\xe8", "\xff\xfe"} {
		if err := os.WriteFile(filepath.Join(d, n), []byte("name "+n), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("target-\x80", filepath.Join(d, "odd-link")); err != nil {
		t.Fatal(err)
	}
	setxattr(t, filepath.Join(d, "db.json"), "user.checksum", "\x00\x01binary\xff")
	setxattr(t, filepath.Join(d, "links/a"), "user.mime_type", "text/plain")
	setxattr(t, d, "user.dir", "on a directory")
	waitTick(t)

	roundTrip(t, e, func() {
		os.Remove(filepath.Join(d, "links/b"))
		os.WriteFile(filepath.Join(d, "links/b"), []byte("linked content"), 0o644) // same content, not a link
		os.Remove(filepath.Join(d, "queue"))
		os.Remove(filepath.Join(d, "caf\xe9"))
		os.WriteFile(filepath.Join(d, "caf\xe8"), []byte("edited"), 0o640)
		unix.Removexattr(filepath.Join(d, "db.json"), "user.checksum")
		unix.Setxattr(filepath.Join(d, "links/a"), "user.mime_type", []byte("text/html"), 0)
		unix.Removexattr(d, "user.dir")
		os.Remove(filepath.Join(d, "odd-link"))
		os.Symlink("target-\x81", filepath.Join(d, "odd-link"))
	})
	// And the FIFO is a FIFO that does not block anyone's open.
	info, err := os.Lstat(filepath.Join(d, "queue"))
	if err != nil || info.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("queue after the restore: %v %v", info, err)
	}
}

// TestSocketSkippedWithWarning: a socket is not recorded, and the create
// says so.
func TestSocketSkippedWithWarning(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	// A socket path must be short; bind it elsewhere and move it in.
	tmp, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	l, err := net.Listen("unix", filepath.Join(tmp, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Rename(filepath.Join(tmp, "s"), filepath.Join(e.dir, "data", "app.sock")); err != nil {
		t.Fatal(err)
	}
	var warnings []string
	e.m.opts.Warn = func(err error) { warnings = append(warnings, err.Error()) }
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	mf, err := e.m.loadManifest(p, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range mf.Roots[0].Entries {
		if en.Path == "app.sock" {
			t.Fatalf("socket recorded: %+v", en)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "app.sock: a socket") {
		t.Fatalf("warnings = %q", warnings)
	}
}

// capNetBindService is a security.capability value (VFS_CAP_REVISION_2,
// effective) granting CAP_NET_BIND_SERVICE.
const capNetBindService = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// TestRoundTripOwnersAsRoot: as root, files and directories get their
// owners back (every restored entry used to be owned by root, so an app
// lost write access to its own data), with their setuid bits and their
// security.* and trusted.* xattrs, including a file capability. Needs
// root.
func TestRoundTripOwnersAsRoot(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	e.sampleTree(t)
	d := filepath.Join(e.dir, "data")
	a := filepath.Join(e.dir, "app")
	writeTree(t, e.dir, map[string]string{"data/cache/": "", "data/cache/c": "cached", "app/bin/su-tool": "#!/bin/true\n", "app/bin/cap-tool": "bin"})
	chown := func(p string, uid, gid int) {
		t.Helper()
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	chown(d, 1001, 1002)
	chown(filepath.Join(d, "cache"), 1001, 1002)
	chown(filepath.Join(d, "cache/c"), 1001, 1002)
	chown(filepath.Join(d, "db.json"), 1001, 0)
	chown(filepath.Join(a, "link"), 1003, 1003)
	chown(filepath.Join(a, "bin/su-tool"), 1001, 1002)
	os.Chmod(filepath.Join(a, "bin/su-tool"), 0o4750|os.ModeSetuid)
	unix.Chmod(filepath.Join(a, "bin/su-tool"), 0o6750)
	mkfifo(t, filepath.Join(d, "fifo"), 0o600)
	chown(filepath.Join(d, "fifo"), 1001, 1002)
	setxattr(t, filepath.Join(a, "bin/cap-tool"), "security.capability", capNetBindService)
	setxattr(t, filepath.Join(a, "bin/cap-tool"), "trusted.note", "root only")
	setxattr(t, filepath.Join(a, "link"), "trusted.on-link", "x")
	setxattr(t, filepath.Join(d, "fifo"), "trusted.on-fifo", "y")
	waitTick(t)

	op := roundTrip(t, e, func() {
		for _, p := range []string{d, filepath.Join(d, "cache"), filepath.Join(d, "cache/c"), filepath.Join(d, "db.json"), filepath.Join(a, "link"), filepath.Join(d, "fifo")} {
			chown(p, 0, 0)
		}
		os.WriteFile(filepath.Join(a, "bin/su-tool"), []byte("#!/bin/false\n"), 0o755)
		unix.Removexattr(filepath.Join(a, "bin/cap-tool"), "security.capability")
		unix.Lremovexattr(filepath.Join(a, "link"), "trusted.on-link")
	})
	if len(op.Warnings) != 0 {
		t.Errorf("warnings as root: %q", op.Warnings)
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(a, "bin/su-tool"), &st)
	if st.Mode&0o7777 != 0o6750 || st.Uid != 1001 || st.Gid != 1002 {
		t.Errorf("su-tool: mode %o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
}

const envNonRootDir = "SWITCHBACK_TEST_NONROOT_DIR"

// TestSetuidNotRestoredAsNonRoot: a restore run by a user who cannot give
// a file its recorded owner does not set its setuid or setgid bit (it
// used to: a setuid binary of one user came back setuid to the restoring
// user, with that user's... content), and says so in the operation
// record. A setgid file the user owns keeps its bit. The restore runs in
// a child process as nobody; the test needs root to set that up.
func TestSetuidNotRestoredAsNonRoot(t *testing.T) {
	if os.Getenv(envNonRootDir) != "" {
		t.Skip("the child runs TestNonRootChild")
	}
	requireRoot(t)
	const nobody = 65534
	dir := t.TempDir()
	// The child must reach dir: open up its parents that TempDir made.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chown(dir, nobody, nobody)
	for _, p := range []string{"app", "app/bin"} {
		os.Mkdir(filepath.Join(dir, p), 0o755)
		os.Chown(filepath.Join(dir, p), nobody, nobody)
	}
	writeTree(t, dir, map[string]string{"app/bin/other-su": "other's setuid tool", "app/bin/own-sg": "own setgid tool"})
	os.Chown(filepath.Join(dir, "app/bin/other-su"), 1001, 1001)
	unix.Chmod(filepath.Join(dir, "app/bin/other-su"), 0o4755)
	os.Chown(filepath.Join(dir, "app/bin/own-sg"), nobody, nobody)
	unix.Chmod(filepath.Join(dir, "app/bin/own-sg"), 0o2755)

	// The test binary's own directory is root's alone: run a copy.
	bin := filepath.Join(dir, "restore.test")
	if out, err := exec.Command("cp", os.Args[0], bin).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	os.Chmod(bin, 0o755)
	cmd := exec.Command(bin, "-test.run=^TestNonRootChild$", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), envNonRootDir+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var op Operation
	b, err := os.ReadFile(filepath.Join(dir, "op.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := json.Unmarshal(b, &op); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "app/bin/other-su"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o755 || st.Uid != nobody {
		t.Errorf("other-su restored as nobody: mode %o owner %d, want 755 owned by %d", st.Mode&0o7777, st.Uid, nobody)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "app/bin/other-su")); string(data) != "other's setuid tool" {
		t.Errorf("other-su content %q", data)
	}
	unix.Stat(filepath.Join(dir, "app/bin/own-sg"), &st)
	if st.Mode&0o7777 != 0o2755 {
		t.Errorf("own-sg: mode %o, want 2755", st.Mode&0o7777)
	}
	w := strings.Join(op.Warnings, "\n")
	if !strings.Contains(w, "setuid/setgid bit of 1 entries was not restored") || !strings.Contains(w, "other-su") || strings.Contains(w, "own-sg") {
		t.Errorf("warnings = %q", op.Warnings)
	}
	if op.Status != StatusCompleted {
		t.Errorf("status %s: %v", op.Status, op.Errors)
	}
}

// TestNonRootChild is TestSetuidNotRestoredAsNonRoot's child: as nobody,
// it makes a point of app, replaces other-su, restores the point and
// writes the restore's record to op.json.
func TestNonRootChild(t *testing.T) {
	dir := os.Getenv(envNonRootDir)
	if dir == "" {
		t.Skip("run by TestSetuidNotRestoredAsNonRoot")
	}
	if os.Geteuid() == 0 {
		t.Fatal("child runs as root")
	}
	e := newEnvAt(t, dir)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	f := filepath.Join(dir, "app/bin/other-su")
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("replaced"), 0o755); err != nil {
		t.Fatal(err)
	}
	op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{})
	b, _ := json.Marshal(op)
	if werr := os.WriteFile(filepath.Join(dir, "op.json"), b, 0o644); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatalf("Rollback: %v", err)
	}
}

// TestCreateRefusesDirectorySwappedForSymlink: a directory replaced by a
// symlink after the walk is not followed (it used to be: files were
// opened by absolute path, and a point restored a root-only 0600 file
// from outside the root, world-readable).
func TestCreateRefusesDirectorySwappedForSymlink(t *testing.T) {
	for _, walk := range []bool{false, true} {
		t.Run(fmt.Sprintf("components=%v", walk), func(t *testing.T) {
			noOpenat2 = walk
			defer func() { noOpenat2 = false }()
			e := newEnv(t)
			e.sampleTree(t)
			outside := filepath.Join(e.dir, "outside")
			writeTree(t, e.dir, map[string]string{"outside/secret.txt": "SECRET of the same size", "data/sub/secret.txt": "harmless, and same size"})
			os.Chmod(filepath.Join(outside, "secret.txt"), 0o600)
			sub := filepath.Join(e.dir, "data", "sub")
			e.m.testHook = func(point string) error {
				if _, err := os.Lstat(sub + ".moved"); err != nil && point == "open "+filepath.Join(sub, "secret.txt") {
					if err := os.Rename(sub, sub+".moved"); err != nil {
						return err
					}
					return os.Symlink(outside, sub)
				}
				return nil
			}
			_, err := e.m.CreatePoint(context.Background(), CreateOptions{Type: TypeData})
			if err == nil || !strings.Contains(err.Error(), "was replaced by a symlink or a file") {
				t.Fatalf("CreatePoint = %v, want a refusal", err)
			}
			// Nothing of the secret was stored.
			e.m.objects.walk(context.Background(), func(d string, _ os.FileInfo) error {
				if b, _ := os.ReadFile(e.m.objects.path(d)); strings.Contains(string(b), "SECRET") {
					t.Errorf("object %s holds the secret", d)
				}
				return nil
			})
		})
	}
}

// TestCreateDoesNotHangOnFIFOSwappedIn: a file replaced by a FIFO after
// the walk does not hang the create (it used to, forever, and the
// pre-rollback point is made that way under the fleet-wide lock).
func TestCreateDoesNotHangOnFIFOSwappedIn(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	db := filepath.Join(e.dir, "data", "db.json")
	e.m.testHook = func(point string) error {
		if point == "open "+db {
			if _, err := os.Lstat(db + ".old"); err != nil {
				os.Rename(db, db+".old")
				return unix.Mkfifo(db, 0o644)
			}
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.m.CreatePoint(context.Background(), CreateOptions{Type: TypeData})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "replaced by a FIFO") {
			t.Fatalf("CreatePoint = %v, want a refusal naming the FIFO", err)
		}
	case <-time.After(20 * time.Second):
		// Unblock the reader so the test binary can go on.
		if f, err := os.OpenFile(db, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("CreatePoint hung on a FIFO")
	}
}

// TestReadRetriedThenRecordedChanged: a file that changes while it is
// read (a log still being appended to, or a same-size rewrite that keeps
// its mtime) is read again; if it keeps changing, the point holds the
// last read, marked changed, with a warning, instead of failing (a
// create used to fail with "changed while it was being read", and an
// appended log blocked every restore). A file that settles is recorded
// normally.
func TestReadRetriedThenRecordedChanged(t *testing.T) {
	tests := []struct {
		name        string
		times       int // how many reads the file changes under
		sameSize    bool
		wantChanged bool
	}{
		{"appended once", 1, false, false},
		{"appended always", 100, false, true},
		{"same size, mtime kept, once", 1, true, false},
		{"same size, mtime kept, always", 100, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.sampleTree(t)
			log := filepath.Join(e.dir, "data", "app.log")
			writeTree(t, e.dir, map[string]string{"data/app.log": "line 0\n"})
			n := 0
			var mu sync.Mutex
			e.m.testHook = func(point string) error {
				mu.Lock()
				defer mu.Unlock()
				if point != "opened "+log || n >= tt.times {
					return nil
				}
				n++
				info, _ := os.Stat(log)
				if tt.sameSize {
					// Rewrite in place, same size, and put the mtime back
					// (touch -r): only ctime tells.
					b, _ := os.ReadFile(log)
					b[0] ^= 1
					f, _ := os.OpenFile(log, os.O_WRONLY, 0)
					f.WriteAt(b, 0)
					f.Close()
					os.Chtimes(log, info.ModTime(), info.ModTime())
					return nil
				}
				f, _ := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
				fmt.Fprintf(f, "line %d\n", n)
				f.Close()
				return nil
			}
			var warnings []string
			e.m.opts.Warn = func(err error) { warnings = append(warnings, err.Error()) }
			p, err := e.m.CreatePoint(context.Background(), CreateOptions{Type: TypeData})
			if err != nil {
				t.Fatal(err)
			}
			mf, _ := e.m.loadManifest(p, false)
			var got Entry
			for _, en := range mf.Roots[0].Entries {
				if en.Path == "app.log" {
					got = en
				}
			}
			if got.Changed != tt.wantChanged || (p.ChangedCount == 1) != tt.wantChanged {
				t.Fatalf("entry %+v, point changed %d %v", got, p.ChangedCount, p.Changed)
			}
			if tt.wantChanged {
				if len(warnings) != 1 || !strings.Contains(warnings[0], "app.log changed while it was being read, 3 times") || len(p.Changed) != 1 || p.Changed[0] != log {
					t.Fatalf("warnings %q, changed %v", warnings, p.Changed)
				}
			} else if len(warnings) != 0 {
				t.Fatalf("warnings %q", warnings)
			}
			// What the point holds is one consistent read: its object
			// has the recorded size and digest.
			if _, err := e.m.VerifyPoint(context.Background(), p.ID); err != nil {
				t.Fatal(err)
			}
			// A changed entry is never reused.
			if tt.wantChanged {
				e.m.testHook = nil
				waitTick(t)
				hashed := false
				e.m.testHook = func(point string) error {
					if point == "open "+log {
						hashed = true
					}
					return nil
				}
				mustCreate(t, e.m, CreateOptions{Type: TypeData})
				if !hashed {
					t.Fatal("a file recorded as changed was reused by the next point")
				}
			}
		})
	}
}

// TestSameSizeEditKeepingMtimeIsRestored: a same-size edit that keeps the
// mtime (cp -p, touch -r) is noticed by the pre-rollback point (by ctime)
// and undone by the restore. It used to inherit the old digest, staging
// hard-linked the edited file, and the restore reported success with the
// edit in place.
func TestSameSizeEditKeepingMtimeIsRestored(t *testing.T) {
	for _, how := range []string{"touch -r", "cp -p"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			e.sampleTree(t)
			tickClock(e.m)
			waitTick(t)
			db := filepath.Join(e.dir, "data", "db.json")
			p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
			edit(t, db, how)
			op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{})
			if err != nil {
				t.Fatalf("Rollback: %v", err)
			}
			if b, _ := os.ReadFile(db); string(b) != `{"rows": 1}` {
				t.Fatalf("db.json after the restore: %q (plan %+v)", b, op.Plan)
			}
		})
	}
}

// edit changes file p to same-size content keeping its mtime, the way how
// ("touch -r" or "cp -p") does.
func edit(t *testing.T, p, how string) {
	t.Helper()
	info, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	edited := strings.ToUpper(string(b))
	if edited == string(b) {
		edited = strings.ToLower(string(b))
	}
	switch how {
	case "touch -r":
		os.WriteFile(p, []byte(edited), 0o644)
	case "cp -p":
		tmp := p + ".cp"
		os.WriteFile(tmp, []byte(edited), info.Mode())
		os.Chtimes(tmp, info.ModTime(), info.ModTime())
		if out, err := exec.Command("cp", "-p", tmp, p).CombinedOutput(); err != nil {
			t.Fatalf("cp -p: %v %s", err, out)
		}
		os.Remove(tmp)
	}
	os.Chtimes(p, info.ModTime(), info.ModTime())
	if after, _ := os.Stat(p); after.Size() != info.Size() || !after.ModTime().Equal(info.ModTime()) {
		t.Fatal("edit changed size or mtime")
	}
}

// TestValidateStandardCatchesSameSizeEdit: validate --level standard
// re-hashes, so an edit that keeps size and mtime after a restore is
// found (it compared metadata only).
func TestValidateStandardCatchesSameSizeEdit(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	writeTree(t, e.dir, map[string]string{"data/db.json": "new"})
	if _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.ValidateSystem(ctx, LevelStandard); err != nil {
		t.Fatalf("standard right after the restore: %v", err)
	}
	edit(t, filepath.Join(e.dir, "data", "db.json"), "touch -r")
	rep, err := e.m.ValidateSystem(ctx, LevelStandard)
	if !errors.Is(err, ErrValidationFailed) || !strings.Contains(err.Error(), "db.json content differs") {
		t.Fatalf("standard after a same-size edit = %v\n%+v", err, rep)
	}
}

// TestRacyTimestampsAreRehashed: a file whose mtime or ctime is not older
// than the parent point's scan start is hashed again by the next point,
// since a change in that clock tick could keep both (git's rule).
func TestRacyTimestampsAreRehashed(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	tickClock(e.m)
	waitTick(t)
	var hashed []string
	e.m.testHook = func(point string) error {
		if p, ok := strings.CutPrefix(point, "open "); ok {
			hashed = append(hashed, filepath.Base(p))
		}
		return nil
	}
	// The first point's clock says its scan began before every timestamp
	// in the tree: all of them are racy.
	e.m.fsClock = func() int64 { return time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano() }
	mustCreate(t, e.m, CreateOptions{Type: TypeData})
	e.m.fsClock = nil
	hashed = nil
	mustCreate(t, e.m, CreateOptions{Type: TypeData})
	if len(hashed) != 3 {
		t.Fatalf("after a racy parent, hashed %v, want all 3 files", hashed)
	}
	hashed = nil
	mustCreate(t, e.m, CreateOptions{Type: TypeData})
	if len(hashed) != 0 {
		t.Fatalf("after a clean parent, hashed %v", hashed)
	}
}

// TestLinkRaceFallsBackToCopy: a live file swapped between the check
// and the hard link (same size and mtime, another inode) is not left in
// the stage: the link is checked again and the file copied from its
// object.
func TestLinkRaceFallsBackToCopy(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	waitTick(t)
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	// Make data differ so it is staged; db.json itself matches and will
	// be linked.
	writeTree(t, e.dir, map[string]string{"data/extra": "x"})
	db := filepath.Join(e.dir, "data", "db.json")
	e.m.testHook = func(point string) error {
		if point == "link "+db {
			info, _ := os.Stat(db)
			os.WriteFile(db+".new", []byte(`{"rows": 9}`), 0o644)
			os.Chtimes(db+".new", info.ModTime(), info.ModTime())
			return os.Rename(db+".new", db)
		}
		return nil
	}
	op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(db); string(b) != `{"rows": 1}` {
		t.Fatalf("db.json = %q after the restore (plan %+v)", b, op.Plan)
	}
}

// TestLongPaths: paths longer than PATH_MAX (4096 bytes) are recorded,
// restored and validated; every call is relative to a directory handle.
func TestLongPaths(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	seg := strings.Repeat("d", 200)
	deep := filepath.Join(e.dir, "data")
	var rel []string
	// Make the tree with *at calls: the absolute path is too long for
	// plain ones.
	fd, err := unix.Open(deep, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 25; i++ {
		if err := unix.Mkdirat(fd, seg, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, seg, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
		rel = append(rel, seg)
	}
	ffd, err := unix.Openat(fd, "leaf.txt", unix.O_WRONLY|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(ffd, []byte("deep content"))
	unix.Close(ffd)
	unix.Close(fd)
	if n := len(deep) + 25*201 + len("/leaf.txt"); n <= unix.PathMax {
		t.Fatalf("path only %d bytes", n)
	}
	ctx := context.Background()
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	if p.Files != 4 {
		t.Fatalf("point = %+v", p)
	}
	// Remove the deep tree, restore, check the leaf is back.
	if err := os.RemoveAll(filepath.Join(deep, seg)); err != nil {
		t.Fatal(err)
	}
	if op, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); err != nil {
		t.Fatalf("Rollback: %v\n%+v", err, op.Steps)
	}
	pfd, _ := unix.Open(filepath.Dir(deep), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(pfd)
	d, err := hashBeneath(pfd, "data/"+strings.Join(rel, "/")+"/leaf.txt")
	if err != nil {
		t.Fatal(err)
	}
	mf, _ := e.m.loadManifest(p, false)
	for _, en := range mf.Roots[0].Entries {
		if strings.HasSuffix(en.Path, "leaf.txt") && en.Digest != d {
			t.Fatal("leaf content differs")
		}
	}
	if _, err := e.m.ValidateSystem(ctx, LevelStandard); err != nil {
		t.Fatal(err)
	}
}

// TestVersion1ManifestStillRead: a point written by the previous format
// restores, and the next point hashes everything (version 1 has no ctime
// to trust).
func TestVersion1ManifestStillRead(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	ctx := context.Background()
	tickClock(e.m)
	waitTick(t)
	before := snapshotAll(t, e.roots()...)
	p := mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	// Rewrite it as version 1 wrote it.
	mf, _ := e.m.loadManifest(p, false)
	type v1entry struct {
		Path   string `json:"path"`
		Type   string `json:"type"`
		Mode   uint32 `json:"mode"`
		MTime  int64  `json:"mtime"`
		Size   int64  `json:"size,omitempty"`
		Digest string `json:"digest,omitempty"`
		Target string `json:"target,omitempty"`
		Ino    uint64 `json:"ino,omitempty"`
	}
	type v1root struct {
		Path    string    `json:"path"`
		Absent  bool      `json:"absent,omitempty"`
		Entries []v1entry `json:"entries,omitempty"`
	}
	v1 := struct {
		Version int      `json:"version"`
		Roots   []v1root `json:"roots"`
	}{Version: 1}
	for _, r := range mf.Roots {
		vr := v1root{Path: r.Path, Absent: r.Absent}
		for _, en := range r.Entries {
			vr.Entries = append(vr.Entries, v1entry{en.Path, en.Type, en.Mode, en.MTime, en.Size, en.Digest, en.Target, en.Ino})
		}
		v1.Roots = append(v1.Roots, vr)
	}
	b, _ := json.Marshal(v1)
	b = append(b, '\n')
	if err := os.WriteFile(e.m.manifestPath(p.ID), b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256sum(b)
	if err := e.m.updatePoint(ctx, p.ID, func(q *Point) { q.ManifestDigest = sum }); err != nil {
		t.Fatal(err)
	}
	hashed := 0
	e.m.testHook = func(point string) error {
		if strings.HasPrefix(point, "open ") {
			hashed++
		}
		return nil
	}
	mustCreate(t, e.m, CreateOptions{Type: TypeFullSystem})
	if hashed != 7 {
		t.Errorf("a version-1 parent was trusted: %d of 7 files hashed", hashed)
	}
	e.m.testHook = nil
	writeTree(t, e.dir, map[string]string{"data/db.json": "changed"})
	if _, err := e.m.Rollback(ctx, p.ID, RollbackOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := snapshotAll(t, e.roots()...); got != before {
		t.Fatalf("restored from a version-1 point:\n%s\nwant\n%s", got, before)
	}
}

// TestOtherHostsPointsAreNotParents: a point of another host (same store,
// same paths, as a fleet on one Consul) never lends its digests: its
// inodes are another disk's and its objects are not here.
func TestOtherHostsPointsAreNotParents(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	tickClock(e.m)
	waitTick(t)
	other := otherHost(t, e, "other-host", Options{})
	tickClock(other)
	mustCreate(t, other, CreateOptions{Type: TypeData})
	hashed := 0
	e.m.testHook = func(point string) error {
		if strings.HasPrefix(point, "open ") {
			hashed++
		}
		return nil
	}
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	if hashed != 3 || p.Parent != "" {
		t.Fatalf("hashed %d of 3 files, parent %q: another host's point was trusted", hashed, p.Parent)
	}
}

// TestRestoreKeepsSocketsAndDevices: a point cannot record a socket or a
// device node, and a restore used to delete every one in the tree it
// replaced, silently (they went with the old tree, and the plan did not
// list them). Now one whose directory the point still has is kept (hard
// linked into the stage), one it has no place for is listed as removed,
// and the record says which.
func TestRestoreKeepsSocketsAndDevices(t *testing.T) {
	e := newEnv(t)
	e.sampleTree(t)
	writeTree(t, e.dir, map[string]string{"data/run/x": "x", "data/gone/y": "y"})
	p := mustCreate(t, e.m, CreateOptions{Type: TypeData})
	tmp, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	l, err := net.Listen("unix", filepath.Join(tmp, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sock := filepath.Join(e.dir, "data/run/app.sock")
	if err := os.Rename(filepath.Join(tmp, "s"), sock); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(e.dir, "data/null")
	needsPrivilege(t, "mknod", unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	// A device in a directory the point lacks has no place to go.
	os.MkdirAll(filepath.Join(e.dir, "data/extra"), 0o755)
	lost := filepath.Join(e.dir, "data/extra/zero")
	unix.Mknod(lost, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5)))
	writeTree(t, e.dir, map[string]string{"data/db.json": "changed"})
	var sockIno, devIno uint64
	for pth, ino := range map[string]*uint64{sock: &sockIno, dev: &devIno} {
		var st unix.Stat_t
		unix.Lstat(pth, &st)
		*ino = st.Ino
	}

	op, err := e.m.Rollback(context.Background(), p.ID, RollbackOptions{})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	for pth, want := range map[string]uint64{sock: sockIno, dev: devIno} {
		var st unix.Stat_t
		if err := unix.Lstat(pth, &st); err != nil || st.Ino != want {
			t.Errorf("%s after the restore: %v (inode %d, want %d)", pth, err, st.Ino, want)
		}
	}
	if _, err := os.Lstat(lost); err == nil {
		t.Errorf("%s survived in a directory the point lacks", lost)
	}
	if !slices.Contains(op.Plan.Removed, lost) || slices.Contains(op.Plan.Removed, sock) || slices.Contains(op.Plan.Removed, dev) {
		t.Errorf("plan removed = %v, want %s and not the kept ones", op.Plan.Removed, lost)
	}
	w := strings.Join(op.Warnings, "\n")
	if !strings.Contains(w, "kept 2 sockets or devices") || !strings.Contains(w, "removed 1 sockets or devices") || !strings.Contains(w, lost) {
		t.Errorf("warnings = %q", op.Warnings)
	}
	if op.Validation == nil || !op.Validation.OK {
		t.Errorf("validation = %+v", op.Validation)
	}
}
