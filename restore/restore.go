package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/leanvibe/switchback/state"
)

var (
	// ErrNotFound is wrapped by errors about unknown point, operation or
	// component names. It is state.ErrNotFound, so callers can test for
	// either.
	ErrNotFound = state.ErrNotFound

	// ErrVerifyFailed is wrapped when a point's manifest or objects are
	// missing or corrupt.
	ErrVerifyFailed = errors.New("verification failed")

	// ErrValidationFailed is wrapped when system validation fails.
	ErrValidationFailed = errors.New("validation failed")

	// ErrRestoreInProgress is wrapped when another restore holds the
	// restore lock. The message reads "restore in progress on HOST (op ID)".
	ErrRestoreInProgress = errors.New("restore in progress")

	// ErrLockLost is wrapped when the restore lock was lost mid-restore.
	ErrLockLost = errors.New("restore lock lost")

	// ErrForeignPoint is wrapped when a point was created on another host:
	// its objects are on that host's disk, not here.
	ErrForeignPoint = errors.New("point of another host")

	// ErrMountPoint is wrapped when a root to restore is a mount point,
	// which cannot be swapped by rename.
	ErrMountPoint = errors.New("root is a mount point")

	// ErrUnfinished is wrapped when a restore refuses to start because an
	// earlier restore of this host is unfinished and could not be
	// recovered.
	ErrUnfinished = errors.New("unfinished restore")
)

// Error is an error meant for the user: its message is complete and can be
// printed as is, without the internal chain. Err, which may be nil, is one
// of the sentinels above or the underlying cause, for errors.Is.
type Error struct {
	Msg string
	Err error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the sentinel or cause.
func (e *Error) Unwrap() error { return e.Err }

// userErr builds an *Error. cause may be nil.
func userErr(cause error, format string, args ...any) error {
	return &Error{Msg: fmt.Sprintf(format, args...), Err: cause}
}

// Progress describes a long step. It is passed to Options.Progress.
type Progress struct {
	Op         string `json:"op,omitempty"`
	Step       string `json:"step"`
	Files      int64  `json:"files"`
	TotalFiles int64  `json:"total_files,omitempty"`
	Bytes      int64  `json:"bytes"`
	TotalBytes int64  `json:"total_bytes,omitempty"`
	Done       bool   `json:"done,omitempty"`
}

// Options configures a Manager. The zero value is usable.
type Options struct {
	// Host names this host in lock holders and records (default os.Hostname).
	Host string

	// HostIDFile is the file holding this host's id, created with a random
	// id the first time (default: host-id in the backups directory). The
	// id, recorded with Host in every point and operation, is what makes a
	// point or an unfinished restore this host's: recovery acts only on
	// this host's operations and a restore only uses this host's points,
	// whatever the host is called now.
	HostIDFile string

	// Logger receives structured logs (default: discarded).
	Logger *slog.Logger

	// Progress, if set, is called during long steps, at most every 100ms
	// per step and once when a step ends. Calls never overlap.
	Progress func(Progress)

	// Warn, if set, is called for problems that do not stop an operation
	// (an old tree that could not be removed, say). Default: logged.
	Warn func(error)

	// Now returns the current time (default time.Now). Used for ids,
	// records and retention.
	Now func() time.Time

	// Workers is how many files are hashed or copied at once (default
	// GOMAXPROCS, at least 2).
	Workers int
}

// Manager creates, verifies and restores rollback points and keeps the
// operation records. It is safe for concurrent use; restores are serialized
// across processes and hosts by the store's restore lock.
type Manager struct {
	st      state.Store
	cfg     Config
	opts    Options
	log     *slog.Logger
	objects *objectStore
	pid     int
	// hostID is this host's id; pidStart and boot tell this process apart
	// from an earlier one with the same pid (see pidAlive).
	hostID   string
	pidStart uint64
	boot     string

	progressMu sync.Mutex

	// abandoned holds the operations this process gave up on (a revert it
	// could not record): recovery may finish them though it still runs.
	abandonMu sync.Mutex
	abandoned map[string]bool

	// testHook, if set, is called at named points of a restore (tests use
	// it to widen crash windows and inject faults).
	testHook func(point string) error
	// newWriter, if set, wraps file writes while staging (tests inject a
	// failing writer to simulate a full disk).
	newWriter func(w io.Writer) io.Writer
	// fsClock, if set, replaces fsNow as the scan start of new points
	// (tests make every timestamp racy with it).
	fsClock func() int64
}

// New returns a Manager on st with cfg, whose relative paths are made
// absolute against the working directory. It creates the backups and logs
// directories.
func New(st state.Store, cfg Config, opts Options) (*Manager, error) {
	if st == nil {
		return nil, errors.New("restore: nil state store")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid rollback config: %w", err)
	}
	cfg, err := cfg.absolute()
	if err != nil {
		return nil, fmt.Errorf("resolving rollback paths: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid rollback config: %w", err)
	}
	if opts.Host == "" {
		opts.Host, _ = os.Hostname()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Workers <= 0 {
		opts.Workers = defaultWorkers()
	}
	for _, d := range []string{cfg.Logs, filepath.Join(cfg.Backups, "manifests")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}
	objs, err := openObjectStore(filepath.Join(cfg.Backups, "objects"))
	if err != nil {
		return nil, err
	}
	if opts.HostIDFile == "" {
		opts.HostIDFile = filepath.Join(cfg.Backups, hostIDFile)
	}
	hostID, err := loadHostID(opts.HostIDFile)
	if err != nil {
		return nil, err
	}
	m := &Manager{st: st, cfg: cfg, opts: opts, log: log, objects: objs, pid: os.Getpid(), hostID: hostID, boot: bootID()}
	m.pidStart, _ = procStart(m.pid)
	return m, nil
}

// Config returns the configuration in use, with absolute paths and defaults.
func (m *Manager) Config() Config { return m.cfg }

func (m *Manager) now() time.Time { return m.opts.Now().UTC() }

func (m *Manager) warn(err error) {
	if m.opts.Warn != nil {
		m.opts.Warn(err)
		return
	}
	m.log.Warn(err.Error())
}

// progress returns a reporter for one step that throttles calls to
// Options.Progress.
func (m *Manager) progress(op, step string, totalFiles, totalBytes int64) *progressReporter {
	return &progressReporter{m: m, p: Progress{Op: op, Step: step, TotalFiles: totalFiles, TotalBytes: totalBytes}}
}

type progressReporter struct {
	m    *Manager
	mu   sync.Mutex
	p    Progress
	last time.Time
}

func (r *progressReporter) add(files, bytes int64) {
	if r == nil || r.m.opts.Progress == nil {
		return
	}
	r.mu.Lock()
	r.p.Files += files
	r.p.Bytes += bytes
	now := time.Now()
	if now.Sub(r.last) < 100*time.Millisecond {
		r.mu.Unlock()
		return
	}
	r.last = now
	p := r.p
	r.mu.Unlock()
	r.m.report(p)
}

func (r *progressReporter) done() {
	if r == nil || r.m.opts.Progress == nil {
		return
	}
	r.mu.Lock()
	p := r.p
	p.Done = true
	r.mu.Unlock()
	r.m.report(p)
}

func (m *Manager) report(p Progress) {
	m.progressMu.Lock()
	defer m.progressMu.Unlock()
	m.opts.Progress(p)
}

func (m *Manager) hook(point string) error {
	if m.testHook != nil {
		return m.testHook(point)
	}
	return nil
}

// passCanceled returns ctx's error unwrapped when err is a cancellation,
// so context.Canceled passes through as is.
func passCanceled(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return ctx.Err()
	}
	return err
}
