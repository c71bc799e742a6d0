package tests

// End-to-end tests of issue 3: trip rules under load, replay to legacy,
// auto_recover, legacy watch, actions, metrics and config errors. Each
// drives the real binary in front of real upstreams whose faults are
// switched on at run time.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// failoverTemplate is a gateway with switch "main" split {WEIGHT}% to
// consolidated, and {OPTIONS} (trip rules and more) in its block.
const failoverTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		gateway gw-test
	}
}
http://{HTTP} {
	switchback main {
		weight {WEIGHT}
		mode {MODE}
		sticky cookie sb_user
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
{OPTIONS}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

type failoverEnv struct {
	g                    *Gateway
	legacy, consolidated *Upstream
}

// startFailover starts both upstreams and a gateway in front of them.
func startFailover(t *testing.T, mode string, weight int, options string) *failoverEnv {
	t.Helper()
	e := &failoverEnv{legacy: NewUpstream(t, "legacy"), consolidated: NewUpstream(t, "consolidated")}
	e.g = StartGateway(t, GatewayConfig{
		Template:     failoverTemplate,
		Legacy:       e.legacy,
		Consolidated: e.consolidated,
		Extra:        map[string]string{"MODE": mode, "WEIGHT": strconv.Itoa(weight), "OPTIONS": options},
	})
	return e
}

// load sends GETs to the gateway at a steady rate from a bounded pool of
// workers until stopped. A third of the requests carry no cookie, a third
// a forged one (the gateway issues a new key), and a third a valid cookie
// it issued earlier, so keys spread over both arms.
type load struct {
	sent, errs atomic.Int64
	arms       [2]atomic.Int64 // legacy, consolidated, by X-Switchback-Arm
	started    time.Time
	stopped    time.Time

	mu       sync.Mutex
	errList  []string
	cookies  []*http.Cookie
	latency  []time.Duration
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	finished chan struct{}
}

func startLoad(t *testing.T, g *Gateway, rate, workers int) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, started: time.Now(), finished: make(chan struct{})}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers},
	}
	tokens := make(chan struct{}, 4*workers)
	l.wg.Add(workers)
	for range workers {
		go func() {
			defer l.wg.Done()
			for range tokens {
				l.one(client, "http://"+g.HTTP+"/load")
			}
		}()
	}
	go func() {
		defer close(l.finished)
		defer close(tokens)
		// Each tick hands out the requests due since the start, so a late
		// tick on a busy machine does not lower the rate; a full queue
		// (every worker busy) drops them, which bounds the load.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		issued := 0
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				due := int(now.Sub(l.started).Seconds() * float64(rate))
				for ; issued < due; issued++ {
					select {
					case tokens <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *load) one(client *http.Client, url string) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	switch mrand.IntN(3) {
	case 1:
		var b [8]byte
		rand.Read(b[:])
		req.AddCookie(&http.Cookie{Name: "sb_user", Value: hex.EncodeToString(b[:])})
	case 2:
		l.mu.Lock()
		if n := len(l.cookies); n > 0 {
			req.AddCookie(l.cookies[mrand.IntN(n)])
		}
		l.mu.Unlock()
	}
	start := time.Now()
	l.sent.Add(1)
	resp, err := client.Do(req)
	if err != nil {
		l.fail(err.Error())
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	switch {
	case err != nil:
		l.fail(fmt.Sprintf("status %d, reading body: %v", resp.StatusCode, err))
		return
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		l.fail(fmt.Sprintf("status %d: %.80q", resp.StatusCode, body))
		return
	}
	if resp.Header.Get("X-Switchback-Arm") == "consolidated" {
		l.arms[1].Add(1)
	} else {
		l.arms[0].Add(1)
	}
	l.mu.Lock()
	l.latency = append(l.latency, took)
	for _, c := range resp.Cookies() {
		if c.Name == "sb_user" && len(l.cookies) < 200 {
			l.cookies = append(l.cookies, c)
		}
	}
	l.mu.Unlock()
}

func (l *load) fail(msg string) {
	l.errs.Add(1)
	l.mu.Lock()
	if len(l.errList) < 10 {
		l.errList = append(l.errList, msg)
	}
	l.mu.Unlock()
}

// stop ends the load and waits for the requests in flight.
func (l *load) stop() {
	l.cancel()
	<-l.finished
	l.wg.Wait()
	if l.stopped.IsZero() {
		l.stopped = time.Now()
	}
}

// rate is the achieved request rate.
func (l *load) rate() float64 {
	return float64(l.sent.Load()) / l.stopped.Sub(l.started).Seconds()
}

// checkNoErrors fails the test if any GET of the load failed.
func (l *load) checkNoErrors(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.errs.Load(); n > 0 {
		t.Errorf("client saw %d errors out of %d GETs, e.g. %q", n, l.sent.Load(), l.errList)
	}
}

func (l *load) p99() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.latency) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), l.latency...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)*99)/100]
}

// detail reads switch main.
func (e *failoverEnv) detail(t testing.TB) SwitchState {
	t.Helper()
	return e.g.Switch(t, "main")
}

func (e *failoverEnv) tripped(t testing.TB) bool {
	s := e.detail(t)
	return s.Tripped && s.Mode == "legacy"
}

// metrics returns the admin metrics text.
func (g *Gateway) metrics(t testing.TB) string {
	t.Helper()
	resp, err := Client.Get("http://" + g.Admin + "/switchback/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// metricValue reads one series' value from Prometheus text; -1 if absent.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestFailoverUnderLoad: under a steady load of at least 200 GET/s, each
// kind of fault on consolidated trips the switch within the bound,
// measured from the first failing answer consolidated served to the last
// request that reached it, and no GET fails at the client.
func TestFailoverUnderLoad(t *testing.T) {
	const rate, workers = 300, 128
	fail500 := func(u *Upstream) { u.Fail(http.StatusInternalServerError) }
	hangUp := func(u *Upstream) { u.HangUp(true) }
	slow := func(u *Upstream) { u.Delay(600 * time.Millisecond) }
	cases := []struct {
		name    string
		trip    string
		fault   func(*Upstream)
		rule    string
		bound   time.Duration
		replays bool
	}{
		{"error_rate/500", "trip {\n error_rate 5%\n window 10s\n min_requests 20\n}", fail500, "error_rate", time.Second, true},
		{"consecutive_failures/500", "trip {\n consecutive_failures 10\n error_rate off\n}", fail500, "consecutive_failures", time.Second, true},
		{"error_rate/closed_connections", "trip {\n error_rate 5%\n window 10s\n min_requests 20\n}", hangUp, "error_rate", time.Second, true},
		{"defaults/closed_connections", "", hangUp, "", time.Second, true},
		{"latency/p99", "trip {\n latency p99 250ms\n window 10s\n min_requests 20\n}", slow, "latency", 2 * time.Second, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := startFailover(t, "split", 50, tc.trip)
			l := startLoad(t, e.g, rate, workers)
			Eventually(t, 10*time.Second, "healthy traffic on consolidated", func() bool {
				return e.consolidated.Hits.Load() >= 150
			})
			tc.fault(e.consolidated)
			Eventually(t, 15*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
			// Keep the load on a while to see that nothing more reaches
			// consolidated and that legacy answers everyone.
			hitsAtTrip := e.consolidated.Hits.Load()
			time.Sleep(time.Second)
			l.stop()

			s := e.detail(t)
			if tc.rule != "" && s.Rule != tc.rule {
				t.Errorf("tripped by rule %q (%s), want %q", s.Rule, s.Reason, tc.rule)
			}
			first, last := e.consolidated.FaultWindow()
			if first.IsZero() {
				t.Fatal("consolidated never served a failing answer")
			}
			took := last.Sub(first)
			t.Logf("rule %s: %s; time from the first failing answer to the last request on consolidated: %v (bound %v); %d GETs at %.0f/s, %d errors, client p99 %v, %d/%d answered by legacy/consolidated",
				s.Rule, s.Reason, took, tc.bound, l.sent.Load(), l.rate(), l.errs.Load(), l.p99(), l.arms[0].Load(), l.arms[1].Load())
			if took > tc.bound {
				t.Errorf("failover took %v, want at most %v", took, tc.bound)
			}
			if l.rate() < 200 {
				t.Errorf("load reached only %.0f req/s, want at least 200", l.rate())
			}
			// Requests that picked consolidated just before the trip may
			// still be dialling it when the trip shows in the admin API;
			// the bound above is what counts, this is for the record.
			t.Logf("%d requests reached consolidated after the trip showed in the admin API", e.consolidated.Hits.Load()-hitsAtTrip)
			l.checkNoErrors(t)
			if tc.replays {
				m := e.g.metrics(t)
				if v := metricValue(m, `switchback_replays_total{switch="main"}`); v <= 0 {
					t.Errorf("replays_total = %v, want > 0", v)
				}
			}
		})
	}
}

// post sends a POST with body to the gateway and returns status and body;
// a transport error is status 0.
func (g *Gateway) post(t testing.TB, id string, body []byte, chunked bool) (int, string) {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = io.MultiReader(rd) // hides the length: sent chunked
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+g.HTTP+"/post", rd)
	req.Header.Set("X-Test-Id", id)
	// A POST is replayed only when the client says it may be repeated.
	req.Header.Set("Idempotency-Key", id)
	resp, err := Client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestReplayMaxBody: a POST with an Idempotency-Key whose body fits in replay_max_body is replayed
// on legacy with the same body; a larger one is not, and the client sees
// consolidated's 5xx. Both with a known length and chunked.
func TestReplayMaxBody(t *testing.T) {
	e := startFailover(t, "consolidated", 0, "trip off\nreplay_max_body 1KiB")
	e.consolidated.Fail(http.StatusInternalServerError)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			small := bytes.Repeat([]byte("s"), 700)
			id := fmt.Sprintf("small-%v", chunked)
			code, body := e.g.post(t, id, small, chunked)
			if code != 200 || body != "legacy" {
				t.Errorf("POST of %d bytes: got %d %q, want legacy's 200", len(small), code, body)
			}
			if got, ok := e.legacy.RequestBody(id); !ok || !bytes.Equal(got, small) {
				t.Errorf("legacy got body %d bytes (seen %v), want the %d sent", len(got), ok, len(small))
			}
			if got, _ := e.consolidated.RequestBody(id); !bytes.Equal(got, small) {
				t.Errorf("consolidated got body of %d bytes, want %d", len(got), len(small))
			}

			big := bytes.Repeat([]byte("b"), 4<<10)
			id = fmt.Sprintf("big-%v", chunked)
			code, body = e.g.post(t, id, big, chunked)
			if code != 500 || !strings.Contains(body, "consolidated failing") {
				t.Errorf("POST of %d bytes: got %d %q, want consolidated's 500", len(big), code, body)
			}
			if _, ok := e.legacy.RequestBody(id); ok {
				t.Errorf("legacy got the POST over replay_max_body")
			}
			if got, _ := e.consolidated.RequestBody(id); !bytes.Equal(got, big) {
				t.Errorf("consolidated got %d bytes of the big body, want %d", len(got), len(big))
			}
		})
	}
}

// TestStreamingNotReplayed: consolidated answers 200, flushes a few bytes
// and dies. Those bytes reached the client, so the request must not be
// replayed: the client sees a broken answer, and legacy never sees it.
func TestStreamingNotReplayed(t *testing.T) {
	e := startFailover(t, "consolidated", 0, "trip off")
	e.consolidated.BreakStreams(true)
	resp, err := Client.Get("http://" + e.g.HTTP + "/stream")
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("client got %d %q, read error %v", resp.StatusCode, b, rerr)
		if rerr == nil {
			t.Errorf("client read a complete answer %d %q, want a broken stream", resp.StatusCode, b)
		}
		if strings.Contains(string(b), "legacy") {
			t.Errorf("legacy's answer reached the client: %q", b)
		}
	} else {
		t.Logf("client got a transport error: %v", err)
	}
	if n := e.legacy.PathHits("/stream"); n != 0 {
		t.Errorf("legacy got the streamed request %d times, want 0", n)
	}
	if n := e.consolidated.PathHits("/stream"); n < 1 {
		t.Errorf("consolidated never got the request")
	}
}

// TestTripSurvivesRestart: after a trip, a restarted gateway stays on
// legacy, tripped, with the reason kept.
func TestTripSurvivesRestart(t *testing.T) {
	e := startFailover(t, "split", 50, "trip {\n consecutive_failures 5\n}")
	l := startLoad(t, e.g, 100, 32)
	e.consolidated.Fail(http.StatusInternalServerError)
	Eventually(t, 10*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
	l.stop()
	before := e.detail(t)
	// The trip is written to the store off the request path: wait for it.
	Eventually(t, 10*time.Second, "the trip to reach the store", func() bool {
		var st struct {
			Pending bool `json:"pending"`
		}
		e.g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &st)
		return !st.Pending
	})
	e.consolidated.Fail(0)
	e.g.Restart()
	after := e.detail(t)
	if after.Mode != "legacy" || !after.Tripped || after.Reason != before.Reason || after.Rule != "consecutive_failures" {
		t.Fatalf("after restart: mode %s tripped %v rule %q reason %q; want legacy, tripped, reason %q",
			after.Mode, after.Tripped, after.Rule, after.Reason, before.Reason)
	}
	hits := e.consolidated.Hits.Load()
	for i := range 20 {
		body, resp := e.g.Get(t, "/after-restart", nil)
		if resp.StatusCode != 200 || body != "legacy" {
			t.Fatalf("GET %d after restart: %d %q, want legacy", i, resp.StatusCode, body)
		}
	}
	if n := e.consolidated.Hits.Load() - hits; n != 0 {
		t.Errorf("consolidated got %d requests after the restart", n)
	}
}

// TestAutoRecover: with auto_recover, a trip is followed by a half-open
// state at probe_weight; a healthy consolidated brings back the weight
// before the trip, and a failing one re-trips at once.
func TestAutoRecover(t *testing.T) {
	const opts = "trip {\n consecutive_failures 5\n}\nauto_recover {\n after 2s\n probe_weight 50%\n}"
	t.Run("recovers", func(t *testing.T) {
		e := startFailover(t, "split", 30, opts)
		l := startLoad(t, e.g, 100, 32)
		e.consolidated.Fail(http.StatusInternalServerError)
		Eventually(t, 10*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
		e.consolidated.Fail(0)
		sawHalfOpen := false
		Eventually(t, 20*time.Second, "recovery to weight 30", func() bool {
			s := e.detail(t)
			if s.Tripped && s.Mode == "split" && s.Weight == 50 {
				sawHalfOpen = true
			}
			return !s.Tripped && s.Mode == "split" && s.Weight == 30
		})
		l.stop()
		if !sawHalfOpen {
			t.Error("never saw the half-open state (split at 50%, tripped)")
		}
		s := e.detail(t)
		kinds := historyKinds(s)
		if !strings.Contains(kinds, "trip half_open recover") {
			t.Errorf("history %q lacks trip, half_open, recover in order", kinds)
		}
		l.checkNoErrors(t)
	})
	t.Run("re-trips", func(t *testing.T) {
		e := startFailover(t, "split", 30, opts)
		l := startLoad(t, e.g, 100, 32)
		e.consolidated.Fail(http.StatusInternalServerError)
		Eventually(t, 10*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
		Eventually(t, 20*time.Second, "a second trip after half-open", func() bool {
			return strings.Contains(historyKinds(e.detail(t)), "trip half_open trip")
		})
		l.stop()
		s := e.detail(t)
		var halfOpen, retrip time.Time
		for _, ev := range s.History {
			switch {
			case ev.Kind == "half_open":
				halfOpen = ev.At
			case ev.Kind == "trip" && !halfOpen.IsZero() && retrip.IsZero():
				retrip = ev.At
			}
		}
		t.Logf("re-tripped %v after going half-open", retrip.Sub(halfOpen))
		if d := retrip.Sub(halfOpen); d > time.Second {
			t.Errorf("re-trip took %v after half-open, want at once (under 1s at 50 req/s to consolidated)", d)
		}
		if s.Mode != "legacy" || !s.Tripped {
			t.Errorf("after re-trip: mode %s tripped %v", s.Mode, s.Tripped)
		}
		l.checkNoErrors(t)
	})
}

func historyKinds(s SwitchState) string {
	var k []string
	for _, ev := range s.History {
		k = append(k, ev.Kind)
	}
	return strings.Join(k, " ")
}

// TestLegacyAlsoUnhealthy: with both arms failing, the switch still trips,
// and the state, the metrics and the logs say legacy is unhealthy too,
// until legacy has been healthy again for a window.
func TestLegacyAlsoUnhealthy(t *testing.T) {
	e := startFailover(t, "split", 50, "")
	l := startLoad(t, e.g, 100, 32)
	e.legacy.Fail(http.StatusInternalServerError)
	e.consolidated.Fail(http.StatusInternalServerError)
	Eventually(t, 10*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
	// At the trip, legacy's window may hold too few of its failures to
	// judge it; with all traffic on it, it must be judged soon after.
	Eventually(t, 5*time.Second, "legacy marked unhealthy", func() bool { return e.detail(t).LegacyUnhealthy })
	l.stop()
	s := e.detail(t)
	if !s.Tripped || s.Mode != "legacy" {
		t.Errorf("mode %s tripped %v, want legacy, tripped", s.Mode, s.Tripped)
	}
	if !s.LegacyUnhealthy || !strings.Contains(s.LegacyUnhealthyReason, "legacy") {
		t.Errorf("legacy_unhealthy %v, reason %q; want true with a reason", s.LegacyUnhealthy, s.LegacyUnhealthyReason)
	}
	if v := metricValue(e.g.metrics(t), `switchback_legacy_unhealthy{switch="main"}`); v != 1 {
		t.Errorf("switchback_legacy_unhealthy = %v, want 1", v)
	}
	Eventually(t, 5*time.Second, "the loud log line", func() bool {
		return strings.Contains(e.g.Logs(), "LEGACY ALSO UNHEALTHY")
	})

	// Legacy heals: once it has been healthy for a whole window (10s),
	// the mark clears and the switch stays tripped.
	e.legacy.Fail(0)
	healed := time.Now()
	l = startLoad(t, e.g, 100, 32)
	Eventually(t, 30*time.Second, "legacy marked healthy again", func() bool { return !e.detail(t).LegacyUnhealthy })
	l.stop()
	t.Logf("legacy unmarked %v after it healed", time.Since(healed).Round(100*time.Millisecond))
	if d := time.Since(healed); d < 10*time.Second {
		t.Errorf("legacy unmarked %v after it healed, before a whole window of health", d)
	}
	if s := e.detail(t); !s.Tripped || s.Mode != "legacy" || s.LegacyUnhealthyReason != "" {
		t.Errorf("after legacy healed: mode %s tripped %v reason %q, want still tripped, no reason", s.Mode, s.Tripped, s.LegacyUnhealthyReason)
	}
	if v := metricValue(e.g.metrics(t), `switchback_legacy_unhealthy{switch="main"}`); v != 0 {
		t.Errorf("switchback_legacy_unhealthy = %v after legacy healed, want 0", v)
	}
	if !strings.Contains(e.g.Logs(), "legacy healthy again") {
		t.Error("no log line says legacy is healthy again")
	}
}

// TestTripActionsAndMetrics: a trip runs on_trip exec and webhook (the
// webhook is retried after two failures), is logged, and counts in the
// metrics; reset through the API and through the CLI recovers.
func TestTripActionsAndMetrics(t *testing.T) {
	var hookCalls atomic.Int64
	var hookBodies [][]byte
	var hookMu sync.Mutex
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hookMu.Lock()
		hookBodies = append(hookBodies, b)
		hookMu.Unlock()
		if hookCalls.Add(1) <= 2 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()

	dir := t.TempDir()
	script := filepath.Join(dir, "on_trip.sh")
	reasonFile := filepath.Join(dir, "reason.txt")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf '%s' \"$SWITCHBACK_REASON\" > \"$1\"\nprintf '%s' \"$SWITCHBACK_EVENT\" > \"$1.event\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("trip {\n consecutive_failures 5\n}\non_trip exec %s %s\non_trip webhook %s", script, reasonFile, hook.URL)
	e := startFailover(t, "split", 40, opts)

	tripOnce := func() {
		t.Helper()
		l := startLoad(t, e.g, 100, 32)
		e.consolidated.Fail(http.StatusInternalServerError)
		Eventually(t, 10*time.Second, "the switch to trip", func() bool { return e.tripped(t) })
		l.stop()
		e.consolidated.Fail(0)
		l.checkNoErrors(t)
	}
	tripOnce()
	s := e.detail(t)

	Eventually(t, 10*time.Second, "on_trip exec to write the reason", func() bool {
		b, err := os.ReadFile(reasonFile)
		return err == nil && len(b) > 0
	})
	if b, _ := os.ReadFile(reasonFile); string(b) != s.Reason {
		t.Errorf("exec saw SWITCHBACK_REASON %q, want %q", b, s.Reason)
	}
	if b, _ := os.ReadFile(reasonFile + ".event"); string(b) != "tripped" {
		t.Errorf("exec saw SWITCHBACK_EVENT %q, want tripped", b)
	}
	Eventually(t, 15*time.Second, "the webhook to succeed on its third attempt", func() bool { return hookCalls.Load() >= 3 })
	hookMu.Lock()
	var ev map[string]any
	if err := json.Unmarshal(hookBodies[2], &ev); err != nil || ev["switch"] != "main" || ev["reason"] != s.Reason {
		t.Errorf("webhook body %s (%v): want switch main and the reason", hookBodies[2], err)
	}
	hookMu.Unlock()
	Eventually(t, 5*time.Second, "the trip and webhook in the logs", func() bool {
		logs := e.g.Logs()
		return strings.Contains(logs, "switch tripped") && strings.Contains(logs, "webhook delivered")
	})
	time.Sleep(500 * time.Millisecond) // no fourth attempt after a success
	if n := hookCalls.Load(); n != 3 {
		t.Errorf("webhook called %d times, want 3 (two failures, one success)", n)
	}

	m := e.g.metrics(t)
	if v := metricValue(m, `switchback_trips_total{switch="main",rule="consecutive_failures"}`); v != 1 {
		t.Errorf("trips_total{rule=consecutive_failures} = %v, want 1", v)
	}
	if v := metricValue(m, `switchback_replays_total{switch="main"}`); v <= 0 {
		t.Errorf("replays_total = %v, want > 0", v)
	}
	if v := metricValue(m, `switchback_tripped{switch="main"}`); v != 1 {
		t.Errorf("switchback_tripped = %v, want 1", v)
	}

	// Reset through the admin API.
	if code := e.g.AdminJSON(t, http.MethodPost, "/switchback/switches/main/reset", map[string]string{"reason": "fixed"}, nil); code != 200 {
		t.Fatalf("reset: status %d", code)
	}
	if s := e.detail(t); s.Tripped || s.Mode != "split" || s.Weight != 40 {
		t.Fatalf("after reset: mode %s weight %v tripped %v; want split 40", s.Mode, s.Weight, s.Tripped)
	}

	// Trip again, then reset through the CLI.
	tripOnce()
	if v := metricValue(e.g.metrics(t), `switchback_trips_total{switch="main",rule="consecutive_failures"}`); v != 2 {
		t.Errorf("trips_total after the second trip = %v, want 2", v)
	}
	out, errOut, code := e.g.CLI(t, "traffic", "reset", "--switch", "main", "--reason", "fixed again")
	if code != 0 {
		t.Fatalf("switchback traffic reset: exit %d\n%s%s", code, out, errOut)
	}
	if s := e.detail(t); s.Tripped || s.Mode != "split" || s.Weight != 40 {
		t.Fatalf("after CLI reset: mode %s weight %v tripped %v; want split 40", s.Mode, s.Weight, s.Tripped)
	}
	// Consolidated takes traffic again.
	hits := e.consolidated.Hits.Load()
	l := startLoad(t, e.g, 100, 16)
	Eventually(t, 10*time.Second, "traffic on consolidated after reset", func() bool { return e.consolidated.Hits.Load() > hits+10 })
	l.stop()
	l.checkNoErrors(t)
}

// TestBadTripConfig: invalid trip rules are refused at load, naming the
// line, by both adapt and run.
func TestBadTripConfig(t *testing.T) {
	const tmpl = `{
	admin off
}
http://127.0.0.1:{PORT} {
	switchback main {
		legacy {
			reverse_proxy 127.0.0.1:9
		}
		consolidated {
			reverse_proxy 127.0.0.1:9
		}
		trip {
			%s
		}
	}
}
`
	const ruleLine = 13
	cases := []string{
		"error_rate 150%",
		"error_rate -1%",
		"latency p0 250ms",
		"latency p101 250ms",
		"window 0",
		"window -1s",
		"min_requests -1",
		"max_errors 3",
	}
	lineRE := regexp.MustCompile(`Caddyfile:(\d+)`)
	for _, rule := range cases {
		t.Run(rule, func(t *testing.T) {
			dir := t.TempDir()
			text := strings.ReplaceAll(fmt.Sprintf(tmpl, rule), "{PORT}", strconv.Itoa(FreePort(t)))
			if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"adapt", "run"} {
				_, errOut, code := RunCLI(t, dir, cmd, "--config", "Caddyfile", "--adapter", "caddyfile")
				if code == 0 {
					t.Fatalf("%s accepted %q", cmd, rule)
				}
				m := lineRE.FindStringSubmatch(errOut)
				if m == nil || m[1] != strconv.Itoa(ruleLine) {
					t.Errorf("%s: stderr does not name Caddyfile:%d:\n%s", cmd, ruleLine, lastLines(errOut, 3))
				}
			}
		})
	}
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// armTemplate puts handlers that change the request in front of
// consolidated's reverse_proxy, as a migration often must (a new path
// prefix, a header).
const armTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		mode consolidated
		trip off
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			uri strip_prefix /api
			request_header X-Arm consolidated
			reverse_proxy {CONSOLIDATED}
		}
	}
}
`

// TestReplayGetsTheClientRequest: a request replayed on legacy is the one
// the client sent, not the one consolidated's handlers rewrote.
func TestReplayGetsTheClientRequest(t *testing.T) {
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: armTemplate, Legacy: legacy, Consolidated: consolidated})
	consolidated.Fail(http.StatusInternalServerError)
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+"/api/orders?id=7", nil)
	req.Header.Set("X-Test-Id", "rewritten")
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "legacy" {
		t.Fatalf("got %d %q, want legacy's answer", resp.StatusCode, b)
	}
	if n := consolidated.PathHits("/orders"); n != 1 {
		t.Errorf("consolidated got /orders %d times, want 1 (its arm strips /api)", n)
	}
	if n := legacy.PathHits("/api/orders"); n != 1 {
		t.Errorf("legacy got /api/orders %d times, want 1 (and /orders %d times)", n, legacy.PathHits("/orders"))
	}
	if h, ok := legacy.RequestHeader("rewritten"); !ok || h.Get("X-Arm") != "" {
		t.Errorf("legacy got X-Arm %q from consolidated's arm (seen %v)", h.Get("X-Arm"), ok)
	}
}

// TestTrailersPassOnConsolidated: with replay on, consolidated's answer is
// watched by a recorder that may hold it back; a trailer set after the
// body must still reach the client.
func TestTrailersPassOnConsolidated(t *testing.T) {
	e := startFailover(t, "consolidated", 0, "trip off")
	resp, err := Client.Get("http://" + e.g.HTTP + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "consolidated" || resp.Trailer.Get("X-Checksum") != "sum-consolidated" {
		t.Errorf("got %q with trailer %q, want consolidated with trailer sum-consolidated", b, resp.Trailer.Get("X-Checksum"))
	}
}

// TestBrokenStreamsTrip: answers that die mid-body count as failures, so
// a consolidated that breaks every stream trips the switch.
func TestBrokenStreamsTrip(t *testing.T) {
	e := startFailover(t, "consolidated", 0, "trip {\n consecutive_failures 3\n}")
	e.consolidated.BreakStreams(true)
	for i := 0; i < 10 && !e.tripped(t); i++ {
		if resp, err := Client.Get("http://" + e.g.HTTP + "/stream"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	Eventually(t, 5*time.Second, "the switch to trip on broken streams", func() bool { return e.tripped(t) })
	if m := e.g.metrics(t); metricValue(m, `switchback_failures_total{switch="main",arm="consolidated"}`) < 3 {
		t.Errorf("failures_total{arm=consolidated} = %v, want at least 3", metricValue(m, `switchback_failures_total{switch="main",arm="consolidated"}`))
	}
}
