package restore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// procStart returns the start time of process pid, in clock ticks since
// boot (field 22 of /proc/<pid>/stat). With the boot id it tells a
// process apart from a later one that reuses its pid.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStart(b)
}

// parseProcStart reads the starttime field of a /proc/<pid>/stat line.
// The command name (field 2) is in parentheses and may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseProcStart(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after the command name", len(f))
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat starttime %q", f[19])
	}
	return v, nil
}

// bootID returns the kernel's boot id, which changes at every boot, or ""
// where it cannot be read.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// pidAlive reports whether the process that recorded (pid, start, boot)
// is still running: same boot, the pid exists, and it started at the
// recorded time. Without a recorded start time (older records) only the
// pid is checked.
func pidAlive(pid int, start uint64, boot string) bool {
	if pid <= 0 {
		return false
	}
	if boot != "" && boot != bootID() {
		return false
	}
	if start != 0 {
		cur, err := procStart(pid)
		return err == nil && cur == start
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
