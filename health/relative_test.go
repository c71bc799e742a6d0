package health

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// arm makes the Stats of an arm's window.
func arm(requests, failures uint64, p99 time.Duration) Stats {
	return Stats{Requests: requests, Failures: failures, ErrorRate: errorRate(requests, failures), P50: p99 / 2, P99: p99, Window: 10 * time.Second}
}

var relRules = Rules{
	ErrorRate: 0.05, MinRequests: 20, Window: 10 * time.Second,
	RelativeErrorRate: RelativeErrorRule{Ratio: 2, Floor: 0.01},
	RelativeLatency:   RelativeLatencyRule{Quantile: 0.99, Ratio: 1.5},
}

func TestEvaluateRelative(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name         string
		rules        Rules
		legacy, cons Stats
		wantRule     string
		wantReason   string
	}{
		{"20% vs 0% fires", relRules, arm(1500, 0, 10*ms), arm(1500, 300, 10*ms), RuleErrorRateRelative,
			"error_rate 20% vs legacy 0%: above 2x legacy and 20 points worse (p="},
		{"alike: no trip", relRules, arm(1500, 300, 10*ms), arm(1500, 310, 10*ms), "", ""},
		{"ratio not exceeded", relRules, arm(1500, 150, 10*ms), arm(1500, 280, 10*ms), "", ""},
		{"gap below floor", relRules, arm(100000, 10, 10*ms), arm(100000, 500, 10*ms), "", ""},
		{"not significant", relRules, arm(30, 0, 10*ms), arm(30, 2, 10*ms), "", ""},
		{"too few on legacy", relRules, arm(19, 0, 10*ms), arm(1500, 300, 10*ms), "", ""},
		{"too few on consolidated", relRules, arm(1500, 0, 10*ms), arm(19, 19, 10*ms), "", ""},
		{"own min_requests", func() Rules {
			r := relRules
			r.RelativeErrorRate.MinRequests = 2000
			return r
		}(), arm(1500, 0, 10*ms), arm(1500, 300, 10*ms), "", ""},
		{"one failure against none", relRules, arm(1<<30, 0, 10*ms), arm(20, 1, 10*ms), "", ""},
		{"latency 2x fires", relRules, arm(1500, 0, 100*ms), arm(1500, 0, 200*ms), RuleLatencyRelative,
			"latency p99 200ms vs legacy 100ms: above 1.5x legacy over 10s (n=1500/1500)"},
		{"latency 1.4x holds", relRules, arm(1500, 0, 100*ms), arm(1500, 0, 140*ms), "", ""},
		{"latency floor holds", func() Rules {
			r := relRules
			r.RelativeLatency.Floor = 50 * ms
			return r
		}(), arm(1500, 0, 20*ms), arm(1500, 0, 60*ms), "", ""},
		{"off", Rules{Window: time.Second}, arm(1500, 0, 10*ms), arm(1500, 1500, time.Second), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := tt.rules.EvaluateRelative(Compare(tt.legacy, tt.cons))
			if ok != (tt.wantRule != "") || v.Rule != tt.wantRule {
				t.Fatalf("got %v %+v, want rule %q", ok, v, tt.wantRule)
			}
			if !ok {
				return
			}
			if !strings.HasPrefix(v.Reason, tt.wantReason) {
				t.Errorf("reason %q, want prefix %q", v.Reason, tt.wantReason)
			}
			if v.Evidence == nil || v.Evidence.Consolidated.Requests != tt.cons.Requests || v.Threshold == "" {
				t.Errorf("evidence %+v threshold %q", v.Evidence, v.Threshold)
			}
			if v.Rule == RuleErrorRateRelative && !(v.PValue < Alpha) {
				t.Errorf("p=%v", v.PValue)
			}
		})
	}
}

func TestBothUnhealthy(t *testing.T) {
	ms := time.Millisecond
	noAbs := relRules
	noAbs.ErrorRate = 0
	latAbs := relRules
	latAbs.LatencyQuantile, latAbs.LatencyLimit = 0.99, 500*ms
	tests := []struct {
		name         string
		rules        Rules
		legacy, cons Stats
		want         bool
	}{
		{"both at 20%", relRules, arm(1500, 300, 10*ms), arm(1500, 300, 10*ms), true},
		{"both at 20%, absolute rule off: 5% applies", noAbs, arm(1500, 300, 10*ms), arm(1500, 300, 10*ms), true},
		{"both at 4%", relRules, arm(1500, 60, 10*ms), arm(1500, 60, 10*ms), false},
		{"only consolidated failing", relRules, arm(1500, 0, 10*ms), arm(1500, 300, 10*ms), false},
		{"only legacy failing", relRules, arm(1500, 300, 10*ms), arm(1500, 0, 10*ms), false},
		{"consolidated significantly worse: the rule fires instead", relRules, arm(1500, 150, 10*ms), arm(1500, 600, 10*ms), false},
		{"too few requests", relRules, arm(10, 5, 10*ms), arm(10, 5, 10*ms), false},
		{"both slow past the absolute limit", latAbs, arm(1500, 0, time.Second), arm(1500, 0, 1100*ms), true},
		{"no relative rule", Rules{ErrorRate: 0.05, Window: time.Second}, arm(1500, 300, 10*ms), arm(1500, 300, 10*ms), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Compare(tt.legacy, tt.cons)
			why, bad := tt.rules.BothUnhealthy(c)
			if bad != tt.want {
				t.Fatalf("BothUnhealthy = %v (%q), want %v", bad, why, tt.want)
			}
			if bad {
				if !strings.HasPrefix(why, "both arms unhealthy: ") {
					t.Errorf("reason %q", why)
				}
				if _, fires := tt.rules.EvaluateRelative(c); fires {
					t.Error("a relative rule fires while both arms are unhealthy")
				}
			}
		})
	}
}

func TestRelativeValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(r *Rules)
		wantErr string
	}{
		{"valid", func(r *Rules) {}, ""},
		{"ratio below 1", func(r *Rules) { r.RelativeErrorRate.Ratio = 0.5 }, "error_rate 0.5x legacy is out of range"},
		{"floor 0", func(r *Rules) { r.RelativeErrorRate.Floor = 0 }, "floor 0% is out of range"},
		{"floor too small for min_requests", func(r *Rules) { r.RelativeErrorRate.Floor = 0.001 }, "would trip on a single failure against a legacy with none: raise min_requests to at least 138"},
		{"latency ratio below 1", func(r *Rules) { r.RelativeLatency.Ratio = 0.9 }, "latency p99 0.9x legacy is out of range"},
		{"latency quantile", func(r *Rules) { r.RelativeLatency.Quantile = 1 }, "quantile p100 is out of range"},
		{"negative latency floor", func(r *Rules) { r.RelativeLatency.Floor = -1 }, "must not be negative"},
		{"min_requests with relative rules only", func(r *Rules) { r.ErrorRate = 0 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := relRules
			tt.edit(&r)
			err := r.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestComparisonJSON(t *testing.T) {
	b, err := json.Marshal(Compare(arm(100, 0, 10*time.Millisecond), arm(100, 5, 20*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Arms map[string]struct {
			Requests  uint64  `json:"requests"`
			Failures  uint64  `json:"failures"`
			ErrorRate float64 `json:"error_rate"`
			P99       float64 `json:"p99_ms"`
		} `json:"arms"`
		ErrorRatio *float64 `json:"error_ratio"`
		PValue     float64  `json:"p_value"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if c := got.Arms["consolidated"]; c.Failures != 5 || c.ErrorRate != 0.05 || c.P99 != 20 || got.ErrorRatio != nil || !(got.PValue > 0 && got.PValue < 0.05) {
		t.Errorf("%s", b)
	}
}

// TestMonitorRelative drives both windows and Run: a consolidated arm at
// 20% against a clean legacy trips on the relative rule; both arms at
// 20% do not, and are reported once as both unhealthy, then as healthy
// again once the failures leave the window.
func TestMonitorRelative(t *testing.T) {
	r := relRules
	r.ErrorRate = 0 // the absolute rule would trip the 20% arm on its own
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, legacyFails bool, opts MonitorOptions) (*Monitor, *atomic.Int64, func()) {
		var now atomic.Int64
		now.Store(at(time.Second))
		opts.Rules, opts.Now, opts.Interval = r, now.Load, time.Millisecond
		opts.Consolidated, opts.Legacy = NewWindow(r.WindowOptions()), NewWindow(r.WindowOptions())
		m := NewMonitor(opts)
		for i := range 500 {
			ts := at(time.Second) - int64(i)*int64(time.Millisecond)
			m.Legacy().Observe(ts, 5*time.Millisecond, legacyFails && i%5 == 0)
			m.Consolidated().Observe(ts, 5*time.Millisecond, i%5 == 0)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); m.Run(ctx) }()
		return m, &now, func() { cancel(); <-done }
	}
	t.Run("consolidated worse trips", func(t *testing.T) {
		tripped := make(chan Verdict, 1)
		m, _, stop := run(t, false, MonitorOptions{OnTrip: func(v Verdict) { tripped <- v }})
		defer stop()
		select {
		case v := <-tripped:
			if v.Rule != RuleErrorRateRelative || v.Evidence == nil {
				t.Errorf("verdict %+v", v)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no trip")
		}
		if m.BothUnhealthy() {
			t.Error("both unhealthy with a clean legacy")
		}
	})
	t.Run("both failing alike", func(t *testing.T) {
		type change struct {
			bad    bool
			reason string
		}
		changes := make(chan change, 10)
		m, now, stop := run(t, true, MonitorOptions{
			OnTrip:          func(v Verdict) { t.Errorf("tripped: %+v", v) },
			OnBothUnhealthy: func(bad bool, why string, c Comparison) { changes <- change{bad, why} },
		})
		defer stop()
		select {
		case c := <-changes:
			if !c.bad || !strings.Contains(c.reason, "consolidated not significantly worse") {
				t.Errorf("first change %+v", c)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("both unhealthy not reported")
		}
		time.Sleep(50 * time.Millisecond) // many more ticks: no repeat
		now.Store(at(time.Minute))        // the failures leave the window
		select {
		case c := <-changes:
			if c.bad {
				t.Errorf("reported again: %+v", c)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("recovery not reported")
		}
		if m.BothUnhealthy() || !m.Armed() {
			t.Errorf("both=%v armed=%v", m.BothUnhealthy(), m.Armed())
		}
	})
}

// TestObservedRelative: a consolidated failure evaluates the relative
// error-rate rule on the request path (no Run needed), without
// allocating while it holds.
func TestObservedRelative(t *testing.T) {
	r := relRules
	r.ErrorRate, r.RelativeLatency = 0, RelativeLatencyRule{}
	m, rec := newTestMonitor(t, r)
	for i := range 1000 {
		ts := at(time.Duration(i) * time.Millisecond)
		m.Legacy().Observe(ts, time.Millisecond, false)
		observe(m, ts, time.Millisecond, false)
	}
	i := int64(1000)
	allocs := testing.AllocsPerRun(200, func() {
		i++
		ts := at(time.Duration(i) * 6 * time.Millisecond / 5)
		m.Legacy().Observe(ts, time.Millisecond, i%50 == 0)
		observe(m, ts, time.Millisecond, i%50 == 0) // 2% alike on both: holds
	})
	if allocs != 0 {
		t.Errorf("Observed with a relative rule allocates %v times per call", allocs)
	}
	if len(rec.get()) != 0 {
		t.Fatalf("tripped on failures alike: %+v", rec.get())
	}
	for j := range 400 {
		ts := at(time.Duration(i)*6*time.Millisecond/5 + time.Duration(j)*6*time.Millisecond)
		m.Legacy().Observe(ts, time.Millisecond, false)
		observe(m, ts, time.Millisecond, j%5 == 0)
	}
	v := rec.get()
	if len(v) != 1 || v[0].Rule != RuleErrorRateRelative || v[0].Evidence == nil {
		t.Fatalf("verdicts %+v, want one relative trip from Observed", v)
	}
}

// BenchmarkMonitorObservedRelative: the request path of a consolidated
// failure with the relative error-rate rule on (evaluated at most every
// 5ms), and of a success.
func BenchmarkMonitorObservedRelative(b *testing.B) {
	r := relRules
	r.ErrorRate, r.MinRequests = 0.99, 10
	m := NewMonitor(MonitorOptions{Rules: r, Consolidated: NewWindow(r.WindowOptions()), Legacy: NewWindow(r.WindowOptions())})
	start := time.Now().UnixNano()
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		i++
		now := start + i*int64(100*time.Microsecond)
		m.Legacy().Observe(now, time.Millisecond, i%64 == 0)
		m.Consolidated().Observe(now, time.Millisecond, i%64 == 0)
		m.Observed(now, i%64 == 0, time.Millisecond)
	}
}

// TestMonitorBothUnhealthyEndsWithoutRelativeRules: a Monitor seeded as
// both unhealthy (a reload from a config with relative rules to one
// without) announces that the state is over.
func TestMonitorBothUnhealthyEndsWithoutRelativeRules(t *testing.T) {
	got := make(chan bool, 1)
	m := NewMonitor(MonitorOptions{Rules: Rules{ErrorRate: 0.05, Window: time.Second}, Legacy: NewWindow(WindowOptions{}),
		BothUnhealthy: true, OnBothUnhealthy: func(bad bool, _ string, _ Comparison) { got <- bad }})
	m.judgeBoth(at(time.Second))
	select {
	case bad := <-got:
		if bad {
			t.Error("announced as unhealthy")
		}
	default:
		t.Fatal("not announced")
	}
	m.judgeBoth(at(2 * time.Second))
	if len(got) != 0 {
		t.Error("announced twice")
	}
}

// TestMonitorRelativeLatency: the latency rule reads both windows'
// histograms: consolidated at 3x legacy's p99 trips it, at 1.2x it holds.
func TestMonitorRelativeLatency(t *testing.T) {
	for _, tc := range []struct {
		cons time.Duration
		trip bool
	}{{30 * time.Millisecond, true}, {12 * time.Millisecond, false}} {
		r := Rules{MinRequests: 20, Window: 10 * time.Second, RelativeLatency: RelativeLatencyRule{Quantile: 0.99, Ratio: 1.5, Floor: 5 * time.Millisecond}}
		m, rec := newTestMonitor(t, r)
		for i := range 200 {
			ts := at(time.Duration(i) * time.Millisecond)
			m.Legacy().Observe(ts, 10*time.Millisecond, false)
			m.Consolidated().Observe(ts, tc.cons, false)
		}
		v, ok := m.Check(at(time.Second))
		if ok != tc.trip || len(rec.get()) != b2i(tc.trip) {
			t.Fatalf("consolidated at %v: Check = %v %+v", tc.cons, ok, v)
		}
		if ok && (v.Rule != RuleLatencyRelative || !strings.HasPrefix(v.Reason, "latency p99 30") || v.Threshold != "p99 1.5x, floor 5ms") {
			t.Errorf("verdict %+v", v)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
