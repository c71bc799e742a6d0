package health

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// DefaultWindow is the window the Caddyfile and JSON config use for Rules
// when none is given.
const DefaultWindow = 10 * time.Second

// Rule names, as found in Verdict.Rule.
const (
	RuleErrorRate           = "error_rate"
	RuleLatency             = "latency"
	RuleConsecutiveFailures = "consecutive_failures"
)

// Rules are the trip rules of one switch. A rule whose threshold is zero
// is off; the zero Rules never trip (but do not Validate: Window is
// required).
type Rules struct {
	// ErrorRate trips when the window's failures/requests exceeds it. It
	// is a fraction in (0,1]: 0.05 means 5%. Zero turns the rule off.
	ErrorRate float64

	// LatencyQuantile and LatencyLimit trip when the window's latency at
	// LatencyQuantile (in (0,1), e.g. 0.99) exceeds LatencyLimit. A zero
	// LatencyQuantile turns the rule off; LatencyLimit must then be zero
	// too.
	LatencyQuantile float64
	LatencyLimit    time.Duration

	// ConsecutiveFailures trips when that many requests in a row failed,
	// regardless of MinRequests, which makes it the rule for low traffic.
	// Zero turns the rule off.
	ConsecutiveFailures uint64

	// MinRequests is the number of requests the window must hold before
	// the error rate and latency rules may trip. Zero means any number,
	// so that a single slow or failed request can trip them. It does not
	// gate ConsecutiveFailures.
	MinRequests uint64

	// Window is the time the error rate and latency rules look back over.
	// It must be positive (the config layer defaults it to DefaultWindow).
	Window time.Duration

	// RelativeErrorRate and RelativeLatency are the rules that compare
	// consolidated with legacy (see EvaluateRelative). Their zero values
	// are off.
	RelativeErrorRate RelativeErrorRule
	RelativeLatency   RelativeLatencyRule

	// UnhealthyErrorRate is the error rate above which an arm counts as
	// failing for BothUnhealthy. Zero means ErrorRate, or
	// DefaultUnhealthyErrorRate when ErrorRate is off.
	UnhealthyErrorRate float64
}

// Validate reports every invalid field of r, saying what is wrong and
// what the valid range is. It has no side effects.
func (r Rules) Validate() error {
	var errs []error
	if r.ErrorRate != 0 && !(r.ErrorRate > 0 && r.ErrorRate <= 1) {
		errs = append(errs, fmt.Errorf("error_rate %s is out of range: must be greater than 0%% and at most 100%%", formatPercent(r.ErrorRate)))
	}
	switch {
	case r.LatencyQuantile != 0 && !(r.LatencyQuantile > 0 && r.LatencyQuantile < 1):
		errs = append(errs, fmt.Errorf("latency quantile %s is out of range: must be between p0 and p100, exclusive (e.g. p99)", formatQuantile(r.LatencyQuantile)))
	case r.LatencyQuantile != 0 && r.LatencyLimit <= 0:
		errs = append(errs, fmt.Errorf("latency limit %v is out of range: must be positive when latency %s is set", r.LatencyLimit, formatQuantile(r.LatencyQuantile)))
	case r.LatencyQuantile == 0 && r.LatencyLimit != 0:
		errs = append(errs, fmt.Errorf("latency limit %v needs a quantile such as p99", r.LatencyLimit))
	}
	if r.Window <= 0 {
		errs = append(errs, fmt.Errorf("window %v is out of range: must be positive (e.g. %v)", r.Window, DefaultWindow))
	}
	if r.MinRequests > 0 && r.ErrorRate == 0 && r.LatencyQuantile == 0 && !r.Relative() {
		errs = append(errs, fmt.Errorf("min_requests %d has no effect: it only gates error_rate and latency, and neither is set", r.MinRequests))
	}
	if err := r.validateRelative(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// WindowOptions returns the options of a Window that spans r.Window in
// DefaultBuckets buckets. A non-positive r.Window gives the default window.
func (r Rules) WindowOptions() WindowOptions {
	width := r.Window / DefaultBuckets
	if width <= 0 {
		width = DefaultWidth
	}
	return WindowOptions{Buckets: DefaultBuckets, Width: width}
}

// Verdict says which rule tripped and why.
type Verdict struct {
	// Rule is the name of the rule that tripped: RuleErrorRate,
	// RuleLatency or RuleConsecutiveFailures.
	Rule string

	// Reason describes the breach for people, e.g.
	// "error_rate 37.5% > 5% over 10s (n=240)".
	Reason string

	// At is when the rule tripped, as Time makes it of the Monitor's
	// clock; zero when the Verdict comes straight from Rules.Evaluate.
	At time.Time

	// Threshold, Evidence and PValue are set by the relative rules only:
	// the rule's threshold ("2x, floor 1%"), the comparison it judged,
	// and the p-value of its test (for the error rate, against the
	// floor). Evidence is nil for the absolute rules.
	Threshold string
	Evidence  *Comparison
	PValue    float64
}

// Evaluate checks s against the rules in the order error rate, latency,
// consecutive failures, and returns the first that trips. The error rate
// and latency rules need at least MinRequests requests in s. The latency
// rule reads the latency at LatencyQuantile from s (see Stats.LatencyAt)
// and cannot trip when s does not hold it. Evaluate allocates only when a
// rule trips.
func (r Rules) Evaluate(s Stats) (Verdict, bool) {
	window := s.Window
	if window == 0 {
		window = r.Window
	}
	enough := s.Requests > 0 && s.Requests >= r.MinRequests
	if r.ErrorRate > 0 && enough && s.ErrorRate > r.ErrorRate {
		return Verdict{
			Rule: RuleErrorRate,
			Reason: fmt.Sprintf("error_rate %s > %s over %s (n=%d)",
				formatPercentAbove(s.ErrorRate, r.ErrorRate), formatPercent(r.ErrorRate), formatDuration(window), s.Requests),
		}, true
	}
	if r.LatencyQuantile > 0 && r.LatencyLimit > 0 && enough {
		if d, ok := s.LatencyAt(r.LatencyQuantile); ok && d > r.LatencyLimit {
			return Verdict{
				Rule: RuleLatency,
				Reason: fmt.Sprintf("latency %s %s > %s over %s (n=%d)",
					formatQuantile(r.LatencyQuantile), formatDurationAbove(d, r.LatencyLimit), formatDuration(r.LatencyLimit), formatDuration(window), s.Requests),
			}, true
		}
	}
	if r.ConsecutiveFailures > 0 && s.ConsecutiveFailures >= r.ConsecutiveFailures {
		return Verdict{
			Rule:   RuleConsecutiveFailures,
			Reason: fmt.Sprintf("consecutive_failures %d >= %d", s.ConsecutiveFailures, r.ConsecutiveFailures),
		}, true
	}
	return Verdict{}, false
}

// formatPercent formats fraction f as a percentage with up to two
// decimals: 0.375 is "37.5%", 0.05 is "5%".
func formatPercent(f float64) string {
	return formatDecimal(f*100, 2) + "%"
}

// formatPercentAbove formats f like formatPercent, with as many more
// decimals as it takes to show that it is above limit.
func formatPercentAbove(f, limit float64) string {
	for prec := 2; prec < 10; prec++ {
		if s := formatDecimal(f*100, prec); s != formatDecimal(limit*100, prec) {
			return s + "%"
		}
	}
	return strconv.FormatFloat(f*100, 'g', -1, 64) + "%"
}

// formatDecimal formats f rounded to prec decimals, without trailing
// zeros.
func formatDecimal(f float64, prec int) string {
	s := strconv.FormatFloat(f, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// formatQuantile formats q as "p99", "p99.9" or "p50".
func formatQuantile(q float64) string {
	return "p" + formatDecimal(q*100, 4)
}

// formatDuration formats d like time.Duration.String, without zero
// trailing units: "10s", "1m", "1h30m", "250ms".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatDurationAbove formats a measured latency d to three significant
// digits ("312ms", "1.23s"), or more when needed to show that d is above
// limit.
func formatDurationAbove(d, limit time.Duration) string {
	for digits := 3; digits < 19; digits++ {
		r := roundSignificant(d, digits)
		if r > limit || r == d {
			return formatDuration(r)
		}
	}
	return formatDuration(d)
}

// roundSignificant rounds d to the given number of significant digits.
func roundSignificant(d time.Duration, digits int) time.Duration {
	if d <= 0 {
		return d
	}
	unit := time.Duration(1)
	for n := int(math.Floor(math.Log10(float64(d)))) + 1 - digits; n > 0; n-- {
		unit *= 10
	}
	return d.Round(unit)
}
