package health

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// at returns the Unix nanoseconds of d after an arbitrary fixed origin.
func at(d time.Duration) int64 {
	const origin = int64(1_700_000_000) * int64(time.Second)
	return origin + int64(d)
}

type observation struct {
	at      time.Duration
	latency time.Duration
	failed  bool
}

func TestWindowExpiry(t *testing.T) {
	tests := []struct {
		name         string
		opts         WindowOptions
		observed     []observation
		now          time.Duration
		wantRequests uint64
		wantFailures uint64
	}{
		{
			name:     "empty",
			now:      5 * time.Second,
			observed: nil,
		},
		{
			name:         "9s old remains",
			observed:     []observation{{at: 500 * time.Millisecond, failed: true}},
			now:          9500 * time.Millisecond,
			wantRequests: 1,
			wantFailures: 1,
		},
		{
			name:     "10.5s old is gone",
			observed: []observation{{at: 500 * time.Millisecond, failed: true}},
			now:      11 * time.Second,
		},
		{
			name: "mixed ages",
			observed: []observation{
				{at: 0},
				{at: 1 * time.Second, failed: true},
				{at: 5 * time.Second},
				{at: 10 * time.Second, failed: true},
				{at: 10900 * time.Millisecond},
			},
			now:          10999 * time.Millisecond,
			wantRequests: 4, // the one at 0 is gone
			wantFailures: 2,
		},
		{
			name: "bucket reused by a later epoch drops the old counts",
			observed: []observation{
				{at: 2 * time.Second, failed: true},
				{at: 12 * time.Second}, // same bucket, 10 epochs later
			},
			now:          12 * time.Second,
			wantRequests: 1,
		},
		{
			name: "observation older than its bucket is dropped",
			observed: []observation{
				{at: 12 * time.Second},
				{at: 2 * time.Second, failed: true},
			},
			now:          12 * time.Second,
			wantRequests: 1,
		},
		{
			name: "future buckets are not counted",
			observed: []observation{
				{at: 3 * time.Second},
				{at: 4 * time.Second},
			},
			now:          3500 * time.Millisecond,
			wantRequests: 1,
		},
		{
			name: "custom 4 x 250ms",
			opts: WindowOptions{Buckets: 4, Width: 250 * time.Millisecond},
			observed: []observation{
				{at: 0, failed: true},
				{at: 800 * time.Millisecond},
				{at: 900 * time.Millisecond, failed: true},
			},
			now:          1100 * time.Millisecond, // epochs 1..4 live
			wantRequests: 2,
			wantFailures: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWindow(tt.opts)
			for _, o := range tt.observed {
				w.Observe(at(o.at), o.latency, o.failed)
			}
			s := w.Stats(at(tt.now))
			if s.Requests != tt.wantRequests || s.Failures != tt.wantFailures {
				t.Errorf("got %d requests, %d failures; want %d, %d", s.Requests, s.Failures, tt.wantRequests, tt.wantFailures)
			}
			wantRate := 0.0
			if tt.wantRequests > 0 {
				wantRate = float64(tt.wantFailures) / float64(tt.wantRequests)
			}
			if s.ErrorRate != wantRate {
				t.Errorf("error rate %v, want %v", s.ErrorRate, wantRate)
			}
		})
	}
}

func TestWindowLatencyExpires(t *testing.T) {
	w := NewWindow(WindowOptions{})
	for i := range 100 {
		w.Observe(at(time.Duration(i)*time.Millisecond), 2*time.Second, false)
	}
	if got := w.Quantile(at(time.Second), 0.5); !within(got, 2*time.Second, 0.01) {
		t.Fatalf("p50 %v, want about 2s", got)
	}
	// Eleven seconds on, the same bucket counts a new epoch: the slow
	// latencies must be gone from its histogram.
	w.Observe(at(11*time.Second), 3*time.Millisecond, false)
	s := w.Stats(at(11 * time.Second))
	if s.Requests != 1 || !within(s.P50, 3*time.Millisecond, 0.01) || !within(s.P999, 3*time.Millisecond, 0.01) {
		t.Errorf("after expiry: %+v, want one request of 3ms", s)
	}
}

func TestWindowNegativeNow(t *testing.T) {
	w := NewWindow(WindowOptions{})
	w.Observe(-5, time.Millisecond, true)
	if s := w.Stats(0); s.Requests != 1 || s.Failures != 1 {
		t.Errorf("negative now: %+v, want it counted at 0", s)
	}
}

func TestWindowStress(t *testing.T) {
	// Observers, readers, Advance and Reset all at once, on a window
	// that rotates constantly; run with -race. Nothing may go out of
	// range.
	w := NewWindow(WindowOptions{Buckets: 3, Width: 100 * time.Microsecond})
	var clock atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				now := clock.Add(int64(time.Microsecond))
				w.Observe(now, time.Duration(i)*time.Microsecond, (i+g)%2 == 0)
			}
		})
	}
	check := func(s Stats) {
		if s.Failures > s.Requests || s.ErrorRate < 0 || s.ErrorRate > 1 || s.P50 < 0 || s.P50 > s.P999 {
			t.Errorf("out of range: %+v", s)
		}
	}
	wg.Go(func() {
		for range 200 {
			check(w.Stats(clock.Load()))
			w.Advance(clock.Load())
		}
	})
	wg.Go(func() {
		for range 20 {
			w.Reset()
			check(w.Stats(clock.Load()))
		}
	})
	wg.Wait()
	check(w.Stats(clock.Load()))
	if c := w.Cumulative(); c.Count != 4*5000 || c.Failures != 2*5000 {
		t.Errorf("lifetime count %d failures %d, want %d %d", c.Count, c.Failures, 4*5000, 2*5000)
	}
}

func TestWindowDefaults(t *testing.T) {
	w := NewWindow(WindowOptions{})
	if got := w.Span(); got != 10*time.Second {
		t.Errorf("default span %v, want 10s", got)
	}
	if got := w.Stats(at(0)).Window; got != 10*time.Second {
		t.Errorf("Stats.Window %v, want 10s", got)
	}
	w = NewWindow(WindowOptions{Buckets: 5, Width: 2 * time.Second})
	if got := w.Span(); got != 10*time.Second {
		t.Errorf("span %v, want 10s", got)
	}
}

func TestConsecutiveFailures(t *testing.T) {
	w := NewWindow(WindowOptions{})
	seq := []struct {
		failed bool
		want   uint64
	}{
		{true, 1}, {true, 2}, {true, 3}, {false, 0}, {true, 1}, {false, 0}, {false, 0},
	}
	for i, step := range seq {
		w.Observe(at(time.Duration(i)*time.Millisecond), time.Millisecond, step.failed)
		if got := w.ConsecutiveFailures(); got != step.want {
			t.Fatalf("step %d: consecutive failures %d, want %d", i, got, step.want)
		}
	}
}

func TestWindowReset(t *testing.T) {
	w := NewWindow(WindowOptions{})
	for i := range 50 {
		w.Observe(at(time.Duration(i)*100*time.Millisecond), 3*time.Millisecond, true)
	}
	w.Reset()
	s := w.Stats(at(5 * time.Second))
	if s.Requests != 0 || s.Failures != 0 || s.ConsecutiveFailures != 0 || s.P99 != 0 {
		t.Fatalf("after Reset: %+v, want empty", s)
	}
	if c := w.Cumulative(); c.Count != 50 || c.Failures != 50 {
		t.Errorf("Reset cleared lifetime totals: count %d failures %d, want 50 50", c.Count, c.Failures)
	}
	// The bucket of the current epoch is reused after Reset.
	w.Observe(at(5*time.Second), 7*time.Millisecond, false)
	s = w.Stats(at(5 * time.Second))
	if s.Requests != 1 || s.Failures != 0 {
		t.Errorf("after Reset and one success: %d requests %d failures, want 1 0", s.Requests, s.Failures)
	}
	if !within(s.P50, 7*time.Millisecond, 0.01) {
		t.Errorf("p50 %v, want about 7ms", s.P50)
	}
}

func TestSlotOf(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want int
	}{
		{"negative clamps to first", -time.Second, 0},
		{"zero clamps to first", 0, 0},
		{"below range", 500 * time.Nanosecond, 0},
		{"first slot", 1024, 0},
		{"second slot", 1040, 1},
		{"next power", 2048, 64},
		{"last slot", 1<<40 - 1, numSlots - 1},
		{"above range", time.Hour, numSlots - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := slotOf(tt.d); got != tt.want {
				t.Errorf("slotOf(%v) = %d, want %d", tt.d, got, tt.want)
			}
		})
	}
}

func TestSlotsAreMonotonicAndTight(t *testing.T) {
	prev := time.Duration(0)
	for i := range numSlots {
		v := slotValue(i)
		if v <= prev {
			t.Fatalf("slot %d value %v not above slot %d value %v", i, v, i-1, prev)
		}
		if got := slotOf(v); got != i {
			t.Fatalf("slotOf(slotValue(%d)) = %d", i, got)
		}
		prev = v
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		d := time.Duration(1024 + r.Int64N(1<<40-1024))
		if v := slotValue(slotOf(d)); !within(v, d, 1.0/128) {
			t.Fatalf("latency %v reported as %v: more than 1/128 off", d, v)
		}
	}
}

// within reports whether got is within rel of want, relatively.
func within(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got)-float64(want)) <= rel*float64(want)
}

func TestQuantileAccuracy(t *testing.T) {
	tests := []struct {
		name   string
		sample func(r *rand.Rand) time.Duration
	}{
		{"log-normal around 50ms", func(r *rand.Rand) time.Duration {
			return time.Duration(math.Exp(math.Log(50e6) + 1.2*r.NormFloat64()))
		}},
		{"log-normal around 200µs", func(r *rand.Rand) time.Duration {
			return time.Duration(math.Exp(math.Log(200e3) + 0.8*r.NormFloat64()))
		}},
		{"uniform 1ms to 1s", func(r *rand.Rand) time.Duration {
			return time.Millisecond + time.Duration(r.Int64N(int64(999*time.Millisecond)))
		}},
		{"uniform 10µs to 20µs", func(r *rand.Rand) time.Duration {
			return 10*time.Microsecond + time.Duration(r.Int64N(int64(10*time.Microsecond)))
		}},
	}
	quantiles := []float64{0.5, 0.9, 0.95, 0.99, 0.999}
	for _, tt := range tests {
		for seed := uint64(1); seed <= 5; seed++ {
			t.Run(tt.name, func(t *testing.T) {
				r := rand.New(rand.NewPCG(seed, 42))
				w := NewWindow(WindowOptions{})
				n := 10000 + r.IntN(20000)
				samples := make([]time.Duration, n)
				for i := range samples {
					samples[i] = tt.sample(r)
					// Spread over the window: 5 buckets.
					w.Observe(at(time.Duration(i%5)*time.Second), samples[i], false)
				}
				slices.Sort(samples)
				now := at(5 * time.Second)
				s := w.Stats(now)
				if s.Requests != uint64(n) {
					t.Fatalf("requests %d, want %d", s.Requests, n)
				}
				for _, q := range quantiles {
					exact := samples[rankOf(q, uint64(n))-1]
					got := w.Quantile(now, q)
					if !within(got, exact, 0.02) {
						t.Errorf("seed %d: q%v = %v, exact %v: more than 2%% off", seed, q, got, exact)
					}
					if d, ok := s.LatencyAt(q); ok && d != got {
						t.Errorf("Stats.LatencyAt(%v) = %v, Quantile %v", q, d, got)
					}
				}
			})
		}
	}
}

func TestQuantileEmpty(t *testing.T) {
	w := NewWindow(WindowOptions{})
	if got := w.Quantile(at(0), 0.99); got != 0 {
		t.Errorf("empty window p99 = %v, want 0", got)
	}
}

func TestErrorRateProperty(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		w := NewWindow(WindowOptions{Buckets: 1 + r.IntN(12), Width: time.Duration(50+r.IntN(2000)) * time.Millisecond})
		clock := time.Duration(0)
		failP := r.Float64()
		for i := range 3000 {
			clock += time.Duration(r.IntN(int(50 * time.Millisecond)))
			// Now and then an observation from the past.
			obsAt := clock
			if r.IntN(20) == 0 {
				obsAt -= time.Duration(r.IntN(int(30 * time.Second)))
			}
			w.Observe(at(obsAt), time.Duration(r.IntN(int(time.Second))), r.Float64() < failP)
			var s Stats
			if i%100 == 0 {
				s = w.Stats(at(clock))
			} else {
				s.Requests, s.Failures = w.counts(at(clock))
				s.ErrorRate = errorRate(s.Requests, s.Failures)
			}
			if !(s.ErrorRate >= 0 && s.ErrorRate <= 1) || s.Failures > s.Requests {
				t.Fatalf("seed %d: error rate %v (%d/%d) out of [0,1]", seed, s.ErrorRate, s.Failures, s.Requests)
			}
			if s.Requests == 0 && s.ErrorRate != 0 {
				t.Fatalf("seed %d: error rate %v without requests", seed, s.ErrorRate)
			}
		}
	}
}

func TestWindowConcurrentCountsAddUp(t *testing.T) {
	w := NewWindow(WindowOptions{})
	const goroutines, perG = 16, 5000
	now := at(3 * time.Second)
	w.Advance(now - int64(time.Second)) // readies the bucket: no rotation below
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				// Stay inside one 1s epoch: no rotation after the first.
				t := now + int64((g*perG+i)%1000)*int64(time.Microsecond)
				w.Observe(t, time.Duration(i)*time.Microsecond, i%4 == 0)
			}
		})
	}
	// Readers race with the writers too.
	wg.Go(func() {
		for range 100 {
			s := w.Stats(now)
			if s.ErrorRate < 0 || s.ErrorRate > 1 {
				t.Errorf("error rate %v out of range", s.ErrorRate)
			}
		}
	})
	wg.Wait()
	s := w.Stats(now)
	if want := uint64(goroutines * perG); s.Requests != want {
		t.Errorf("requests %d, want %d", s.Requests, want)
	}
	if want := uint64(goroutines * perG / 4); s.Failures != want {
		t.Errorf("failures %d, want %d", s.Failures, want)
	}
	c := w.Cumulative()
	if c.Count != goroutines*perG || c.Failures != goroutines*perG/4 {
		t.Errorf("cumulative count %d failures %d", c.Count, c.Failures)
	}
}

func TestWindowConcurrentRotation(t *testing.T) {
	// Many goroutines cross epoch boundaries at once; the counts of epochs
	// no one rotates while observing must still add up, and nothing may
	// go out of range.
	w := NewWindow(WindowOptions{Buckets: 4, Width: time.Millisecond})
	const goroutines, perG = 8, 20000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				t := int64(i) * int64(time.Microsecond) * 10 // 100 per epoch
				w.Observe(t, time.Millisecond, (i+g)%3 == 0)
				if i%97 == 0 {
					s := w.Stats(t)
					if s.Failures > s.Requests || s.ErrorRate < 0 || s.ErrorRate > 1 {
						panic("window out of range")
					}
				}
			}
		})
	}
	wg.Wait()
	s := w.Stats(int64(perG-1) * int64(time.Microsecond) * 10)
	if s.Requests > 4*100*goroutines {
		t.Errorf("requests %d: more than the window can hold", s.Requests)
	}
}

func TestAdvance(t *testing.T) {
	const width = int64(time.Second)
	w := NewWindow(WindowOptions{Buckets: 3, Width: time.Second})
	base := (at(0)/width/4 + 1) * 4 * width // epoch multiple of 4: bucket 0
	w.Observe(base, time.Millisecond, true)
	w.Observe(base+1*width, time.Millisecond, false)
	w.Observe(base+2*width, time.Millisecond, false)
	w.Observe(base+3*width, time.Millisecond, false)
	// Epoch 4 reuses epoch 0's bucket, the spare, already out of the
	// window at epoch 3; readying it early changes nothing.
	now := base + 3*width + width/2
	before := w.Stats(now)
	w.Advance(now)
	after := w.Stats(now)
	if before != after || after.Requests != 3 || after.Failures != 0 {
		t.Errorf("Advance changed the window: before %+v after %+v", before, after)
	}
	if b := &w.buckets[0]; b.epoch.Load() != (base/width+4)+1 || b.requests.Load() != 0 {
		t.Errorf("bucket not readied: epoch %d requests %d", b.epoch.Load(), b.requests.Load())
	}
	w.Observe(base+4*width, time.Millisecond, true)
	if s := w.Stats(base + 4*width); s.Requests != 3 || s.Failures != 1 {
		t.Errorf("after Advance: %d requests %d failures, want 3 1", s.Requests, s.Failures)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	w := NewWindow(WindowOptions{})
	i := int64(0)
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		w.Observe(at(time.Duration(i)*time.Millisecond), time.Duration(i)*time.Microsecond, i%7 == 0)
	})
	if allocs != 0 {
		t.Errorf("Observe allocates %v times per call", allocs)
	}
	allocs = testing.AllocsPerRun(10, func() { w.Quantile(at(time.Second), 0.99) })
	if allocs != 0 {
		t.Errorf("Quantile allocates %v times per call", allocs)
	}
}
