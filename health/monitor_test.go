package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tripRecorder collects the verdicts a Monitor reports.
type tripRecorder struct {
	mu       sync.Mutex
	verdicts []Verdict
}

func (r *tripRecorder) onTrip(v Verdict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verdicts = append(r.verdicts, v)
}

func (r *tripRecorder) get() []Verdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Verdict(nil), r.verdicts...)
}

// newTestMonitor returns a Monitor over fresh windows with rules r.
func newTestMonitor(t *testing.T, r Rules) (*Monitor, *tripRecorder) {
	t.Helper()
	if err := r.Validate(); err != nil {
		t.Fatalf("invalid rules: %v", err)
	}
	rec := &tripRecorder{}
	m := NewMonitor(MonitorOptions{
		Rules:        r,
		Consolidated: NewWindow(r.WindowOptions()),
		Legacy:       NewWindow(r.WindowOptions()),
		OnTrip:       rec.onTrip,
	})
	return m, rec
}

// observe records one request on the consolidated arm as the handler does.
func observe(m *Monitor, now int64, latency time.Duration, failed bool) {
	m.Consolidated().Observe(now, latency, failed)
	m.Observed(now, failed, latency)
}

func TestMonitorObserved(t *testing.T) {
	tests := []struct {
		name       string
		rules      Rules
		run        func(m *Monitor) // observations
		wantRule   string           // empty: no trip
		wantReason string
	}{
		{
			name:  "consecutive failures at low traffic",
			rules: Rules{ConsecutiveFailures: 3, ErrorRate: 0.5, MinRequests: 100, Window: 10 * time.Second},
			run: func(m *Monitor) {
				for i := range 3 {
					observe(m, at(time.Duration(i)*time.Second), time.Millisecond, true)
				}
			},
			wantRule:   RuleConsecutiveFailures,
			wantReason: "consecutive_failures 3 >= 3",
		},
		{
			name:  "success resets the streak",
			rules: Rules{ConsecutiveFailures: 3, Window: 10 * time.Second},
			run: func(m *Monitor) {
				for i := range 10 {
					observe(m, at(time.Duration(i)*time.Second), time.Millisecond, i%3 != 2)
				}
			},
		},
		{
			name:  "error rate once min_requests is reached",
			rules: Rules{ErrorRate: 0.05, MinRequests: 20, Window: 10 * time.Second},
			run: func(m *Monitor) {
				for i := range 19 {
					observe(m, at(time.Duration(i)*time.Millisecond), time.Millisecond, i%2 == 0)
				}
				if !m.Armed() {
					panic("tripped below min_requests")
				}
				observe(m, at(20*time.Millisecond), time.Millisecond, true)
			},
			wantRule:   RuleErrorRate,
			wantReason: "error_rate 55% > 5% over 10s (n=20)",
		},
		{
			name:  "latency on a slow request",
			rules: Rules{LatencyQuantile: 0.5, LatencyLimit: 100 * time.Millisecond, Window: 10 * time.Second},
			run: func(m *Monitor) {
				observe(m, at(0), 200*time.Millisecond, false)
			},
			wantRule:   RuleLatency,
			wantReason: "latency p50 200ms > 100ms over 10s (n=1)",
		},
		{
			name:  "latency evaluation is rate limited",
			rules: Rules{LatencyQuantile: 0.5, LatencyLimit: 100 * time.Millisecond, MinRequests: 2, Window: 10 * time.Second},
			run: func(m *Monitor) {
				observe(m, at(0), 200*time.Millisecond, false)                  // evaluated: n=1 < 2
				observe(m, at(5*time.Millisecond), 200*time.Millisecond, false) // within 10ms: skipped
			},
		},
		{
			name:  "latency evaluated again after 10ms",
			rules: Rules{LatencyQuantile: 0.5, LatencyLimit: 100 * time.Millisecond, MinRequests: 2, Window: 10 * time.Second},
			run: func(m *Monitor) {
				observe(m, at(0), 200*time.Millisecond, false)
				observe(m, at(10*time.Millisecond), 200*time.Millisecond, false)
			},
			wantRule:   RuleLatency,
			wantReason: "latency p50 200ms > 100ms over 10s (n=2)",
		},
		{
			name:  "fast successes never evaluate",
			rules: Rules{ErrorRate: 0.01, LatencyQuantile: 0.5, LatencyLimit: 100 * time.Millisecond, Window: 10 * time.Second},
			run: func(m *Monitor) {
				// Failures recorded without Observed, then only fast successes.
				m.Consolidated().Observe(at(0), time.Millisecond, true)
				for i := range 100 {
					observe(m, at(time.Duration(i)*time.Millisecond), time.Millisecond, false)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, rec := newTestMonitor(t, tt.rules)
			tt.run(m)
			got := rec.get()
			if tt.wantRule == "" {
				if len(got) != 0 || !m.Armed() {
					t.Fatalf("tripped: %+v", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("got %d trips, want 1: %+v", len(got), got)
			}
			if got[0].Rule != tt.wantRule || got[0].Reason != tt.wantReason || got[0].At.IsZero() {
				t.Errorf("got %+v, want %q %q", got[0], tt.wantRule, tt.wantReason)
			}
			if m.Armed() {
				t.Error("still armed after a trip")
			}
			if last, ok := m.LastTrip(); !ok || last != got[0] {
				t.Errorf("LastTrip = %+v, %v", last, ok)
			}
		})
	}
}

func TestMonitorFiresOnceAndRearms(t *testing.T) {
	m, rec := newTestMonitor(t, Rules{ConsecutiveFailures: 2, Window: 10 * time.Second})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				observe(m, at(time.Duration(g*100+i)*time.Microsecond), time.Millisecond, true)
			}
		})
	}
	wg.Wait()
	if n := len(rec.get()); n != 1 {
		t.Fatalf("OnTrip called %d times, want 1", n)
	}
	if _, ok := m.Check(at(time.Second)); !ok {
		t.Error("Check does not report the breach")
	}
	if n := len(rec.get()); n != 1 {
		t.Fatalf("Check while disarmed called OnTrip: %d calls", n)
	}

	m.Consolidated().Reset()
	m.Rearm()
	if !m.Armed() {
		t.Fatal("not armed after Rearm")
	}
	observe(m, at(2*time.Second), time.Millisecond, true)
	if n := len(rec.get()); n != 1 {
		t.Fatalf("tripped on one failure after Reset: %d calls", n)
	}
	observe(m, at(2*time.Second), time.Millisecond, true)
	if n := len(rec.get()); n != 2 {
		t.Fatalf("did not trip again after Rearm: %d calls", n)
	}
}

func TestMonitorRunEvaluatesLatency(t *testing.T) {
	// The slow requests are recorded without Observed, so only Run's
	// ticks can notice them.
	var nowNS atomic.Int64
	nowNS.Store(at(time.Second))
	tripped := make(chan Verdict, 1)
	r := Rules{LatencyQuantile: 0.9, LatencyLimit: 50 * time.Millisecond, MinRequests: 10, Window: 10 * time.Second}
	m := NewMonitor(MonitorOptions{
		Rules:    r,
		OnTrip:   func(v Verdict) { tripped <- v },
		Now:      nowNS.Load,
		Interval: time.Millisecond,
	})
	for i := range 20 {
		m.Consolidated().Observe(at(time.Duration(i)*time.Millisecond), 80*time.Millisecond, false)
	}
	if !m.Armed() {
		t.Fatal("tripped before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case v := <-tripped:
		if v.Rule != RuleLatency || !strings.HasPrefix(v.Reason, "latency p90 80") || !strings.HasSuffix(v.Reason, "> 50ms over 10s (n=20)") {
			t.Errorf("verdict %+v", v)
		}
		if !v.At.Equal(Time(at(time.Second))) {
			t.Errorf("At = %v, want the injected clock", v.At)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not trip on latency")
	}
}

func TestMonitorRunStops(t *testing.T) {
	m := NewMonitor(MonitorOptions{Rules: Rules{Window: time.Second}, Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestMonitorLegacyHealthy(t *testing.T) {
	r := Rules{ErrorRate: 0.1, MinRequests: 10, Window: 10 * time.Second}
	m, _ := newTestMonitor(t, r)
	if m.LegacyHealthy(at(0)) {
		t.Error("healthy with an empty window")
	}
	for i := range 9 {
		m.legacy.Observe(at(time.Duration(i)*time.Millisecond), time.Millisecond, false)
	}
	if m.LegacyHealthy(at(time.Second)) {
		t.Error("healthy with 9 requests, under min_requests 10")
	}
	m.legacy.Observe(at(10*time.Millisecond), time.Millisecond, false)
	if !m.LegacyHealthy(at(time.Second)) {
		t.Error("not healthy with 10 good requests")
	}
	for i := range 5 {
		m.legacy.Observe(at(time.Duration(20+i)*time.Millisecond), time.Millisecond, true)
	}
	if m.LegacyHealthy(at(time.Second)) {
		t.Error("healthy at a 33% error rate")
	}
	// The failures age out of the window; new good requests judge it.
	for i := range 10 {
		m.legacy.Observe(at(12*time.Second+time.Duration(i)*time.Millisecond), time.Millisecond, false)
	}
	if !m.LegacyHealthy(at(12 * time.Second)) {
		t.Error("not healthy once the failures left the window")
	}
	if NewMonitor(MonitorOptions{Rules: r}).LegacyHealthy(at(0)) {
		t.Error("healthy with neither a window nor a probe")
	}
}

func TestMonitorLegacyUnhealthy(t *testing.T) {
	r := Rules{ErrorRate: 0.1, MinRequests: 10, Window: 10 * time.Second}
	t.Run("healthy legacy window", func(t *testing.T) {
		m, _ := newTestMonitor(t, r)
		if bad, reason := m.LegacyUnhealthy(at(0)); bad || reason != "" {
			t.Errorf("got %v %q", bad, reason)
		}
	})
	t.Run("legacy window breaks the rules", func(t *testing.T) {
		m, _ := newTestMonitor(t, r)
		legacy := m.legacy
		for i := range 20 {
			legacy.Observe(at(time.Duration(i)*time.Millisecond), time.Millisecond, i%2 == 0)
		}
		bad, reason := m.LegacyUnhealthy(at(time.Second))
		if !bad || reason != "error_rate 50% > 10% over 10s (n=20)" {
			t.Errorf("got %v %q", bad, reason)
		}
	})
	t.Run("no legacy window", func(t *testing.T) {
		m := NewMonitor(MonitorOptions{Rules: r})
		if bad, reason := m.LegacyUnhealthy(at(0)); bad || reason != "" {
			t.Errorf("got %v %q", bad, reason)
		}
	})
	t.Run("probe down", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusBadGateway)
		}))
		defer srv.Close()
		p := &Probe{URL: srv.URL}
		m := NewMonitor(MonitorOptions{Rules: r, LegacyProbe: p})
		if bad, _ := m.LegacyUnhealthy(at(0)); bad {
			t.Error("unhealthy before the first probe")
		}
		if err := p.Check(context.Background()); err == nil {
			t.Fatal("probe of a 502 succeeded")
		}
		bad, reason := m.LegacyUnhealthy(at(0))
		if !bad || !strings.Contains(reason, "probe failed") || !strings.Contains(reason, "502") {
			t.Errorf("got %v %q", bad, reason)
		}
	})
}

func TestMonitorObservedDoesNotAllocate(t *testing.T) {
	m, _ := newTestMonitor(t, Rules{ErrorRate: 0.9, LatencyQuantile: 0.99, LatencyLimit: time.Second, ConsecutiveFailures: 1000, MinRequests: 1 << 40, Window: 10 * time.Second})
	i := int64(0)
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		lat := time.Millisecond
		if i%10 == 0 {
			lat = 2 * time.Second // evaluates latency (rate limited), no trip: n < MinRequests
		}
		observe(m, at(time.Duration(i)*time.Millisecond), lat, i%3 == 0)
	})
	if allocs != 0 {
		t.Errorf("Observe+Observed allocate %v times per call", allocs)
	}
	if !m.Armed() {
		t.Error("tripped")
	}
}
