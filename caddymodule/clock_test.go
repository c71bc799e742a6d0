package caddymodule

import (
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/leanvibe/switchback/health"
)

// stepWall returns t as time.Now() would read it after the wall clock was
// stepped by d (whole seconds): its wall clock moved by d, its monotonic
// clock reading unchanged. Go's time.Time keeps the wall seconds since
// 1885 in bits 30 to 62 of its first word when it has a monotonic reading
// (see time.Time's doc in the Go source); the test checks the result, so
// a change of that layout fails the test rather than passing it vacuously.
func stepWall(tb testing.TB, t time.Time, d time.Duration) time.Time {
	tb.Helper()
	type timeLayout struct {
		wall uint64
		ext  int64
		loc  *time.Location
	}
	s := t
	p := (*timeLayout)(unsafe.Pointer(&s))
	if p.wall&(1<<63) == 0 {
		tb.Fatal("time has no monotonic reading")
	}
	p.wall += uint64(int64(d/time.Second)) << 30
	if s.UnixNano()-t.UnixNano() != int64(d) || s.Sub(t) != 0 {
		tb.Fatalf("stepWall: wall moved %v, monotonic %v; want %v and 0", time.Duration(s.UnixNano()-t.UnixNano()), s.Sub(t), d)
	}
	return s
}

// TestObserveIgnoresClockSteps: the handler's windows run on the
// monotonic clock. After a one-minute backwards step of the wall clock,
// 100 failures used to show requests=0 (their epochs were older than the
// window's buckets) and nothing tripped; after a forwards step, the
// window's successes aged out at once, so a handful of failures made a
// 100% error rate and a false trip.
func TestObserveIgnoresClockSteps(t *testing.T) {
	for _, step := range []time.Duration{-time.Minute, time.Minute} {
		t.Run(step.String(), func(t *testing.T) {
			var trips atomic.Int64
			h := testHandler(t, "split", 100, answer(200, "legacy"), answer(200, "consolidated"))
			win := h.sw.win.Load()
			h.monitor = health.NewMonitor(health.MonitorOptions{
				Rules:        health.Rules{ErrorRate: 0.5, MinRequests: 5, Window: 10 * time.Second},
				Consolidated: win.consolidated,
				OnTrip:       func(health.Verdict) { trips.Add(1) },
			})
			observeAt := func(at time.Time, failed bool) {
				out := outcomeOK
				if failed {
					out = outcomeFailed
				}
				h.observe(armConsolidated, at.Add(-time.Millisecond), &recorder{firstByte: at}, out)
			}
			before := time.Now()
			for range 100 {
				observeAt(before, false)
			}
			after := stepWall(t, time.Now(), step)
			for range 5 {
				observeAt(after, true)
			}
			if n := trips.Load(); n != 0 {
				t.Fatalf("5 failures after 100 successes tripped %d times (error rate 5%%, rule 50%%)", n)
			}
			for range 100 {
				observeAt(after, true)
			}
			st := win.consolidated.Stats(health.Now())
			if st.Requests != 205 || st.Failures != 105 {
				t.Errorf("window holds %d requests, %d failures; want 205 and 105", st.Requests, st.Failures)
			}
			if trips.Load() != 1 {
				t.Errorf("105 failures of 205 tripped %d times, want 1", trips.Load())
			}
		})
	}
}

// TestStateClockIgnoresClockSteps: auto_recover's cool-down is timed on
// the monotonic clock once a trip is seen, so a step of the wall clock
// neither ends it early nor stretches it.
func TestStateClockIgnoresClockSteps(t *testing.T) {
	since := time.Now().Round(0).UTC() // as decoded from the store: wall clock only
	var c stateClock
	wall, mono := time.Now(), health.Now()
	if age := c.age(since, wall, mono); age < 0 || age > time.Second {
		t.Fatalf("age at first sight = %v, want about 0", age)
	}
	for _, step := range []time.Duration{-time.Minute, time.Minute} {
		age := c.age(since, stepWall(t, wall, step).Add(10*time.Second), mono+int64(10*time.Second))
		if age < 10*time.Second || age > 11*time.Second {
			t.Errorf("after a %v step and 10s: age = %v, want about 10s", step, age)
		}
	}
	// A Since from a host whose clock runs ahead counts as now.
	var ahead stateClock
	if age := ahead.age(since.Add(time.Hour), wall, mono); age != 0 {
		t.Errorf("future Since: age = %v, want 0", age)
	}
	// A new Since (a new state) is timed afresh.
	if age := c.age(since.Add(-30*time.Second), wall, mono); age < 30*time.Second || age > 31*time.Second {
		t.Errorf("new Since 30s ago: age = %v", age)
	}
}
