package health

import (
	"testing"
	"time"
)

func BenchmarkObserve(b *testing.B) {
	w := NewWindow(WindowOptions{})
	now := time.Now().UnixNano()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		w.Observe(now+int64(i)*1000, time.Duration(i&1023)*time.Millisecond/8, i&63 == 0)
		i++
	}
}

func BenchmarkObserveParallel(b *testing.B) {
	w := NewWindow(WindowOptions{})
	start := time.Now().UnixNano()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			w.Observe(start+int64(i)*1000, time.Duration(i&1023)*time.Millisecond/8, i&63 == 0)
			i++
		}
	})
}

func BenchmarkMonitorObserved(b *testing.B) {
	rules := Rules{
		ErrorRate:           0.99,
		LatencyQuantile:     0.99,
		LatencyLimit:        100 * time.Millisecond,
		ConsecutiveFailures: 1 << 40,
		MinRequests:         10,
		Window:              10 * time.Second,
	}
	tests := []struct {
		name    string
		observe bool // also call Window.Observe, as the handler does
		failed  func(i int) bool
	}{
		{"successes", false, func(i int) bool { return false }},
		{"1pct failures", false, func(i int) bool { return i%100 == 0 }},
		{"all failures", false, func(i int) bool { return true }},
		{"with Observe", true, func(i int) bool { return i%100 == 0 }},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			m := NewMonitor(MonitorOptions{Rules: rules})
			w := m.Consolidated()
			now := time.Now().UnixNano()
			for i := range 1000 { // a healthy window
				w.Observe(now+int64(i), time.Millisecond, false)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				t := now + int64(i)*1000
				lat := time.Duration(i&1023) * time.Millisecond / 16 // up to 64ms: under the limit
				failed := tt.failed(i)
				if tt.observe {
					w.Observe(t, lat, failed)
				}
				m.Observed(t, failed, lat)
				i++
			}
			if !m.Armed() {
				b.Fatal("monitor tripped during the benchmark")
			}
		})
	}
}

func BenchmarkStats(b *testing.B) {
	w := NewWindow(WindowOptions{})
	now := int64(time.Hour)
	for i := range 100000 {
		w.Observe(now-int64(i)*int64(50*time.Microsecond), time.Duration(i%1000)*time.Millisecond, i%50 == 0)
	}
	b.ReportAllocs()
	for b.Loop() {
		w.Stats(now)
	}
}
