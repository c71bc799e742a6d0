package health

import (
	"context"
	"sync/atomic"
	"time"
)

// Defaults for MonitorOptions.
const (
	// DefaultInterval is how often Monitor.Run evaluates every rule when
	// MonitorOptions.Interval is zero.
	DefaultInterval = 100 * time.Millisecond

	// latencyEvalEvery is the least time between two evaluations of the
	// latency rule from Observed, in nanoseconds.
	latencyEvalEvery = int64(10 * time.Millisecond)

	// relativeEvalEvery is the least time between two evaluations of the
	// relative error-rate rule from Observed, in nanoseconds.
	relativeEvalEvery = int64(5 * time.Millisecond)
)

// MonitorOptions configures a Monitor.
type MonitorOptions struct {
	// Rules are the trip rules. They should have passed Validate.
	Rules Rules

	// Consolidated is the window of the arm the rules guard. Nil gives
	// the Monitor a window of its own sized by Rules.WindowOptions.
	Consolidated *Window

	// Legacy is the window of the legacy arm, for LegacyUnhealthy. Nil
	// means legacy is judged by LegacyProbe alone.
	Legacy *Window

	// LegacyProbe, if not nil, is an active probe of the legacy arm that
	// LegacyUnhealthy consults. The Monitor does not run it.
	LegacyProbe *Probe

	// OnTrip is called once when a rule trips, and not again until
	// Rearm. It runs synchronously on the goroutine that noticed the
	// breach, which may be serving a request, so it must return quickly.
	// Nil means nothing is called; Armed still turns false.
	OnTrip func(Verdict)

	// Now returns the current time for Run, on the clock of health.Now
	// (the default): monotonic nanoseconds.
	Now func() int64

	// Interval is how often Run evaluates every rule (default 100ms).
	Interval time.Duration

	// OnBothUnhealthy is called by Run when Rules.BothUnhealthy turns
	// true (bad, with its reason) or false again, judged every Interval
	// whether or not the Monitor is armed. BothUnhealthy is the state to
	// start from, so that a Monitor that takes over from another (a
	// config reload) does not announce it again. Nil means nothing is
	// called.
	OnBothUnhealthy func(bad bool, reason string, c Comparison)
	BothUnhealthy   bool
}

// Monitor watches one switch: it evaluates the rules against the
// consolidated arm's window and calls OnTrip the first time one trips.
// Its methods are safe for concurrent use.
type Monitor struct {
	rules        Rules
	consolidated *Window
	legacy       *Window
	probe        *Probe
	onTrip       func(Verdict)
	now          func() int64
	interval     time.Duration

	onBoth func(bool, string, Comparison)

	armed           atomic.Bool
	lastLatencyEval atomic.Int64 // on the clock of Now
	lastRelEval     atomic.Int64 // on the clock of Now
	last            atomic.Pointer[Verdict]
	both            atomic.Bool // last BothUnhealthy judged by Run
}

// NewMonitor returns an armed Monitor.
func NewMonitor(opts MonitorOptions) *Monitor {
	m := &Monitor{
		rules:        opts.Rules,
		consolidated: opts.Consolidated,
		legacy:       opts.Legacy,
		probe:        opts.LegacyProbe,
		onTrip:       opts.OnTrip,
		now:          opts.Now,
		interval:     opts.Interval,
		onBoth:       opts.OnBothUnhealthy,
	}
	m.both.Store(opts.BothUnhealthy)
	if m.consolidated == nil {
		m.consolidated = NewWindow(opts.Rules.WindowOptions())
	}
	if m.now == nil {
		m.now = Now
	}
	if m.interval <= 0 {
		m.interval = DefaultInterval
	}
	m.armed.Store(true)
	return m
}

// Consolidated returns the window the rules guard.
func (m *Monitor) Consolidated() *Window { return m.consolidated }

// Legacy returns the legacy arm's window, or nil if none was given.
func (m *Monitor) Legacy() *Window { return m.legacy }

// Rules returns the rules the Monitor enforces.
func (m *Monitor) Rules() Rules { return m.rules }

// Observed is called on the request path after Consolidated().Observe
// with the same now (on the clock of Now), outcome and latency. It evaluates
// the consecutive failure and error rate rules on failures, and the
// latency rule when latency exceeds the limit, at most once per 10ms.
// It is lock-free and allocates only when a rule trips.
func (m *Monitor) Observed(now int64, failed bool, latency time.Duration) {
	if !m.armed.Load() {
		return
	}
	r := &m.rules
	evalLatency := r.LatencyQuantile > 0 && r.LatencyLimit > 0 && latency > r.LatencyLimit && m.latencyDue(now)
	if !failed && !evalLatency {
		return
	}
	if failed && r.RelativeErrorRate.On() && m.legacy != nil && m.due(&m.lastRelEval, now, relativeEvalEvery) {
		m.observedRelative(now)
	}
	w := m.consolidated
	s := Stats{ConsecutiveFailures: w.ConsecutiveFailures(), Window: w.Span()}
	if r.ErrorRate > 0 || evalLatency {
		s.Requests, s.Failures = w.counts(now)
		s.ErrorRate = errorRate(s.Requests, s.Failures)
	}
	if evalLatency {
		s.Quantile = r.LatencyQuantile
		s.Latency = w.Quantile(now, r.LatencyQuantile)
	}
	if v, ok := r.Evaluate(s); ok {
		m.trip(v, now)
	}
}

// latencyDue reports whether the latency rule is due for evaluation at
// now, and if so claims it.
func (m *Monitor) latencyDue(now int64) bool {
	return m.due(&m.lastLatencyEval, now, latencyEvalEvery)
}

// due reports whether an evaluation last done at *last is due again at
// now, every, and if so claims it.
func (m *Monitor) due(last *atomic.Int64, now, every int64) bool {
	l := last.Load()
	return now-l >= every && last.CompareAndSwap(l, now)
}

// observedRelative evaluates the relative error-rate rule on the request
// path, after a consolidated failure: from both windows' counters alone,
// without their histograms, so it costs two sums over the buckets and the
// test. It allocates only when the rule fires. The latency rule, which
// needs the histograms, is left to Check.
func (m *Monitor) observedRelative(now int64) {
	var l, k Stats
	l.Requests, l.Failures = m.legacy.counts(now)
	k.Requests, k.Failures = m.consolidated.counts(now)
	l.ErrorRate, k.ErrorRate = errorRate(l.Requests, l.Failures), errorRate(k.Requests, k.Failures)
	l.Window, k.Window = m.legacy.Span(), m.consolidated.Span()
	if !m.rules.errorRuleFires(k.Failures, k.Requests, l.Failures, l.Requests) {
		return
	}
	// Fires: judge again with the full Stats, for the evidence.
	if v, ok := m.rules.EvaluateRelative(m.Compare(now)); ok {
		m.trip(v, now)
	}
}

// Check evaluates every rule against the consolidated window at now (on
// the clock of Now) and trips the Monitor if one breaks and it is armed.
// It returns the verdict of the breached rule, if any, whether or not the
// Monitor was armed.
//
// The relative rules are judged here, not on the request path: every
// Interval (100ms by default) is soon enough for them, and they read both
// arms' histograms.
func (m *Monitor) Check(now int64) (Verdict, bool) {
	v, ok := m.rules.Evaluate(m.consolidated.StatsWithQuantile(now, m.rules.LatencyQuantile))
	if !ok && m.rules.Relative() && m.legacy != nil {
		v, ok = m.rules.EvaluateRelative(m.Compare(now))
	}
	if ok {
		m.trip(v, now)
		v.At = Time(now)
	}
	return v, ok
}

// Run calls Check every Interval until ctx is done. Each tick also
// Advances both windows, which keeps bucket rotation off the request path
// when Interval is shorter than the windows' bucket width.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := m.now()
			m.consolidated.Advance(now)
			if m.legacy != nil {
				m.legacy.Advance(now)
			}
			if m.armed.Load() {
				m.Check(now)
			}
			m.judgeBoth(now)
		}
	}
}

// Compare compares the two arms' windows at now (on the clock of Now).
// Each arm's Stats also holds the latency at the relative latency rule's
// quantile, or else at the absolute latency rule's. Without a legacy
// window, legacy's side is empty.
func (m *Monitor) Compare(now int64) Comparison {
	q := m.rules.RelativeLatency.Quantile
	if q == 0 {
		q = m.rules.LatencyQuantile
	}
	var l Stats
	if m.legacy != nil {
		l = m.legacy.StatsWithQuantile(now, q)
	}
	return Compare(l, m.consolidated.StatsWithQuantile(now, q))
}

// BothUnhealthy reports the state Run last judged (see
// Rules.BothUnhealthy).
func (m *Monitor) BothUnhealthy() bool { return m.both.Load() }

// judgeBoth judges Rules.BothUnhealthy at now and calls OnBothUnhealthy
// when it changed.
//
// Without relative rules it is false, so a Monitor seeded with true by a
// config that had them announces the end of it.
func (m *Monitor) judgeBoth(now int64) {
	var c Comparison
	var reason string
	var bad bool
	if m.rules.Relative() && m.legacy != nil {
		c = m.Compare(now)
		reason, bad = m.rules.BothUnhealthy(c)
	}
	if m.both.CompareAndSwap(!bad, bad) && m.onBoth != nil {
		m.onBoth(bad, reason, c)
	}
}

// trip disarms the Monitor and calls OnTrip, unless it was already
// disarmed.
func (m *Monitor) trip(v Verdict, at int64) {
	if !m.armed.CompareAndSwap(true, false) {
		return
	}
	v.At = Time(at)
	m.last.Store(&v)
	if m.onTrip != nil {
		m.onTrip(v)
	}
}

// Armed reports whether the Monitor will call OnTrip on the next breach.
func (m *Monitor) Armed() bool { return m.armed.Load() }

// Rearm arms the Monitor again after a trip. The windows keep their
// counts, so a caller that restores traffic usually calls
// Consolidated().Reset first, or the Monitor may trip again at once.
func (m *Monitor) Rearm() { m.armed.Store(true) }

// LastTrip returns the verdict of the most recent trip, if any.
func (m *Monitor) LastTrip() (Verdict, bool) {
	if v := m.last.Load(); v != nil {
		return *v, true
	}
	return Verdict{}, false
}

// LegacyHealthy reports whether the legacy arm is positively healthy at
// now: its probe, if any, passes, and its window holds enough requests for
// the rules to judge (MinRequests, and at least one) without any of them
// tripping. A window too empty to judge is not health. Without a legacy
// window only a probe can say so.
func (m *Monitor) LegacyHealthy(now int64) bool {
	if m.probe != nil && !m.probe.Healthy() {
		return false
	}
	if m.legacy == nil {
		return m.probe != nil
	}
	s := m.legacy.StatsWithQuantile(now, m.rules.LatencyQuantile)
	if s.Requests == 0 || s.Requests < m.rules.MinRequests {
		return false
	}
	_, bad := m.rules.Evaluate(s)
	return !bad
}

// LegacyUnhealthy reports whether the legacy arm looks unhealthy at now
// (on the clock of Now), with a reason: its probe is down, or its own window
// breaks the same rules as the consolidated arm's. It is false with an
// empty reason when neither a legacy window nor a probe was given.
func (m *Monitor) LegacyUnhealthy(now int64) (bool, string) {
	if m.probe != nil && !m.probe.Healthy() {
		return true, "probe failed: " + m.probe.LastError()
	}
	if m.legacy == nil {
		return false, ""
	}
	v, ok := m.rules.Evaluate(m.legacy.StatsWithQuantile(now, m.rules.LatencyQuantile))
	return ok, v.Reason
}
