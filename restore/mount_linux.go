package restore

import (
	"errors"
	"io/fs"
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

// checkNotMountPoints refuses, at the pre-check, a restore that would have
// to swap a root that is a mount point: renaming a mount point fails with
// EBUSY, which would come only after all the staging work. A root the
// plan leaves as it is is never swapped, so it may be one. Force does not
// skip this check.
func checkNotMountPoints(targets []target) error {
	for _, t := range targets {
		if !t.changed {
			continue
		}
		mp, err := isMountPoint(t.root)
		if err != nil {
			return err
		}
		if mp {
			return userErr(ErrMountPoint, "%s is a mount point (a volume, bind mount or filesystem of its own): a restore swaps each root by renaming it, which a mount point refuses; configure the directories inside it as the paths instead (see docs/operations.md, \"Mount points\")", t.root)
		}
	}
	return nil
}
