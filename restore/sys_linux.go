package restore

import (
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const oNoFollow = syscall.O_NOFOLLOW

var bufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// freeSpace returns the bytes available to unprivileged users on the
// filesystem holding path, and the filesystem's id.
func freeSpace(path string) (free uint64, fsid [2]int32, err error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(path, &s); err != nil {
		return 0, fsid, err
	}
	return uint64(s.Bavail) * uint64(s.Bsize), [2]int32{s.Fsid.X__val[0], s.Fsid.X__val[1]}, nil
}

// exchange atomically swaps the names a and b in dir (renameat2
// RENAME_EXCHANGE). It returns an error wrapping unix.EINVAL or
// unix.ENOSYS where the filesystem cannot.
func exchange(a, b string) error {
	if noExchange {
		return &os.LinkError{Op: "renameat2", Old: a, New: b, Err: unix.EINVAL}
	}
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}

// noExchange makes exchange fail as on a filesystem without
// RENAME_EXCHANGE, so the tests cover the two-rename fallback.
var noExchange = false

// syncFS commits the filesystem holding dir to disk (syncfs(2)).
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}
