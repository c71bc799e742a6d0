package health

import (
	"encoding/json"
	"testing"
	"time"
)

func TestTallyCountsAdd(t *testing.T) {
	var a, b Tally
	for i := 0; i < 90; i++ {
		a.Observe(10*time.Millisecond, false)
	}
	for i := 0; i < 10; i++ {
		b.Observe(200*time.Millisecond, true)
	}
	sum := a.Counts()
	sum.Add(b.Counts())
	if sum.Requests != 100 || sum.Failures != 10 || sum.ErrorRate() != 0.1 {
		t.Fatalf("sum = %+v", sum)
	}
	if err := sum.Check(); err != nil {
		t.Fatal(err)
	}
	if p50 := sum.Quantile(0.5); p50 < 9900*time.Microsecond || p50 > 10100*time.Microsecond {
		t.Errorf("p50 = %v, want about 10ms", p50)
	}
	if p99 := sum.Quantile(0.99); p99 < 198*time.Millisecond || p99 > 202*time.Millisecond {
		t.Errorf("p99 = %v, want about 200ms", p99)
	}
	// Through JSON, as a gateway publishes it.
	raw, _ := json.Marshal(sum)
	var back Counts
	if err := json.Unmarshal(raw, &back); err != nil || back.Quantile(0.99) != sum.Quantile(0.99) || back.Requests != 100 {
		t.Fatalf("JSON round trip: %s -> %+v, %v", raw, back, err)
	}
	for _, bad := range []Counts{{Requests: 1, Failures: 2}, {Latency: [][2]uint64{{numSlots, 1}}}, {Latency: [][2]uint64{{5, 1}, {3, 1}}}} {
		if bad.Check() == nil {
			t.Errorf("Check(%+v) = nil", bad)
		}
	}
}

func TestTallyObserveAllocs(t *testing.T) {
	var tl Tally
	if n := testing.AllocsPerRun(1000, func() { tl.Observe(time.Millisecond, false) }); n != 0 {
		t.Fatalf("Observe allocates %v times", n)
	}
}
