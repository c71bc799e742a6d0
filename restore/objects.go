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
	"time"

	"golang.org/x/sys/unix"
)

// objectStore keeps file contents under dir/ab/abcdef..., named by the
// hex SHA-256 of the content. An object is written to a temp file in dir,
// made durable (with the rest of its batch, see objectBatch), renamed into
// place, and the directory is fsynced, so an object that exists under its
// name is complete.
type objectStore struct {
	dir string
	// leaseWait bounds a wait for the lease (default defaultLeaseWait).
	leaseWait time.Duration
}

// defaultLeaseWait is how long a create waits for a cleanup's object
// collection, and a cleanup for the creates under way, before giving up.
const defaultLeaseWait = 10 * time.Minute

func openObjectStore(dir string) (*objectStore, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating object store: %w", err)
	}
	return &objectStore{dir: dir, leaseWait: defaultLeaseWait}, nil
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
	// replace holds the pending digests whose existing object is replaced
	// (its size was wrong, or verify flagged it).
	replace map[string]bool
	// flagged is the set of objects verify found corrupt, read when the
	// batch began: their digests are not reused, and a fresh copy
	// replaces them.
	flagged map[string]bool
}

func (s *objectStore) batch() *objectBatch {
	return &objectBatch{s: s, pending: map[string]string{}, replace: map[string]bool{}, flagged: s.flagged()}
}

// isFlagged reports whether verify has found object d corrupt (as of the
// batch's start), so a create must read the file rather than reuse d.
func (b *objectBatch) isFlagged(d string) bool { return b.flagged[d] }

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
// exists has its mtime refreshed. An existing object whose size is wrong,
// or that verify flagged as corrupt, is replaced by the fresh copy when
// the batch commits.
func (b *objectBatch) add(r io.Reader) (string, int64, error) {
	return b.addAs(r, "")
}

// errContentDiffers is returned by addAs when what it read does not hash
// to the digest it wanted.
var errContentDiffers = errors.New("content differs")

// addAs is add; with want set, it stores the content only if it hashes to
// want (returning errContentDiffers otherwise), and then always replaces
// the existing object: it is how a repair rewrites a corrupt one.
func (b *objectBatch) addAs(r io.Reader, want string) (string, int64, error) {
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
	if want != "" && d != want {
		os.Remove(tmpName)
		return d, n, errContentDiffers
	}
	replace := want != ""
	if !replace {
		info, err := os.Lstat(b.s.path(d))
		switch {
		case err == nil && info.Mode().IsRegular() && info.Size() == n && !b.flagged[d]:
			now := time.Now()
			os.Chtimes(b.s.path(d), now, now)
			os.Remove(tmpName)
			return d, n, nil
		case err == nil:
			// A corrupt object: the fresh copy heals it, atomically by
			// rename, rather than every later point sharing the damage.
			replace = true
		}
	}
	b.mu.Lock()
	_, dup := b.pending[d]
	if !dup {
		b.pending[d] = tmpName
	}
	if replace {
		b.replace[d] = true
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
		// Rename replaces an existing (corrupt) object atomically.
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
	// Only once the good copies are durable under their names.
	for d := range b.replace {
		b.s.unflag(d)
		delete(b.replace, d)
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
		delete(b.replace, d)
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

// remove deletes object d, and its corrupt flag.
func (s *objectStore) remove(d string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	err := os.Remove(s.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err == nil {
		s.unflag(d)
	}
	return err
}

// flagDir holds one empty file per object verify found corrupt, named by
// its digest. The flags outlive the process, so the next create replaces
// the object from a fresh read of the file instead of reusing its digest,
// and `point verify --repair` knows what to rewrite. A flag is removed
// when a good copy replaces the object, when verify finds the object
// good again, or when cleanup removes the object.
const flagDir = ".corrupt"

// flag records that object d is corrupt. It is best effort (a verify by
// a user who cannot write the store still reports the damage), and says
// why it failed.
func (s *objectStore) flag(d string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	dir := filepath.Join(s.dir, flagDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, d), os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	f.Close()
	return syncDir(dir)
}

// unflag removes object d's corrupt flag, if any.
func (s *objectStore) unflag(d string) {
	if checkDigest(d) == nil {
		os.Remove(filepath.Join(s.dir, flagDir, d))
	}
}

// flagged returns the objects flagged corrupt; nil when there are none.
func (s *objectStore) flagged() map[string]bool {
	ents, err := os.ReadDir(filepath.Join(s.dir, flagDir))
	if err != nil || len(ents) == 0 {
		return nil
	}
	out := make(map[string]bool, len(ents))
	for _, e := range ents {
		if checkDigest(e.Name()) == nil {
			out[e.Name()] = true
		}
	}
	return out
}

// leaseFile is the object store's lease: every writer that may name an
// object without writing it (a create reusing digests, a repair) holds
// it shared from before it reads the catalog until its point is
// committed, and cleanup holds it exclusive while it decides which
// objects are unreferenced and removes them. So cleanup never removes an
// object that a point being created will name, and a create never picks
// a parent whose objects are being removed.
//
// It is an flock(2) on a file in the store: objects are per host, and so
// is their lease, so another host's creates never hold up this host's
// cleanup. The kernel drops it when its holder dies, so a create killed
// with -9 never blocks cleanup; one that hangs holds it only until the
// waiter's bound runs out, and the waiter says so.
const leaseFile = ".lease"

// objectLease is a held lease; release drops it.
type objectLease struct{ f *os.File }

// errLeaseHeld is returned by lease when the bound ran out.
var errLeaseHeld = errors.New("object store lease held")

// lease takes the store's lease, shared or exclusive, waiting up to wait
// (or until ctx ends). held, if not nil, is called once if it has to wait.
func (s *objectStore) lease(ctx context.Context, exclusive bool, wait time.Duration, held func()) (*objectLease, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, leaseFile), os.O_RDONLY|os.O_CREATE|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("taking the object store lease: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	deadline := time.Now().Add(wait)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return &objectLease{f: f}, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("taking the object store lease: %w", err)
		}
		if held != nil {
			held()
			held = nil
		}
		if !time.Now().Before(deadline) {
			f.Close()
			return nil, errLeaseHeld
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// release drops the lease. A nil lease is a no-op.
func (l *objectLease) release() {
	if l != nil {
		l.f.Close() // closing the only descriptor drops the flock
	}
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
