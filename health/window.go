package health

import (
	"sync/atomic"
	"time"
)

// Defaults for WindowOptions.
const (
	// DefaultBuckets is the number of buckets in a Window when
	// WindowOptions.Buckets is zero.
	DefaultBuckets = 10

	// DefaultWidth is the time one bucket covers when WindowOptions.Width
	// is zero.
	DefaultWidth = time.Second
)

// Bucket epoch states. A bucket's epoch field holds epoch+1 while it counts
// an epoch, epochEmpty when it counts nothing, and epochRotating while one
// observer zeroes it for a new epoch.
const (
	epochEmpty    int64 = 0
	epochRotating int64 = -1
)

// WindowOptions configures a Window. The zero value gives the default
// 10 × 1s window.
type WindowOptions struct {
	// Buckets is the number of buckets the window spans (default 10). The
	// ring holds one more as a spare, and each costs about 7.5 KiB: a
	// default Window takes about 85 KiB.
	Buckets int

	// Width is the time one bucket covers (default 1s). The window spans
	// Buckets × Width.
	Width time.Duration
}

// Window counts one arm's requests, failures and latencies over a sliding
// window, and over its lifetime for export. Observe is lock-free and does
// not allocate; every method is safe for concurrent use. A Window must be
// made with NewWindow and must not be copied.
type Window struct {
	width int64 // nanoseconds covered by one bucket
	n     int64 // epochs in the window

	// buckets holds n+1 buckets: the n of the window and a spare that
	// Advance readies for the next epoch. Epoch e lives in bucket
	// e mod (n+1).
	buckets []bucket

	consecutive atomic.Uint64 // failures since the last success

	// Lifetime totals, never reset.
	cumFailures atomic.Uint64
	cumSum      atomic.Uint64 // nanoseconds
	cumBuckets  [len(exportBounds) + 1]atomic.Uint64
}

// bucket counts the observations of one epoch (a Width-long interval of
// time, numbered now/Width).
type bucket struct {
	epoch    atomic.Int64 // epoch+1, epochEmpty or epochRotating
	requests atomic.Uint64
	failures atomic.Uint64
	hist     [numSlots]atomic.Uint32
}

// NewWindow returns an empty Window. Zero or negative options take their
// defaults.
func NewWindow(opts WindowOptions) *Window {
	if opts.Buckets <= 0 {
		opts.Buckets = DefaultBuckets
	}
	if opts.Width <= 0 {
		opts.Width = DefaultWidth
	}
	return &Window{
		width:   int64(opts.Width),
		n:       int64(opts.Buckets),
		buckets: make([]bucket, opts.Buckets+1),
	}
}

// Span returns the time the window covers: Buckets × Width.
func (w *Window) Span() time.Duration {
	return time.Duration(w.width * w.n)
}

// Observe records one request that finished at now (nanoseconds on the
// monotonic clock of Now; see Mono) after latency, and whether it failed.
// Negative now counts as 0. Observe is lock-free and does not allocate.
//
// An observation that belongs to an epoch older than its bucket's current
// one, or that arrives while another goroutine rotates its bucket, is left
// out of the window but still counts in the lifetime totals.
func (w *Window) Observe(now int64, latency time.Duration, failed bool) {
	slot := slotOf(latency)
	e := w.epochAt(now)
	b := &w.buckets[e%int64(len(w.buckets))]
	if b.epoch.Load() == e+1 || w.rotate(b, e) {
		b.requests.Add(1)
		if failed {
			b.failures.Add(1)
		}
		b.hist[slot].Add(1)
	}

	if failed {
		w.consecutive.Add(1)
		w.cumFailures.Add(1)
	} else if w.consecutive.Load() != 0 {
		w.consecutive.Store(0)
	}
	if latency > 0 {
		w.cumSum.Add(uint64(latency))
	}
	i := 0
	for i < len(exportBounds) && latency > exportBounds[i] {
		i++
	}
	w.cumBuckets[i].Add(1)
}

// rotate moves bucket b to epoch e, zeroing its counters, and reports
// whether b now counts epoch e. It fails when b already counts a newer
// epoch (the observation is then older than the whole ring, so too old
// for the window) or when another goroutine is rotating b at this moment.
func (w *Window) rotate(b *bucket, e int64) bool {
	for {
		old := b.epoch.Load()
		switch {
		case old == e+1:
			return true
		case old == epochRotating, old > e+1:
			return false
		}
		if !b.epoch.CompareAndSwap(old, epochRotating) {
			continue
		}
		b.requests.Store(0)
		b.failures.Store(0)
		for i := range b.hist {
			b.hist[i].Store(0)
		}
		b.epoch.Store(e + 1)
		return true
	}
}

// Advance readies the bucket of the epoch after now's: it zeroes it and
// marks it with that epoch, so that the observers of the next epoch find
// it ready and need not rotate it on the request path. It is the ring's
// spare bucket, which holds an epoch already outside the window, so Stats
// is not affected. Calling
// Advance is optional; Monitor.Run calls it every Interval.
func (w *Window) Advance(now int64) {
	next := w.epochAt(now) + 1
	w.rotate(&w.buckets[next%int64(len(w.buckets))], next)
}

// live reports whether bucket b holds an epoch inside the window that ends
// at epoch cur.
func (w *Window) live(b *bucket, cur int64) bool {
	stored := b.epoch.Load()
	if stored == epochEmpty || stored == epochRotating {
		return false
	}
	e := stored - 1
	return e <= cur && e > cur-w.n
}

// epochAt returns the epoch that contains now.
func (w *Window) epochAt(now int64) int64 {
	if now < 0 {
		now = 0
	}
	return now / w.width
}

// counts returns the requests and failures in the window at now. Failures
// never exceed requests.
func (w *Window) counts(now int64) (requests, failures uint64) {
	cur := w.epochAt(now)
	for i := range w.buckets {
		b := &w.buckets[i]
		if w.live(b, cur) {
			requests += b.requests.Load()
			failures += b.failures.Load()
		}
	}
	return requests, min(failures, requests)
}

// merge sums the live buckets' histograms at now into h and returns the
// number of samples in it.
func (w *Window) merge(now int64, h *[numSlots]uint64) (total uint64) {
	cur := w.epochAt(now)
	for i := range w.buckets {
		b := &w.buckets[i]
		if !w.live(b, cur) {
			continue
		}
		for j := range b.hist {
			n := uint64(b.hist[j].Load())
			h[j] += n
			total += n
		}
	}
	return total
}

// ConsecutiveFailures returns the number of failures observed since the
// last success, over the Window's lifetime (Reset clears it).
func (w *Window) ConsecutiveFailures() uint64 {
	return w.consecutive.Load()
}

// Quantile returns the latency at quantile q (0 < q < 1, e.g. 0.99) of the
// requests in the window at now, within 0.8% for latencies between 1µs and
// 18min. It returns 0 when the window holds no requests. It does not
// allocate.
func (w *Window) Quantile(now int64, q float64) time.Duration {
	var h [numSlots]uint64
	return quantileOf(&h, w.merge(now, &h), q)
}

// Stats returns a snapshot of the window at now, with the latency at p50,
// p90, p99 and p99.9.
func (w *Window) Stats(now int64) Stats {
	return w.StatsWithQuantile(now, 0)
}

// StatsWithQuantile is like Stats and also sets Stats.Quantile to q and
// Stats.Latency to the latency at q. A q outside (0,1) leaves both zero.
func (w *Window) StatsWithQuantile(now int64, q float64) Stats {
	var h [numSlots]uint64
	total := w.merge(now, &h)
	s := Stats{
		P50:                 quantileOf(&h, total, 0.5),
		P90:                 quantileOf(&h, total, 0.9),
		P99:                 quantileOf(&h, total, 0.99),
		P999:                quantileOf(&h, total, 0.999),
		ConsecutiveFailures: w.consecutive.Load(),
		Window:              w.Span(),
	}
	s.Requests, s.Failures = w.counts(now)
	s.ErrorRate = errorRate(s.Requests, s.Failures)
	if q > 0 && q < 1 {
		s.Quantile = q
		s.Latency = quantileOf(&h, total, q)
	}
	return s
}

// errorRate returns failures/requests in [0,1], or 0 without requests.
func errorRate(requests, failures uint64) float64 {
	if requests == 0 {
		return 0
	}
	return float64(min(failures, requests)) / float64(requests)
}

// Reset empties the window and clears the consecutive failure count, for
// example when a switch recovers. The lifetime totals are kept, as
// Prometheus counters must not go down. An Observe racing with Reset may
// or may not be counted.
func (w *Window) Reset() {
	for i := range w.buckets {
		b := &w.buckets[i]
		for {
			old := b.epoch.Load()
			if old == epochEmpty || old == epochRotating || b.epoch.CompareAndSwap(old, epochEmpty) {
				break
			}
		}
	}
	w.consecutive.Store(0)
}

// Stats is a snapshot of a Window.
type Stats struct {
	// Requests and Failures count the requests in the window; Failures
	// never exceeds Requests.
	Requests, Failures uint64

	// ErrorRate is Failures/Requests, in [0,1]; 0 when Requests is 0.
	ErrorRate float64

	// P50, P90, P99 and P999 are the latencies at those quantiles of the
	// window; 0 when Requests is 0.
	P50, P90, P99, P999 time.Duration

	// Quantile and Latency are an extra quantile of the window's latency,
	// set by StatsWithQuantile: Latency is the latency at Quantile. Both
	// are zero otherwise.
	Quantile float64
	Latency  time.Duration

	// ConsecutiveFailures is the number of failures since the last success.
	ConsecutiveFailures uint64

	// Window is the time the window spans.
	Window time.Duration
}

// LatencyAt returns the latency at quantile q if s holds it: one of 0.5,
// 0.9, 0.99 and 0.999, or s.Quantile.
func (s Stats) LatencyAt(q float64) (time.Duration, bool) {
	const eps = 1e-12
	near := func(a float64) bool { return a-q < eps && q-a < eps }
	switch {
	case q <= 0 || q >= 1:
		return 0, false
	case s.Quantile > 0 && near(s.Quantile):
		return s.Latency, true
	case near(0.5):
		return s.P50, true
	case near(0.9):
		return s.P90, true
	case near(0.99):
		return s.P99, true
	case near(0.999):
		return s.P999, true
	}
	return 0, false
}
