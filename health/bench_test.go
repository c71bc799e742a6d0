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
	m := NewMonitor(MonitorOptions{Rules: Rules{
		ErrorRate:           0.5,
		LatencyQuantile:     0.99,
		LatencyLimit:        100 * time.Millisecond,
		ConsecutiveFailures: 1000,
		MinRequests:         10,
		Window:              10 * time.Second,
	}})
	w := m.Consolidated()
	now := time.Now().UnixNano()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		t := now + int64(i)*1000
		lat := time.Duration(i&1023) * time.Millisecond / 16 // up to 64ms: under the limit
		failed := i&63 == 0
		w.Observe(t, lat, failed)
		m.Observed(t, failed, lat)
		i++
	}
	if !m.Armed() {
		b.Fatal("monitor tripped during the benchmark")
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
