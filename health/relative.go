package health

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Names of the rules relative to legacy, as found in Verdict.Rule.
const (
	RuleErrorRateRelative = "error_rate_relative"
	RuleLatencyRelative   = "latency_relative"
)

// Defaults of the relative rules.
const (
	// DefaultErrorFloor is the least gap, in error rate, between the
	// arms for the relative error-rate rule to fire: one percentage
	// point.
	DefaultErrorFloor = 0.01

	// DefaultUnhealthyErrorRate is the error rate above which an arm
	// counts as failing for BothUnhealthy when the absolute error_rate
	// rule is off.
	DefaultUnhealthyErrorRate = 0.05
)

// RelativeErrorRule trips when consolidated fails more often than legacy:
// its error rate is above Ratio times legacy's, at least Floor above it,
// and significantly so: PValueAbove(Floor) < Alpha. Each arm must hold
// MinRequests requests. The zero value is off.
type RelativeErrorRule struct {
	// Ratio is the factor over legacy's error rate, above 1 (2 means
	// twice legacy's). Zero turns the rule off.
	Ratio float64

	// Floor is the least gap between the rates, a fraction in (0,1)
	// (0.01 is one percentage point; the config layer defaults it to
	// DefaultErrorFloor). The significance test is against it too.
	Floor float64

	// MinRequests is the least number of requests each arm's window must
	// hold. Zero means the Rules' MinRequests (and never fewer than 1).
	MinRequests uint64
}

// RelativeLatencyRule trips when consolidated's latency at Quantile is
// above Ratio times legacy's and at least Floor above it, with MinRequests
// requests in each arm's window. The zero value is off.
type RelativeLatencyRule struct {
	// Quantile is the latency quantile compared, in (0,1), e.g. 0.99.
	Quantile float64

	// Ratio is the factor over legacy's latency, above 1. Zero turns the
	// rule off.
	Ratio float64

	// Floor is the least difference between the latencies (default 0:
	// the ratio alone decides).
	Floor time.Duration

	// MinRequests is as in RelativeErrorRule.
	MinRequests uint64
}

// On reports whether the rule is on.
func (r RelativeErrorRule) On() bool { return r.Ratio > 0 }

// On reports whether the rule is on.
func (r RelativeLatencyRule) On() bool { return r.Ratio > 0 }

// Relative reports whether any rule relative to legacy is on.
func (r Rules) Relative() bool { return r.RelativeErrorRate.On() || r.RelativeLatency.On() }

// minRequests returns a relative rule's least requests per arm.
func (r Rules) minRequests(own uint64) uint64 {
	if own == 0 {
		own = r.MinRequests
	}
	return max(own, 1)
}

// Threshold describes the relative error-rate rule's threshold: "2x,
// floor 1%".
func (r RelativeErrorRule) Threshold() string {
	return formatRatio(r.Ratio) + ", floor " + formatPercent(r.Floor)
}

// Threshold describes the relative latency rule's threshold: "p99 1.5x"
// or "p99 1.5x, floor 20ms".
func (r RelativeLatencyRule) Threshold() string {
	s := formatQuantile(r.Quantile) + " " + formatRatio(r.Ratio)
	if r.Floor > 0 {
		s += ", floor " + formatDuration(r.Floor)
	}
	return s
}

// validateRelative reports the invalid fields of the relative rules.
func (r Rules) validateRelative() error {
	var errs []error
	if e := r.RelativeErrorRate; e.On() || e.Floor != 0 || e.MinRequests != 0 {
		switch {
		case !(e.Ratio >= 1):
			errs = append(errs, fmt.Errorf("error_rate %s legacy is out of range: the ratio must be at least 1x (e.g. 2x)", formatRatio(e.Ratio)))
		case !(e.Floor > 0 && e.Floor < 1):
			errs = append(errs, fmt.Errorf("error_rate %s legacy floor %s is out of range: must be above 0%% and below 100%% (e.g. 1%%), or one failure against a clean legacy could trip", formatRatio(e.Ratio), formatPercent(e.Floor)))
		default:
			if n, safe := r.OneFailureSafe(); !safe {
				errs = append(errs, fmt.Errorf("error_rate %s legacy with floor %s and min_requests %d would trip on a single failure against a legacy with none: raise min_requests to at least %d, or the floor",
					formatRatio(e.Ratio), formatPercent(e.Floor), r.minRequests(e.MinRequests), n))
			}
		}
	}
	if l := r.RelativeLatency; l.On() || l.Quantile != 0 || l.Floor != 0 || l.MinRequests != 0 {
		switch {
		case !(l.Quantile > 0 && l.Quantile < 1):
			errs = append(errs, fmt.Errorf("latency %s legacy: quantile %s is out of range: must be between p0 and p100, exclusive (e.g. p99)", formatRatio(l.Ratio), formatQuantile(l.Quantile)))
		case !(l.Ratio >= 1):
			errs = append(errs, fmt.Errorf("latency %s %s legacy is out of range: the ratio must be at least 1x (e.g. 1.5x)", formatQuantile(l.Quantile), formatRatio(l.Ratio)))
		case l.Floor < 0:
			errs = append(errs, fmt.Errorf("latency %s %s legacy floor %v must not be negative", formatQuantile(l.Quantile), formatRatio(l.Ratio), l.Floor))
		}
	}
	if r.UnhealthyErrorRate != 0 && !(r.UnhealthyErrorRate > 0 && r.UnhealthyErrorRate <= 1) {
		errs = append(errs, fmt.Errorf("unhealthy error rate %s is out of range: must be greater than 0%% and at most 100%%", formatPercent(r.UnhealthyErrorRate)))
	}
	return errors.Join(errs...)
}

// oneFailureLegacyRequests stands for a legacy arm that has served so much
// without a failure that its rate is known to be zero: the case in which a
// consolidated failure weighs the most.
const oneFailureLegacyRequests = 1 << 40

// OneFailureSafe reports whether the relative error-rate rule can never
// fire on a single consolidated failure against a legacy with none, for
// any number of requests in either arm from the rule's min_requests up.
// The worst case is a legacy arm with endless clean requests, and a
// consolidated arm with too many requests for one failure to clear the
// floor (more than 1/Floor) cannot fire at all, so checking every
// consolidated count up to 1/Floor against such a legacy proves it. When
// it is not safe it also returns the least min_requests that would be.
// A rule that is off is safe.
func (r Rules) OneFailureSafe() (minRequests uint64, safe bool) {
	e := r.RelativeErrorRate
	if !e.On() {
		return 0, true
	}
	if !(e.Floor > 0) {
		return 0, false
	}
	from := r.minRequests(e.MinRequests)
	last := uint64(math.Ceil(1 / e.Floor))
	safe = true
	for n := from; n <= last; n++ {
		if r.errorRuleFires(1, n, 0, oneFailureLegacyRequests) {
			safe, minRequests = false, n+1
		}
	}
	return minRequests, safe
}

// errorRuleFires applies the relative error-rate rule to counts.
func (r Rules) errorRuleFires(x1, n1, x2, n2 uint64) bool {
	e := r.RelativeErrorRate
	min := r.minRequests(e.MinRequests)
	if !e.On() || n1 < min || n2 < min {
		return false
	}
	p1, p2 := errorRate(n1, x1), errorRate(n2, x2)
	return p1 > e.Ratio*p2 && p1-p2 >= e.Floor && PValueAbove(x1, n1, x2, n2, e.Floor) < Alpha
}

// EvaluateRelative checks c against the relative rules, error rate first,
// and returns the first that fires, with c as its evidence.
//
// The error-rate rule fires when all of these hold: each arm holds its
// min_requests; consolidated's rate is above Ratio times legacy's; the gap
// is at least Floor; and c.PValueAbove(Floor) < Alpha. The latency rule
// fires when each arm holds its min_requests, both hold the quantile (see
// Stats.LatencyAt), and consolidated's latency at it is above Ratio times
// legacy's and at least Floor above it. Evaluate allocates only when a
// rule fires.
func (r Rules) EvaluateRelative(c Comparison) (Verdict, bool) {
	l, k := c.Legacy, c.Consolidated
	window := k.Window
	if window == 0 {
		window = r.Window
	}
	if e := r.RelativeErrorRate; r.errorRuleFires(k.Failures, k.Requests, l.Failures, l.Requests) {
		p := c.PValueAbove(e.Floor)
		ev := c // escapes only when the rule fires
		return Verdict{
			Rule: RuleErrorRateRelative,
			Reason: fmt.Sprintf("error_rate %s vs legacy %s: above %s legacy and %s points worse (p=%s < %s) over %s (n=%d/%d)",
				formatPercent(k.ErrorRate), formatPercent(l.ErrorRate), formatRatio(e.Ratio), formatDecimal(c.Gap*100, 2),
				formatP(p), formatP(Alpha), formatDuration(window), k.Requests, l.Requests),
			Threshold: e.Threshold(),
			Evidence:  &ev,
			PValue:    p,
		}, true
	}
	if lr := r.RelativeLatency; lr.On() {
		min := r.minRequests(lr.MinRequests)
		dk, ok1 := k.LatencyAt(lr.Quantile)
		dl, ok2 := l.LatencyAt(lr.Quantile)
		if ok1 && ok2 && k.Requests >= min && l.Requests >= min &&
			float64(dk) > lr.Ratio*float64(dl) && dk-dl >= lr.Floor {
			ev := c
			return Verdict{
				Rule: RuleLatencyRelative,
				Reason: fmt.Sprintf("latency %s %s vs legacy %s: above %s legacy over %s (n=%d/%d)",
					formatQuantile(lr.Quantile), formatDuration(roundSignificant(dk, 3)), formatDuration(roundSignificant(dl, 3)),
					formatRatio(lr.Ratio), formatDuration(window), k.Requests, l.Requests),
				Threshold: lr.Threshold(),
				Evidence:  &ev,
				PValue:    c.PValue,
			}, true
		}
	}
	return Verdict{}, false
}

// BothUnhealthy reports whether both arms fail alike, with a reason: the
// case of a dependency both share being down, where moving traffic to
// legacy would not help. It holds when all of these do:
//
//   - a relative rule is on (the state belongs to judging one arm against
//     the other);
//   - each arm holds at least the relative rules' min_requests (the least
//     of the rules that are on);
//   - each arm is failing: its error rate is above UnhealthyErrorRate
//     (which defaults to the absolute error_rate rule's threshold, or
//     DefaultUnhealthyErrorRate when that rule is off), or the absolute
//     latency rule is on and the arm's latency at its quantile is above
//     its limit;
//   - no relative rule fires on c: consolidated is not significantly
//     worse than legacy.
//
// The relative rules therefore never trip while both arms are unhealthy.
// The absolute rules are not affected: they bound consolidated on its
// own, whatever legacy does.
func (r Rules) BothUnhealthy(c Comparison) (string, bool) {
	if !r.Relative() {
		return "", false
	}
	min := uint64(math.MaxUint64)
	if r.RelativeErrorRate.On() {
		min = r.minRequests(r.RelativeErrorRate.MinRequests)
	}
	if r.RelativeLatency.On() {
		min = minU(min, r.minRequests(r.RelativeLatency.MinRequests))
	}
	l, k := c.Legacy, c.Consolidated
	if l.Requests < min || k.Requests < min {
		return "", false
	}
	why, lf := r.failing(l)
	_, kf := r.failing(k)
	if !lf || !kf {
		return "", false
	}
	if _, fires := r.EvaluateRelative(c); fires {
		return "", false
	}
	window := k.Window
	if window == 0 {
		window = r.Window
	}
	return fmt.Sprintf("both arms unhealthy: %s; legacy error_rate %s, p99 %s; consolidated error_rate %s, p99 %s; consolidated not significantly worse (p=%s) over %s (n=%d/%d)",
		why, formatPercent(l.ErrorRate), formatDuration(roundSignificant(l.P99, 3)), formatPercent(k.ErrorRate), formatDuration(roundSignificant(k.P99, 3)),
		formatP(c.PValue), formatDuration(window), k.Requests, l.Requests), true
}

func minU(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

// failing says whether an arm's window counts as failing for
// BothUnhealthy, and by what measure.
func (r Rules) failing(s Stats) (string, bool) {
	limit := r.UnhealthyErrorRate
	if limit == 0 {
		limit = r.ErrorRate
	}
	if limit == 0 {
		limit = DefaultUnhealthyErrorRate
	}
	if s.ErrorRate > limit {
		return "each error_rate above " + formatPercent(limit), true
	}
	if r.LatencyQuantile > 0 && r.LatencyLimit > 0 {
		if d, ok := s.LatencyAt(r.LatencyQuantile); ok && d > r.LatencyLimit {
			return "each latency " + formatQuantile(r.LatencyQuantile) + " above " + formatDuration(r.LatencyLimit), true
		}
	}
	return "", false
}

// formatRatio formats a ratio as "2x" or "1.5x".
func formatRatio(f float64) string { return formatDecimal(f, 3) + "x" }

// formatP formats a p-value to two significant digits: "0.003", "1.2e-09".
func formatP(p float64) string { return strconv.FormatFloat(p, 'g', 2, 64) }
