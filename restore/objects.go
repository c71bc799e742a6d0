package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// objectStore keeps file contents under dir/ab/abcdef..., named by the
// hex SHA-256 of the content. An object is written to a temp file in its
// fan-out directory, fsynced, renamed into place, and the directory is
// fsynced, so an object that exists under its name is complete.
type objectStore struct {
	dir string
}

func openObjectStore(dir string) (*objectStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating object store: %w", err)
	}
	return &objectStore{dir: dir}, nil
}

// checkDigest reports whether d is a valid object name: 64 lowercase hex
// characters.
func checkDigest(d string) error {
	if len(d) != 64 {
		return fmt.Errorf("invalid object name %q: want 64 hex characters", d)
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("invalid object name %q: want 64 hex characters", d)
		}
	}
	return nil
}

// path returns the file of object d. d must have passed checkDigest.
func (s *objectStore) path(d string) string {
	return filepath.Join(s.dir, d[:2], d)
}

// has reports whether object d exists.
func (s *objectStore) has(d string) bool {
	_, err := os.Lstat(s.path(d))
	return err == nil
}

// open opens object d for reading.
func (s *objectStore) open(d string) (*os.File, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	return os.Open(s.path(d))
}

// hashFile returns the SHA-256 and size of the regular file at path,
// refusing to follow a symlink in the last component.
func hashFile(path string) (string, int64, error) {
	// Raw open/read/close rather than os.File: most objects are small, and
	// os.File's per-file setup (poller registration, finalizer) cost more
	// than hashing them (verify is bound by per-file work, not SHA-256).
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", 0, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	h := sha256.New()
	buf := getBuf()
	defer putBuf(buf)
	var n int64
	for {
		k, err := unix.Read(fd, *buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", 0, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if k == 0 {
			break
		}
		h.Write((*buf)[:k])
		n += int64(k)
	}
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])), n, nil
}

// addFile stores the content of the regular file at path, whose digest
// the caller has computed as want (empty if unknown), and returns the
// digest. When the object already exists, its mtime is refreshed so a
// concurrent garbage collection keeps it. The file is re-hashed as it is
// copied; a file that changed in between is an error.
func (s *objectStore) addFile(path, want string) (string, int64, error) {
	if want != "" && s.has(want) {
		now := time.Now()
		os.Chtimes(s.path(want), now, now)
		return want, -1, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	d, n, err := s.add(f)
	if err != nil {
		return "", 0, err
	}
	if want != "" && d != want {
		return "", 0, fmt.Errorf("%s changed while it was being read", path)
	}
	return d, n, nil
}

// add stores what r yields and returns its digest and size.
func (s *objectStore) add(r io.Reader) (string, int64, error) {
	tmp, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	tmpName := tmp.Name()
	fail := func(err error) (string, int64, error) {
		tmp.Close()
		os.Remove(tmpName)
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	h := sha256.New()
	buf := getBuf()
	n, err := io.CopyBuffer(io.MultiWriter(tmp, h), r, *buf)
	putBuf(buf)
	if err != nil {
		return fail(err)
	}
	d := hex.EncodeToString(h.Sum(nil))
	if s.has(d) {
		tmp.Close()
		os.Remove(tmpName)
		now := time.Now()
		os.Chtimes(s.path(d), now, now)
		return d, n, nil
	}
	if err := tmp.Chmod(0o440); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	fan := filepath.Join(s.dir, d[:2])
	if err := os.Mkdir(fan, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		os.Remove(tmpName)
		return "", 0, fmt.Errorf("writing object: %w", err)
	} else if err == nil {
		syncDir(s.dir)
	}
	if err := os.Rename(tmpName, s.path(d)); err != nil {
		os.Remove(tmpName)
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	if err := syncDir(fan); err != nil {
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	return d, n, nil
}

// check re-hashes object d and reports whether it is missing or corrupt.
func (s *objectStore) check(d string, size int64) (missing bool, err error) {
	if err := checkDigest(d); err != nil {
		return false, err
	}
	got, n, err := hashFile(s.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("object %s missing", d[:12])
	}
	if err != nil {
		return false, err
	}
	if got != d {
		return false, fmt.Errorf("object %s corrupt: content hashes to %s", d[:12], got[:12])
	}
	if size >= 0 && n != size {
		return false, fmt.Errorf("object %s has %d bytes, manifest says %d", d[:12], n, size)
	}
	return false, nil
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

// walk calls fn for every object in the store with its modification time.
func (s *objectStore) walk(ctx context.Context, fn func(d string, info fs.FileInfo) error) error {
	fans, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, fan := range fans {
		if !fan.IsDir() || len(fan.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(s.dir, fan.Name()))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			if checkDigest(e.Name()) != nil || !strings.HasPrefix(e.Name(), fan.Name()) {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue
			}
			if err := fn(e.Name(), info); err != nil {
				return err
			}
		}
	}
	return nil
}

// remove deletes object d.
func (s *objectStore) remove(d string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	err := os.Remove(s.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// syncDir fsyncs a directory so renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeFileAtomic writes data to path via a synced temp file and a rename,
// then syncs the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(name)
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		os.Remove(name)
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		os.Remove(name)
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(name)
		return err
	}
	if err := os.Rename(name, path); err != nil {
		os.Remove(name)
		return err
	}
	return syncDir(dir)
}
