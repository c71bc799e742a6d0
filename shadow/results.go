package shadow

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the results, whatever the traffic.
const (
	// DefaultMaxSamples is the samples kept per route.
	DefaultMaxSamples = 5
	// maxPaths bounds the differing paths counted per route; the rest
	// count under "...".
	maxPaths = 64
	// maxSignatures bounds the distinct sets of differing paths counted
	// per route; the rest count as one set, "...", a mismatch.
	maxSignatures = 64
	// warmupRepeats is how many pairs of each route are always asked
	// twice of the serving arm (when noise is on), so that noise is known
	// before the first mismatches are judged.
	warmupRepeats = 10
	// noiseZ is the z score above which the rate of a path between the
	// arms is judged higher than its rate within the serving arm.
	noiseZ = 3.0
)

// Outcome is how a pair of answers compared.
type Outcome string

// Outcomes, the outcome label of switchback_shadow_requests_total.
const (
	Match     Outcome = "match"      // no difference
	Mismatch  Outcome = "mismatch"   // a difference that is not noise
	NoiseOnly Outcome = "noise_only" // differences, all of them noise
	Skipped   Outcome = "skipped"    // not compared: too large, undecodable, no answer
	Dropped   Outcome = "dropped"    // not sent: max_inflight shadow requests were in flight
)

// Outcomes lists every outcome.
var Outcomes = []Outcome{Match, Mismatch, NoiseOnly, Skipped, Dropped}

// Pair is one sampled request with its answers.
type Pair struct {
	Method, Path string // the request; the path's query is never kept
	At           time.Time
	Serving      Answer  // what the client got
	Shadow       Answer  // what the other arm answered
	Repeat       *Answer // the serving arm's second answer, if asked (noise)
}

// Results are a switch's shadow results: overall (until Reset) and at
// the current rollout step (until ResetStep). They are safe for
// concurrent use and bounded in memory: at most DefaultMaxRoutes routes,
// each with at most 64 paths, 64 sets of paths and 5 samples.
type Results struct {
	maxRoutes, maxSamples int

	sampled, skipped, dropped atomic.Uint64

	mu     sync.Mutex
	all    tally
	step   tally
	stepID string // the rollout step the step tally counts (StepAt)
}

type tally struct {
	routes map[string]*routeTally
}

// routeTally counts one route's pairs.
type routeTally struct {
	compared uint64            // pairs of the two arms
	repeats  uint64            // pairs of the serving arm with itself
	cross    map[string]uint64 // path: pairs of the arms differing there
	same     map[string]uint64 // path: pairs of the serving arm differing there
	sigs     map[string]*signature
	samples  []Sample
}

// signature counts the pairs that differed in exactly these paths.
type signature struct {
	paths []string
	count uint64
}

// Sample is a kept pair of answers, redacted.
type Sample struct {
	Request string       `json:"request"`
	At      time.Time    `json:"at"`
	Serving SampleAnswer `json:"serving"`
	Shadow  SampleAnswer `json:"shadow"`
	Diffs   []string     `json:"diffs"`
	judged  bool         // a difference was not noise when it was kept
}

// NewResults returns empty results. maxRoutes 0 means DefaultMaxRoutes.
func NewResults(maxRoutes int) *Results {
	if maxRoutes <= 0 {
		maxRoutes = DefaultMaxRoutes
	}
	return &Results{maxRoutes: maxRoutes, maxSamples: DefaultMaxSamples}
}

// Sampled, Skip and Drop count requests sampled, sampled but not
// compared, and sampled but not sent.
func (r *Results) Sampled() { r.sampled.Add(1) }
func (r *Results) Skip()    { r.skipped.Add(1) }
func (r *Results) Drop()    { r.dropped.Add(1) }

// WantRepeat says whether a pair of this route should also ask the
// serving arm a second time: always for a route's first pairs, then for
// the noise share of them (rnd is uniform in [0, 1)). Noise 0 never asks.
func (r *Results) WantRepeat(method, path string, noise, rnd float64) bool {
	if noise <= 0 {
		return false
	}
	r.mu.Lock()
	rt := r.all.routes[r.routeKey(&r.all, Route(method, path))]
	warm := rt == nil || rt.repeats < warmupRepeats
	r.mu.Unlock()
	return warm || rnd < noise
}

// Record compares a pair with the rules and counts it. A pair whose
// bodies cannot be compared (over max_body, undecodable) is counted as
// skipped. The outcome is judged with what is known of noise now; the
// report judges every pair again with what is known then.
func (r *Results) Record(rules *Rules, p Pair) Outcome {
	cross, err := rules.Diff(p.Serving, p.Shadow)
	if err != nil {
		r.Skip()
		return Skipped
	}
	var same []string
	if p.Repeat != nil {
		if same, err = rules.Diff(p.Serving, *p.Repeat); err != nil {
			p.Repeat = nil // the cross pair still counts
		}
	}
	var sample Sample
	if len(cross) > 0 {
		sample = Sample{
			Request: p.Method + " " + strings.SplitN(p.Path, "?", 2)[0],
			At:      p.At.UTC(),
			Serving: rules.redact(p.Serving, cross),
			Shadow:  rules.redact(p.Shadow, cross),
			Diffs:   cross,
		}
	}
	route := Route(p.Method, p.Path)

	r.mu.Lock()
	defer r.mu.Unlock()
	all := r.all.add(r, route, cross, same, p.Repeat != nil)
	r.step.add(r, route, cross, same, p.Repeat != nil)
	out := all.judge(cross)
	if len(cross) > 0 {
		sample.judged = out == Mismatch
		all.keep(sample, r.maxSamples)
	}
	return out
}

// routeKey is the route as counted: itself, or OtherRoute once the
// routes are full.
func (r *Results) routeKey(t *tally, route string) string {
	if _, ok := t.routes[route]; ok || len(t.routes) < r.maxRoutes {
		return route
	}
	return OtherRoute
}

func (t *tally) add(r *Results, route string, cross, same []string, repeated bool) *routeTally {
	if t.routes == nil {
		t.routes = map[string]*routeTally{}
	}
	key := r.routeKey(t, route)
	rt := t.routes[key]
	if rt == nil {
		rt = &routeTally{cross: map[string]uint64{}, same: map[string]uint64{}, sigs: map[string]*signature{}}
		t.routes[key] = rt
	}
	if repeated {
		rt.repeats++
		for _, p := range same {
			countPath(rt.same, p)
		}
	}
	rt.compared++
	if len(cross) == 0 {
		return rt
	}
	paths := make([]string, 0, len(cross))
	for _, p := range cross {
		paths = append(paths, countPath(rt.cross, p))
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	sig := strings.Join(paths, "\x00")
	s := rt.sigs[sig]
	if s == nil {
		if len(rt.sigs) >= maxSignatures {
			sig, paths = "...", []string{"..."}
			s = rt.sigs[sig]
		}
		if s == nil {
			s = &signature{paths: paths}
			rt.sigs[sig] = s
		}
	}
	s.count++
	return rt
}

// countPath counts one difference at path, under "..." once the route's
// paths are full, and returns the path as counted.
func countPath(m map[string]uint64, path string) string {
	if _, ok := m[path]; !ok && len(m) >= maxPaths {
		path = "..."
	}
	m[path]++
	return path
}

// noise says whether a path is noise on this route. Let n_x be the pairs
// of the two arms and d_x those differing at the path, n_a the pairs of
// the serving arm with itself and d_a those differing there, r_x = d_x/n_x
// and r_a = d_a/n_a. The path is noise when d_a >= 1 and r_x is not
// significantly above r_a: with the pooled rate p = (d_x+d_a)/(n_x+n_a),
// z = (r_x - r_a) / sqrt(p(1-p)(1/n_x + 1/n_a)) is below 3 (one-sided
// p ~ 0.001), or r_x <= r_a.
func (rt *routeTally) noise(path string) bool {
	da := rt.same[path]
	if da == 0 || rt.repeats == 0 || rt.compared == 0 {
		return false
	}
	dx := rt.cross[path]
	nx, na := float64(rt.compared), float64(rt.repeats)
	rx, ra := float64(dx)/nx, float64(da)/na
	if rx <= ra {
		return true
	}
	p := float64(dx+da) / (nx + na)
	se := math.Sqrt(p * (1 - p) * (1/nx + 1/na))
	if se == 0 {
		return true
	}
	return (rx-ra)/se < noiseZ
}

// judge says how a pair with these differences compares now.
func (rt *routeTally) judge(diffs []string) Outcome {
	if len(diffs) == 0 {
		return Match
	}
	for _, p := range diffs {
		if !rt.noise(p) {
			return Mismatch
		}
	}
	return NoiseOnly
}

// keep adds a sample: one judged a mismatch replaces the oldest sample
// that was noise only (else the oldest); a noise-only one only fills a
// free place.
func (rt *routeTally) keep(s Sample, max int) {
	if len(rt.samples) < max {
		rt.samples = append(rt.samples, s)
		return
	}
	if !s.judged {
		return
	}
	i := slices.IndexFunc(rt.samples, func(x Sample) bool { return !x.judged })
	if i < 0 {
		i = 0
	}
	rt.samples = append(slices.Delete(rt.samples, i, i+1), s)
}

// mismatched counts the route's pairs that differ somewhere not noise,
// and those whose differences are all noise, with noise judged by nz.
func (rt *routeTally) mismatched(nz *routeTally) (mismatched, noiseOnly uint64) {
	for _, s := range rt.sigs {
		if slices.ContainsFunc(s.paths, func(p string) bool { return !nz.noise(p) }) {
			mismatched += s.count
		} else {
			noiseOnly += s.count
		}
	}
	return mismatched, noiseOnly
}

// Report is the shadow report of a switch.
type Report struct {
	Switch       string        `json:"switch"`
	Direction    string        `json:"direction"`
	Sampled      uint64        `json:"sampled"`
	Compared     uint64        `json:"compared"`
	Mismatched   uint64        `json:"mismatched"`
	NoiseOnly    uint64        `json:"noise_only"`
	Skipped      uint64        `json:"skipped"`
	Dropped      uint64        `json:"dropped"`
	MismatchRate float64       `json:"mismatch_rate"`
	Routes       []RouteReport `json:"routes"`
}

// RouteReport is one route's part of the report.
type RouteReport struct {
	Route        string       `json:"route"`
	Compared     uint64       `json:"compared"`
	Mismatched   uint64       `json:"mismatched"`
	NoiseOnly    uint64       `json:"noise_only"`
	Repeats      uint64       `json:"repeats"`
	MismatchRate float64      `json:"mismatch_rate"`
	Paths        []PathReport `json:"paths"`
	Samples      []Sample     `json:"samples"`
}

// PathReport is a path that differed between the arms.
type PathReport struct {
	Path  string `json:"path"`
	Count uint64 `json:"count"`
	// SameArm counts the serving arm's repeated answers differing here.
	SameArm uint64 `json:"same_arm"`
	Noise   bool   `json:"noise"`
}

// Report returns the results, routes by mismatch rate (highest first).
func (r *Results) Report() Report {
	rep := Report{Sampled: r.sampled.Load(), Skipped: r.skipped.Load(), Dropped: r.dropped.Load(), Routes: []RouteReport{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, rt := range r.all.routes {
		mm, no := rt.mismatched(rt)
		rr := RouteReport{Route: name, Compared: rt.compared, Mismatched: mm, NoiseOnly: no, Repeats: rt.repeats,
			MismatchRate: rate(mm, rt.compared), Paths: []PathReport{}, Samples: slices.Clone(rt.samples)}
		for p, n := range rt.cross {
			rr.Paths = append(rr.Paths, PathReport{Path: p, Count: n, SameArm: rt.same[p], Noise: rt.noise(p)})
		}
		slices.SortFunc(rr.Paths, func(a, b PathReport) int {
			return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.Path, b.Path))
		})
		if rr.Samples == nil {
			rr.Samples = []Sample{}
		}
		rep.Compared += rt.compared
		rep.Mismatched += mm
		rep.NoiseOnly += no
		rep.Routes = append(rep.Routes, rr)
	}
	rep.MismatchRate = rate(rep.Mismatched, rep.Compared)
	slices.SortFunc(rep.Routes, func(a, b RouteReport) int {
		return cmp.Or(cmp.Compare(b.MismatchRate, a.MismatchRate), cmp.Compare(b.Compared, a.Compared), strings.Compare(a.Route, b.Route))
	})
	return rep
}

// MismatchRate is the overall mismatch rate, as Report has it.
func (r *Results) MismatchRate() float64 {
	var compared, mismatched uint64
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rt := range r.all.routes {
		mm, _ := rt.mismatched(rt)
		compared += rt.compared
		mismatched += mm
	}
	return rate(mismatched, compared)
}

func rate(n, d uint64) float64 {
	if d == 0 {
		return 0
	}
	return float64(n) / float64(d)
}

// StepCounts are the pairs compared at the current rollout step, as the
// rollout's gate and fleet stats want them.
type StepCounts struct {
	Compared   uint64 `json:"compared"`
	Mismatched uint64 `json:"mismatched"`
	// Routes maps a route to its [compared, mismatched].
	Routes map[string][2]uint64 `json:"routes"`
	// WorstRoute is the route with the highest mismatch rate, if any
	// route has a mismatch.
	WorstRoute string `json:"worst_route,omitempty"`
}

// Step returns the counts since the last ResetStep (or Reset). Noise is
// judged on everything known since the last Reset, which holds the step.
func (r *Results) Step() StepCounts {
	sc := StepCounts{Routes: map[string][2]uint64{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	worst := -1.0
	for name, rt := range r.step.routes {
		nz := r.all.routes[name]
		if nz == nil {
			nz = rt
		}
		mm, _ := rt.mismatched(nz)
		sc.Compared += rt.compared
		sc.Mismatched += mm
		sc.Routes[name] = [2]uint64{rt.compared, mm}
		if mm > 0 {
			if x := rate(mm, rt.compared); x > worst || (x == worst && name < sc.WorstRoute) {
				worst, sc.WorstRoute = x, name
			}
		}
	}
	return sc
}

// StepAt returns the counts at the rollout step named id. When id is not
// the step counted so far, the counts start over at it (and are zero):
// counts of one step never pass for another's.
func (r *Results) StepAt(id string) StepCounts {
	r.mu.Lock()
	if id != r.stepID {
		r.stepID, r.step = id, tally{}
	}
	r.mu.Unlock()
	return r.Step()
}

// ResetStep starts the counts of a new rollout step.
func (r *Results) ResetStep() {
	r.mu.Lock()
	r.step = tally{}
	r.mu.Unlock()
}

// Reset clears everything: the report and the step.
func (r *Results) Reset() {
	r.mu.Lock()
	r.all, r.step = tally{}, tally{}
	r.sampled.Store(0)
	r.skipped.Store(0)
	r.dropped.Store(0)
	r.mu.Unlock()
}
