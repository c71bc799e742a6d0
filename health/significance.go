package health

import "math"

// Alpha is the significance level of the relative error-rate rule: it
// fires only on a one-sided p-value below Alpha.
const Alpha = 0.01

// PValueAbove returns the one-sided p-value of the hypothesis that
// consolidated's failure rate exceeds legacy's by more than gap (a
// fraction: 0.01 is one percentage point), from x1 failures in n1
// consolidated requests and x2 failures in n2 legacy requests. A small
// value is evidence that consolidated is worse by more than gap.
//
// The test is a score test of H0: p1 − p2 ≤ gap against H1: p1 − p2 > gap,
// with z = (p̂1 − p̂2 − gap) / sqrt(p̃1(1−p̃1)/n1 + p̃2(1−p̃2)/n2), where p̃1
// and p̃2 are the maximum-likelihood rates under p1 − p2 = gap
// (Farrington and Manning, 1990), and p = 1 − Φ(z). At gap 0 the
// restricted rates are the pooled rate (x1+x2)/(n1+n2), so it is exactly
// the pooled one-sided two-proportion z-test.
//
// Why the gap is in the test and not only beside it: the pooled test asks
// whether the two rates differ at all, and when legacy has seen many
// requests and no failure, its pooled variance is so small that one
// failure in 20 consolidated requests is "significant" (z ≈ 11 against
// 0 of 2,980). Testing against the floor instead asks whether the
// excess over legacy is above the floor, with the variance the floor
// implies, and one failure in 20 then gives p ≈ 0.04 (see
// TestOneFailureNeverSignificant).
//
// It returns 1 when either arm has no requests, and when the variance
// under H0 is zero (no failures anywhere, or all failed) and the observed
// difference does not exceed gap. It does not allocate.
func PValueAbove(x1, n1, x2, n2 uint64, gap float64) float64 {
	z, ok := zAbove(x1, n1, x2, n2, gap)
	if !ok {
		return 1
	}
	return upperTail(z)
}

// zAbove returns the score statistic of PValueAbove, and false when it is
// not defined.
func zAbove(x1, n1, x2, n2 uint64, gap float64) (float64, bool) {
	if n1 == 0 || n2 == 0 {
		return 0, false
	}
	x1, x2 = min(x1, n1), min(x2, n2)
	p1, p2 := float64(x1)/float64(n1), float64(x2)/float64(n2)
	diff := p1 - p2 - gap
	var r1, r2 float64
	if gap == 0 {
		pooled := float64(x1+x2) / float64(n1+n2)
		r1, r2 = pooled, pooled
	} else {
		r2 = restrictedRate(float64(x1), float64(n1), float64(x2), float64(n2), gap)
		r1 = r2 + gap
	}
	v := r1*(1-r1)/float64(n1) + r2*(1-r2)/float64(n2)
	if !(v > 0) {
		if diff > 0 {
			return math.Inf(1), true
		}
		return 0, false
	}
	return diff / math.Sqrt(v), true
}

// restrictedRate returns legacy's rate p2 that maximises the likelihood of
// x1 of n1 and x2 of n2 under p1 = p2 + gap, for 0 < gap < 1. The log
// likelihood is concave in p2 on (0, 1−gap), so its derivative falls
// through zero once and bisection finds it; a derivative that keeps one
// sign puts the maximum at that end.
func restrictedRate(x1, n1, x2, n2, gap float64) float64 {
	deriv := func(p2 float64) float64 {
		p1 := p2 + gap
		d := x1/p1 - (n1-x1)/(1-p1) - (n2-x2)/(1-p2)
		if x2 > 0 {
			d += x2 / p2
		}
		return d
	}
	lo, hi := 0.0, 1-gap
	if hi <= 0 {
		return 0
	}
	// The ends themselves may be poles; search strictly inside.
	const eps = 1e-15
	if deriv(lo+eps) <= 0 {
		return lo
	}
	if deriv(hi-eps) >= 0 {
		return hi
	}
	for range 100 {
		mid := (lo + hi) / 2
		if deriv(mid) > 0 {
			lo = mid
		} else {
			hi = mid
		}
		if hi-lo < 1e-15 {
			break
		}
	}
	return (lo + hi) / 2
}

// upperTail returns P(Z > z) for a standard normal Z.
func upperTail(z float64) float64 {
	return 0.5 * math.Erfc(z/math.Sqrt2)
}
