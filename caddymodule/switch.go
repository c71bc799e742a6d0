package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/shadow"
	"github.com/leanvibe/switchback/state"
)

// Arms.
const (
	armLegacy       = "legacy"
	armConsolidated = "consolidated"
)

// view is what the request path reads about a switch. It is immutable and
// swapped as a whole, so a request sees one consistent mode and weight
// without a lock.
type view struct {
	mode      state.Mode
	weight    state.Weight
	threshold uint32
}

// windows are a switch's two sliding windows, swapped as a pair when the
// window size in the config changes.
type windows struct {
	legacy, consolidated *health.Window
	buckets              int
	width                time.Duration
}

// Switch is the live state of one named switch. It lives in the switches
// UsagePool, keyed by name, so it outlives config reloads: a reload keeps
// its mode, weight, windows and counters.
type Switch struct {
	name string
	salt uint64

	view atomic.Pointer[view]
	win  atomic.Pointer[windows]

	// handler is the handler of the config now in force, for trip actions
	// and rules. A reload swaps it.
	handler atomic.Pointer[Handler]

	metrics *switchMetrics

	shadow atomic.Pointer[shadow.Results] // made on first use: shadowResults

	// step counts the answers at the rollout's current step, nil when no
	// rollout is under way; rollout is the engine's last view of the step
	// (rollout.go); shadowCounts reports shadow's counts at a step, nil
	// without shadow.
	step         atomic.Pointer[stepTally]
	rollout      atomic.Pointer[rolloutView]
	shadowCounts atomic.Pointer[func(stepID string) *ShadowStepStats]
	// both is set while both arms fail alike (health.Rules.BothUnhealthy),
	// as this gateway's monitor last judged; bothReason says why.
	both       atomic.Bool
	bothReason atomic.Pointer[string]

	mu      sync.Mutex   // guards the fields below
	rec     state.Switch // last known durable record
	pending bool         // rec has changes the store has not taken yet
}

func newSwitch(name string) *Switch {
	sw := &Switch{name: name, salt: saltFor(name)}
	sw.view.Store(&view{mode: state.ModeLegacy})
	sw.metrics = newSwitchMetrics(sw)
	return sw
}

// Destruct implements caddy.Destructor: the last config using the switch
// is gone.
func (sw *Switch) Destruct() error {
	sw.metrics.set.UnregisterAllMetrics()
	return nil
}

// Name is the switch's name.
func (sw *Switch) Name() string { return sw.name }

// windowsFor returns windows of the given size: the switch's current ones
// when they already match, else new ones, which the caller publishes
// (win.Store) once its config is committed.
func (sw *Switch) windowsFor(buckets int, width time.Duration) *windows {
	if w := sw.win.Load(); w != nil && w.buckets == buckets && w.width == width {
		return w
	}
	return &windows{
		legacy:       health.NewWindow(health.WindowOptions{Buckets: buckets, Width: width}),
		consolidated: health.NewWindow(health.WindowOptions{Buckets: buckets, Width: width}),
		buckets:      buckets,
		width:        width,
	}
}

// Record returns a copy of the switch's last known durable record.
func (sw *Switch) Record() (state.Switch, bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.rec.Copy(), sw.pending
}

// applyLocked makes rec the switch's state. Callers hold sw.mu.
func (sw *Switch) applyLocked(rec state.Switch, pending bool) {
	prevTripped := sw.rec.Tripped
	sw.rec = rec
	sw.pending = pending
	sw.view.Store(&view{mode: rec.Mode, weight: rec.Weight, threshold: threshold(rec.Weight)})
	sw.syncStep(rec.Rollout)
	if h := sw.handler.Load(); h != nil && h.monitor != nil {
		if rec.Mode != state.ModeLegacy && (!h.monitor.Armed() || prevTripped && !rec.Tripped) {
			// Traffic can reach consolidated again (a reset, a half-open
			// state, or a change on another gateway): watch it afresh.
			// A gateway that followed another's trip kept its monitor
			// armed, but its window still holds the failures from before
			// the trip, which must not trip the switch again after a
			// reset or a rollout's retry.
			if w := sw.win.Load(); w != nil {
				w.consolidated.Reset()
			}
			h.monitor.Rearm()
		}
		if rec.Tripped && rec.Mode == state.ModeLegacy && !prevTripped {
			h.noteRemoteTrip(rec)
		}
	}
}

// change applies fn to the switch's state, first in memory so that the next
// request sees it, then in the store. It returns the record as stored.
func (sw *Switch) change(ctx context.Context, app *App, fn func(cur *state.Switch) bool) (state.Switch, error) {
	base, wasPending := sw.Record()
	if !sw.changeLocal(fn) {
		rec, _ := sw.Record()
		return rec, nil
	}
	if wasPending {
		// The record holds changes of its own not yet written (made
		// during an outage): they go with this one.
		return sw.persist(ctx, app, fn, nil)
	}
	return sw.persist(ctx, app, fn, &base)
}

// changeLocal applies fn to the in-memory state and marks it pending. It
// reports whether fn changed anything.
func (sw *Switch) changeLocal(fn func(cur *state.Switch) bool) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	next := sw.rec.Copy()
	if !fn(&next) {
		return false
	}
	sw.applyLocked(next, true)
	return true
}

// persist writes a change made by changeLocal with CAS. If another writer
// changed the store first, fn is applied again to what it wrote
// (re-decide). If the store cannot be reached the change stays in memory,
// pending, and the app writes it when the store returns; the returned
// error then wraps state.ErrUnavailable. On any other error, the caller's
// cancellation included, the change stays pending all the same.
//
// base, if not nil, is the record fn was first applied to. When the store
// holds another (this gateway's watch has not brought a write yet), fn is
// applied again to the store's record, as when that one is newer: written
// as made on the stale one, the change would undo that write (a rollout's
// advance, say).
func (sw *Switch) persist(ctx context.Context, app *App, fn func(cur *state.Switch) bool, base *state.Switch) (state.Switch, error) {
	mine, _ := sw.Record()
	// The pending change reaches the cache now, not after a store that
	// hangs has timed out, and again with the outcome.
	app.cache.touch()
	defer app.cache.touch()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	moot := false // the store's record already holds what fn wants
	written, err := state.UpdateSwitch(wctx, app.store, sw.name, func(cur state.Switch, exists bool) (state.Switch, bool) {
		moot = false
		if !exists {
			return mine, true
		}
		if cur.Supersedes(mine) || (base != nil && !sameState(cur, *base)) {
			// Someone wrote after us, or after the record we saw:
			// re-decide on their record.
			n := cur.Copy()
			if !fn(&n) {
				moot = true // the store's record stands, here too
				return cur, false
			}
			// The change now comes after theirs, so it must supersede
			// it: with the Since fn chose, older than theirs, a gateway
			// holding a change from between the two (made during an
			// outage) would wrongly win over it when it writes back.
			if !n.Supersedes(cur) {
				n.Since = later(cur.Since)
			}
			return n, true
		}
		// Ours is the later change, but if fn would change nothing on
		// the store's record, that record already holds its intent: a
		// trip that another gateway wrote first stands, with its time,
		// its history and its on_trip actions, rather than being
		// overwritten by a copy of itself.
		probe := cur
		probe.History = append([]state.Event(nil), cur.History...)
		if !fn(&probe) {
			moot = true
			return cur, false
		}
		return mine, !sameState(cur, mine)
	})
	if err != nil {
		// The change holds on this gateway, pending; the app's write-back
		// retries it. A caller that gave up (a request gone, a config
		// reload) says nothing about the store, so it is not degraded.
		if ctx.Err() != nil {
			return mine, err
		}
		app.storeFailed(err)
		if !errors.Is(err, state.ErrUnavailable) {
			return mine, fmt.Errorf("%w; the change holds on this gateway and its write is retried", err)
		}
		return mine, fmt.Errorf("%w: the change holds on this gateway and will be written when the store returns: %v", state.ErrUnavailable, err)
	}
	app.storeOK()
	sw.mu.Lock()
	if moot || !sw.rec.Supersedes(written) {
		sw.applyLocked(written, false)
	}
	sw.mu.Unlock()
	return written, nil
}

// later returns a time after t: now, or just after t when the clock says
// t is in the future (another host's clock may run ahead).
func later(t time.Time) time.Time {
	now := time.Now().UTC()
	if now.After(t) {
		return now
	}
	return t.Add(time.Microsecond)
}

// adopt takes a record read from the store, unless this gateway holds a
// pending change that supersedes it. It reports whether the local pending
// record should be written back instead.
func (sw *Switch) adopt(rec state.Switch) (writeBack bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.pending {
		if sw.rec.Supersedes(rec) && !sameIntent(sw.rec, rec) {
			return true
		}
	} else if sameState(sw.rec, rec) {
		return false
	}
	sw.applyLocked(rec, false)
	return false
}

// sameIntent says whether a and b send traffic the same way: one mode,
// one weight, both tripped or neither. A pending change whose intent the
// store already holds (a trip another gateway wrote first) gives way to
// the store's record, which the fleet has and whose actions ran, instead
// of overwriting it with a later copy of itself.
func sameIntent(a, b state.Switch) bool {
	return a.Mode == b.Mode && a.Weight == b.Weight && a.Tripped == b.Tripped
}

func sameState(a, b state.Switch) bool {
	return a.Mode == b.Mode && a.Weight == b.Weight && a.Since.Equal(b.Since) &&
		a.Tripped == b.Tripped && a.LegacyUnhealthy == b.LegacyUnhealthy && len(a.History) == len(b.History)
}

// switchMetrics are a switch's Prometheus series. Counters are atomic, so
// the request path only increments them.
type switchMetrics struct {
	set *metrics.Set

	requests, failures [2]*metrics.Counter // by arm index
	replays            *metrics.Counter
	// Answers that never count against an arm, by arm index: the client
	// went away, or a handler refused the request with a 4xx.
	clientGone, clientErrors [2]*metrics.Counter
	// Replay decisions on consolidated's failures, by reason. Built once,
	// only read after.
	replayed, notReplayed map[string]*metrics.Counter
	trips                 map[string]*metrics.Counter // by rule
	tripsMu               sync.Mutex
	rollout               rolloutMetrics
}

func armIndex(arm string) int {
	if arm == armConsolidated {
		return 1
	}
	return 0
}

func newSwitchMetrics(sw *Switch) *switchMetrics {
	m := &switchMetrics{set: metrics.NewSet(), trips: make(map[string]*metrics.Counter)}
	for i, arm := range []string{armLegacy, armConsolidated} {
		labels := fmt.Sprintf(`{switch=%q,arm=%q}`, sw.name, arm)
		m.requests[i] = m.set.NewCounter("switchback_requests_total" + labels)
		m.failures[i] = m.set.NewCounter("switchback_failures_total" + labels)
		m.clientGone[i] = m.set.NewCounter("switchback_client_aborts_total" + labels)
		m.clientErrors[i] = m.set.NewCounter("switchback_client_errors_total" + labels)
		m.set.NewGauge("switchback_window_error_rate"+labels, func() float64 {
			if w := sw.win.Load(); w != nil {
				return w.arm(arm).Stats(health.Now()).ErrorRate
			}
			return 0
		})
		m.set.NewGauge("switchback_window_p99_seconds"+labels, func() float64 {
			if w := sw.win.Load(); w != nil {
				return w.arm(arm).Stats(health.Now()).P99.Seconds()
			}
			return 0
		})
	}
	sl := fmt.Sprintf(`{switch=%q}`, sw.name)
	m.replays = m.set.NewCounter("switchback_replays_total" + sl)
	m.replayed, m.notReplayed = map[string]*metrics.Counter{}, map[string]*metrics.Counter{}
	for _, r := range replayReasons {
		m.replayed[r] = m.set.NewCounter(fmt.Sprintf(`switchback_replay_decisions_total{switch=%q,replayed="true",reason=%q}`, sw.name, r))
	}
	for _, r := range skipReasons {
		m.notReplayed[r] = m.set.NewCounter(fmt.Sprintf(`switchback_replay_decisions_total{switch=%q,replayed="false",reason=%q}`, sw.name, r))
	}
	m.set.NewGauge("switchback_weight"+sl, func() float64 { return sw.view.Load().weight.Percent() })
	for _, mode := range []state.Mode{state.ModeSplit, state.ModeLegacy, state.ModeConsolidated} {
		m.set.NewGauge(fmt.Sprintf(`switchback_mode{switch=%q,mode=%q}`, sw.name, mode), func() float64 {
			if sw.view.Load().mode == mode {
				return 1
			}
			return 0
		})
	}
	m.set.NewGauge("switchback_tripped"+sl, func() float64 {
		rec, _ := sw.Record()
		return b2f(rec.Tripped)
	})
	m.set.NewGauge("switchback_legacy_unhealthy"+sl, func() float64 {
		rec, _ := sw.Record()
		return b2f(rec.LegacyUnhealthy)
	})
	for _, rule := range []string{"error_rate", "latency", "consecutive_failures"} {
		m.trip(sw.name, rule)
	}
	m.addRolloutMetrics(sw)
	registerRelativeMetrics(m, sw)
	return m
}

// decision returns the counter of one replay decision.
func (m *switchMetrics) decision(reason string, replayed bool) *metrics.Counter {
	if replayed {
		return m.replayed[reason]
	}
	return m.notReplayed[reason]
}

// trip returns the trips_total counter of a rule.
func (m *switchMetrics) trip(name, rule string) *metrics.Counter {
	m.tripsMu.Lock()
	defer m.tripsMu.Unlock()
	c, ok := m.trips[rule]
	if !ok {
		c = m.set.NewCounter(fmt.Sprintf(`switchback_trips_total{switch=%q,rule=%q}`, name, rule))
		m.trips[rule] = c
	}
	return c
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (w *windows) arm(arm string) *health.Window {
	if arm == armConsolidated {
		return w.consolidated
	}
	return w.legacy
}
