package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Verification is bound by per-object work, not by SHA-256: a source tree
// averages 11 KB an object, and on the 2-vCPU machine this was tuned on a
// system call costs about 1 µs on entry alone, so open, read and close
// cost about as much as hashing a small object. Objects are therefore read
// with raw system calls (no os.File), one read of their size plus a byte
// each, into a per-worker buffer. Reading small objects in io_uring
// batches was tried and removed: in paired runs it gave no reliable gain
// (the README has the figures).

// objectCheck is one object to verify.
type objectCheck struct {
	digest string
	size   int64
	// sizeOnly checks presence and size without reading the content.
	sizeOnly bool
}

// verifyObjects checks objs on workers goroutines and calls done for each
// (concurrently, so done must be safe for that) with whether the object is
// missing and what is wrong with it, in the order given (callers put the
// biggest first, so the workers finish together). It returns ctx's error
// if ctx ends first.
func (s *objectStore) verifyObjects(ctx context.Context, workers int, objs []objectCheck, done func(i int, missing bool, err error)) error {
	if workers < 1 {
		workers = 1
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.checker()
			defer c.close()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(objs) {
					return
				}
				o := objs[i]
				var missing bool
				var err error
				if o.sizeOnly {
					missing, err = s.checkSize(o.digest, o.size)
				} else {
					missing, err = c.check(o.digest, o.size)
				}
				done(i, missing, err)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// objectChecker is one verify worker's state: a hasher and a read buffer.
type objectChecker struct {
	s     *objectStore
	h     hash.Hash
	buf   *[]byte
	flags int // open(2) flags, without O_NOATIME once it failed
}

// newChecker returns a checker of files by path, without a store.
func newChecker() *objectChecker {
	return &objectChecker{h: sha256.New(), buf: getBuf(), flags: objectOpenFlags | unix.O_NOATIME}
}

// checker returns a verify worker's checker of s's objects.
func (s *objectStore) checker() *objectChecker {
	c := newChecker()
	c.s = s
	return c
}

func (c *objectChecker) close() {
	putBuf(c.buf)
}

// check re-hashes object d and reports whether it is missing or corrupt.
// size < 0 skips the size comparison.
func (c *objectChecker) check(d string, size int64) (missing bool, err error) {
	if err := checkDigest(d); err != nil {
		return false, err
	}
	var want [sha256.Size]byte
	hex.Decode(want[:], []byte(d))
	got, n, err := c.hashPath(c.s.path(d), size)
	if errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("object %s missing", d[:12])
	}
	if err != nil {
		return false, err
	}
	if got != want {
		return false, fmt.Errorf("object %s corrupt: content hashes to %s", d[:12], hex.EncodeToString(got[:6]))
	}
	if size >= 0 && n != size {
		return false, fmt.Errorf("object %s has %d bytes, manifest says %d", d[:12], n, size)
	}
	return false, nil
}

// objectOpenFlags open an object or a live file for hashing. Where the
// caller may, O_NOATIME is added (see objectChecker.flags): an object's atime means nothing, and
// updating it (on the first read after a write, under relatime) dirties
// every inode a verify reads.
const objectOpenFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// hashPath returns the SHA-256 and length of the regular file at path,
// refusing to follow a symlink in the last component. With size >= 0 (what
// the file is expected to hold) a file of that size costs one read.
func (c *objectChecker) hashPath(path string, size int64) (sum [sha256.Size]byte, n int64, err error) {
	// Raw system calls rather than os.File: os.File's per-file setup
	// (poller registration, finalizer) costs more than hashing a small
	// object.
	fd, err := unix.Open(path, c.flags, 0)
	if err == unix.EPERM && c.flags&unix.O_NOATIME != 0 {
		// O_NOATIME is for the file's owner (or root) only.
		c.flags &^= unix.O_NOATIME
		fd, err = unix.Open(path, c.flags, 0)
	}
	if err != nil {
		return sum, 0, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	c.h.Reset()
	buf := *c.buf
	for {
		want := len(buf)
		if size >= 0 && n <= size && size-n < int64(want) {
			want = int(size-n) + 1
		}
		k, err := unix.Read(fd, buf[:want])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return sum, n, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if k == 0 {
			break
		}
		c.h.Write(buf[:k])
		n += int64(k)
		// A regular file reads short only at its end.
		if k < want && n == size {
			break
		}
	}
	c.h.Sum(sum[:0])
	return sum, n, nil
}

// hashFile returns the hex SHA-256 and size of the regular file at path.
func hashFile(path string) (string, int64, error) {
	c := newChecker()
	defer c.close()
	sum, n, err := c.hashPath(path, -1)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(sum[:]), n, nil
}

// checkSize reports whether object d is missing or has the wrong size,
// without reading it.
func (s *objectStore) checkSize(d string, size int64) (missing bool, err error) {
	if err := checkDigest(d); err != nil {
		return false, err
	}
	info, err := os.Lstat(s.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("object %s missing", d[:12])
	}
	if err != nil {
		return false, err
	}
	if !info.Mode().IsRegular() || info.Size() != size {
		return false, fmt.Errorf("object %s has %d bytes, manifest says %d", d[:12], info.Size(), size)
	}
	return false, nil
}
