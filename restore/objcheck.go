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
// cost more than hashing a small object. Objects below batchSlot are
// therefore read in batches through an objectRing where the kernel has
// io_uring (two io_uring_enter calls for a whole batch instead of three
// system calls an object), and bigger ones, where hashing dominates, with
// plain reads. The README has the figures.
const (
	// batchSlot is the buffer each object of a batch is read into. An
	// object is read with one request of its size plus one byte, so a
	// longer file shows up as a short count mismatch without a second read.
	batchSlot = 64 << 10
	// batchLen is how many objects a batch holds.
	batchLen = 64
)

// objectCheck is one object to verify.
type objectCheck struct {
	digest string
	size   int64
	// sizeOnly checks presence and size without reading the content.
	sizeOnly bool
}

// verifyObjects checks objs on workers goroutines and calls done for each
// (concurrently, so done must be safe for that) with whether the object is
// missing and what is wrong with it. Bigger objects go first so the
// workers finish together. It returns ctx's error if ctx ends first.
func (s *objectStore) verifyObjects(ctx context.Context, workers int, objs []objectCheck, done func(i int, missing bool, err error)) error {
	var single, small []int
	for i, o := range objs {
		if !o.sizeOnly && o.size >= 0 && o.size < batchSlot {
			small = append(small, i)
		} else {
			single = append(single, i)
		}
	}
	if workers < 1 {
		workers = 1
	}
	var nextSingle, nextSmall atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.checker(len(small) > 0)
			defer c.close()
			for ctx.Err() == nil {
				if i := int(nextSingle.Add(1) - 1); i < len(single) {
					o := objs[single[i]]
					var missing bool
					var err error
					if o.sizeOnly {
						missing, err = s.checkSize(o.digest, o.size)
					} else {
						missing, err = c.check(o.digest, o.size)
					}
					done(single[i], missing, err)
					continue
				}
				j := int(nextSmall.Add(batchLen) - batchLen)
				if j >= len(small) {
					return
				}
				c.checkBatch(objs, small[j:min(j+batchLen, len(small))], done)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// objectChecker is one verify worker's state: a hasher, a read buffer and,
// where the kernel allows, a ring for batches.
type objectChecker struct {
	s     *objectStore
	h     hash.Hash
	buf   *[]byte
	flags int         // open(2) flags, without O_NOATIME once it failed
	ring  *objectRing // nil: batches are read with plain system calls
}

// newChecker returns a checker of files by path, without a store or ring.
func newChecker() *objectChecker {
	return &objectChecker{h: sha256.New(), buf: getBuf(), flags: objectOpenFlags | unix.O_NOATIME}
}

// checker returns a verify worker's checker of s's objects; with batches,
// one that reads small objects through a ring where it can.
func (s *objectStore) checker(batches bool) *objectChecker {
	c := newChecker()
	c.s = s
	if batches && !s.noRing && os.Getenv("SWITCHBACK_IO_URING") != "off" {
		// A kernel without io_uring, or a sandbox that forbids it, gets
		// the plain path; that is slower, not wrong. SWITCHBACK_IO_URING=off
		// chooses it, for a kernel whose io_uring misbehaves (and to
		// compare the two).
		c.ring, _ = newObjectRing(s.dir)
	}
	return c
}

func (c *objectChecker) close() {
	putBuf(c.buf)
	if c.ring != nil {
		c.ring.close()
	}
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

// checkBatch checks the small objects objs[idx[k]]. Whatever the ring
// finds wrong is checked again one by one, for the exact error.
func (c *objectChecker) checkBatch(objs []objectCheck, idx []int, done func(i int, missing bool, err error)) {
	if c.ring == nil {
		for _, i := range idx {
			missing, err := c.check(objs[i].digest, objs[i].size)
			done(i, missing, err)
		}
		return
	}
	names := make([]string, 0, batchLen)
	sizes := make([]int64, 0, batchLen)
	at := make([]int, 0, batchLen)
	for _, i := range idx {
		if err := checkDigest(objs[i].digest); err != nil {
			done(i, false, err)
			continue
		}
		names = append(names, objs[i].digest)
		sizes = append(sizes, objs[i].size)
		at = append(at, i)
	}
	res, err := c.ring.read(names, sizes, c.flags)
	if err == nil {
		c.s.ringBatches.Add(1)
	}
	for k, i := range at {
		// check retries without O_NOATIME, and drops it for what follows.
		if err == nil && int64(res[k]) == sizes[k] {
			var want [sha256.Size]byte
			hex.Decode(want[:], []byte(names[k]))
			if sha256.Sum256(c.ring.slot(k)[:sizes[k]]) == want {
				done(i, false, nil)
				continue
			}
		}
		missing, err := c.check(names[k], sizes[k])
		done(i, missing, err)
	}
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
