package bench

import (
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// buildSwitchback builds cmd/switchback (a copy of the tests package's
// Binary, which this package does not import).
func buildSwitchback(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
	bin := filepath.Join(t.TempDir(), "switchback")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/switchback")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building switchback: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
