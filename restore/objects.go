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
	"sync"
	"sync/atomic"
	"time"
)

// objectStore keeps file contents under dir/ab/abcdef..., named by the
// hex SHA-256 of the content. An object is written to a temp file in dir,
// made durable (with the rest of its batch, see objectBatch), renamed into
// place, and the directory is fsynced, so an object that exists under its
// name is complete.
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

// objectBatch stores many objects with one filesystem sync instead of two
// fsyncs each. Objects are written to temp files; commit syncs the
// filesystem, renames them into place and syncs their directories. So an
// object still appears under its name only once its content is durable,
// and the names are durable before commit returns. A batch is safe for
// concurrent use.
type objectBatch struct {
	s       *objectStore
	mu      sync.Mutex
	pending map[string]string // digest → temp file
}

func (s *objectStore) batch() *objectBatch {
	return &objectBatch{s: s, pending: map[string]string{}}
}

// addFile stores the content of the regular file at path, refusing to
// follow a symlink, and returns its digest and size.
func (b *objectBatch) addFile(path string) (string, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return b.add(f)
}

// add stores what r yields and returns its digest and size. Content the
// store or the batch already holds is not written twice; an object that
// exists has its mtime refreshed, so a concurrent garbage collection
// keeps it.
func (b *objectBatch) add(r io.Reader) (string, int64, error) {
	tmp, err := os.CreateTemp(b.s.dir, ".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	tmpName := tmp.Name()
	d, n, err := copyHashing(tmp, r)
	if err == nil {
		err = tmp.Chmod(0o440)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmpName)
		return "", 0, fmt.Errorf("writing object: %w", err)
	}
	if b.s.has(d) {
		now := time.Now()
		os.Chtimes(b.s.path(d), now, now)
		os.Remove(tmpName)
		return d, n, nil
	}
	b.mu.Lock()
	_, dup := b.pending[d]
	if !dup {
		b.pending[d] = tmpName
	}
	b.mu.Unlock()
	if dup {
		os.Remove(tmpName)
	}
	return d, n, nil
}

// copyHashing copies r to w and returns the hex SHA-256 and length of
// what it copied.
func copyHashing(w io.Writer, r io.Reader) (string, int64, error) {
	h := sha256.New()
	buf := getBuf()
	defer putBuf(buf)
	// Hide r's WriteTo (an *os.File has one), which would copy through
	// a fresh 32 KB buffer of its own instead of the pooled one.
	n, err := io.CopyBuffer(io.MultiWriter(w, h), struct{ io.Reader }{r}, *buf)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// commit makes the batch's objects durable and puts them in place.
func (b *objectBatch) commit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 {
		return nil
	}
	if err := syncFS(b.s.dir); err != nil {
		return fmt.Errorf("writing objects: %w", err)
	}
	fans := map[string]bool{}
	for d, tmp := range b.pending {
		fan := filepath.Join(b.s.dir, d[:2])
		if !fans[fan] {
			if err := os.Mkdir(fan, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("writing objects: %w", err)
			}
			fans[fan] = true
		}
		if err := os.Rename(tmp, filepath.Join(fan, d)); err != nil {
			return fmt.Errorf("writing objects: %w", err)
		}
		delete(b.pending, d)
	}
	fans[b.s.dir] = true // new fan-out directories, and the temp names gone
	for dir := range fans {
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("writing objects: %w", err)
		}
	}
	return nil
}

// abort removes what the batch wrote and has not committed.
func (b *objectBatch) abort() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for d, tmp := range b.pending {
		os.Remove(tmp)
		delete(b.pending, d)
	}
}

// add stores one object durably: a batch of one.
func (s *objectStore) add(r io.Reader) (string, int64, error) {
	b := s.batch()
	d, n, err := b.add(r)
	if err == nil {
		err = b.commit()
	}
	if err != nil {
		b.abort()
		return "", 0, err
	}
	return d, n, nil
}

// removeStaleTemps removes the temp files of writes that died (a create
// killed before its batch committed) last modified before cutoff, and
// returns how many bytes they held.
func (s *objectStore) removeStaleTemps(cutoff time.Time, dryRun bool) int64 {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return 0
	}
	var freed int64
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		info, err := e.Info()
		if err != nil || info.ModTime().After(cutoff) {
			continue
		}
		if dryRun || os.Remove(filepath.Join(s.dir, e.Name())) == nil {
			freed += info.Size()
		}
	}
	return freed
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
