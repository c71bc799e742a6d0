package caddymodule

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/health"
)

// RelativeErrorRate is the trip rule "error_rate <ratio>x legacy": it trips
// when consolidated's error rate over the window is above Ratio times
// legacy's, at least Floor above it, and significantly so (a one-sided
// test against the floor, p < 0.01), with MinRequests requests in each
// arm's window. It is off unless given.
type RelativeErrorRate struct {
	// Ratio is the factor over legacy's error rate, at least 1 (2 is
	// twice legacy's). Required.
	Ratio float64 `json:"ratio"`

	// Floor is the least gap between the two error rates, as a fraction
	// (default 0.01, one percentage point).
	Floor float64 `json:"floor,omitempty"`

	// MinRequests is how many requests each arm's window must hold
	// (default: the trip block's min_requests).
	MinRequests int `json:"min_requests,omitempty"`
}

// RelativeLatency is the trip rule "latency p<q> <ratio>x legacy": it
// trips when consolidated's latency at Quantile is above Ratio times
// legacy's and at least Floor above it, with MinRequests requests in each
// arm's window. It is off unless given.
type RelativeLatency struct {
	// Quantile is the latency quantile compared, e.g. 0.99. Required.
	Quantile float64 `json:"quantile"`

	// Ratio is the factor over legacy's latency, at least 1. Required.
	Ratio float64 `json:"ratio"`

	// Floor is the least difference between the latencies (default 0).
	Floor caddy.Duration `json:"floor,omitempty"`

	// MinRequests is as in RelativeErrorRate.
	MinRequests int `json:"min_requests,omitempty"`
}

// relativeRules fills in r's relative rules from t. Nil t leaves them off.
func (t *Trip) relativeRules(r *health.Rules) {
	if t == nil {
		return
	}
	if e := t.RelativeErrorRate; e != nil {
		r.RelativeErrorRate = health.RelativeErrorRule{Ratio: e.Ratio, Floor: e.Floor, MinRequests: uint64(max(e.MinRequests, 0))}
		if r.RelativeErrorRate.Floor == 0 {
			r.RelativeErrorRate.Floor = health.DefaultErrorFloor
		}
	}
	if l := t.RelativeLatency; l != nil {
		r.RelativeLatency = health.RelativeLatencyRule{Quantile: l.Quantile, Ratio: l.Ratio, Floor: time.Duration(l.Floor), MinRequests: uint64(max(l.MinRequests, 0))}
	}
}

// relative says whether t gives a rule relative to legacy.
func (t *Trip) relative() bool {
	return t != nil && (t.RelativeErrorRate != nil || t.RelativeLatency != nil)
}

// relativeLine says whether the trip rule at the cursor is one relative to
// legacy ("error_rate 2x legacy ...", "latency p99 1.5x legacy ..."): it
// names legacy among its arguments. The cursor does not move.
func relativeLine(d *caddyfile.Dispenser) bool {
	if rule := d.Val(); rule != "error_rate" && rule != "latency" {
		return false
	}
	n, found := 0, false
	for d.NextArg() {
		n++
		found = found || d.Val() == armLegacy
	}
	for range n {
		d.Prev()
	}
	return found
}

// unmarshalRelative parses a trip rule relative to legacy, the cursor on
// its name:
//
//	error_rate <ratio>x legacy [floor <percent>] [min_requests <n>]
//	latency p<quantile> <ratio>x legacy [floor <duration>] [min_requests <n>]
//
// The floor of error_rate is written out with its default, so the adapted
// JSON shows the rule in effect.
func (t *Trip) unmarshalRelative(d *caddyfile.Dispenser) error {
	rule := d.Val()
	args := d.RemainingArgs()
	var q float64
	if rule == "latency" {
		if len(args) == 0 {
			return d.Err("latency relative to legacy takes a quantile, a ratio and 'legacy', e.g. latency p99 1.5x legacy")
		}
		var err error
		if q, err = health.ParseQuantile(args[0]); err != nil {
			return d.Errf("invalid latency quantile '%s': %v", args[0], err)
		}
		args = args[1:]
	}
	if len(args) < 2 || args[1] != armLegacy {
		return d.Errf("%s relative to legacy reads '%s <ratio>x legacy', e.g. %s", rule, rule, map[string]string{
			"error_rate": "error_rate 2x legacy floor 1%", "latency": "latency p99 1.5x legacy"}[rule])
	}
	ratio, err := parseRatio(args[0])
	if err != nil {
		return d.Errf("invalid %s ratio '%s': %v", rule, args[0], err)
	}
	var floor string
	minReq := 0
	opts := args[2:]
	seen := map[string]bool{}
	for len(opts) > 0 {
		opt := opts[0]
		if len(opts) < 2 {
			return d.Errf("%s legacy option '%s' needs a value", rule, opt)
		}
		if seen[opt] {
			return d.Errf("duplicate %s legacy option '%s'", rule, opt)
		}
		seen[opt] = true
		switch opt {
		case "floor":
			floor = opts[1]
		case "min_requests":
			n, err := strconv.Atoi(opts[1])
			if err != nil || n < 1 {
				return d.Errf("invalid %s legacy min_requests '%s': want a whole number of at least 1", rule, opts[1])
			}
			minReq = n
		default:
			return d.Errf("unknown %s legacy option '%s': want floor or min_requests", rule, opt)
		}
		opts = opts[2:]
	}
	if rule == "error_rate" {
		e := &RelativeErrorRate{Ratio: ratio, Floor: health.DefaultErrorFloor, MinRequests: minReq}
		if floor != "" {
			f, err := health.ParsePercent(floor)
			if err != nil || f <= 0 || f >= 1 {
				return d.Errf("invalid error_rate legacy floor '%s': want a percentage above 0%% and below 100%%, like 1%%", floor)
			}
			e.Floor = f
		}
		t.RelativeErrorRate = e
		return nil
	}
	l := &RelativeLatency{Quantile: q, Ratio: ratio, MinRequests: minReq}
	if floor != "" {
		dur, err := caddy.ParseDuration(floor)
		if err != nil || dur < 0 {
			return d.Errf("invalid latency legacy floor '%s': want a duration such as 20ms", floor)
		}
		l.Floor = caddy.Duration(dur)
	}
	t.RelativeLatency = l
	return nil
}

// parseRatio parses a ratio such as "2x" or "1.5x": a decimal number of
// at least 1 followed by x.
func parseRatio(s string) (float64, error) {
	num, ok := strings.CutSuffix(s, "x")
	if !ok || num == "" || strings.ContainsAny(num, "eE+-") {
		return 0, fmt.Errorf("want a number followed by x, like 2x or 1.5x")
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || !(f >= 1) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("must be a number of at least 1 followed by x, like 2x")
	}
	return f, nil
}

// RelativeRuleStatus shows a trip rule relative to legacy, and how the
// arms compare now.
type RelativeRuleStatus struct {
	// Rule is the rule's name: error_rate_relative or latency_relative.
	Rule string `json:"rule"`
	// Text is the rule as the Caddyfile writes it, with its defaults:
	// "error_rate 2x legacy floor 1% min_requests 20".
	Text string `json:"text"`
	// Ratio is the ratio that trips.
	Ratio float64 `json:"ratio"`
	// Current is consolidated's figure over legacy's now; null when
	// legacy's is zero and consolidated's is not.
	Current *float64 `json:"current"`
	// PValue is the p-value of the error-rate rule's test against its
	// floor, now.
	PValue *float64 `json:"p_value,omitempty"`
	// MinRequests is how many requests each arm must hold.
	MinRequests uint64 `json:"min_requests"`
}

// relativeStatus describes the relative rules of r at now.
func relativeStatus(m *health.Monitor, now int64) []RelativeRuleStatus {
	r := m.Rules()
	if !r.Relative() || m.Legacy() == nil {
		return nil
	}
	c := m.Compare(now)
	var out []RelativeRuleStatus
	if e := r.RelativeErrorRate; e.On() {
		p := c.PValueAbove(e.Floor)
		n := e.MinRequests
		if n == 0 {
			n = max(r.MinRequests, 1)
		}
		out = append(out, RelativeRuleStatus{
			Rule: health.RuleErrorRateRelative, Ratio: e.Ratio, Current: finite(c.ErrorRatio), PValue: &p, MinRequests: n,
			Text: fmt.Sprintf("error_rate %sx legacy floor %s%% min_requests %d", fmtFloat(e.Ratio), fmtFloat(e.Floor*100), n),
		})
	}
	if l := r.RelativeLatency; l.On() {
		n := l.MinRequests
		if n == 0 {
			n = max(r.MinRequests, 1)
		}
		cur, _ := c.LatencyRatio(l.Quantile)
		text := fmt.Sprintf("latency p%s %sx legacy", fmtFloat(l.Quantile*100), fmtFloat(l.Ratio))
		if l.Floor > 0 {
			text += " floor " + l.Floor.String()
		}
		out = append(out, RelativeRuleStatus{
			Rule: health.RuleLatencyRelative, Ratio: l.Ratio, Current: finite(cur), MinRequests: n,
			Text: text + fmt.Sprintf(" min_requests %d", n),
		})
	}
	return out
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// finite returns &f, or nil for an infinite or NaN f, which JSON cannot
// carry.
func finite(f float64) *float64 {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil
	}
	return &f
}

// bothUnhealthy is the monitor's OnBothUnhealthy. The state is the
// switch's, so a reload (a new monitor) does not announce it again: only
// the change that flips the switch's flag logs, emits and notifies. While
// both arms are unhealthy the relative rules hold (see
// health.Rules.BothUnhealthy); the absolute rules still trip.
func (h *Handler) bothUnhealthy(bad bool, reason string, c health.Comparison) {
	sw := h.sw
	if !sw.both.CompareAndSwap(!bad, bad) {
		return
	}
	sw.bothReason.Store(&reason)
	fields := []zap.Field{zap.String("gateway", h.app.gateway),
		zap.Float64("legacy_error_rate", c.Legacy.ErrorRate), zap.Float64("consolidated_error_rate", c.Consolidated.ErrorRate),
		zap.Uint64("legacy_requests", c.Legacy.Requests), zap.Uint64("consolidated_requests", c.Consolidated.Requests),
		zap.Float64("p_value", c.PValue)}
	name, event := "switchback.both_unhealthy", "both_unhealthy"
	if bad {
		h.logger.Warn("BOTH ARMS UNHEALTHY: legacy fails like consolidated, so the relative rules hold (moving traffic would not help)", append(fields, zap.String("reason", reason))...)
	} else {
		name, event = "switchback.both_healthy", "both_healthy"
		h.logger.Warn("both arms no longer unhealthy alike; the relative rules judge again", fields...)
	}
	data := map[string]any{"event": event, "switch": h.Name, "both_unhealthy": bad, "reason": reason, "gateway": h.app.gateway, "evidence": c}
	h.app.emit(name, data)
	// The on_trip webhooks hear of it too: it is the alert an operator
	// wired them for. Exec and restore actions are not run: nothing
	// tripped.
	var hooks []Action
	for _, a := range h.OnTrip {
		if a.Webhook != "" {
			hooks = append(hooks, a)
		}
	}
	if len(hooks) > 0 {
		goTask(h.logger, taskActions, func() { h.runActions(h.ctx, "on_trip", hooks, data) })
	}
}

// registerRelativeMetrics adds the series of the relative rules to m:
// switchback_both_unhealthy{switch} and
// switchback_relative_ratio{switch,rule}, consolidated's figure over
// legacy's (+Inf when legacy's is zero; NaN while the rule is off).
func registerRelativeMetrics(m *switchMetrics, sw *Switch) {
	m.set.NewGauge(fmt.Sprintf(`switchback_both_unhealthy{switch=%q}`, sw.name), func() float64 { return b2f(sw.both.Load()) })
	for _, rule := range []string{health.RuleErrorRateRelative, health.RuleLatencyRelative} {
		m.trip(sw.name, rule)
		m.set.NewGauge(fmt.Sprintf(`switchback_relative_ratio{switch=%q,rule=%q}`, sw.name, rule), func() float64 {
			h := sw.handler.Load()
			if h == nil || h.monitor == nil || h.monitor.Legacy() == nil {
				return math.NaN()
			}
			r := h.monitor.Rules()
			switch {
			case rule == health.RuleErrorRateRelative && r.RelativeErrorRate.On():
				return h.monitor.Compare(health.Now()).ErrorRatio
			case rule == health.RuleLatencyRelative && r.RelativeLatency.On():
				v, _ := h.monitor.Compare(health.Now()).LatencyRatio(r.RelativeLatency.Quantile)
				return v
			}
			return math.NaN()
		})
	}
}

// describeRelative says how each relative rule stands, for traffic status:
// "error_rate 2x legacy floor 1% min_requests 20 (now 3.1x, p=0.002)".
func describeRelative(rs []RelativeRuleStatus) []string {
	var out []string
	for _, r := range rs {
		now := "inf"
		if r.Current != nil {
			now = strconv.FormatFloat(*r.Current, 'f', 2, 64)
		}
		s := r.Text + " (now " + now + "x"
		if r.PValue != nil {
			s += ", p=" + strconv.FormatFloat(*r.PValue, 'g', 2, 64)
		}
		out = append(out, s+")")
	}
	return out
}
