package health

import (
	"strings"
	"testing"
	"time"
)

func TestRulesValidate(t *testing.T) {
	valid := Rules{ErrorRate: 0.05, LatencyQuantile: 0.99, LatencyLimit: 250 * time.Millisecond, ConsecutiveFailures: 10, MinRequests: 20, Window: 10 * time.Second}
	tests := []struct {
		name    string
		edit    func(r *Rules)
		wantErr string // substring; empty means valid
	}{
		{"valid", func(r *Rules) {}, ""},
		{"only consecutive failures", func(r *Rules) { *r = Rules{ConsecutiveFailures: 3, Window: time.Second} }, ""},
		{"no rules at all", func(r *Rules) { *r = Rules{Window: time.Second} }, ""},
		{"error rate 100%", func(r *Rules) { r.ErrorRate = 1 }, ""},
		{"error rate 150%", func(r *Rules) { r.ErrorRate = 1.5 }, "error_rate 150% is out of range: must be greater than 0% and at most 100%"},
		{"error rate -1%", func(r *Rules) { r.ErrorRate = -0.01 }, "error_rate -1% is out of range"},
		{"quantile p0", func(r *Rules) { r.LatencyQuantile = -0.0001 }, "latency quantile p-0.01 is out of range: must be between p0 and p100, exclusive"},
		{"quantile p100", func(r *Rules) { r.LatencyQuantile = 1 }, "latency quantile p100 is out of range"},
		{"quantile p101", func(r *Rules) { r.LatencyQuantile = 1.01 }, "latency quantile p101 is out of range"},
		{"quantile without limit", func(r *Rules) { r.LatencyLimit = 0 }, "latency limit 0s is out of range: must be positive when latency p99 is set"},
		{"negative limit", func(r *Rules) { r.LatencyLimit = -time.Second }, "latency limit -1s is out of range"},
		{"limit without quantile", func(r *Rules) { r.LatencyQuantile = 0 }, "latency limit 250ms needs a quantile"},
		{"window 0", func(r *Rules) { r.Window = 0 }, "window 0s is out of range: must be positive"},
		{"window negative", func(r *Rules) { r.Window = -time.Second }, "window -1s is out of range"},
		{"min_requests without gated rules", func(r *Rules) { r.ErrorRate, r.LatencyQuantile, r.LatencyLimit = 0, 0, 0 }, "min_requests 20 has no effect"},
		{"several errors reported", func(r *Rules) { r.ErrorRate, r.Window = 2, 0 }, "window 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid
			tt.edit(&r)
			err := r.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("no error, want %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestRulesEvaluate(t *testing.T) {
	all := Rules{ErrorRate: 0.05, LatencyQuantile: 0.99, LatencyLimit: 250 * time.Millisecond, ConsecutiveFailures: 10, MinRequests: 20, Window: 10 * time.Second}
	tests := []struct {
		name       string
		rules      Rules
		stats      Stats
		wantRule   string // empty: no trip
		wantReason string
	}{
		{
			name:       "error rate trips",
			rules:      all,
			stats:      Stats{Requests: 240, Failures: 90, ErrorRate: 0.375, Window: 10 * time.Second},
			wantRule:   RuleErrorRate,
			wantReason: "error_rate 37.5% > 5% over 10s (n=240)",
		},
		{
			name:  "error rate at the threshold does not trip",
			rules: all,
			stats: Stats{Requests: 100, Failures: 5, ErrorRate: 0.05, Window: 10 * time.Second},
		},
		{
			name:       "error rate just above shows enough digits",
			rules:      all,
			stats:      Stats{Requests: 100000, Failures: 5001, ErrorRate: 0.05001, Window: 10 * time.Second},
			wantRule:   RuleErrorRate,
			wantReason: "error_rate 5.001% > 5% over 10s (n=100000)",
		},
		{
			name:  "min_requests gates the error rate",
			rules: all,
			stats: Stats{Requests: 19, Failures: 19, ErrorRate: 1, Window: 10 * time.Second},
		},
		{
			name:       "latency trips",
			rules:      all,
			stats:      Stats{Requests: 240, P99: 312 * time.Millisecond, Window: 10 * time.Second},
			wantRule:   RuleLatency,
			wantReason: "latency p99 312ms > 250ms over 10s (n=240)",
		},
		{
			name:       "latency rounds to three digits",
			rules:      all,
			stats:      Stats{Requests: 240, P99: 312456789 * time.Nanosecond, Window: 10 * time.Second},
			wantRule:   RuleLatency,
			wantReason: "latency p99 312ms > 250ms over 10s (n=240)",
		},
		{
			name:       "latency just above the limit keeps digits",
			rules:      all,
			stats:      Stats{Requests: 240, P99: 250400 * time.Microsecond, Window: 10 * time.Second},
			wantRule:   RuleLatency,
			wantReason: "latency p99 250.4ms > 250ms over 10s (n=240)",
		},
		{
			name:  "latency at the limit does not trip",
			rules: all,
			stats: Stats{Requests: 240, P99: 250 * time.Millisecond, Window: 10 * time.Second},
		},
		{
			name:  "min_requests gates latency",
			rules: all,
			stats: Stats{Requests: 5, P99: time.Second, Window: 10 * time.Second},
		},
		{
			name:       "other quantile from StatsWithQuantile",
			rules:      Rules{LatencyQuantile: 0.95, LatencyLimit: time.Second, Window: time.Minute},
			stats:      Stats{Requests: 3, Quantile: 0.95, Latency: 1500 * time.Millisecond, Window: time.Minute},
			wantRule:   RuleLatency,
			wantReason: "latency p95 1.5s > 1s over 1m (n=3)",
		},
		{
			name:       "p99.9",
			rules:      Rules{LatencyQuantile: 0.999, LatencyLimit: time.Second, Window: time.Minute},
			stats:      Stats{Requests: 3, P999: 2 * time.Second},
			wantRule:   RuleLatency,
			wantReason: "latency p99.9 2s > 1s over 1m (n=3)",
		},
		{
			name:  "quantile missing from stats does not trip",
			rules: Rules{LatencyQuantile: 0.95, LatencyLimit: time.Second, Window: time.Minute},
			stats: Stats{Requests: 3, P99: time.Hour},
		},
		{
			name:       "consecutive failures ignore min_requests",
			rules:      all,
			stats:      Stats{Requests: 10, Failures: 10, ErrorRate: 1, ConsecutiveFailures: 10},
			wantRule:   RuleConsecutiveFailures,
			wantReason: "consecutive_failures 10 >= 10",
		},
		{
			name:  "consecutive failures below",
			rules: all,
			stats: Stats{Requests: 9, Failures: 9, ErrorRate: 1, ConsecutiveFailures: 9},
		},
		{
			name:       "error rate wins over latency and consecutive",
			rules:      all,
			stats:      Stats{Requests: 100, Failures: 50, ErrorRate: 0.5, P99: time.Second, ConsecutiveFailures: 50, Window: 10 * time.Second},
			wantRule:   RuleErrorRate,
			wantReason: "error_rate 50% > 5% over 10s (n=100)",
		},
		{
			name:       "latency wins over consecutive",
			rules:      all,
			stats:      Stats{Requests: 100, Failures: 2, ErrorRate: 0.02, P99: time.Second, ConsecutiveFailures: 50, Window: 10 * time.Second},
			wantRule:   RuleLatency,
			wantReason: "latency p99 1s > 250ms over 10s (n=100)",
		},
		{
			name:  "rules off never trip",
			rules: Rules{Window: time.Second},
			stats: Stats{Requests: 100, Failures: 100, ErrorRate: 1, P99: time.Hour, P999: time.Hour, ConsecutiveFailures: 100},
		},
		{
			name:  "empty stats never trip",
			rules: Rules{ErrorRate: 0.01, LatencyQuantile: 0.5, LatencyLimit: 1, ConsecutiveFailures: 1, Window: time.Second},
			stats: Stats{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, ok := tt.rules.Evaluate(tt.stats)
			if ok != (tt.wantRule != "") {
				t.Fatalf("tripped = %v (%+v), want %v", ok, v, !ok)
			}
			if v.Rule != tt.wantRule || v.Reason != tt.wantReason {
				t.Errorf("got %q %q, want %q %q", v.Rule, v.Reason, tt.wantRule, tt.wantReason)
			}
		})
	}
}

func TestEvaluateWindowStats(t *testing.T) {
	// Rules against a real window: 240 requests, 90 failures, p99 ~312ms.
	w := NewWindow(WindowOptions{})
	for i := range 240 {
		lat := 10 * time.Millisecond
		if i%100 >= 98 {
			lat = 312 * time.Millisecond
		}
		w.Observe(at(time.Duration(i)*10*time.Millisecond), lat, i%8 < 3)
	}
	now := at(3 * time.Second)
	r := Rules{ErrorRate: 0.05, Window: 10 * time.Second}
	v, ok := r.Evaluate(w.Stats(now))
	if !ok || v.Reason != "error_rate 37.5% > 5% over 10s (n=240)" {
		t.Errorf("got %v %q", ok, v.Reason)
	}
	r = Rules{LatencyQuantile: 0.99, LatencyLimit: 250 * time.Millisecond, Window: 10 * time.Second}
	v, ok = r.Evaluate(w.StatsWithQuantile(now, 0.99))
	if !ok || v.Rule != RuleLatency || !strings.HasPrefix(v.Reason, "latency p99 31") || !strings.HasSuffix(v.Reason, " > 250ms over 10s (n=240)") {
		t.Errorf("got %v %q", ok, v.Reason)
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want string
	}{
		{"seconds", 10 * time.Second, "10s"},
		{"minute", time.Minute, "1m"},
		{"hour", time.Hour, "1h"},
		{"hour and a half", 90 * time.Minute, "1h30m"},
		{"mixed", 90 * time.Second, "1m30s"},
		{"millis", 250 * time.Millisecond, "250ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatDuration(tt.d); got != tt.want {
				t.Errorf("formatDuration(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}

func TestRulesWindowOptions(t *testing.T) {
	tests := []struct {
		name   string
		window time.Duration
		want   WindowOptions
	}{
		{"default", 10 * time.Second, WindowOptions{Buckets: 10, Width: time.Second}},
		{"minute", time.Minute, WindowOptions{Buckets: 10, Width: 6 * time.Second}},
		{"zero", 0, WindowOptions{Buckets: 10, Width: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Rules{Window: tt.window}).WindowOptions(); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
