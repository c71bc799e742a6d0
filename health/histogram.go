package health

import (
	"math"
	"math/bits"
	"time"
)

// The latency histogram is log-linear: every power of two between
// 2^minExp and 2^maxExp nanoseconds is split into subCount equal slots. A
// slot [L, L+w) has w <= L/subCount, so reporting its midpoint is off by at
// most w/2 / L = 1/(2*subCount) = 1/128 (0.79%) of any latency in it.
const (
	subBits  = 6                            // log2 of the slots per power of two
	subCount = 1 << subBits                 // 64 linear slots per power of two
	minExp   = 10                           // 2^10 ns = 1.024µs: shorter latencies count here
	maxExp   = 40                           // 2^40 ns ≈ 18.3min: longer latencies count in the last slot
	numSlots = (maxExp - minExp) * subCount // 1920 slots
)

// slotOf returns the histogram slot of a latency. Latencies below 2^minExp
// ns, including negative ones, clamp to the first slot; latencies of 2^maxExp
// ns or more clamp to the last.
func slotOf(d time.Duration) int {
	if d < 1<<minExp {
		return 0
	}
	v := uint64(d)
	if v >= 1<<maxExp {
		return numSlots - 1
	}
	e := bits.Len64(v) - 1
	return (e-minExp)<<subBits | int(v>>(e-subBits))&(subCount-1)
}

// slotValue returns the latency reported for slot i: the midpoint of the
// slot's range.
func slotValue(i int) time.Duration {
	e := i>>subBits + minExp
	sub := uint64(i & (subCount - 1))
	width := uint64(1) << (e - subBits)
	lower := (subCount + sub) * width
	return time.Duration(lower + width/2)
}

// rankOf returns the 1-based nearest rank of quantile q among n samples:
// the smallest r with r >= q*n, at least 1. The epsilon keeps q*n that
// floating point rounds slightly above an integer on that integer.
func rankOf(q float64, n uint64) uint64 {
	r := uint64(math.Ceil(q*float64(n) - 1e-9))
	if r < 1 {
		r = 1
	}
	if r > n {
		r = n
	}
	return r
}

// quantileOf returns the latency at quantile q of a merged histogram
// holding total samples, or 0 when it is empty.
func quantileOf(h *[numSlots]uint64, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	rank := rankOf(q, total)
	var seen uint64
	for i := range h {
		seen += h[i]
		if seen >= rank {
			return slotValue(i)
		}
	}
	return slotValue(numSlots - 1) // total overstated by a racing rotation
}
