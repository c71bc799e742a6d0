package restore

import (
	"errors"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Extended attributes are read and written through a handle where one is
// open (files being hashed or copied, directories being walked) and else
// through /proc/self/fd/<dir>/<name> with the l* calls, which act on the
// name in that directory without following it: the xattr system calls
// have no *at form before Linux 6.13.

// listXattrsFd returns the extended attributes of the open file fd,
// sorted by name; nil when it has none or its filesystem has none.
func listXattrsFd(fd int) ([]Xattr, error) {
	return readXattrs(
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(n string, b []byte) (int, error) { return unix.Fgetxattr(fd, n, b) })
}

// listXattrsAt returns the extended attributes of name in dirFd, without
// following it if it is a symlink.
func listXattrsAt(dirFd int, name string) ([]Xattr, error) {
	p := procPath(dirFd, name)
	return readXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(n string, b []byte) (int, error) { return unix.Lgetxattr(p, n, b) })
}

func procPath(dirFd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirFd) + "/" + name
}

// readXattrs lists names with list and reads each value with get, both
// called with a buffer and growing it on ERANGE.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]Xattr, error) {
	var names []byte
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := list(buf)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if err != nil {
			return nil, err
		}
		names = buf[:n]
		break
	}
	if len(names) == 0 {
		return nil, nil
	}
	var out []Xattr
	for _, name := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		for size := 256; ; size *= 4 {
			buf := make([]byte, size)
			n, err := get(name, buf)
			if errors.Is(err, unix.ENODATA) {
				break // removed since it was listed
			}
			if errors.Is(err, unix.ERANGE) && size < 1<<20 {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, Xattr{Name: name, Value: string(buf[:n])})
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// xattrSetter writes extended attributes to one entry: set and remove act
// on it by fd or by name.
type xattrSetter struct {
	list   func() ([]Xattr, error)
	set    func(name string, value []byte) error
	remove func(name string) error
}

func fdXattrs(fd int) xattrSetter {
	return xattrSetter{
		list:   func() ([]Xattr, error) { return listXattrsFd(fd) },
		set:    func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) },
		remove: func(n string) error { return unix.Fremovexattr(fd, n) },
	}
}

func atXattrs(dirFd int, name string) xattrSetter {
	p := procPath(dirFd, name)
	return xattrSetter{
		list:   func() ([]Xattr, error) { return listXattrsAt(dirFd, name) },
		set:    func(n string, v []byte) error { return unix.Lsetxattr(p, n, v, 0) },
		remove: func(n string) error { return unix.Lremovexattr(p, n) },
	}
}

// apply makes the entry's extended attributes exactly want, among those
// this process may set: it removes those it has beyond want (ACLs
// inherited from a parent directory, say) and sets the rest. It returns
// the names it may not set.
func (s xattrSetter) apply(want []Xattr) (skipped []string, err error) {
	have, err := s.list()
	if err != nil {
		return nil, err
	}
	for _, h := range have {
		if !slices.ContainsFunc(want, func(x Xattr) bool { return x.Name == h.Name }) && xattrRestorable(h.Name) {
			if err := s.remove(h.Name); err != nil && !errors.Is(err, unix.ENODATA) {
				return nil, err
			}
		}
	}
	for _, x := range want {
		if !xattrRestorable(x.Name) {
			skipped = append(skipped, x.Name)
			continue
		}
		if i := slices.IndexFunc(have, func(h Xattr) bool { return h.Name == x.Name }); i >= 0 && have[i].Value == x.Value {
			continue
		}
		if err := s.set(x.Name, []byte(x.Value)); err != nil {
			return nil, err
		}
	}
	return skipped, nil
}

// euid and groups are this process's effective user and its groups.
var (
	euid   = os.Geteuid()
	groups = func() []int {
		g, _ := os.Getgroups()
		return append(g, os.Getegid())
	}()
)

// canChown reports whether this process may give a file owner uid and
// group gid: root may, others only their own uid and one of their groups.
func canChown(uid, gid uint32) bool {
	return euid == 0 || int(uid) == euid && slices.Contains(groups, int(gid))
}

// xattrRestorable reports whether this process may set the extended
// attribute name: root may set all; others only user.* and the POSIX ACLs
// (security.capability needs CAP_SETFCAP, trusted.* CAP_SYS_ADMIN).
func xattrRestorable(name string) bool {
	return euid == 0 || strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "system.posix_acl_")
}

// restorableMode is the mode e gets when restored by this process: a
// setuid or setgid bit is never set on a file whose owner it cannot
// restore, or that bit would make the file run as this process's user.
func restorableMode(e Entry) uint32 {
	if canChown(e.UID, e.GID) {
		return e.Mode
	}
	return e.Mode &^ 0o6000
}
