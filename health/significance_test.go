package health

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The property tests below compare PValueAbove with exact tests over many
// random counts. "Agrees" means: the decision at Alpha is the same, except
// when the exact p-value lies in the band [Alpha/2, 3·Alpha], where the
// normal approximation may fall on the other side of the threshold. The
// cases are restricted to where a large-sample test is meant to be used:
// at least 5 expected failures and 5 expected successes in each arm.
// Measured over 20,000 cases of each kind, every disagreement had an exact
// p-value between 0.0100 and 0.024: the z-test is a little less
// conservative than the exact tests, never by more than the band.
const (
	bandLow  = Alpha / 2
	bandHigh = 3 * Alpha
)

// TestPooledAgreesWithFisher checks the pooled test (gap 0) against
// Fisher's exact test, the exact conditional test of the same hypothesis,
// over random arms of unequal sizes, as in a rollout at a small weight.
func TestPooledAgreesWithFisher(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 1))
	checked := 0
	for range 5000 {
		n1 := uint64(20 + rng.IntN(500))
		n2 := uint64(float64(n1) * math.Pow(10, rng.Float64()*2.5))
		p2 := rng.Float64() * 0.3
		p1 := p2 * (1 + rng.Float64()*2)
		x1 := min(uint64(max(0, float64(n1)*p1+rng.NormFloat64()*3)), n1)
		x2 := uint64(float64(n2) * p2)
		pool := float64(x1+x2) / float64(n1+n2)
		if float64(n1)*pool < 5 || float64(n2)*pool < 5 || float64(n1)*(1-pool) < 5 || float64(n2)*(1-pool) < 5 {
			continue
		}
		checked++
		z, exact := PValueAbove(x1, n1, x2, n2, 0), fisherUpper(x1, n1, x2, n2)
		if (z < Alpha) != (exact < Alpha) && (exact < bandLow || exact > bandHigh) {
			t.Errorf("x1=%d n1=%d x2=%d n2=%d: z-test p=%.3g, Fisher p=%.3g: decisions differ outside the band", x1, n1, x2, n2, z, exact)
		}
	}
	if checked < 3000 {
		t.Fatalf("only %d cases in the large-sample range", checked)
	}
}

// TestFloorTestAgreesWithBinomial checks the test against a floor with an
// exact binomial tail. Against a legacy arm so large that its rate is
// known, H0 is that consolidated's rate is at most legacy's plus the
// floor, and the exact test of that is the binomial tail P(X >= x1) at
// that rate.
func TestFloorTestAgreesWithBinomial(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 2))
	const n2 = 1 << 40
	checked := 0
	for range 5000 {
		n1 := uint64(20 + rng.IntN(3000))
		p2 := rng.Float64() * 0.2
		floor := []float64{0.005, 0.01, 0.02, 0.05}[rng.IntN(4)]
		x1 := min(uint64(max(0, float64(n1)*(p2+floor*rng.Float64()*4)+rng.NormFloat64()*3)), n1)
		x2 := uint64(float64(n2) * p2)
		q := float64(x2)/float64(n2) + floor
		if float64(n1)*q < 5 || float64(n1)*(1-q) < 5 {
			continue
		}
		checked++
		z, exact := PValueAbove(x1, n1, x2, n2, floor), binomialUpper(x1, n1, q)
		if (z < Alpha) != (exact < Alpha) && (exact < bandLow || exact > bandHigh) {
			t.Errorf("x1=%d n1=%d p2=%.4f floor=%v: score test p=%.3g, binomial p=%.3g: decisions differ outside the band", x1, n1, p2, floor, z, exact)
		}
	}
	if checked < 3000 {
		t.Fatalf("only %d cases in the large-sample range", checked)
	}
}

// TestPValueAboveAtGapZeroIsPooled checks the closed form of the pooled
// test, and that the restricted estimate tends to it as the gap shrinks.
func TestPValueAboveAtGapZeroIsPooled(t *testing.T) {
	for _, c := range []struct{ x1, n1, x2, n2 uint64 }{{30, 1500, 5, 1500}, {12, 300, 40, 2700}, {0, 100, 0, 100}, {3, 40, 9, 900}} {
		p1, p2 := float64(c.x1)/float64(c.n1), float64(c.x2)/float64(c.n2)
		pool := float64(c.x1+c.x2) / float64(c.n1+c.n2)
		want := 1.0
		if se := math.Sqrt(pool * (1 - pool) * (1/float64(c.n1) + 1/float64(c.n2))); se > 0 {
			want = 0.5 * math.Erfc((p1-p2)/se/math.Sqrt2)
		}
		if got := PValueAbove(c.x1, c.n1, c.x2, c.n2, 0); math.Abs(got-want) > 1e-12 {
			t.Errorf("%+v: p=%v, want %v", c, got, want)
		}
		if c.x1+c.x2 == 0 {
			continue
		}
		if near := PValueAbove(c.x1, c.n1, c.x2, c.n2, 1e-9); math.Abs(near-want) > 1e-6 {
			t.Errorf("%+v: p at gap 1e-9 = %v, want about %v", c, near, want)
		}
	}
}

// TestRestrictedRateMaximises checks the bisection against a grid search
// of the log likelihood.
func TestRestrictedRateMaximises(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 3))
	for range 200 {
		n1, n2 := float64(1+rng.IntN(500)), float64(1+rng.IntN(5000))
		x1, x2 := math.Floor(rng.Float64()*n1), math.Floor(rng.Float64()*0.3*n2)
		gap := rng.Float64() * 0.2
		ll := func(p2 float64) float64 {
			p1 := p2 + gap
			return xlogy(x1, p1) + xlogy(n1-x1, 1-p1) + xlogy(x2, p2) + xlogy(n2-x2, 1-p2)
		}
		got := restrictedRate(x1, n1, x2, n2, gap)
		best, bestLL := 0.0, math.Inf(-1)
		for i := 0; i <= 20000; i++ {
			p := (1 - gap) * float64(i) / 20000
			if v := ll(p); v > bestLL {
				best, bestLL = p, v
			}
		}
		if ll(got) < bestLL-1e-6 {
			t.Errorf("x1=%v n1=%v x2=%v n2=%v gap=%v: p2=%v has log likelihood %v, the grid's best %v at %v", x1, n1, x2, n2, gap, got, ll(got), bestLL, best)
		}
	}
}

func xlogy(x, y float64) float64 {
	if x == 0 {
		return 0
	}
	return x * math.Log(y)
}

// TestOneFailureNeverSignificant proves the rule never fires on one
// consolidated failure against a legacy arm with none, with the default
// floor and min_requests, over every consolidated count that can clear
// the floor (20 to 100) and legacy counts from 20 to 2^40. It also shows
// why the floor must be inside the test: the pooled test alone calls such
// a failure significant.
func TestOneFailureNeverSignificant(t *testing.T) {
	r := Rules{MinRequests: 20, Window: DefaultWindow, RelativeErrorRate: RelativeErrorRule{Ratio: 2, Floor: DefaultErrorFloor}}
	pooledFired := 0
	for n1 := uint64(20); n1 <= 100; n1++ {
		for n2 := uint64(20); n2 <= 1<<40; n2 = n2*3/2 + 1 {
			if r.errorRuleFires(1, n1, 0, n2) {
				t.Fatalf("one failure in %d against 0 in %d fires (p=%.3g)", n1, n2, PValueAbove(1, n1, 0, n2, DefaultErrorFloor))
			}
			if PValueAbove(1, n1, 0, n2, 0) < Alpha {
				pooledFired++
			}
		}
	}
	if pooledFired == 0 {
		t.Error("the pooled test never called one failure significant; the floor in the test would not be needed")
	}
	if p := PValueAbove(1, 20, 0, 2980, 0); p > 1e-20 {
		t.Errorf("pooled p for 1/20 vs 0/2980 = %v, want tiny (z about 11)", p)
	}
	if _, safe := r.OneFailureSafe(); !safe {
		t.Error("OneFailureSafe says the defaults are unsafe")
	}
	// Two failures in 20 are 10%, ten points over the floor: the rule
	// may fire on them, so it is not deaf.
	if !r.errorRuleFires(3, 20, 0, 1<<20) {
		t.Error("3 failures in 20 against 0 in 2^20 do not fire")
	}
}

func TestOneFailureSafe(t *testing.T) {
	tests := []struct {
		floor   float64
		minReq  uint64
		safe    bool
		wantMin uint64
	}{
		{0.01, 20, true, 0},
		{0.01, 5, false, 0},
		{0.001, 20, false, 0},
		{0.05, 20, true, 0},
	}
	for _, tt := range tests {
		r := Rules{MinRequests: tt.minReq, Window: DefaultWindow, RelativeErrorRate: RelativeErrorRule{Ratio: 2, Floor: tt.floor}}
		n, safe := r.OneFailureSafe()
		if safe != tt.safe {
			t.Errorf("floor %v min_requests %d: safe=%v, want %v", tt.floor, tt.minReq, safe, tt.safe)
			continue
		}
		if !safe {
			// The suggested min_requests must itself be safe, and one less not.
			r.MinRequests = n
			if _, ok := r.OneFailureSafe(); !ok {
				t.Errorf("floor %v: suggested min_requests %d is not safe", tt.floor, n)
			}
			r.MinRequests = n - 1
			if _, ok := r.OneFailureSafe(); ok {
				t.Errorf("floor %v: min_requests %d is safe too, so %d is not the least", tt.floor, n-1, n)
			}
		}
	}
}

// FuzzPValueAbove: for any counts and gap the p-value is a probability,
// and a larger gap never makes consolidated look more significantly worse.
func FuzzPValueAbove(f *testing.F) {
	f.Add(uint64(30), uint64(1500), uint64(0), uint64(1500), 0.01)
	f.Add(uint64(1), uint64(20), uint64(0), uint64(1<<40), 0.01)
	f.Add(uint64(20), uint64(20), uint64(0), uint64(20), 0.5)
	f.Add(uint64(0), uint64(0), uint64(0), uint64(0), 0.0)
	f.Fuzz(func(t *testing.T, x1, n1, x2, n2 uint64, gap float64) {
		if !(gap >= 0 && gap < 0.9) || n1 > 1<<50 || n2 > 1<<50 {
			return
		}
		p := PValueAbove(x1, n1, x2, n2, gap)
		// With no failure at all, or nothing but failures, there is no
		// variance at gap 0 and the p-value is 1 by convention; the
		// order below holds for the informative cases.
		x1, x2 = min(x1, n1), min(x2, n2)
		informative := x1+x2 > 0 && x1+x2 < n1+n2
		if math.IsNaN(p) || p < 0 || p > 1 {
			t.Fatalf("p=%v for %d/%d vs %d/%d gap %v", p, x1, n1, x2, n2, gap)
		}
		if q := PValueAbove(x1, n1, x2, n2, gap+0.05); informative && q < p-1e-9 {
			t.Fatalf("p=%v at gap %v but %v at gap %v, for %d/%d vs %d/%d", p, gap, q, gap+0.05, x1, n1, x2, n2)
		}
	})
}
