package health_test

import (
	"fmt"
	"time"

	"github.com/leanvibe/switchback/health"
)

func ExampleRules_Evaluate() {
	rate, _ := health.ParsePercent("5%")
	q, _ := health.ParseQuantile("p99")
	rules := health.Rules{
		ErrorRate:       rate,
		LatencyQuantile: q,
		LatencyLimit:    250 * time.Millisecond,
		MinRequests:     20,
		Window:          health.DefaultWindow,
	}
	if err := rules.Validate(); err != nil {
		fmt.Println(err)
		return
	}

	w := health.NewWindow(rules.WindowOptions())
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	for i := range 240 {
		now := start + int64(i)*int64(10*time.Millisecond)
		w.Observe(now, 20*time.Millisecond, i%8 < 3) // 37.5% fail
	}
	v, tripped := rules.Evaluate(w.StatsWithQuantile(start+int64(3*time.Second), rules.LatencyQuantile))
	fmt.Println(tripped, v.Rule)
	fmt.Println(v.Reason)
	// Output:
	// true error_rate
	// error_rate 37.5% > 5% over 10s (n=240)
}

func ExampleRules_Validate() {
	rules := health.Rules{ErrorRate: 1.5, LatencyQuantile: 1.01, LatencyLimit: time.Second}
	fmt.Println(rules.Validate())
	// Output:
	// error_rate 150% is out of range: must be greater than 0% and at most 100%
	// latency quantile p101 is out of range: must be between p0 and p100, exclusive (e.g. p99)
	// window 0s is out of range: must be positive (e.g. 10s)
}

func ExampleParseQuantile() {
	for _, s := range []string{"p99", "p99.9", "p100", "99"} {
		q, err := health.ParseQuantile(s)
		fmt.Println(q, err)
	}
	// Output:
	// 0.99 <nil>
	// 0.999 <nil>
	// 0 invalid quantile "p100": must be between p0 and p100, exclusive
	// 0 invalid quantile "99": must be p followed by a number, like p99 or p99.9
}
