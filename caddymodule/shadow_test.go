package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/leanvibe/switchback/state"
)

// withShadow gives a test handler a shadow block.
func withShadow(t testing.TB, h *Handler, s *Shadow) *Handler {
	t.Helper()
	run, err := newShadowRunner(h, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	run.ctx = context.Background()
	h.shadowRun = run
	return h
}

// jsonArm answers {"arm":..., "price":...}; it notes each request's
// shadow header and body.
type jsonArm struct {
	name    string
	price   func(path string) int
	mu      sync.Mutex
	shadows []string // "METHOD path body" of the shadow requests
	plain   atomic.Int64
	block   chan struct{}
}

func (a *jsonArm) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	b, _ := io.ReadAll(r.Body)
	if r.Header.Get(ShadowHeader) == "1" {
		a.mu.Lock()
		a.shadows = append(a.shadows, r.Method+" "+r.URL.Path+" "+string(b))
		a.mu.Unlock()
		if a.block != nil {
			<-a.block
		}
	} else {
		a.plain.Add(1)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"price":%d}`, a.price(r.URL.Path))
	return nil
}

func (a *jsonArm) shadowed() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.shadows...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func shadowRequest(method, path, body string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, "http://gw"+path, rd)
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
}

func TestShadowComparesWithoutTouchingTheClient(t *testing.T) {
	legacy := &jsonArm{name: "legacy", price: func(string) int { return 1 }}
	cons := &jsonArm{name: "consolidated", price: func(p string) int {
		if p == "/items/2" {
			return 2
		}
		return 1
	}}
	h := withShadow(t, testHandler(t, state.ModeSplit, 0, legacy, cons), &Shadow{Sample: 1, Noise: new(float64)})
	for i := 0; i < 4; i++ {
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, shadowRequest("GET", fmt.Sprintf("/items/%d", i), ""), nil); err != nil {
			t.Fatal(err)
		}
		if w.Body.String() != `{"price":1}` || w.Header().Get(ShadowHeader) != "" {
			t.Fatalf("client got %q %v", w.Body.String(), w.Header())
		}
	}
	res := h.sw.shadowResults()
	waitFor(t, "4 pairs compared", func() bool { return res.Report().Compared == 4 })
	rep := res.Report()
	if rep.Mismatched != 1 || rep.Routes[0].Route != "GET /items/:id" || rep.Routes[0].Paths[0].Path != "/price" {
		t.Errorf("report %+v", rep)
	}
	if got := len(cons.shadowed()); got != 4 || cons.plain.Load() != 0 {
		t.Errorf("consolidated got %d shadow and %d plain requests", got, cons.plain.Load())
	}
	if c := h.sw.metrics.requests[1].Get(); c != 0 {
		t.Errorf("shadow requests counted in consolidated's window: %d", c)
	}
	if n := h.shadowRun.outcomes["mismatch"].Get(); n != 1 {
		t.Errorf("mismatch counter %d", n)
	}
}

func TestShadowMethods(t *testing.T) {
	for _, tc := range []struct {
		name    string
		methods []string
		want    int
	}{{"POST not listed", nil, 0}, {"POST listed", []string{"GET", "POST"}, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			legacy := &jsonArm{price: func(string) int { return 1 }}
			cons := &jsonArm{price: func(string) int { return 1 }}
			h := withShadow(t, testHandler(t, state.ModeLegacy, 0, legacy, cons), &Shadow{Sample: 1, Methods: tc.methods, Noise: new(float64)})
			w := httptest.NewRecorder()
			h.ServeHTTP(w, shadowRequest("POST", "/orders", "order-body"), nil)
			if tc.want == 0 {
				time.Sleep(50 * time.Millisecond)
			} else {
				waitFor(t, "the POST copy", func() bool { return len(cons.shadowed()) == tc.want })
			}
			got := cons.shadowed()
			if len(got) != tc.want || (tc.want == 1 && got[0] != "POST /orders order-body") {
				t.Errorf("consolidated's shadow requests: %q", got)
			}
		})
	}
}

func TestShadowDirectionAfterPromotion(t *testing.T) {
	legacy := &jsonArm{price: func(string) int { return 1 }}
	cons := &jsonArm{price: func(string) int { return 1 }}
	h := withShadow(t, testHandler(t, state.ModeConsolidated, 100, legacy, cons), &Shadow{Sample: 1, Noise: new(float64)})
	h.ServeHTTP(httptest.NewRecorder(), shadowRequest("GET", "/a", ""), nil)
	waitFor(t, "the copy on legacy", func() bool { return len(legacy.shadowed()) == 1 })
	if len(cons.shadowed()) != 0 {
		t.Error("consolidated got a copy of its own request")
	}
	if d := shadowDirection(h.sw.view.Load()); d != armLegacy {
		t.Errorf("direction %s", d)
	}
}

func TestShadowDropsBeyondMaxInflight(t *testing.T) {
	legacy := &jsonArm{price: func(string) int { return 1 }}
	cons := &jsonArm{price: func(string) int { return 1 }, block: make(chan struct{})}
	h := withShadow(t, testHandler(t, state.ModeLegacy, 0, legacy, cons), &Shadow{Sample: 1, MaxInflight: 2, Noise: new(float64)})
	start := time.Now()
	for i := 0; i < 10; i++ {
		h.ServeHTTP(httptest.NewRecorder(), shadowRequest("GET", "/a", ""), nil)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("blocked shadows slowed the client: %s for 10 requests", d)
	}
	waitFor(t, "2 copies in flight", func() bool { return len(cons.shadowed()) == 2 })
	if rep := h.sw.shadowResults().Report(); rep.Dropped != 8 || rep.Sampled != 10 {
		t.Errorf("sampled %d dropped %d, want 10 and 8", rep.Sampled, rep.Dropped)
	}
	close(cons.block)
	waitFor(t, "2 compared", func() bool { return h.sw.shadowResults().Report().Compared == 2 })
}

func TestGateWaiting(t *testing.T) {
	s := &shadowRunner{}
	for _, tc := range []struct {
		compared, mismatched uint64
		min                  int
		max                  float64
		want                 string
	}{
		{100, 24, 50, 0.01, "waiting: mismatch 24% > 1% on GET /items/:id"},
		{1000, 24, 500, 0.01, "waiting: mismatch 2.4% > 1% on GET /items/:id"},
		{1000, 10, 500, 0.01, ""},
		{312, 0, 500, 0.01, "waiting: 312/500 shadow pairs compared"},
		{0, 0, 0, 0.01, ""},
		{1000, 999, 0, -1, ""},
	} {
		if got := s.gateWaiting(tc.compared, tc.mismatched, "GET /items/:id", tc.min, tc.max); got != tc.want {
			t.Errorf("gateWaiting(%d, %d, %d, %g) = %q, want %q", tc.compared, tc.mismatched, tc.min, tc.max, got, tc.want)
		}
	}
}

// BenchmarkShadowUnsampled is the switch's cost for a request that a
// shadow block could sample and did not: it must allocate nothing more
// than BenchmarkServeHTTP's cases (none).
func BenchmarkShadowUnsampled(b *testing.B) {
	for _, bc := range []struct {
		name   string
		mode   state.Mode
		weight int
	}{{"not_drawn", state.ModeLegacy, 0}, {"served_by_consolidated", state.ModeSplit, 50}} {
		b.Run(bc.name, func(b *testing.B) {
			ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
			h := withShadow(b, testHandler(b, bc.mode, bc.weight, ok, ok), &Shadow{Sample: 1e-15})
			r := request("GET", "")
			if bc.mode == state.ModeSplit {
				// A key that lands on consolidated: never sampled while
				// copies go to consolidated.
				for {
					key, val := h.signer.Load().issue()
					if pickConsolidated(h.sw.salt, key, h.sw.view.Load().threshold) {
						r.Header.Set("Cookie", "sb_user="+val)
						break
					}
				}
			}
			w := discardWriter{h: http.Header{}}
			h.ServeHTTP(w, r, nil)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.ServeHTTP(w, r, nil)
			}
			if h.sw.shadowResults().Report().Sampled != 0 {
				b.Fatal("a request was sampled")
			}
		})
	}
}

// TestShadowUnsampledAllocatesNothing holds what BenchmarkShadowUnsampled
// shows: a request a shadow block does not sample allocates nothing.
func TestShadowUnsampledAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random, so allocation counts mean nothing under -race")
	}
	ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
	h := withShadow(t, testHandler(t, state.ModeLegacy, 0, ok, ok), &Shadow{Sample: 1e-15})
	r := request("GET", "")
	w := discardWriter{h: http.Header{}}
	h.ServeHTTP(w, r, nil)
	if n := testing.AllocsPerRun(500, func() { h.ServeHTTP(w, r, nil) }); n != 0 {
		t.Errorf("%v allocations per unsampled request, want 0", n)
	}
}

// TestShadowSkipsCutAnswers: a serving answer that broke after its status
// went out is not the arm's answer, and is skipped, not compared.
func TestShadowSkipsCutAnswers(t *testing.T) {
	broken := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		io.WriteString(w, `{"price":`)
		return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
	})
	cons := &jsonArm{price: func(string) int { return 1 }}
	h := withShadow(t, testHandler(t, state.ModeLegacy, 0, broken, cons), &Shadow{Sample: 1, Noise: new(float64)})
	h.ServeHTTP(httptest.NewRecorder(), shadowRequest("GET", "/a", ""), nil)
	res := h.sw.shadowResults()
	waitFor(t, "the pair skipped", func() bool { return res.Report().Skipped == 1 })
	if rep := res.Report(); rep.Compared != 0 {
		t.Errorf("a cut answer was compared: %+v", rep)
	}
}
