package health

import (
	"bytes"
	"math"
	"testing"
	"time"
)

func TestCumulative(t *testing.T) {
	w := NewWindow(WindowOptions{})
	lats := []time.Duration{time.Millisecond, 5 * time.Millisecond, 7 * time.Millisecond, 300 * time.Millisecond, 20 * time.Second}
	for i, d := range lats {
		w.Observe(at(time.Duration(i)*time.Minute), d, i == 3) // across many windows
	}
	c := w.Cumulative()
	if c.Count != 5 || c.Failures != 1 {
		t.Errorf("count %d failures %d, want 5 1", c.Count, c.Failures)
	}
	if want := 20.313; math.Abs(c.Sum-want) > 1e-9 {
		t.Errorf("sum %v, want %v", c.Sum, want)
	}
	wantCounts := map[float64]uint64{0.005: 2, 0.01: 3, 0.25: 3, 0.5: 4, 10: 4, math.Inf(1): 5}
	for _, b := range c.Buckets {
		if want, ok := wantCounts[b.UpperBound]; ok && b.Count != want {
			t.Errorf("le=%v: %d, want %d", b.UpperBound, b.Count, want)
		}
	}
	if last := c.Buckets[len(c.Buckets)-1]; !math.IsInf(last.UpperBound, 1) || last.Count != c.Count {
		t.Errorf("last bucket %+v, want +Inf with the total count", last)
	}
}

func TestWritePrometheus(t *testing.T) {
	c := Cumulative{
		Count: 3,
		Sum:   0.75,
		Buckets: []CumulativeBucket{
			{UpperBound: 0.005, Count: 1},
			{UpperBound: 0.5, Count: 2},
			{UpperBound: math.Inf(1), Count: 3},
		},
	}
	tests := []struct {
		name   string
		labels string
		want   string
	}{
		{
			name:   "with labels",
			labels: `switch="main",arm="legacy"`,
			want: `switchback_latency_seconds_bucket{switch="main",arm="legacy",le="0.005"} 1
switchback_latency_seconds_bucket{switch="main",arm="legacy",le="0.5"} 2
switchback_latency_seconds_bucket{switch="main",arm="legacy",le="+Inf"} 3
switchback_latency_seconds_sum{switch="main",arm="legacy"} 0.75
switchback_latency_seconds_count{switch="main",arm="legacy"} 3
`,
		},
		{
			name: "without labels",
			want: `switchback_latency_seconds_bucket{le="0.005"} 1
switchback_latency_seconds_bucket{le="0.5"} 2
switchback_latency_seconds_bucket{le="+Inf"} 3
switchback_latency_seconds_sum 0.75
switchback_latency_seconds_count 3
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := c.WritePrometheus(&buf, "switchback_latency_seconds", tt.labels); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", buf.String(), tt.want)
			}
		})
	}
}

func TestWritePrometheusDefaultBounds(t *testing.T) {
	var buf bytes.Buffer
	if err := NewWindow(WindowOptions{}).Cumulative().WritePrometheus(&buf, "m", ""); err != nil {
		t.Fatal(err)
	}
	want := `m_bucket{le="0.005"} 0
m_bucket{le="0.01"} 0
m_bucket{le="0.025"} 0
m_bucket{le="0.05"} 0
m_bucket{le="0.1"} 0
m_bucket{le="0.25"} 0
m_bucket{le="0.5"} 0
m_bucket{le="1"} 0
m_bucket{le="2.5"} 0
m_bucket{le="5"} 0
m_bucket{le="10"} 0
m_bucket{le="+Inf"} 0
m_sum 0
m_count 0
`
	if buf.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
}
