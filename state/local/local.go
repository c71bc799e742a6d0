// Package local is the embedded state.Store: one bbolt file on this host.
//
// bbolt lets only one process hold a file open for writing, and both the
// gateway and an offline CLI use the same file. So the store never holds it
// open between operations: each call opens the file with a short lock
// timeout, does its transaction and closes it. A timeout names the process
// that holds the file (read from /proc on Linux).
//
// Namespaces map to buckets; a value is stored as an 8-byte big-endian
// version followed by the bytes. A "meta" bucket holds the store-wide index
// that every write advances, which Watch polls.
//
// Locks are not kept in bbolt: a lock is an flock(2) on a file beside the
// database, so it is released by the kernel when its process dies, and a
// crash never leaves a stale restore lock behind.
package local

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/leanvibe/switchback/state"
)

// DefaultLockTimeout is how long an operation waits for the bbolt file lock.
const DefaultLockTimeout = 2 * time.Second

// DefaultPollInterval is how often Watch re-reads the file.
const DefaultPollInterval = 200 * time.Millisecond

var (
	bucketMeta = []byte("meta")
	keyIndex   = []byte("index")
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// LockTimeout bounds the wait for the file lock (default 2s).
	LockTimeout time.Duration

	// PollInterval is how often Watch re-reads the file (default 200ms).
	PollInterval time.Duration
}

// Store is a state.Store on a bbolt file.
type Store struct {
	path string
	opts Options

	mu    sync.Mutex // guards locks and stats
	locks map[*flock]struct{}
	stats map[string]liveStats // by "<switch>/<gateway>"
}

// liveStats is a published stats value and when it was written.
type liveStats struct {
	value []byte
	at    time.Time
}

// Open checks that path is a usable bbolt database (creating it if it does
// not exist) and returns a Store on it. The file is not held open.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("local state: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("local state %s: %w", path, err)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("local state %s: %w", abs, err)
	}
	s := &Store{path: abs, opts: opts, locks: make(map[*flock]struct{})}
	// Open once now so a bad file or a stuck lock is reported at load time.
	if err := s.update(func(tx *bolt.Tx) error {
		for _, ns := range []string{state.NSSwitches, state.NSPoints, state.NSOperations, state.NSSecrets, string(bucketMeta)} {
			if _, err := tx.CreateBucketIfNotExists([]byte(ns)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// Path is the database file's absolute path.
func (s *Store) Path() string { return s.path }

// Describe implements state.Store.
func (s *Store) Describe() string { return "local " + s.path }

// Close implements state.Store. The file is never held open, so only locks
// taken through this Store are released.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.locks {
		l.release()
		delete(s.locks, l)
	}
	return nil
}

func (s *Store) open(readOnly bool) (*bolt.DB, error) {
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: s.opts.LockTimeout, ReadOnly: readOnly})
	if err == nil {
		return db, nil
	}
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("local state %s: %w: file locked by %s for more than %s",
			s.path, state.ErrUnavailable, holders(s.path), s.opts.LockTimeout)
	}
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local state %s: %w", s.path, err)
	}
	// Anything else bbolt refuses (bad magic, version, checksum, a file too
	// small or truncated) means the file is not a database we can use.
	return nil, fmt.Errorf("local state %s: not a valid bbolt database (%v); move it aside or point 'state local' at another file", s.path, err)
}

func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	db, err := s.open(false)
	if err != nil {
		return err
	}
	if err := db.Update(fn); err != nil {
		db.Close()
		return err
	}
	return db.Close()
}

func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	// Opening read-only still takes a shared flock, which waits for a
	// writer; bbolt's writer lock is exclusive. Good enough, and it lets
	// many readers share the file.
	if _, err := os.Stat(s.path); err != nil {
		return fmt.Errorf("local state %s: %w", s.path, err)
	}
	db, err := s.open(true)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(fn)
}

func encode(version uint64, value []byte) []byte {
	b := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(b, version)
	copy(b[8:], value)
	return b
}

func decode(key string, raw []byte) (state.Entry, error) {
	if len(raw) < 8 {
		return state.Entry{}, fmt.Errorf("local state: corrupt value at %s (%d bytes)", key, len(raw))
	}
	return state.Entry{Key: key, Version: binary.BigEndian.Uint64(raw), Value: bytes.Clone(raw[8:])}, nil
}

func bucketFor(tx *bolt.Tx, ns string) *bolt.Bucket {
	return tx.Bucket([]byte(ns))
}

// currentIndex returns the store-wide index, 0 before the first write.
func currentIndex(tx *bolt.Tx) uint64 {
	if v := tx.Bucket(bucketMeta).Get(keyIndex); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// nextIndex advances the store-wide index and returns it.
func nextIndex(tx *bolt.Tx) (uint64, error) {
	idx := currentIndex(tx) + 1
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], idx)
	return idx, tx.Bucket(bucketMeta).Put(keyIndex, b[:])
}

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, key string) (state.Entry, error) {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return state.Entry{}, err
	}
	var e state.Entry
	err = s.view(func(tx *bolt.Tx) error {
		b := bucketFor(tx, ns)
		if b == nil {
			return state.ErrNotFound
		}
		raw := b.Get([]byte(name))
		if raw == nil {
			return state.ErrNotFound
		}
		e, err = decode(key, raw)
		return err
	})
	return e, err
}

// List implements state.Store.
func (s *Store) List(ctx context.Context, ns string) ([]state.Entry, error) {
	if err := state.CheckNamespace(ns); err != nil {
		return nil, err
	}
	var out []state.Entry
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = entries(tx, ns)
		return err
	})
	return out, err
}

// entries reads every entry of a namespace's bucket, in key order.
func entries(tx *bolt.Tx, ns string) ([]state.Entry, error) {
	b := bucketFor(tx, ns)
	if b == nil {
		return nil, nil
	}
	var out []state.Entry
	err := b.ForEach(func(k, v []byte) error {
		e, err := decode(state.Key(ns, string(k)), v)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// Put implements state.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return s.write(key, value, nil)
}

// CAS implements state.Store.
func (s *Store) CAS(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	return s.write(key, value, &version)
}

func (s *Store) write(key string, value []byte, version *uint64) (uint64, error) {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return 0, err
	}
	if ns == state.NSLocks {
		return 0, fmt.Errorf("local state: locks are taken with Lock, not written")
	}
	if err := state.CheckValue(key, value); err != nil {
		return 0, err
	}
	var idx uint64
	err = s.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(ns))
		if err != nil {
			return err
		}
		if version != nil {
			var cur uint64
			if raw := b.Get([]byte(name)); raw != nil {
				e, err := decode(key, raw)
				if err != nil {
					return err
				}
				cur = e.Version
			}
			if cur != *version {
				return state.ErrConflict
			}
		}
		idx, err = nextIndex(tx)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), encode(idx, value))
	})
	return idx, err
}

// Delete implements state.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := bucketFor(tx, ns)
		if b == nil || b.Get([]byte(name)) == nil {
			return nil
		}
		if _, err := nextIndex(tx); err != nil {
			return err
		}
		return b.Delete([]byte(name))
	})
}

// Watch implements state.Store by polling the store-wide index. Any write
// wakes every watcher; callers compare what they get.
func (s *Store) Watch(ctx context.Context, ns string, index uint64) ([]state.Entry, uint64, error) {
	if err := state.CheckNamespace(ns); err != nil {
		return nil, 0, err
	}
	for {
		var idx uint64
		var out []state.Entry
		err := s.view(func(tx *bolt.Tx) error {
			idx = currentIndex(tx)
			if index != 0 && idx == index {
				return nil
			}
			var err error
			out, err = entries(tx, ns)
			return err
		})
		if err != nil {
			return nil, index, err
		}
		if index == 0 || idx != index {
			return out, idx, nil
		}
		select {
		case <-ctx.Done():
			return nil, index, ctx.Err()
		case <-time.After(s.opts.PollInterval):
		}
	}
}

// holders names the processes that have path open, for a lock timeout
// message. It reads /proc and says "another process" where it cannot.
func holders(path string) string {
	var found []string
	procs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, p := range procs {
		var pid int
		if _, err := fmt.Sscanf(p.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err == nil && target == path {
				cmd, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
				args := strings.Fields(strings.ReplaceAll(string(cmd), "\x00", " "))
				if len(args) > 3 {
					args = args[:3]
				}
				found = append(found, fmt.Sprintf("pid %d (%s)", pid, strings.Join(args, " ")))
				break
			}
		}
	}
	if len(found) == 0 {
		return "another process"
	}
	sort.Strings(found)
	return strings.Join(found, ", ")
}

// flock is a lock held as an flock(2) on a file, taken through s.
type flock struct {
	s    *Store
	f    *os.File
	lost chan struct{}
	once sync.Once
}

// Lost implements state.Lock. It never closes: the lock lives as long as
// the process.
func (l *flock) Lost() <-chan struct{} { return l.lost }

// Unlock implements state.Lock.
func (l *flock) Unlock() error {
	l.s.mu.Lock()
	delete(l.s.locks, l)
	l.s.mu.Unlock()
	l.release()
	return nil
}

func (l *flock) release() {
	l.once.Do(func() {
		l.f.Truncate(0)
		syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
	})
}

// Lock implements state.Store with an flock on "<db>.<name>.lock". The
// holder description is written into the file so a loser can say who holds
// it. The kernel drops the lock when the process dies, so Lost never closes
// while the process lives.
func (s *Store) Lock(ctx context.Context, name string, holder []byte) (state.Lock, error) {
	if err := state.CheckName(name); err != nil {
		return nil, err
	}
	path := s.path + "." + name + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who, _ := os.ReadFile(path)
			return nil, &state.LockHeldError{Name: name, Holder: bytes.TrimSpace(who)}
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt(holder, 0)
		f.Sync()
	}
	l := &flock{s: s, f: f, lost: make(chan struct{})}
	s.mu.Lock()
	s.locks[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

// Interface guard.
var _ state.Store = (*Store)(nil)

// PublishStats implements state.Store in this process's memory: only
// this gateway reads it, so the file is not written every few seconds.
func (s *Store) PublishStats(ctx context.Context, sw, gateway string, value []byte) error {
	if err := checkStatsKey(sw, gateway, value); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats == nil {
		s.stats = make(map[string]liveStats)
	}
	s.stats[sw+"/"+gateway] = liveStats{value: bytes.Clone(value), at: time.Now()}
	return nil
}

// ListStats implements state.Store: the values this process published for
// sw within state.StatsTTL.
func (s *Store) ListStats(ctx context.Context, sw string) (map[string][]byte, error) {
	if err := state.CheckName(sw); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]byte)
	for k, v := range s.stats {
		name, gw, _ := strings.Cut(k, "/")
		if time.Since(v.at) > state.StatsTTL {
			delete(s.stats, k)
			continue
		}
		if name == sw {
			out[gw] = bytes.Clone(v.value)
		}
	}
	return out, nil
}

func checkStatsKey(sw, gateway string, value []byte) error {
	if err := state.CheckName(sw); err != nil {
		return fmt.Errorf("stats: switch: %w", err)
	}
	if err := state.CheckName(gateway); err != nil {
		return fmt.Errorf("stats: gateway: %w", err)
	}
	return state.CheckValue(state.Key(state.NSStats, sw+"/"+gateway), value)
}
