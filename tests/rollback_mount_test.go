package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRollbackCLIMountPointRoot: the data root is a mount point (a tmpfs,
// as a container volume or a data disk is). An offline rollback and one
// through the gateway restore it from inside the mount, exactly, leaving
// nothing of the restore in it; mounting needs root, which CI has.
func TestRollbackCLIMountPointRoot(t *testing.T) {
	e := newRBEnv(t)
	data := filepath.Join(e.host, "data")
	aside := data + ".src"
	if err := os.Rename(data, aside); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(data, 0o755)
	if err := unix.Mount("tmpfs", data, "tmpfs", 0, "size=16m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mounting a tmpfs at %s (CI runs as root): %v", data, err)
		}
		t.Skipf("needs root to mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
	if out, err := exec.Command("cp", "-a", aside+"/.", data).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	os.RemoveAll(aside)
	want := e.tree()
	out, errOut, code := e.offline("point", "create", "--type", "full_system", "--json")
	mustCLI(t, 0, out, errOut, code, "point create")
	id := decode[pointJSON](t, "create", out).ID

	for _, how := range []string{"offline", "gateway"} {
		e.change()
		writeFiles(t, e.host, map[string]string{"data/added/x": "x"})
		if got := e.tree(); got == want {
			t.Fatal("change() changed nothing")
		}
		run := e.offline
		if how == "gateway" {
			e.start()
			run = e.online
		}
		out, errOut, code = run("rollback", id, "--trigger", "manual", "--json")
		mustCLI(t, 0, out, errOut, code, how+" rollback into a mount root")
		if got := e.tree(); got != want {
			t.Fatalf("%s: the restored tree differs:\n%s\n--- want\n%s", how, got, want)
		}
		ents, _ := os.ReadDir(data)
		for _, d := range ents {
			if strings.Contains(d.Name(), "switchback-") {
				t.Errorf("%s: leftover %s in the mount root", how, d.Name())
			}
		}
	}
}
