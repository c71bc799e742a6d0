package tests

import (
	"net/http"
	"strings"
	"testing"
)

// TestPartialTripBlockKeepsDefaults: a trip block that gives only a
// latency rule keeps the default error_rate and consecutive_failures, so
// a consolidated that fails fast (500 in a millisecond, never slow) still
// trips; traffic status and the admin API show the rules in effect.
func TestPartialTripBlockKeepsDefaults(t *testing.T) {
	e := &reloadEnv{legacy: NewUpstream(t, "legacy"), consolidated: NewUpstream(t, "consolidated")}
	e.g = StartGateway(t, e.config("50", "trip {\n\t\t\tlatency p99 250ms\n\t\t}"))

	var detail struct {
		Rules struct {
			ErrorRate           float64  `json:"error_rate"`
			LatencyQuantile     float64  `json:"latency_quantile"`
			ConsecutiveFailures int      `json:"consecutive_failures"`
			RulesOff            []string `json:"rules_off"`
		} `json:"rules"`
	}
	e.g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &detail)
	if r := detail.Rules; r.ErrorRate != 0.05 || r.LatencyQuantile != 0.99 || r.ConsecutiveFailures != 10 || len(r.RulesOff) != 0 {
		t.Fatalf("rules in effect: %+v; want error_rate 5%%, latency p99, consecutive_failures 10", r)
	}
	out, errOut, code := e.g.CLI(t, "traffic", "status")
	if code != 0 {
		t.Fatalf("traffic status: exit %d: %s", code, errOut)
	}
	if want := "trip: error_rate 5%, latency p99 250ms, consecutive_failures 10 (window 10s, min_requests 20)"; !strings.Contains(out, want) {
		t.Fatalf("traffic status does not show %q:\n%s", want, out)
	}
	e.trips(t, "a fast-failing consolidated under trip { latency p99 250ms }")
}
