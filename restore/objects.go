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
	"sync/atomic"
	"time"
)

// objectStore keeps file contents under dir/ab/abcdef..., named by the
// hex SHA-256 of the content. An object is written to a temp file in its
// fan-out directory, fsynced, renamed into place, and the directory is
// fsynced, so an object that exists under its name is complete.
type objectStore struct {
	dir string
	// noRing makes verification use plain system calls even where
	// io_uring is available (tests cover both paths with it).
	noRing bool
	// ringBatches counts batches read through io_uring.
	ringBatches atomic.Int64
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
