package restore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitTick waits until the filesystem clock has moved past every
// timestamp written so far, so that a point made next does not find them
// racy (mtime or ctime in the tick of its scan) and its successor may
// reuse them.
func waitTick(t *testing.T) {
	t.Helper()
	var res unix.Timespec
	unix.ClockGetres(unix.CLOCK_REALTIME_COARSE, &res)
	// From the fine clock: a kernel with multigrain timestamps (6.13)
	// stamps a file whose times were just read from it, which can be
	// ahead of the coarse clock by up to a tick.
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_REALTIME, &now)
	start := now.Nano()
	for fsNow() <= start {
		time.Sleep(time.Duration(res.Nano()) / 4)
	}
}

// sameEntries reports whether points a and b recorded the same entries
// (their manifests differ in the scan times).
func sameEntries(t *testing.T, m *Manager, a, b Point) bool {
	t.Helper()
	ma, err := m.loadManifest(a, false)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := m.loadManifest(b, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ma.Roots {
		ma.Roots[i].Scanned = 0
	}
	for i := range mb.Roots {
		mb.Roots[i].Scanned = 0
	}
	return reflect.DeepEqual(ma, mb)
}

// requireRoot skips a test that needs root, except under CI (which runs
// as root), where it fails.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		needsPrivilege(t, "chown, trusted.* and security.* xattrs", errors.New("not root"))
	}
}

// needsPrivilege ends a test whose privileged step (what) failed with err:
// under CI=true, which runs as root, it fails; elsewhere it skips. A nil
// err lets the test go on.
func needsPrivilege(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s failed, and CI runs as root: %v", what, err)
	}
	t.Skipf("needs root for %s: %v", what, err)
}

func sha256sum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
