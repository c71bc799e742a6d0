package restore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

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
