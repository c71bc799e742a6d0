package restore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// errRootAbsent is what walkTree returns when the root does not exist.
var errRootAbsent = errors.New("root absent")

// walkFunc is called for each entry walkTree finds: dirFd is an open
// handle on the directory holding it, name its name there, rel its path
// below the root ("." for the root itself) and st its lstat. For a
// directory, fd is an open handle on it (its identity checked against
// st), else -1. Neither handle may be kept after fn returns.
type walkFunc func(dirFd int, name, rel string, st *unix.Stat_t, fd int) error

// walkTree calls fn for root and then for every entry below it, parents
// before children, names in byte order, without following symlinks. It
// walks by directory handles: each entry is reached with fstatat and
// openat(O_NOFOLLOW) relative to its directory's handle, so no path is
// resolved twice, no symlink swapped in mid-walk is followed, and paths
// of any length work. An entry that disappears while it is walked is
// passed to vanished (and skipped); an entry that keeps changing type
// fails the walk.
func walkTree(ctx context.Context, root string, fn walkFunc, vanished func(rel string)) error {
	pfd, err := unix.Open(filepath.Dir(root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return errRootAbsent
		}
		return userErr(err, "cannot read %s: %v", filepath.Dir(root), err)
	}
	defer unix.Close(pfd)
	w := &walker{ctx: ctx, fn: fn, vanished: vanished}
	gone, err := w.entry(pfd, filepath.Base(root), ".", root)
	if err == nil && gone {
		return errRootAbsent
	}
	return err
}

type walker struct {
	ctx      context.Context
	fn       walkFunc
	vanished func(rel string)
}

// entry walks the entry name of dirFd (and, for a directory, what is in
// it). abs names it in messages only. gone reports it vanished.
func (w *walker) entry(dirFd int, name, rel, abs string) (gone bool, err error) {
	var st unix.Stat_t
	fd := -1
	for attempt := 1; ; attempt++ {
		if err := unix.Fstatat(dirFd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return true, nil
			}
			return false, userErr(err, "cannot read %s: %v", abs, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break
		}
		fd, err = openDirAt(dirFd, name, &st)
		if err == nil {
			break
		}
		if errors.Is(err, unix.ENOENT) {
			return true, nil
		}
		// Swapped between the stat and the open: look again.
		if !errors.Is(err, errChanged) && !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
			return false, userErr(err, "cannot read %s: %v", abs, err)
		}
		if attempt == maxReadAttempts {
			return false, userErr(nil, "%s kept changing while the point was being made", abs)
		}
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if err := w.fn(dirFd, name, rel, &st, fd); err != nil {
		return false, err
	}
	if fd < 0 {
		return false, nil
	}
	if err := w.ctx.Err(); err != nil {
		return false, err
	}
	names, err := readNames(fd)
	if err != nil {
		return false, userErr(err, "cannot read %s: %v", abs, err)
	}
	sort.Strings(names)
	for _, n := range names {
		if rel == "." && isRestorerName(n) {
			continue // a mount-point restore's stage or old entries
		}
		r := n
		if rel != "." {
			r = rel + "/" + n
		}
		gone, err := w.entry(fd, n, r, abs+"/"+n)
		if err != nil {
			return false, err
		}
		if gone && w.vanished != nil {
			w.vanished(r)
		}
	}
	return false, nil
}

// errChanged says an opened handle is not the entry that was walked.
var errChanged = errors.New("changed while it was being read")

// openDirAt opens directory name of dirFd without following a symlink
// and checks that it is the directory st describes.
func openDirAt(dirFd int, name string, st *unix.Stat_t) (int, error) {
	fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if got.Dev != st.Dev || got.Ino != st.Ino || got.Mode&unix.S_IFMT != unix.S_IFDIR {
		unix.Close(fd)
		return -1, errChanged
	}
	return fd, nil
}

// maxReadAttempts is how often an entry that changes while it is read is
// read again.
const maxReadAttempts = 3

// openBeneath opens path (relative, slash-separated) below the directory
// dirFd without following a symlink in any component and without
// leaving dirFd, with openat2 RESOLVE_NO_SYMLINKS where the kernel has it
// and the path fits, else one openat(O_NOFOLLOW) per component.
func openBeneath(dirFd int, path string, flags int) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if len(path) < unix.PathMax && !noOpenat2 {
		fd, err := unix.Openat2(dirFd, path, &unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
			return fd, err
		}
	}
	fd := dirFd
	for {
		comp, rest, more := cutSlash(path)
		f := flags
		if more {
			f = unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		}
		next, err := unix.Openat(fd, comp, f, 0)
		if fd != dirFd {
			unix.Close(fd)
		}
		if err != nil {
			return -1, err
		}
		if !more {
			return next, nil
		}
		fd, path = next, rest
	}
}

// noOpenat2 makes openBeneath walk components (tests cover both ways).
var noOpenat2 = false

func cutSlash(p string) (string, string, bool) {
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			return p[:i], p[i+1:], true
		}
	}
	return p, "", false
}

// readlinkAt returns the target of symlink name in dirFd.
func readlinkAt(dirFd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirFd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size > unix.PathMax {
			return "", fmt.Errorf("link target over %d bytes", unix.PathMax)
		}
	}
}

// fsNow returns the clock that stamps mtimes and ctimes
// (CLOCK_REALTIME_COARSE), in nanoseconds. A timestamp the kernel gives
// after this call is never older than what it returns.
func fsNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// entryFromStat returns the entry for st at rel, without the digest, link
// target and xattrs, which need the entry itself. Type is "" for what is
// not a file, directory, symlink or FIFO.
func entryFromStat(rel string, st *unix.Stat_t) Entry {
	e := Entry{
		Path: rel, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
		MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type, e.Size = EntryFile, st.Size
	case unix.S_IFDIR:
		e.Type = EntryDir
	case unix.S_IFLNK:
		e.Type = EntrySymlink
	case unix.S_IFIFO:
		e.Type = EntryFIFO
	}
	return e
}

// kindOf names what st is, for messages about entries skipped.
func kindOf(st *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	}
	return "not a file, directory, symlink or FIFO"
}

// liveEntries reads the live tree at root by metadata: every entry with
// its link target, and with withXattrs its extended attributes. Entries
// that are not files, directories, symlinks or FIFOs are left out. absent
// reports that root does not exist.
func liveEntries(ctx context.Context, root string, withXattrs bool) (entries []Entry, absent bool, err error) {
	entries, _, absent, err = liveEntriesSpecial(ctx, root, withXattrs)
	return entries, absent, err
}

// liveEntriesSpecial is liveEntries, and also returns the paths of the
// entries a point cannot record (sockets, devices).
func liveEntriesSpecial(ctx context.Context, root string, withXattrs bool) (entries []Entry, special []string, absent bool, err error) {
	err = walkTree(ctx, root, func(dirFd int, name, rel string, st *unix.Stat_t, fd int) error {
		e := entryFromStat(rel, st)
		if e.Type == "" {
			special = append(special, rel)
			return nil
		}
		if e.Type == EntrySymlink {
			if e.Target, err = readlinkAt(dirFd, name); err != nil {
				return userErr(err, "cannot read link %s: %v", filepath.Join(root, rel), err)
			}
		}
		if withXattrs {
			if fd >= 0 {
				e.Xattrs, err = listXattrsFd(fd)
			} else {
				e.Xattrs, err = listXattrsAt(dirFd, name)
			}
			if err != nil {
				return userErr(err, "cannot read the extended attributes of %s: %v", filepath.Join(root, rel), err)
			}
		}
		entries = append(entries, e)
		return nil
	}, nil)
	if errors.Is(err, errRootAbsent) {
		return nil, nil, true, nil
	}
	return entries, special, false, passCanceled(ctx, err)
}

// joinRel names rel below root, for messages and the test hook.
func joinRel(root, rel string) string {
	if rel == "." {
		return root
	}
	return root + "/" + rel
}
