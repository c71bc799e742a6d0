package restore

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// isMountPoint reports whether p is the root of a mount: a filesystem of
// its own, a bind mount, a tmpfs or a container volume. Where statx
// reports STATX_ATTR_MOUNT_ROOT (Linux 5.8) that answers, which also
// catches a bind mount from the same filesystem; otherwise p is a mount
// point when it is on another device than its parent. A missing p is not.
func isMountPoint(p string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_DONT_SYNC, unix.STATX_BASIC_STATS, &stx)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err == nil && stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	var st, parent unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	if err := unix.Stat(filepath.Dir(p), &parent); err != nil {
		return false, &fs.PathError{Op: "stat", Path: filepath.Dir(p), Err: err}
	}
	return st.Dev != parent.Dev, nil
}

// checkMountPoints refuses, at the pre-check, a restore that cannot be
// done inside a root that is a mount point: one that would remove it or
// make it a file, or one of a mount point that is not a directory (a
// bind-mounted file). Such a root cannot be renamed (EBUSY), which would
// come only after all the staging work. A directory mount root is
// restored from inside (mountswap.go); a root the plan leaves as it is is
// never touched. Force does not skip this check.
func checkMountPoints(targets []target) error {
	for _, t := range targets {
		if !t.changed {
			continue
		}
		if below, err := mountsBelow(t.root); err != nil {
			return err
		} else if len(below) > 0 {
			return userErr(ErrMountPoint, "%s is a mount point inside %s: a restore would move it with the old tree and then remove its files; make it a root of its own and leave it out of %s (see docs/operations.md, \"Mount points\")", below[0], t.root, t.root)
		}
		mp, err := isMountPoint(t.root)
		if err != nil {
			return err
		}
		if mp {
			if err := mountRestorable(t); err != nil {
				return err
			}
		}
	}
	return nil
}

// mountRestorable says why mount root t cannot be restored from inside,
// if it cannot.
func mountRestorable(t target) error {
	why := ""
	info, err := os.Lstat(t.root)
	switch {
	case err != nil:
		return err
	case !info.IsDir():
		why = "it is not a directory (a bind-mounted file)"
	case t.desired.Absent:
		why = "the point does not have it, and a mount point cannot be removed"
	case len(t.desired.Entries) == 0 || t.desired.Entries[0].Type != EntryDir:
		why = "the point has it as a file, and a mount point cannot be replaced"
	default:
		return nil
	}
	return userErr(ErrMountPoint, "%s is a mount point (a volume, bind mount or filesystem of its own) and %s; restore the paths inside it instead (see docs/operations.md, \"Mount points\")", t.root, why)
}

// mountsBelow returns the mount points strictly below p, from
// /proc/self/mountinfo: a bind mount of the same filesystem has the same
// device as its parent, so only the kernel's list finds every one.
func mountsBelow(p string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("listing mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := unescapeMountinfo(fields[4]); strings.HasPrefix(mp, p+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
