package health

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"time"
)

// exportBounds are the upper bounds of the lifetime latency histogram, the
// usual Prometheus defaults. It is never modified.
var exportBounds = [...]time.Duration{
	5 * time.Millisecond,
	10 * time.Millisecond,
	25 * time.Millisecond,
	50 * time.Millisecond,
	100 * time.Millisecond,
	250 * time.Millisecond,
	500 * time.Millisecond,
	1 * time.Second,
	2500 * time.Millisecond,
	5 * time.Second,
	10 * time.Second,
}

// Cumulative holds a Window's lifetime totals, in the shape of a
// Prometheus histogram.
type Cumulative struct {
	// Count is the number of requests observed; it equals the count of
	// the last (+Inf) bucket.
	Count uint64

	// Failures is the number of failed requests observed.
	Failures uint64

	// Sum is the total latency observed, in seconds.
	Sum float64

	// Buckets are the cumulative counts of requests at most as slow as
	// each upper bound, in increasing order of bounds; the last bound is
	// +Inf.
	Buckets []CumulativeBucket
}

// CumulativeBucket is one bucket of a Cumulative histogram.
type CumulativeBucket struct {
	// UpperBound is the bucket's upper bound (Prometheus "le") in
	// seconds; +Inf for the last bucket.
	UpperBound float64

	// Count is the number of requests with latency <= UpperBound.
	Count uint64
}

// Cumulative returns the lifetime totals. The counters are read one by
// one while others may observe, so Sum may be a request or two ahead of or
// behind Count; Count and the buckets always agree.
func (w *Window) Cumulative() Cumulative {
	c := Cumulative{
		Failures: w.cumFailures.Load(),
		Sum:      float64(w.cumSum.Load()) / float64(time.Second),
		Buckets:  make([]CumulativeBucket, len(w.cumBuckets)),
	}
	for i := range w.cumBuckets {
		c.Count += w.cumBuckets[i].Load()
		c.Buckets[i].Count = c.Count
		if i < len(exportBounds) {
			c.Buckets[i].UpperBound = exportBounds[i].Seconds()
		} else {
			c.Buckets[i].UpperBound = math.Inf(1)
		}
	}
	c.Failures = min(c.Failures, c.Count)
	return c
}

// WritePrometheus writes c as the samples of a Prometheus histogram in the
// text exposition format: name_bucket with an le label per bucket, then
// name_sum and name_count. labels is a comma-separated list of label
// pairs such as `switch="main",arm="legacy"`, already escaped; empty means
// none. The caller writes the "# HELP" and "# TYPE name histogram" lines
// once per metric name, before the samples of all its label sets.
func (c Cumulative) WritePrometheus(w io.Writer, name, labels string) error {
	bw := bufio.NewWriter(w)
	sep := ""
	if labels != "" {
		sep = ","
	}
	for _, b := range c.Buckets {
		bw.WriteString(name)
		bw.WriteString("_bucket{")
		bw.WriteString(labels)
		bw.WriteString(sep)
		bw.WriteString(`le="`)
		bw.WriteString(formatFloat(b.UpperBound))
		bw.WriteString(`"} `)
		bw.WriteString(strconv.FormatUint(b.Count, 10))
		bw.WriteByte('\n')
	}
	braced := ""
	if labels != "" {
		braced = "{" + labels + "}"
	}
	bw.WriteString(name + "_sum" + braced + " " + formatFloat(c.Sum) + "\n")
	bw.WriteString(name + "_count" + braced + " " + strconv.FormatUint(c.Count, 10) + "\n")
	return bw.Flush()
}

// formatFloat formats f as Prometheus expects: shortest representation,
// with +Inf spelled out.
func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
