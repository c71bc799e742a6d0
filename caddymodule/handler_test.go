package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

// armFunc is an arm that answers with a fixed status and body.
type armFunc func(w http.ResponseWriter, r *http.Request) error

func (f armFunc) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	return f(w, r)
}

func answer(status int, body string) armFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Arm", body)
		w.WriteHeader(status)
		io.WriteString(w, body)
		return nil
	}
}

// testHandler is a Handler wired by hand, without a Caddy config, for the
// request path alone.
func testHandler(t testing.TB, mode state.Mode, weight int, legacy, consolidated caddyhttp.MiddlewareHandler) *Handler {
	t.Helper()
	h := &Handler{
		Name:         "t",
		legacy:       legacy,
		consolidated: consolidated,
		sw:           newSwitch("t"),
		cookieName:   "sb_user",
		stickyMode:   "cookie",
		replay:       true,
		maxBody:      DefaultReplayMaxBody,
		logger:       zap.NewNop(),
	}
	h.signer = new(atomic.Pointer[cookieSigner])
	h.signer.Store(newCookieSigner([]byte("test")))
	win := h.sw.windowsFor(10, 1e9)
	h.sw.win.Store(win)
	h.win = win
	h.monitor = health.NewMonitor(health.MonitorOptions{Rules: health.Rules{ConsecutiveFailures: 1 << 30, Window: 10e9}, Consolidated: win.consolidated, Legacy: win.legacy})
	w := state.WeightPercent(weight)
	h.sw.view.Store(&view{mode: mode, weight: w, threshold: threshold(w)})
	return h
}

func request(method, body string) *http.Request {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, "http://gw/", rd)
	repl := caddy.NewReplacer()
	return caddyhttp.PrepareRequest(r, repl, nil, nil)
}

func TestReplayOnLegacy(t *testing.T) {
	for _, tc := range []struct {
		name       string
		method     string
		body       string
		cons       caddyhttp.MiddlewareHandler
		maxBody    int64
		wantStatus int
		wantBody   string
		replays    uint64
	}{
		{"5xx replayed", "GET", "", answer(503, "down"), 0, 200, "legacy", 1},
		{"transport error replayed", "GET", "", armFunc(func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
		}), 0, 200, "legacy", 1},
		{"4xx passes through", "GET", "", answer(404, "nope"), 0, 404, "nope", 0},
		{"PUT under limit replayed", "PUT", "abc", answer(500, "boom"), 8, 200, "legacy:abc", 1},
		{"PUT over limit not replayed", "PUT", "abcdefghij", answer(500, "boom"), 8, 500, "boom", 0},
		{"POST 5xx not replayed", "POST", "abc", answer(500, "boom"), 8, 500, "boom", 0},
		{"POST with Idempotency-Key replayed", "POST key", "abc", answer(500, "boom"), 8, 200, "legacy:abc", 1},
		{"POST never received replayed", "POST", "abc", armFunc(func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, reverseproxy.DialError{})
		}), 8, 200, "legacy:abc", 1},
		{"4xx handler error not replayed", "GET", "", armFunc(func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(http.StatusUnauthorized, nil)
		}), 0, 401, "", 0},
		{"streamed bytes not replayed", "GET", "", armFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(200)
			io.WriteString(w, "partial")
			return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
		}), 0, 502, "partial", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			legacy := armFunc(func(w http.ResponseWriter, r *http.Request) error {
				b, _ := io.ReadAll(r.Body)
				out := "legacy"
				if len(b) > 0 {
					out += ":" + string(b)
				}
				w.Header().Set("X-Arm", "legacy")
				io.WriteString(w, out)
				return nil
			})
			h := testHandler(t, state.ModeConsolidated, 100, legacy, tc.cons)
			if tc.maxBody > 0 {
				h.maxBody = tc.maxBody
			}
			w := httptest.NewRecorder()
			method, key := strings.CutSuffix(tc.method, " key")
			req := request(method, tc.body)
			if key {
				req.Header.Set("Idempotency-Key", "k1")
			}
			err := h.ServeHTTP(w, req, nil)
			status := w.Code
			if err != nil {
				status = err.(caddyhttp.HandlerError).StatusCode
			}
			if status != tc.wantStatus || w.Body.String() != tc.wantBody {
				t.Fatalf("got %d %q (err %v), want %d %q", status, w.Body.String(), err, tc.wantStatus, tc.wantBody)
			}
			if tc.replays > 0 && w.Header().Get("X-Arm") != "legacy" {
				t.Errorf("a replayed answer carries consolidated's headers: %v", w.Header())
			}
			if got := h.sw.metrics.replays.Get(); got != tc.replays {
				t.Errorf("replays = %d, want %d", got, tc.replays)
			}
		})
	}
}

func TestModesAndObservation(t *testing.T) {
	h := testHandler(t, state.ModeLegacy, 100, answer(200, "legacy"), answer(200, "consolidated"))
	for i := 0; i < 10; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, request("GET", ""), nil)
		if w.Body.String() != "legacy" {
			t.Fatalf("mode legacy served %q", w.Body.String())
		}
	}
	h.sw.view.Store(&view{mode: state.ModeConsolidated})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, request("GET", ""), nil)
	if w.Body.String() != "consolidated" {
		t.Fatalf("mode consolidated served %q", w.Body.String())
	}
	if l, c := h.sw.metrics.requests[0].Get(), h.sw.metrics.requests[1].Get(); l != 10 || c != 1 {
		t.Fatalf("requests legacy=%d consolidated=%d", l, c)
	}
}

// hotPathCases are the requests the per-request path must serve with no
// allocation: no body, no replay needed, not sampled.
var hotPathCases = []struct {
	name string
	mode state.Mode
	// wrapped gives the body-less GET a Body that is not http.NoBody, as
	// Caddy's server does (its read-idle deadline reader).
	wrapped bool
}{
	{"legacy", state.ModeLegacy, false},
	{"consolidated_with_replay", state.ModeConsolidated, false},
	{"consolidated_with_replay_wrapped_body", state.ModeConsolidated, true},
	{"split_cookie", state.ModeSplit, false},
}

// hotPathServe returns a call that serves one such request, warmed up.
func hotPathServe(tb testing.TB, mode state.Mode, wrapped bool) func() {
	tb.Helper()
	ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
	h := testHandler(tb, mode, 50, ok, ok)
	r := request("GET", "")
	if wrapped {
		r.Body, r.ContentLength = io.NopCloser(http.NoBody), 0
	}
	_, val := h.signer.Load().issue()
	r.Header.Set("Cookie", "sb_user="+val)
	w := discardWriter{h: http.Header{}}
	serve := func() { h.ServeHTTP(w, r, nil) }
	serve()
	return serve
}

// BenchmarkServeHTTP measures the switch's own cost per request, with arms
// that answer at once: the pick, the recorder, the observation and the
// monitor. Caddy's replacer, which Caddy allocates per request anyway, is
// made once outside the loop.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range hotPathCases {
		b.Run(bc.name, func(b *testing.B) {
			serve := hotPathServe(b, bc.mode, bc.wrapped)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				serve()
			}
		})
	}
}

// TestHotPathAllocatesNothing holds the benchmark's 0 allocs/op as a test.
func TestHotPathAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random, so allocation counts mean nothing under -race")
	}
	for _, tc := range hotPathCases {
		t.Run(tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, hotPathServe(t, tc.mode, tc.wrapped)); n != 0 {
				t.Errorf("%v allocations per request, want 0", n)
			}
		})
	}
}

type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d discardWriter) WriteHeader(int)             {}
