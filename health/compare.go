package health

import (
	"encoding/json"
	"math"
	"time"
)

// Comparison sets consolidated's window beside legacy's: the evidence the
// relative rules judge, and that a rollout records with its decisions.
type Comparison struct {
	// Legacy and Consolidated are the two arms' windows.
	Legacy, Consolidated Stats

	// ErrorRatio is consolidated's error rate over legacy's: +Inf when
	// legacy has no failures and consolidated has some, 0 when
	// consolidated has none.
	ErrorRatio float64

	// Gap is consolidated's error rate minus legacy's, a fraction in
	// [-1,1]: 0.02 is two percentage points worse.
	Gap float64

	// PValue is the one-sided p-value that consolidated fails more often
	// than legacy, by the pooled two-proportion z-test (PValueAbove with
	// gap 0); 1 when an arm has no requests. The relative error-rate rule
	// tests against its floor instead: see Comparison.PValueAbove.
	PValue float64
}

// Compare compares two arms' windows, for example Window.Stats of each,
// or counters summed over a fleet. It does not allocate.
func Compare(legacy, consolidated Stats) Comparison {
	return Comparison{
		Legacy:       legacy,
		Consolidated: consolidated,
		ErrorRatio:   ratio(consolidated.ErrorRate, legacy.ErrorRate),
		Gap:          consolidated.ErrorRate - legacy.ErrorRate,
		PValue:       PValueAbove(consolidated.Failures, consolidated.Requests, legacy.Failures, legacy.Requests, 0),
	}
}

// PValueAbove returns the one-sided p-value that consolidated's error rate
// exceeds legacy's by more than gap (see the function PValueAbove).
func (c Comparison) PValueAbove(gap float64) float64 {
	return PValueAbove(c.Consolidated.Failures, c.Consolidated.Requests, c.Legacy.Failures, c.Legacy.Requests, gap)
}

// LatencyRatio returns consolidated's latency at quantile q over legacy's,
// when both Stats hold that quantile (see Stats.LatencyAt); +Inf when
// legacy's is zero and consolidated's is not.
func (c Comparison) LatencyRatio(q float64) (float64, bool) {
	lc, ok1 := c.Consolidated.LatencyAt(q)
	ll, ok2 := c.Legacy.LatencyAt(q)
	if !ok1 || !ok2 {
		return 0, false
	}
	return ratio(float64(lc), float64(ll)), true
}

// ratio returns a/b, +Inf for a positive a over zero, and 0 for a zero a.
func ratio(a, b float64) float64 {
	switch {
	case a <= 0:
		return 0
	case b <= 0:
		return math.Inf(1)
	}
	return a / b
}

// armJSON is one arm of a Comparison in JSON.
type armJSON struct {
	Requests  uint64  `json:"requests"`
	Failures  uint64  `json:"failures"`
	ErrorRate float64 `json:"error_rate"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
}

func armOf(s Stats) armJSON {
	return armJSON{Requests: s.Requests, Failures: s.Failures, ErrorRate: s.ErrorRate, P50: millis(s.P50), P99: millis(s.P99)}
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// MarshalJSON writes c as the rollout's evidence shows it:
//
//	{"arms": {"legacy": {"requests": 0, "failures": 0, "error_rate": 0, "p50_ms": 0, "p99_ms": 0},
//	          "consolidated": {...}},
//	 "error_ratio": 2.5, "gap": 0.03, "p_value": 0.003}
//
// An infinite error_ratio (legacy has no failures) is written as null.
func (c Comparison) MarshalJSON() ([]byte, error) {
	var r *float64
	if !math.IsInf(c.ErrorRatio, 0) && !math.IsNaN(c.ErrorRatio) {
		r = &c.ErrorRatio
	}
	return json.Marshal(struct {
		Arms       map[string]armJSON `json:"arms"`
		ErrorRatio *float64           `json:"error_ratio"`
		Gap        float64            `json:"gap"`
		PValue     float64            `json:"p_value"`
	}{
		Arms:       map[string]armJSON{"legacy": armOf(c.Legacy), "consolidated": armOf(c.Consolidated)},
		ErrorRatio: r,
		Gap:        c.Gap,
		PValue:     c.PValue,
	})
}
