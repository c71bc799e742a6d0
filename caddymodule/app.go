package caddymodule

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

func init() {
	caddy.RegisterModule(App{})
}

// switches holds every live Switch by name. It is a UsagePool so that a
// switch, with its mode, windows and counters, outlives a config reload:
// the new config's handler takes the same Switch before the old one lets go.
var switches = caddy.NewUsagePool()

// App is the switchback app: it owns the state store, the registry of this
// config's switches and the rollback configuration, and it keeps switch
// state in step with the store.
type App struct {
	// State selects the state store (default: local, a bbolt file under
	// Caddy's data directory).
	State *StateConfig `json:"state,omitempty"`

	// Gateway names this gateway in records and logs (default: the host
	// name).
	Gateway string `json:"gateway,omitempty"`

	// LockWait is how long an automatic restore (on_trip restore) waits
	// for the fleet's restore lock while another gateway restores, so the
	// fleet restores one host at a time (default 10m). A manual rollback
	// waits only when asked to (--wait).
	LockWait caddy.Duration `json:"lock_wait,omitempty"`

	// Backups is the directory that holds rollback points: objects and
	// manifests (default: switchback/backups under Caddy's data directory).
	Backups string `json:"backups,omitempty"`

	// Logs is where operation records are written as rollback-<op>.json
	// (default: switchback/logs under Caddy's data directory).
	Logs string `json:"logs,omitempty"`

	// Points maps each point type (full_system, configuration_only, data)
	// to the paths a point of that type holds.
	Points map[string][]string `json:"points,omitempty"`

	// Components maps each named component to its paths; a
	// partial_component point holds one or all of them.
	Components map[string][]string `json:"components,omitempty"`

	// Retention is the default policy of "point cleanup".
	Retention *Retention `json:"retention,omitempty"`

	// Hooks run around a restore.
	Hooks *Hooks `json:"hooks,omitempty"`

	// Validate lists the URLs that must answer after a restore.
	Validate []ValidateURL `json:"validate,omitempty"`

	ctx      caddy.Context
	cancel   context.CancelFunc
	logger   *zap.Logger
	store    state.Store
	cache    *switchCache // nil with the local store
	restore  *restore.Manager
	gateway  string
	registry map[string]*Switch // this config's switches, filled during provisioning
	handlers []*Handler         // their handlers, applied to the switches at commit
	events   *caddyevents.App

	rt *appRuntime
}

// appRuntime is the app's mutable runtime state, apart from the config so
// the config struct can be copied.
type appRuntime struct {
	degraded   atomic.Bool
	storeMu    sync.Mutex // guards storeErr, storeSince
	storeErr   string
	storeSince time.Time

	// committed is set once Caddy has committed this config: its
	// handlers are then the ones in force on their switches.
	committed atomic.Bool

	secretOnce      sync.Once
	secret          []byte
	secretErr       error
	secretEphemeral atomic.Bool // secret is this process's own, not the store's
}

// StateConfig selects and configures the state store.
type StateConfig struct {
	// Backend is "local" or "consul" (default local).
	Backend string `json:"backend,omitempty"`

	// Path is the local bbolt file (default: switchback/state.db under
	// Caddy's data directory).
	Path string `json:"path,omitempty"`

	// Consul configures the consul backend.
	Consul *ConsulConfig `json:"consul,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "switchback",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision opens the state store and checks the rollback config.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	if err := a.setUp(ctx.Logger()); err != nil {
		return err
	}
	if a.State != nil && a.State.Backend == "consul" {
		// The cache stands in for a store that is down; without it the
		// gateway still serves, from its config, so a cache that cannot
		// be opened is logged rather than fatal.
		var err error
		if a.cache, err = openSwitchCache(DefaultCachePath(), a.logger); err != nil {
			a.logger.Warn("no switch cache: a restart during a store outage will serve the config's state", zap.Error(err))
		}
	}
	if ev, err := ctx.App("events"); err == nil {
		a.events, _ = ev.(*caddyevents.App)
	}
	if a.events != nil {
		// Caddy emits "started" once every app of the config has
		// started, just before it makes the config the running one: the
		// commit point (see commit).
		if err := a.events.On("started", committer{a}); err != nil {
			return fmt.Errorf("subscribing to the config's start: %w", err)
		}
	}
	return a.provisionRollback()
}

// committer is the events handler that commits the app's config.
type committer struct{ a *App }

func (c committer) Handle(context.Context, caddy.Event) error {
	c.a.commit()
	return nil
}

// commit applies this config's switch configs to the live switches. It
// runs once Caddy has committed the config: on Caddy's "started" event,
// which comes after every app of the config has started and before the
// config becomes the running one. Until then nothing shared or durable
// is touched: provisioning fills only this config's own registry, so a
// config that fails to load, in any app's Provision or Start, leaves the
// running config exactly as it was, windows, monitor and store included.
// (A config can still fail after "started", in Caddy's remote admin or
// config loader setup; those are rarely used with switchback and not
// covered.)
func (a *App) commit() {
	if !a.rt.committed.CompareAndSwap(false, true) {
		return
	}
	for _, h := range a.handlers {
		h.commit()
	}
	if a.rt.secretEphemeral.Load() {
		goTask(a.logger, taskSecret, func() { a.refreshSecret(a.ctx) })
	}
}

// setUp does what the gateway and the offline CLI share: it names the
// gateway, makes the runtime state and opens the state store.
func (a *App) setUp(logger *zap.Logger) error {
	a.logger = logger
	a.registry = make(map[string]*Switch)
	a.rt = new(appRuntime)
	a.gateway = a.Gateway
	if a.gateway == "" {
		a.gateway, _ = os.Hostname()
	}
	st, err := a.openStore()
	if err != nil {
		return err
	}
	a.store = st
	return nil
}

// openStore opens the configured state store.
func (a *App) openStore() (state.Store, error) {
	cfg := a.State
	if cfg == nil {
		cfg = &StateConfig{}
	}
	switch cfg.Backend {
	case "", "local":
		path := cfg.Path
		if path == "" {
			path = DefaultStatePath()
		}
		st, err := local.Open(path, local.Options{})
		if err != nil {
			return nil, fmt.Errorf("opening state store: %w", err)
		}
		return st, nil
	case "consul":
		return openConsul(cfg.Consul)
	}
	return nil, fmt.Errorf("unknown state backend %q: want local or consul", cfg.Backend)
}

// DefaultStatePath is where the local store lives when no path is given.
func DefaultStatePath() string {
	return filepath.Join(caddy.AppDataDir(), "switchback", "state.db")
}

// Start starts keeping switch state in step with the store. Without an
// events app (it is always there when Provision ran) it also commits.
func (a *App) Start() error {
	if a.events == nil {
		defer a.commit()
	}
	ctx, cancel := context.WithCancel(a.ctx)
	a.cancel = cancel
	goLoop(ctx, a.logger, taskStoreSync, a.syncLoop)
	goLoop(ctx, a.logger, taskPendingWrite, a.pendingLoop)
	if a.cache != nil {
		goLoop(ctx, a.logger, taskCacheWriter, func(ctx context.Context) { a.cache.run(ctx, a.snapshotSwitches) })
	}
	a.startRollback(ctx)
	return nil
}

// Stop stops the sync loop.
func (a *App) Stop() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.cache.wait(5 * time.Second)
	return nil
}

// Cleanup closes the store. Caddy calls it after Stop, and also when a
// config fails to load after the app was provisioned.
func (a *App) Cleanup() error {
	if a.cache != nil {
		a.cache.st.Close()
	}
	if a.store != nil {
		return a.store.Close()
	}
	return nil
}

// register adds a handler's switch to this config, taking the live Switch
// of that name from the pool (or making it). It changes nothing on the
// switch: the handler takes over at commit.
func (a *App) register(h *Handler) (*Switch, error) {
	if _, dup := a.registry[h.Name]; dup {
		return nil, fmt.Errorf("switch %s is defined twice: switch names must be unique", h.Name)
	}
	val, _, err := switches.LoadOrNew(h.Name, func() (caddy.Destructor, error) {
		return newSwitch(h.Name), nil
	})
	if err != nil {
		return nil, err
	}
	sw := val.(*Switch)
	a.registry[h.Name] = sw
	a.handlers = append(a.handlers, h)
	return sw, nil
}

// checkRecord reads a switch's stored record, if the store answers, so a
// record that cannot be decoded fails the config at load, as it would
// fail configure at commit. It only reads.
func (a *App) checkRecord(ctx context.Context, name string) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _, err := state.GetSwitch(rctx, a.store, name)
	if err == nil || errors.Is(err, state.ErrNotFound) || errors.Is(err, state.ErrUnavailable) {
		return nil
	}
	return fmt.Errorf("switch %s: loading its state: %w", name, err)
}

// configure settles a switch's state when its config is committed: the stored state wins,
// except for a mode or weight whose config value changed since it was
// stored. With no stored state, the config's values are the state.
func (a *App) configure(ctx context.Context, sw *Switch, h *Handler) error {
	cfgMode := state.Mode(h.Mode)
	if cfgMode == "" {
		cfgMode = state.ModeSplit
	}
	cfgWeight := h.Weight
	now := time.Now().UTC()
	decide := func(cur state.Switch, exists bool) (state.Switch, bool) {
		n := cur.Copy()
		var what string
		switch {
		case !exists:
			n.Mode, n.Weight, what = cfgMode, cfgWeight, "initial config"
		case cur.ConfigMode != cfgMode && cur.ConfigWeight != cfgWeight:
			n.Mode, n.Weight, n.Tripped, what = cfgMode, cfgWeight, false, "config mode and weight changed"
		case cur.ConfigMode != cfgMode:
			n.Mode, n.Tripped, what = cfgMode, false, "config mode changed"
		case cur.ConfigWeight != cfgWeight:
			n.Weight, what = cfgWeight, "config weight changed"
		default:
			return cur, false
		}
		n.ConfigMode, n.ConfigWeight = cfgMode, cfgWeight
		n.Since, n.By, n.Gateway, n.Reason = now, "config", a.gateway, what
		n.Record(state.Event{Kind: "config", Mode: n.Mode, Weight: n.Weight, Reason: what, By: "config", Gateway: a.gateway, At: now})
		return n, true
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rec, err := state.UpdateSwitch(wctx, a.store, sw.name, decide)
	if err != nil {
		if !errors.Is(err, state.ErrUnavailable) {
			return fmt.Errorf("switch %s: loading its state: %w", sw.name, err)
		}
		// The store is down (a fleet's Consul, say): serve on what we
		// know (this process's state across a reload, else the cache
		// after a restart, else the config), and let the sync loop catch
		// up when the store returns.
		a.storeFailed(err)
		sw.mu.Lock()
		defer sw.mu.Unlock()
		from := "this process"
		if sw.rec.Mode == "" {
			cached, pending, ok := a.cache.load(ctx, sw.name)
			rec, changed := decide(cached, ok)
			// Only a change made here is pending: the config's initial
			// state must not overwrite the fleet's when the store returns.
			sw.applyLocked(rec, ok && (pending || changed))
			from = "the config"
			if ok {
				from = "the switch cache"
			}
		}
		a.logger.Warn("state store unavailable at load; serving on last known state",
			zap.String("switch", sw.name), zap.String("from", from), zap.String("mode", string(sw.rec.Mode)), zap.Bool("pending", sw.pending), zap.Error(err))
		return nil
	}
	a.storeOK()
	sw.mu.Lock()
	if !sw.pending || rec.Supersedes(sw.rec) {
		sw.applyLocked(rec, false)
	}
	sw.mu.Unlock()
	a.cache.touch()
	return nil
}

// syncLoop follows the store's switches: it adopts changes made by other
// gateways or by the offline CLI, and writes back changes this gateway made
// while the store was unreachable. It backs off on errors and on watches
// that return at once, never spinning.
func (a *App) syncLoop(ctx context.Context) {
	var index uint64
	backoff := time.Duration(0)
	fast := 0 // watches in a row that returned at once
	for ctx.Err() == nil {
		began := time.Now()
		entries, next, err := a.store.Watch(ctx, state.NSSwitches, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.storeFailed(err)
			// When the store returns, read everything at once rather than
			// block: nothing may have changed there while it was down,
			// and a blocking query would then wait, with the store still
			// shown degraded and this gateway's pending changes (a trip
			// during the outage) not written back.
			index = 0
			backoff = nextBackoff(backoff)
			sleep(ctx, backoff)
			continue
		}
		a.storeOK()
		prev := index
		if next < index {
			index = 0 // the store was reset: read everything again
		} else {
			index = next
		}
		a.reconcile(ctx, entries)
		// A watch returns at once when a change landed while the last
		// one was being applied: follow it at once too, or a change that
		// comes right after another waits out a pause (a 50ms pause here
		// was most of the fleet's propagation time). But a watch must not
		// become a hot loop: one that returns at once with nothing new
		// backs off up to 50ms, and one that keeps returning at once with
		// a new index (writes elsewhere moving it) is held to one round
		// per fastPause.
		if prev != 0 && time.Since(began) < 10*time.Millisecond {
			fast++
		} else {
			fast = 0
		}
		switch {
		case fast > 0 && next == prev:
			backoff = nextBackoff(backoff)
			sleep(ctx, min(backoff, 50*time.Millisecond))
		case fast >= 3:
			sleep(ctx, fastPause)
		default:
			backoff = 0
		}
	}
}

// fastPause is the sync loop's pause between watches that keep returning
// at once with a new index.
const fastPause = 5 * time.Millisecond

// pendingLoop writes back switch changes that this gateway holds but the
// store has not taken (a write that failed), without waiting for the
// store's switches to change: the sync loop reconciles only when its watch
// returns. It checks every pendingInterval, and backs off while writes
// fail.
func (a *App) pendingLoop(ctx context.Context) {
	wait := pendingInterval
	for {
		sleep(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		wait = pendingInterval
		for _, sw := range a.registry {
			if _, pending := sw.Record(); !pending {
				continue
			}
			if !a.writeBack(ctx, sw) {
				wait = max(nextBackoff(wait), pendingInterval)
				break
			}
		}
	}
}

// pendingInterval is how often pendingLoop looks for pending changes.
const pendingInterval = time.Second

// reconcile applies a snapshot of the store's switches.
func (a *App) reconcile(ctx context.Context, entries []state.Entry) {
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		rec, err := state.DecodeSwitch(e.Value)
		if err != nil {
			a.logger.Error("bad switch record in store", zap.String("key", e.Key), zap.Error(err))
			continue
		}
		seen[rec.Name] = true
		sw, ok := a.registry[rec.Name]
		if !ok {
			continue
		}
		if sw.adopt(rec) {
			a.writeBack(ctx, sw)
		}
	}
	for name, sw := range a.registry {
		if _, pending := sw.Record(); pending && !seen[name] {
			a.writeBack(ctx, sw)
		}
	}
	a.cache.touch()
}

// writeBack writes a switch's pending local record, unless the store holds
// a newer one (newest Since wins, legacy wins a tie). It reports whether
// the store could be reached.
func (a *App) writeBack(ctx context.Context, sw *Switch) bool {
	mine, _ := sw.Record()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	held := false // the store already holds what mine says
	rec, err := state.UpdateSwitch(wctx, a.store, sw.name, func(cur state.Switch, exists bool) (state.Switch, bool) {
		held = exists && sameIntent(cur, mine)
		if exists && (held || !mine.Supersedes(cur)) {
			return cur, false
		}
		return mine, true
	})
	if err != nil {
		if ctx.Err() == nil {
			a.storeFailed(err)
		}
		return false
	}
	a.storeOK()
	sw.mu.Lock()
	// A change made here while the write was in flight (a trip, say) is
	// newer than rec and stays, pending, for its own write.
	if (held && sameIntent(sw.rec, rec)) || !sw.rec.Supersedes(rec) {
		sw.applyLocked(rec, false)
	}
	sw.mu.Unlock()
	a.cache.touch()
	a.logger.Info("reconciled switch state with store", zap.String("switch", sw.name), zap.String("mode", string(rec.Mode)), zap.Stringer("weight", rec.Weight))
	return true
}

// storeFailed marks the store degraded.
func (a *App) storeFailed(err error) {
	a.rt.storeMu.Lock()
	defer a.rt.storeMu.Unlock()
	if !a.rt.degraded.Swap(true) {
		a.rt.storeSince = time.Now()
		a.logger.Error("state store degraded; serving on last known state", zap.String("store", a.store.Describe()), zap.Error(err))
	}
	a.rt.storeErr = err.Error()
}

// storeOK marks the store healthy.
func (a *App) storeOK() {
	if !a.rt.degraded.Load() {
		return
	}
	a.rt.storeMu.Lock()
	defer a.rt.storeMu.Unlock()
	if a.rt.degraded.Swap(false) {
		a.logger.Info("state store reachable again", zap.String("store", a.store.Describe()), zap.Duration("outage", time.Since(a.rt.storeSince)))
		a.rt.storeErr, a.rt.storeSince = "", time.Now()
		// Before commit the registry may still be filling; commit
		// refreshes the key itself.
		if a.rt.secretEphemeral.Load() && a.rt.committed.Load() {
			goTask(a.logger, taskSecret, func() { a.refreshSecret(a.ctx) })
		}
	}
}

// StoreStatus is the store's health as the admin API shows it.
type StoreStatus struct {
	Backend string    `json:"backend"`
	Status  string    `json:"status"` // "ok" or "degraded"
	Error   string    `json:"error,omitempty"`
	Since   time.Time `json:"since,omitzero"`
}

func (a *App) storeStatus() StoreStatus {
	a.rt.storeMu.Lock()
	defer a.rt.storeMu.Unlock()
	s := StoreStatus{Backend: a.store.Describe(), Status: "ok"}
	if a.rt.degraded.Load() {
		s.Status, s.Error, s.Since = "degraded", a.rt.storeErr, a.rt.storeSince
	}
	return s
}

// cookieSecret returns the key that signs sticky cookies. It lives in the
// store, so all gateways of a fleet share it and a restart keeps users on
// their arm. If the store is down at first use, the key this process used
// with that store before (the config before a reload) serves on; failing
// that, a random key serves this process and cookies are signed again
// with the fleet's once the store returns (refreshSecret).
func (a *App) cookieSecret(ctx context.Context) ([]byte, error) {
	a.rt.secretOnce.Do(func() {
		secret, err := a.loadSecret(ctx)
		switch {
		case err == nil:
			a.rt.secret = secret
			cookieKeys.Store(a.store.Describe(), cookieKey{secret: secret})
		case errors.Is(err, state.ErrUnavailable):
			a.storeFailed(err)
			if k, ok := cookieKeys.Load(a.store.Describe()); ok {
				// A reload during an outage: keep the key in use, so no
				// user is moved.
				a.rt.secret = k.(cookieKey).secret
				a.rt.secretEphemeral.Store(k.(cookieKey).ephemeral)
				a.logger.Warn("state store unavailable: signing sticky cookies with the key already in use")
				return
			}
			// Sign with a key of this process's own; once the store is
			// back, refreshSecret takes the fleet's key.
			a.logger.Warn("state store unavailable: signing sticky cookies with a key for this process only until it returns")
			a.rt.secret = make([]byte, 32)
			rand.Read(a.rt.secret)
			a.rt.secretEphemeral.Store(true)
			cookieKeys.Store(a.store.Describe(), cookieKey{secret: a.rt.secret, ephemeral: true})
		default:
			a.rt.secretErr = err
		}
	})
	return a.rt.secret, a.rt.secretErr
}

// cookieKeys holds, by store (its Describe), the cookie key this process
// last signed with, so that it outlives a config reload.
var cookieKeys sync.Map

type cookieKey struct {
	secret    []byte
	ephemeral bool // this process's own, not yet the store's
}

// loadSecret reads the shared cookie key from the store, making it if
// there is none yet.
func (a *App) loadSecret(ctx context.Context) ([]byte, error) {
	return a.loadSecretNamed(ctx, "cookie")
}

// loadSecretNamed reads the shared key secrets/<name> from the store,
// making a random one of 32 bytes if there is none yet.
func (a *App) loadSecretNamed(ctx context.Context, name string) ([]byte, error) {
	key := state.Key(state.NSSecrets, name)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for range 3 {
		e, err := a.store.Get(wctx, key)
		if err == nil {
			secret, err := hex.DecodeString(string(e.Value))
			if err != nil || len(secret) < 16 {
				return nil, fmt.Errorf("%s secret in state store is corrupt; delete key %s to make a new one", name, key)
			}
			return secret, nil
		}
		if errors.Is(err, state.ErrNotFound) {
			raw := make([]byte, 32)
			rand.Read(raw)
			// err is now the write's: a store lost between the read
			// and the write is unavailable, not "not found".
			if _, err = a.store.CAS(wctx, key, []byte(hex.EncodeToString(raw)), 0); err == nil {
				return raw, nil
			}
			if errors.Is(err, state.ErrConflict) {
				continue // another gateway made one first
			}
		}
		if errors.Is(err, state.ErrUnavailable) {
			return nil, err
		}
		return nil, fmt.Errorf("reading %s secret: %w", name, err)
	}
	return nil, fmt.Errorf("reading %s secret: %w", name, state.ErrConflict)
}

// refreshSecret replaces a process-only cookie key with the fleet's, once
// the store answers again. Cookies signed with the old key are signed
// again, with the same key, on their next request (for RotationGrace).
func (a *App) refreshSecret(ctx context.Context) {
	if !a.rt.secretEphemeral.Load() {
		return
	}
	secret, err := a.loadSecret(ctx)
	if err != nil || !a.rt.secretEphemeral.CompareAndSwap(true, false) {
		return
	}
	cookieKeys.Store(a.store.Describe(), cookieKey{secret: secret})
	signer, now := newCookieSigner(secret), time.Now()
	for _, sw := range a.registry {
		if h := sw.handler.Load(); h != nil && h.stickyMode == "cookie" && (h.Sticky == nil || h.Sticky.Secret == "") {
			// Cookies signed with the process-only key keep their key.
			h.signer.Store(signer.after(h.signer.Load(), now))
		}
	}
	a.logger.Info("sticky cookies now signed with the fleet's key from the state store")
}

// emit sends a Caddy event, if the events app is configured.
func (a *App) emit(name string, data map[string]any) {
	if a.events != nil {
		a.events.Emit(a.ctx, name, data)
	}
}

// nextBackoff doubles d from 100ms up to 5s, with jitter.
func nextBackoff(d time.Duration) time.Duration {
	if d <= 0 {
		d = 100 * time.Millisecond
	} else {
		d = min(2*d, 5*time.Second)
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
