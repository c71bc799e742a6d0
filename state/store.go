package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Key namespaces. A key is "<namespace>/<name>"; the Consul store puts its
// prefix in front, the local store uses the namespace as a bbolt bucket.
const (
	NSSwitches   = "switches"
	NSPoints     = "points"
	NSOperations = "operations"
	NSLocks      = "locks"
	NSSecrets    = "secrets"
)

// NSStats is the namespace of the gateways' live stats (see
// Store.PublishStats). Its keys are "stats/<switch>/<gateway>", and it is
// read only through ListStats.
const NSStats = "stats"

// StatsTTL is the TTL of a stats record: a gateway publishes more often
// than this, and a record not refreshed for longer is gone.
const StatsTTL = 10 * time.Second

// RestoreLock is the name of the fleet-wide restore lock.
const RestoreLock = "restore"

// MaxValueSize is the largest value a store accepts (Consul's KV limit is
// 512 KiB; we keep the same bound everywhere so a local catalog can always
// migrate to Consul).
const MaxValueSize = 512 * 1024

var (
	// ErrNotFound is returned when a key does not exist.
	ErrNotFound = errors.New("not found")

	// ErrConflict is returned by CAS when the key changed since it was read.
	// The caller should re-read and re-decide.
	ErrConflict = errors.New("state changed concurrently")

	// ErrLockHeld is wrapped by a *LockHeldError when a lock is held by
	// someone else.
	ErrLockHeld = errors.New("lock held")

	// ErrUnavailable is wrapped by errors meaning the store could not be
	// reached at all (Consul down, bbolt file locked). Callers that keep a
	// cached copy keep serving it.
	ErrUnavailable = errors.New("state store unavailable")
)

// Entry is one key with its value and version. Version is the store's
// modify index for the key; it is never zero for a key that exists.
type Entry struct {
	Key     string
	Value   []byte
	Version uint64
}

// Store is where switchback keeps what must outlive a process: switch
// state, the rollback-point catalog, operation records and the restore lock.
//
// Keys are "<namespace>/<name>" with the namespaces above. Implementations
// must be safe for concurrent use.
type Store interface {
	// Get returns the entry at key, or ErrNotFound.
	Get(ctx context.Context, key string) (Entry, error)

	// List returns every entry whose key is in namespace ns, sorted by key.
	List(ctx context.Context, ns string) ([]Entry, error)

	// Put writes value at key unconditionally and returns the new version.
	Put(ctx context.Context, key string, value []byte) (uint64, error)

	// CAS writes value at key only if the key's version is still version
	// (0 means "only if the key does not exist"). It returns ErrConflict
	// when another writer got there first.
	CAS(ctx context.Context, key string, value []byte, version uint64) (uint64, error)

	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error

	// Watch blocks until some entry in namespace ns has a version greater
	// than index, or ctx is done, and returns the namespace's entries and
	// the new index. Index 0 returns at once. A returned index smaller than
	// the one passed in means the store was reset; start again from 0.
	Watch(ctx context.Context, ns string, index uint64) ([]Entry, uint64, error)

	// Lock takes the named lock for holder, a short human description such
	// as `{"host":"gw-1","op":"op-123"}`. It does not wait: if another holder
	// has it, it returns a *LockHeldError. The returned Lock's Lost channel
	// closes if the lock is lost before Unlock.
	Lock(ctx context.Context, name string, holder []byte) (Lock, error)

	// PublishStats writes value, a gateway's counters for a switch, at
	// "stats/<sw>/<gateway>", held only while this process lives: in
	// Consul under a session with a TTL (StatsTTL; Consul may take up to
	// twice that), renewed by the store, whose expiry or Close deletes
	// the key, so a gateway that dies drops out of the fleet's evidence.
	// A later PublishStats replaces the value. The local store keeps the
	// value in this process's memory: with it the evidence is this
	// gateway's own.
	PublishStats(ctx context.Context, sw, gateway string, value []byte) error

	// ListStats returns the live stats values of switch sw, by gateway.
	ListStats(ctx context.Context, sw string) (map[string][]byte, error)

	// Describe names the store for logs and status, e.g. "local /x.db".
	Describe() string

	// Close releases the store's resources.
	Close() error
}

// Lock is a held lock.
type Lock interface {
	// Lost is closed when the lock is lost (for example, a Consul session
	// was invalidated). It is NOT safe to assume the lock is still held
	// once it is closed.
	Lost() <-chan struct{}

	// Unlock releases the lock.
	Unlock() error
}

// LockHeldError says who holds a lock.
type LockHeldError struct {
	Name   string
	Holder []byte
}

func (e *LockHeldError) Error() string {
	if len(e.Holder) == 0 {
		return fmt.Sprintf("lock %s held by another process", e.Name)
	}
	return fmt.Sprintf("lock %s held by %s", e.Name, e.Holder)
}

// Unwrap makes errors.Is(err, ErrLockHeld) true.
func (e *LockHeldError) Unwrap() error { return ErrLockHeld }

// Key joins a namespace and a name into a key.
func Key(ns, name string) string { return ns + "/" + name }

// SplitKey splits a key into its namespace and name, and checks both.
func SplitKey(key string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || name == "" {
		return "", "", fmt.Errorf("invalid key %q: want namespace/name", key)
	}
	if err := CheckNamespace(ns); err != nil {
		return "", "", err
	}
	if err := CheckName(name); err != nil {
		return "", "", err
	}
	return ns, name, nil
}

// CheckNamespace reports whether ns is one of the known namespaces.
func CheckNamespace(ns string) error {
	switch ns {
	case NSSwitches, NSPoints, NSOperations, NSLocks, NSSecrets:
		return nil
	}
	return fmt.Errorf("unknown namespace %q", ns)
}

// CheckName reports whether name is usable as the last part of a key: 1 to
// 128 characters of letters, digits, '.', '_' and '-', not starting with '.'.
// Switch names, point ids and operation ids all follow it, so none can
// escape its namespace in Consul or on disk.
func CheckName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("invalid name %q: must be 1 to 128 characters", name)
	}
	if name[0] == '.' {
		return fmt.Errorf("invalid name %q: must not start with '.'", name)
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("invalid name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// CheckValue reports whether value, to be written at key, is within
// MaxValueSize. Every backend checks it before writing, so a value one
// store accepts fits in every other.
func CheckValue(key string, value []byte) error {
	if len(value) > MaxValueSize {
		return fmt.Errorf("value for %s is %d bytes, over the %d byte limit", key, len(value), MaxValueSize)
	}
	return nil
}
