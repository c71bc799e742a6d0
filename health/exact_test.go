package health

import "math"

// logChoose returns log C(n, k).
func logChoose(n, k float64) float64 {
	a, _ := math.Lgamma(n + 1)
	b, _ := math.Lgamma(k + 1)
	c, _ := math.Lgamma(n - k + 1)
	return a - b - c
}

// fisherUpper returns the one-sided p-value of Fisher's exact test that
// group 1 (x1 of n1) fails more often than group 2 (x2 of n2): the
// hypergeometric probability, given x1+x2 failures among n1+n2, that group
// 1 holds x1 or more of them.
func fisherUpper(x1, n1, x2, n2 uint64) float64 {
	N, K, n := float64(n1+n2), float64(x1+x2), float64(n1)
	den := logChoose(N, n)
	p := 0.0
	for k := float64(x1); k <= math.Min(K, n); k++ {
		if N-K < n-k {
			continue
		}
		p += math.Exp(logChoose(K, k) + logChoose(N-K, n-k) - den)
	}
	return math.Min(p, 1)
}

// binomialUpper returns P(X >= x) for X ~ Binomial(n, p).
func binomialUpper(x, n uint64, p float64) float64 {
	if x == 0 {
		return 1
	}
	lp, lq := math.Log(p), math.Log1p(-p)
	s := 0.0
	for k := x; k <= n; k++ {
		s += math.Exp(logChoose(float64(n), float64(k)) + float64(k)*lp + float64(n-k)*lq)
	}
	return math.Min(s, 1)
}
