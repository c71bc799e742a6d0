package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/leanvibe/switchback/health"
)

// TestTripRulesInEffect: each rule given replaces only its own default,
// "off" turns one rule off, in the Caddyfile and in JSON alike.
func TestTripRulesInEffect(t *testing.T) {
	def := health.Rules{ErrorRate: DefaultErrorRate, ConsecutiveFailures: DefaultConsecutiveFailures, MinRequests: DefaultMinRequests, Window: DefaultWindow}
	with := func(f func(r *health.Rules)) health.Rules { r := def; f(&r); return r }
	for _, tc := range []struct {
		name      string
		caddyfile string // a trip block, or "" for none
		json      string // the same in JSON
		want      health.Rules
	}{
		{"no trip block", "", `null`, def},
		{"latency alone keeps the defaults", "trip {\nlatency p99 250ms\n}", `{"latency_quantile":0.99,"latency":"250ms"}`,
			with(func(r *health.Rules) { r.LatencyQuantile, r.LatencyLimit = 0.99, 250*time.Millisecond })},
		{"error_rate alone keeps consecutive_failures", "trip {\nerror_rate 10%\n}", `{"error_rate":0.1}`,
			with(func(r *health.Rules) { r.ErrorRate = 0.1 })},
		{"consecutive_failures alone keeps error_rate", "trip {\nconsecutive_failures 3\n}", `{"consecutive_failures":3}`,
			with(func(r *health.Rules) { r.ConsecutiveFailures = 3 })},
		{"error_rate off", "trip {\nerror_rate off\n}", `{"rules_off":["error_rate"]}`,
			with(func(r *health.Rules) { r.ErrorRate, r.MinRequests = 0, 0 })},
		{"consecutive_failures off with latency", "trip {\nconsecutive_failures off\nlatency p95 1s\n}", `{"rules_off":["consecutive_failures"],"latency_quantile":0.95,"latency":"1s"}`,
			with(func(r *health.Rules) { r.ConsecutiveFailures, r.LatencyQuantile, r.LatencyLimit = 0, 0.95, time.Second })},
		{"latency off", "trip {\nlatency off\n}", `{"rules_off":["latency"]}`, def},
		{"window alone", "trip {\nwindow 3s\n}", `{"window":"3s"}`, with(func(r *health.Rules) { r.Window = 3 * time.Second })},
		{"relative error rate keeps the defaults", "trip {\nerror_rate 2x legacy\n}", `{"relative_error_rate":{"ratio":2}}`,
			with(func(r *health.Rules) {
				r.RelativeErrorRate = health.RelativeErrorRule{Ratio: 2, Floor: health.DefaultErrorFloor}
			})},
		{"relative beside absolute", "trip {\nerror_rate 2x legacy floor 2% min_requests 50\nlatency p99 1.5x legacy floor 20ms\nerror_rate 7%\n}",
			`{"error_rate":0.07,"relative_error_rate":{"ratio":2,"floor":0.02,"min_requests":50},"relative_latency":{"quantile":0.99,"ratio":1.5,"floor":"20ms"}}`,
			with(func(r *health.Rules) {
				r.ErrorRate = 0.07
				r.RelativeErrorRate = health.RelativeErrorRule{Ratio: 2, Floor: 0.02, MinRequests: 50}
				r.RelativeLatency = health.RelativeLatencyRule{Quantile: 0.99, Ratio: 1.5, Floor: 20 * time.Millisecond}
			})},
		{"relative rules alone", "trip {\nerror_rate 2x legacy\nerror_rate off\nconsecutive_failures off\n}",
			`{"relative_error_rate":{"ratio":2},"rules_off":["error_rate","consecutive_failures"]}`,
			with(func(r *health.Rules) {
				r.ErrorRate, r.ConsecutiveFailures = 0, 0
				r.RelativeErrorRate = health.RelativeErrorRule{Ratio: 2, Floor: health.DefaultErrorFloor}
			})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fromFile Handler
			if tc.caddyfile != "" {
				d := caddyfile.NewTestDispenser(tc.caddyfile)
				d.Next()
				if err := fromFile.unmarshalTrip(d); err != nil {
					t.Fatalf("Caddyfile: %v", err)
				}
				if err := fromFile.Trip.check(); err != nil {
					t.Fatalf("Caddyfile: check: %v", err)
				}
			}
			var fromJSON Handler
			if err := json.Unmarshal([]byte(tc.json), &fromJSON.Trip); err != nil {
				t.Fatal(err)
			}
			if err := fromJSON.Trip.check(); err != nil {
				t.Fatalf("JSON: check: %v", err)
			}
			for src, h := range map[string]*Handler{"Caddyfile": &fromFile, "JSON": &fromJSON} {
				if got := h.rules().Rules; got != tc.want {
					t.Errorf("%s: rules in effect %+v, want %+v", src, got, tc.want)
				}
				if err := h.rules().Validate(); err != nil {
					t.Errorf("%s: %v", src, err)
				}
			}
		})
	}
}

// TestTripRulesOffErrors: JSON that turns off an unknown rule, or a rule
// it also sets, or every rule, is refused with a message saying so.
func TestTripRulesOffErrors(t *testing.T) {
	for _, tc := range []struct{ json, msg string }{
		{`{"rules_off":["p99"]}`, `unknown rule "p99"`},
		{`{"rules_off":["error_rate"],"error_rate":0.1}`, "error_rate is both set and turned off"},
		{`{"rules_off":["latency","latency"]}`, "latency is named twice"},
		{`{"rules_off":["error_rate","consecutive_failures"]}`, "every rule is off"},
	} {
		h := Handler{Name: "main"}
		if err := json.Unmarshal([]byte(tc.json), &h.Trip); err != nil {
			t.Fatal(err)
		}
		err := h.checkConfig()
		if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "switch main") {
			t.Errorf("%s: error %v, want it to name switch main and say %q", tc.json, err, tc.msg)
		}
	}
}

// TestDescribeRules: traffic status shows each rule in effect, and the
// ones off.
func TestDescribeRules(t *testing.T) {
	h := Handler{Trip: &Trip{LatencyQuantile: 0.99, Latency: caddy.Duration(250 * time.Millisecond), RulesOff: []string{"consecutive_failures"}}}
	r := h.rules()
	got := describeRules(&RuleStatus{ErrorRate: r.ErrorRate, LatencyQuantile: r.LatencyQuantile, LatencyMS: ms(r.LatencyLimit),
		ConsecutiveFailures: r.ConsecutiveFailures, MinRequests: r.MinRequests, Window: r.Window.String()})
	want := "error_rate 5%, latency p99 250ms, consecutive_failures off (window 10s, min_requests 20)"
	if got != want {
		t.Errorf("describeRules = %q, want %q", got, want)
	}
}
