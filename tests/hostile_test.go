package tests

// TestHostileTraffic is issue 10's end-to-end test of the whole request
// path: the built binary under a mixed, hostile load for more than 20 s,
// with a failover and two reloads in the middle. See the test's comment
// for what it asserts.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// hostileTemplate is a gateway listening h1 and h2c with one switch
// "main" split {WEIGHT}% to consolidated under the default trip rules.
// Each arm sends /bidi to its upstream over h2c (a full-duplex stream
// needs HTTP/2 end to end) and everything else over HTTP/1.1, which
// websockets need; Expect: 100-continue waits for the upstream's answer.
// stream_close_delay keeps a websocket open across a reload (without it
// Caddy closes every upgraded stream with 1001 Going Away at a reload,
// with or without switchback).
// Legacy is probed, as the README suggests, so probes run through
// the arms across the reloads and the trip.
const hostileTemplate = `{
	admin {ADMIN}
	servers {
		protocols h1 h2c
	}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		gateway gw-hostile
	}
}
http://{HTTP} {
	switchback main {
		weight {WEIGHT}
		mode split
		sticky cookie sb_user
		replay_max_body 8MiB
		probe legacy GET /get interval 500ms
		legacy {
			reverse_proxy /bidi {LEGACY} {
				transport http {
					versions h2c
				}
			}
			reverse_proxy {LEGACY} {
				transport http {
					expect_continue_timeout 5s
				}
				stream_close_delay 30s
			}
		}
		consolidated {
			reverse_proxy /bidi {CONSOLIDATED} {
				transport http {
					versions h2c
				}
			}
			reverse_proxy {CONSOLIDATED} {
				transport http {
					expect_continue_timeout 5s
				}
				stream_close_delay 30s
			}
		}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
{EXTRA_SITE}
`

// hostileRun is one run of the hostile load against a gateway.
type hostileRun struct {
	gw                   string // gateway host:port
	h1, h2c, ws          *http.Client
	legacy, consolidated *hostileUpstream
	start                time.Time
}

// hostileClass is one kind of request in the load. replayable says the
// request is safe to repeat under the rule and small enough to
// buffer, so a failure of consolidated must never reach its client. once
// says it must never execute twice: a POST without Idempotency-Key.
type hostileClass struct {
	name       string
	replayable bool
	once       bool
	workers    int
	pause      time.Duration // between one worker's requests
	timeout    time.Duration // per request
	run        func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult
}

// hostileResult is how one request ended for its client.
type hostileResult struct {
	err       error // a client-visible failure; nil if it succeeded
	transport bool  // err is the client's transport failing, not an answer
	corrupt   bool  // err is a body that arrived different
	aborted   bool  // the client gave up on purpose, as planned
	verified  bool  // a body was checked byte for byte and matched
}

func failed(format string, args ...any) hostileResult {
	return hostileResult{err: fmt.Errorf(format, args...)}
}

// transportFailed is a request whose client saw no answer at all.
func transportFailed(format string, args ...any) hostileResult {
	return hostileResult{err: fmt.Errorf(format, args...), transport: true}
}

func corrupted(format string, args ...any) hostileResult {
	return hostileResult{err: fmt.Errorf(format, args...), corrupt: true}
}

// hostileStats is what a class's clients saw.
type hostileStats struct {
	sent, ok, aborted, verified atomic.Int64

	mu       sync.Mutex
	ids      []string
	failures []hostileFailure
}

type hostileFailure struct {
	id        string
	err       error
	transport bool
	corrupt   bool
	at        time.Duration // since the load started
}

// TestHostileTraffic runs the built binary for more than 20 s under a
// mixed load: GETs, POSTs with and without Idempotency-Key, chunked and
// 16 MiB uploads, a body sent at 1 byte per 100 ms, Expect:
// 100-continue (some refused by the upstream), SSE streams, large
// downloads, websockets over HTTP/1.1 and gRPC-style bidi streams over
// h2c, with clients that abort uploads, downloads, SSE streams,
// websockets and bidi streams midway, and two bursts of 60 such clients
// at once. In the middle, a `switchback reload`, a fault on consolidated
// (503 at once, body unread) that trips the switch, a reload through the
// admin /load, and a reset once the fault has left the trip window. It
// prints a table of what each class of request saw, then it
// asserts, with a count for each: no panic; no trip that the fault did
// not cause; no client-visible error for a replayable request, and none
// for any other request except those consolidated failed on purpose; no
// request without Idempotency-Key executed twice across the two
// upstreams; every body checked byte for byte arrived exact; a refused
// 100-continue request never sent its body; and the gateway's goroutine
// count is back to where it was before the load. A request that failed
// at the transport while a reload ran, and that no upstream saw, is
// counted apart as Caddy's own reload reset (plain reverse_proxy does the
// same; README, "reload"), and printed.
func TestHostileTraffic(t *testing.T) {
	h := &hostileRun{
		legacy:       newHostileUpstream(t, "legacy"),
		consolidated: newHostileUpstream(t, "consolidated"),
	}
	cfg := GatewayConfig{
		Template: hostileTemplate,
		Extra:    map[string]string{"LEGACY": h.legacy.Addr(), "CONSOLIDATED": h.consolidated.Addr(), "WEIGHT": "50", "EXTRA_SITE": ""},
	}
	g := StartGateway(t, cfg)
	h.gw = g.HTTP
	h.h1 = &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64, ExpectContinueTimeout: hostileExpectWait, DisableCompression: true},
	}
	h2 := &http.Transport{DisableCompression: true}
	h2.Protocols = new(http.Protocols)
	h2.Protocols.SetUnencryptedHTTP2(true)
	h.h2c = &http.Client{Transport: h2}
	h.ws = &http.Client{Transport: &http.Transport{}}
	defer func() {
		for _, c := range []*http.Client{h.h1, h.h2c, h.ws} {
			c.CloseIdleConnections()
		}
	}()

	classes := hostileClasses()

	// Warm up: one request of each class, so the gateway's lazily started
	// parts (transports, pools) exist before the baseline is taken.
	for _, c := range classes {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		res := c.run(ctx, h, "warmup-"+c.name, 1)
		cancel()
		t.Logf("warm-up %s: err=%v aborted=%v verified=%v", c.name, res.err, res.aborted, res.verified)
	}
	before, beforeStacks := h.quiesce(t, g, 0, 0)
	t.Logf("gateway goroutines before the load: %d", before)

	// The load.
	stats := map[string]*hostileStats{}
	var wg sync.WaitGroup
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	h.start = time.Now()
	seqs := map[string]*atomic.Int64{}
	for _, c := range classes {
		s := &hostileStats{}
		stats[c.name] = s
		seq := new(atomic.Int64)
		seqs[c.name] = seq
		for range c.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for loadCtx.Err() == nil {
					n := seq.Add(1)
					id := fmt.Sprintf("%s-%d", c.name, n)
					// Not under loadCtx: stopping the load lets requests
					// in flight finish.
					ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
					s.sent.Add(1)
					res := c.run(ctx, h, id, n)
					cancel()
					s.record(id, res, time.Since(h.start))
					select {
					case <-loadCtx.Done():
					case <-time.After(c.pause):
					}
				}
			}()
		}
	}
	at := func() string { return time.Since(h.start).Round(10 * time.Millisecond).String() }

	// burst sends count requests of the abort-burst class at once: ten
	// closed SSE tabs or aborted downloads must not trip the switch.
	burst := func(count int) {
		c := classes[len(classes)-1]
		t.Logf("%s: a burst of %d aborting clients", at(), count)
		for range count {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := seqs[c.name].Add(1)
				id := fmt.Sprintf("%s-%d", c.name, n)
				ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
				defer cancel()
				stats[c.name].sent.Add(1)
				stats[c.name].record(id, c.run(ctx, h, id, n), time.Since(h.start))
			}()
		}
	}

	// reloads holds when each reload ran, from just before it was asked
	// for until it returned.
	var reloads [][2]time.Duration
	reload := func(how string, do func() error) {
		from := time.Since(h.start)
		t.Logf("%s: %s", at(), how)
		if err := do(); err != nil {
			t.Errorf("%s: %v", how, err)
		}
		reloads = append(reloads, [2]time.Duration{from, time.Since(h.start)})
	}
	sleepUntil := func(d time.Duration) {
		for time.Since(h.start) < d {
			time.Sleep(20 * time.Millisecond)
		}
	}

	sleepUntil(2 * time.Second)
	burst(60)

	// Reload 1, through the CLI, with a new weight.
	sleepUntil(4 * time.Second)
	cfg.Extra["WEIGHT"] = "40"
	g.WriteConfig(cfg)
	reload("reload 1 (switchback reload, weight 50 -> 40)", func() error {
		if _, stderr, code := RunCLI(t, g.Dir, "reload", "--config", g.Caddyfile, "--adapter", "caddyfile", "--address", g.Admin, "--force"); code != 0 {
			return fmt.Errorf("exit %d: %s", code, stderr)
		}
		return nil
	})

	// A rejected reload: weight 80 and a site on a port in use, so the
	// config provisions and then fails to start. It must change nothing:
	// the weight stays 40 and the switch can still trip (the fault below).
	sleepUntil(5500 * time.Millisecond)
	cfg.Extra["WEIGHT"], cfg.Extra["EXTRA_SITE"] = "80", "http://"+h.legacy.Addr()+" {\n\trespond 200\n}"
	g.WriteConfig(cfg)
	t.Logf("%s: a rejected reload (admin /load, weight 80, a port in use)", at())
	if err := adminLoadCaddyfile(g); err == nil {
		t.Errorf("a config with a site on a port in use loaded")
	}
	cfg.Extra["WEIGHT"], cfg.Extra["EXTRA_SITE"] = "40", ""
	g.WriteConfig(cfg)
	rejectedWeight := g.Switch(t, "main").Weight
	t.Logf("assert rejected reload: weight %v after it, want 40", rejectedWeight)
	if rejectedWeight != 40 {
		t.Errorf("a rejected reload changed the running switch's weight to %v, want 40", rejectedWeight)
	}

	// The failover: a fault on consolidated until the switch trips.
	sleepUntil(7 * time.Second)
	if s := g.Switch(t, "main"); s.Tripped {
		t.Logf("%s: the switch is already tripped before any fault (%s); resetting it so the fault can trip it", at(), s.Reason)
		g.AdminJSON(t, http.MethodPost, "/switchback/switches/main/reset", map[string]string{"reason": "hostile test: before the fault"}, nil)
	}
	faultOn := time.Now()
	h.consolidated.fault.Store(true)
	t.Logf("%s: fault on consolidated (503 at once, body unread)", at())
	var tripSeen time.Time
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s := g.Switch(t, "main"); s.Tripped && s.Mode == "legacy" {
			tripSeen = time.Now()
			t.Logf("%s: tripped (%s)", at(), s.Reason)
			break
		}
	}
	if tripSeen.IsZero() {
		t.Errorf("the switch did not trip within 10s of the fault on consolidated")
	}
	time.Sleep(time.Second) // requests already routed to consolidated meet the fault too
	h.consolidated.fault.Store(false)
	faultOff := time.Now()
	t.Logf("%s: fault off", at())

	// Reload 2, through the admin API's /load, while tripped.
	time.Sleep(time.Second)
	cfg.Extra["WEIGHT"] = "50"
	g.WriteConfig(cfg)
	reload("reload 2 (admin /load, weight 40 -> 50)", func() error { return adminLoadCaddyfile(g) })

	// Recovery: consolidated takes its share again once the fault's
	// failures have left the trip window (10 s), so that any later trip
	// is one no fault caused.
	const tripWindow = 10 * time.Second
	for time.Since(faultOff) < tripWindow+500*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s: reset the switch", at())
	if code := g.AdminJSON(t, http.MethodPost, "/switchback/switches/main/reset", map[string]string{"reason": "hostile test: fault fixed"}, nil); code != 200 {
		t.Errorf("reset: status %d", code)
	}
	sleepUntil(time.Since(h.start) + time.Second)
	burst(60)
	sleepUntil(time.Since(h.start) + 5*time.Second)
	stopLoad()
	t.Logf("%s: load stopped; waiting for requests in flight", at())
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		t.Fatalf("requests still in flight 45s after the load stopped")
	}
	t.Logf("%s: load done", at())

	// 1. Panics: the gateway's log (Caddy logs a recovered handler panic
	// at ERROR), any panic metric, and the process still running.
	logs := g.Logs()
	panics := 0
	var panicLines []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(strings.ToLower(line), "panic") {
			panics++
			if len(panicLines) < 3 {
				panicLines = append(panicLines, truncate(line, 300))
			}
		}
	}
	metrics := g.metrics(t)
	panicMetric := sumMetrics(metrics, regexp.MustCompile(`^switchback_[a-z_]*panic[a-z_]*(\{[^}]*\})? `))
	select {
	case <-g.exited:
		t.Errorf("the gateway exited during the load")
	default:
	}
	t.Logf("assert panics: %d in the gateway log, %v in metrics", panics, panicMetric)
	if panics > 0 || panicMetric > 0 {
		t.Errorf("panics: %d log lines mention a panic (metric %v), want 0: %q", panics, panicMetric, panicLines)
	}

	// 2. Trips: each must fall within the fault window.
	sw := g.Switch(t, "main")
	var inFault, outside []string
	for _, ev := range sw.History {
		if ev.Kind != "trip" {
			continue
		}
		desc := fmt.Sprintf("%s at %s (%s)", ev.Rule, ev.At.Sub(h.start).Round(10*time.Millisecond), ev.Reason)
		// A trip is the fault's if the fault's failures were still in
		// its window.
		if !ev.At.Before(faultOn) && ev.At.Before(faultOff.Add(tripWindow)) {
			inFault = append(inFault, desc)
		} else {
			outside = append(outside, desc)
		}
	}
	tripMetric := sumMetrics(metrics, regexp.MustCompile(`^switchback_trips_total\{switch="main",`))
	t.Logf("assert trips: %d caused by the fault (on %s to %s, plus the %s window), %d not caused by any fault; trips_total %v",
		len(inFault), faultOn.Sub(h.start).Round(10*time.Millisecond), faultOff.Sub(h.start).Round(10*time.Millisecond), tripWindow, len(outside), tripMetric)
	if len(outside) > 0 {
		t.Errorf("trips that no upstream fault caused: %d, want 0: %q", len(outside), outside)
	}
	if len(inFault) == 0 {
		t.Errorf("no trip during the fault on consolidated")
	}
	if int(tripMetric) != len(inFault)+len(outside) {
		t.Errorf("trips_total = %v but the history holds %d trips", tripMetric, len(inFault)+len(outside))
	}

	// 3-6. Per class: client-visible errors, double executions, bodies.
	t.Logf("%-14s %6s %6s %8s %7s %9s %6s %7s %8s %8s", "class", "sent", "ok", "verified", "aborted", "casualty", "errors", "corrupt", "2 arms", "2x exec")
	var errClasses, corruptClasses, doubleClasses, reloadResets []string
	for _, c := range classes {
		s := stats[c.name]
		var errs, casualties, corrupt []hostileFailure
		for _, f := range s.failures {
			switch {
			case f.corrupt:
				corrupt = append(corrupt, f)
			case !c.replayable && h.consolidated.exec(f.id).faulted > 0:
				// Consolidated failed it on purpose and it may not be
				// replayed: its client sees the failure.
				casualties = append(casualties, f)
			case f.transport && duringReload(reloads, f.at) && h.legacy.exec(f.id).arrivals+h.consolidated.exec(f.id).arrivals == 0:
				// A keep-alive connection that Caddy closed as it
				// switched configs, under a request no upstream saw.
				// Plain reverse_proxy does the same (see README,
				// "reload"); counted apart, never hidden.
				reloadResets = append(reloadResets, fmt.Sprintf("%s at %s: %s", f.id, f.at.Round(10*time.Millisecond), truncate(f.err.Error(), 160)))
			default:
				errs = append(errs, f)
			}
		}
		bothArms, double := 0, []string{}
		for _, id := range s.ids {
			l, co := h.legacy.exec(id), h.consolidated.exec(id)
			if l.arrivals > 0 && co.arrivals > 0 {
				bothArms++
			}
			if c.once && l.arrivals+co.arrivals > 1 {
				double = append(double, fmt.Sprintf("%s: legacy %d, consolidated %d (%d faulted)", id, l.arrivals, co.arrivals, co.faulted))
			}
		}
		t.Logf("%-14s %6d %6d %8d %7d %9d %6d %7d %8d %8d", c.name, s.sent.Load(), s.ok.Load(), s.verified.Load(), s.aborted.Load(),
			len(casualties), len(errs), len(corrupt), bothArms, len(double))
		if len(errs) > 0 {
			kind := "non-replayable"
			if c.replayable {
				kind = "replayable"
			}
			errClasses = append(errClasses, c.name)
			t.Errorf("%s (%s): %d client-visible errors, want 0; e.g. %s", c.name, kind, len(errs), examples(errs))
		}
		if len(corrupt) > 0 {
			corruptClasses = append(corruptClasses, c.name)
			t.Errorf("%s: %d bodies arrived different, want 0; e.g. %s", c.name, len(corrupt), examples(corrupt))
		}
		if len(double) > 0 {
			doubleClasses = append(doubleClasses, c.name)
			t.Errorf("%s: %d requests without Idempotency-Key executed twice, want 0; e.g. %q", c.name, len(double), double[:min(3, len(double))])
		}
		if s.ok.Load() == 0 && s.aborted.Load() == 0 {
			t.Errorf("%s: no request succeeded", c.name)
		}
	}
	t.Logf("connections reset as Caddy switched configs, under requests no upstream saw: %d %q", len(reloadResets), reloadResets)
	t.Logf("assert client-visible errors: classes with errors %v", errClasses)
	t.Logf("assert double executions: classes with double executions %v", doubleClasses)
	t.Logf("assert byte-exact bodies: classes with corrupt bodies %v", corruptClasses)

	// 7. Goroutines back to the baseline. Both counts are taken in the
	// same quiet state (every connection into and out of the gateway
	// closed, polled for up to 15 s), so what is left is the process's
	// own: listeners, the admin server, the store's refresh. The
	// tolerance of 2 is for one such goroutine caught mid-tick; a leak
	// per request, stream, websocket, abort, reload or trip is not.
	const tolerance = 2
	after, afterStacks := h.quiesce(t, g, before, tolerance)
	t.Logf("assert goroutines: %d before the load, %d after (tolerance +%d)", before, after, tolerance)
	if after > before+tolerance {
		t.Errorf("goroutines grew from %d to %d after the load, want at most +%d; grown stacks:\n%s", before, after, tolerance, stackGrowth(beforeStacks, afterStacks, 8))
	}
	if t.Failed() {
		t.Logf("gateway log (last 40 lines):\n%s", lastLines(logs, 40))
	}
}

func (s *hostileStats) record(id string, res hostileResult, at time.Duration) {
	switch {
	case res.err != nil:
		s.mu.Lock()
		s.failures = append(s.failures, hostileFailure{id: id, err: res.err, transport: res.transport, corrupt: res.corrupt, at: at})
		s.mu.Unlock()
	case res.aborted:
		s.aborted.Add(1)
	default:
		s.ok.Add(1)
	}
	if res.verified {
		s.verified.Add(1)
	}
	s.mu.Lock()
	s.ids = append(s.ids, id)
	s.mu.Unlock()
}

// duringReload says whether a request that ended at d (since the load
// started) may have met a reload: it ended within one of them or within
// 2 s after it.
func duringReload(reloads [][2]time.Duration, d time.Duration) bool {
	for _, r := range reloads {
		if d >= r[0] && d <= r[1]+2*time.Second {
			return true
		}
	}
	return false
}

func examples(fs []hostileFailure) string {
	var b strings.Builder
	for i, f := range fs[:min(3, len(fs))] {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s at %s: %s", f.id, f.at.Round(10*time.Millisecond), truncate(f.err.Error(), 200))
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// hostileClasses is the load's mix.
func hostileClasses() []hostileClass {
	const t15, t30 = 15 * time.Second, 30 * time.Second
	return []hostileClass{
		{name: "get", replayable: true, workers: 3, pause: 10 * time.Millisecond, timeout: t15, run: hostileGetOne},
		{name: "post-idem", replayable: true, workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
			return h.upload(ctx, http.MethodPost, id, hostilePattern(id, hostileSize(n)), false, "Idempotency-Key", id)
		}},
		{name: "post-nokey", once: true, workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
			return h.upload(ctx, http.MethodPost, id, hostilePattern(id, hostileSize(n)), false)
		}},
		{name: "chunked-idem", replayable: true, workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
			return h.upload(ctx, http.MethodPost, id, hostilePattern(id, hostileSize(n)), true, "Idempotency-Key", id)
		}},
		{name: "chunked-big", once: true, workers: 1, pause: 50 * time.Millisecond, timeout: t15, run: func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
			return h.upload(ctx, http.MethodPost, id, hostilePattern(id, 9<<20+int(n%3)*512<<10), true)
		}},
		{name: "upload-16MiB", workers: 1, pause: 100 * time.Millisecond, timeout: t30, run: func(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
			return h.upload(ctx, http.MethodPut, id, hostilePattern(id, 16<<20), false)
		}},
		{name: "slow-body", replayable: true, workers: 2, pause: 10 * time.Millisecond, timeout: t15, run: hostileSlowBody},
		{name: "expect-100", replayable: true, workers: 1, pause: 20 * time.Millisecond, timeout: t15, run: hostileExpect},
		{name: "sse", replayable: true, workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: hostileSSEOne},
		{name: "download", replayable: true, workers: 1, pause: 20 * time.Millisecond, timeout: t15, run: hostileDownload},
		{name: "upload-abort", workers: 1, pause: 50 * time.Millisecond, timeout: t15, run: hostileUploadAbort},
		{name: "websocket", workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: hostileWebsocket},
		{name: "bidi-h2c", workers: 2, pause: 20 * time.Millisecond, timeout: t15, run: hostileBidiOne},
		// No steady workers: sent in bursts (see TestHostileTraffic).
		{name: "abort-burst", timeout: t15, run: hostileAbortOne},
	}
}

// hostileAbortOne is a client that goes away midway: an aborted
// download, a closed SSE tab or an abandoned upload, in turn.
func hostileAbortOne(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	switch n % 3 {
	case 0:
		return hostileDownload(ctx, h, id, 2*n) // even: hangs up after 64 KiB
	case 1:
		return hostileSSEOne(ctx, h, id, 3*n) // a multiple of 3: leaves after 3 events
	default:
		return hostileUploadAbort(ctx, h, id, n)
	}
}

// hostileSize is the body size of a buffered upload: one in four is 4
// MiB (a replay of a large body races the first arm's transport for it),
// the others 8 to 64 KiB. All fit replay_max_body.
func hostileSize(n int64) int {
	if n%4 == 0 {
		return 4 << 20
	}
	return 8<<10 + int(n%8)*8<<10
}

func (h *hostileRun) newRequest(ctx context.Context, method, path, id string, body io.Reader) *http.Request {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+h.gw+path, body)
	if err != nil {
		panic(err)
	}
	req.Header.Set("X-Request-Id", id)
	return req
}

func hostileGetOne(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	resp, err := h.h1.Do(h.newRequest(ctx, http.MethodGet, hostileGet, id, nil))
	if err != nil {
		return transportFailed("GET: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(b), "ok ") {
		return failed("GET: status %d, %q, %v", resp.StatusCode, truncate(string(b), 80), err)
	}
	return hostileResult{}
}

// upload sends body to /upload, chunked (length unknown) or not, with
// the header pairs in kv, and checks the upstream's hash of what it got.
func (h *hostileRun) upload(ctx context.Context, method, id string, body []byte, chunked bool, kv ...string) hostileResult {
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = struct{ io.Reader }{rd}
	}
	req := h.newRequest(ctx, method, hostileUpload, id, rd)
	if chunked {
		req.ContentLength = -1
	}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return h.checkUpload(req, body)
}

func (h *hostileRun) checkUpload(req *http.Request, body []byte) hostileResult {
	what := fmt.Sprintf("%s of %d bytes", req.Method, len(body))
	if req.ContentLength < 0 {
		what += " chunked"
	}
	resp, err := h.h1.Do(req)
	if err != nil {
		return transportFailed("%s: %v", what, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return failed("%s: status %d from %s, %q, %v", what, resp.StatusCode, resp.Header.Get("X-Upstream"), truncate(string(b), 120), err)
	}
	if want := fmt.Sprintf("%x %d", sha256.Sum256(body), len(body)); string(b) != want {
		return corrupted("%s: %s received %q, want %q", what, resp.Header.Get("X-Upstream"), b, want)
	}
	return hostileResult{verified: true}
}

// slowReader yields its bytes one at a time, gap apart.
type slowReader struct {
	ctx context.Context
	b   []byte
	gap time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-time.After(r.gap):
	}
	p[0], r.b = r.b[0], r.b[1:]
	return 1, nil
}

// hostileSlowBody sends a 24-byte body at 1 byte per 100 ms, chunked,
// with an Idempotency-Key.
func hostileSlowBody(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	body := hostilePattern(id, 24)
	req := h.newRequest(ctx, http.MethodPost, hostileUpload, id, &slowReader{ctx: ctx, b: body, gap: 100 * time.Millisecond})
	req.ContentLength = -1
	req.Header.Set("Idempotency-Key", id)
	return h.checkUpload(req, body)
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// hostileExpectWait is how long the client waits for 100 Continue.
const hostileExpectWait = 10 * time.Second

// hostileExpect sends a 256 KiB PUT with Expect: 100-continue; one in
// four asks the upstream to refuse it unread, and then the client must
// never have been told to send the body.
func hostileExpect(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	body := hostilePattern(id, 256<<10)
	refuse := n%4 == 0
	cr := &countingReader{r: bytes.NewReader(body)}
	req := h.newRequest(ctx, http.MethodPut, hostileUpload, id, cr)
	req.ContentLength = int64(len(body))
	req.Header.Set("Expect", "100-continue")
	if !refuse {
		return h.checkUpload(req, body)
	}
	req.Header.Set("X-Refuse", "1")
	start := time.Now()
	resp, err := h.h1.Do(req)
	if err != nil {
		return transportFailed("refused PUT with Expect: 100-continue: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		return failed("refused PUT with Expect: 100-continue: status %d, want 413", resp.StatusCode)
	}
	// Plain Caddy (reverse_proxy with expect_continue_timeout) sends the
	// client neither 100 Continue nor the upstream's early 413 until the
	// client gives up waiting and sends its body (measured here with a Go
	// client: 10 s, its ExpectContinueTimeout, for plain Caddy and for
	// switchback alike). What switchback must not do is ask for the body
	// itself, before the arm does, as a gateway that reads ahead would:
	// then the body goes out at once.
	if sent, waited := cr.n.Load(), time.Since(start); sent > 0 && waited < hostileExpectWait-time.Second {
		return failed("refused PUT with Expect: 100-continue: the client was told to send its body (%d bytes) after %v, before the upstream asked for it", sent, waited.Round(time.Millisecond))
	}
	return hostileResult{}
}

// hostileSSEOne reads an SSE stream whole and checks it; one in three
// clients goes away after three events, as a closed tab does.
func hostileSSEOne(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := h.newRequest(ctx, http.MethodGet, hostileSSE, id, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := h.h1.Do(req)
	if err != nil {
		return transportFailed("SSE: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return failed("SSE: status %d from %s: %q", resp.StatusCode, resp.Header.Get("X-Upstream"), truncate(string(b), 80))
	}
	var want strings.Builder
	for i := range hostileSSEEvents {
		want.WriteString(hostileSSEEvent(id, i))
	}
	if n%3 == 0 {
		br := bufio.NewReader(resp.Body)
		got := ""
		for strings.Count(got, "\n\n") < 3 {
			line, err := br.ReadString('\n')
			got += line
			if err != nil {
				return failed("SSE: reading the first events: %v", err)
			}
		}
		if !strings.HasPrefix(want.String(), got) {
			return corrupted("SSE: first events %q, want a prefix of %q", truncate(got, 120), truncate(want.String(), 120))
		}
		return hostileResult{aborted: true, verified: true}
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return failed("SSE: reading after %d bytes: %v", len(b), err)
	}
	if string(b) != want.String() {
		return corrupted("SSE: got %d bytes, want %d (%q...)", len(b), want.Len(), truncate(string(b), 80))
	}
	return hostileResult{verified: true}
}

// hostileDownload fetches 4 MiB and checks it; every other client hangs
// up after 64 KiB.
func hostileDownload(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	const size = 4 << 20
	req := h.newRequest(ctx, http.MethodGet, hostileBig, id, nil)
	req.Header.Set("X-Size", strconv.Itoa(size))
	resp, err := h.h1.Do(req)
	if err != nil {
		return transportFailed("download: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return failed("download: status %d from %s", resp.StatusCode, resp.Header.Get("X-Upstream"))
	}
	want := hostilePattern(id, size)
	if n%2 == 0 {
		got := make([]byte, 64<<10)
		if _, err := io.ReadFull(resp.Body, got); err != nil {
			return failed("download: first 64 KiB: %v", err)
		}
		if !bytes.Equal(got, want[:len(got)]) {
			return corrupted("download: the first 64 KiB differ")
		}
		return hostileResult{aborted: true, verified: true}
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return failed("download: after %d bytes: %v", len(got), err)
	}
	if !bytes.Equal(got, want) {
		return corrupted("download: got %d bytes, want %d, or they differ", len(got), len(want))
	}
	return hostileResult{verified: true}
}

// hostileUploadAbort starts an upload over a raw connection and closes
// it midway: a 512 KiB or 4 MiB PUT with a length, or a chunked one.
func hostileUploadAbort(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", h.gw)
	if err != nil {
		return failed("upload abort: dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	part := hostilePattern(id, 128<<10)
	switch n % 3 {
	case 0:
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n", hostileUpload, h.gw, id, 512<<10)
		conn.Write(part)
	case 1:
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n", hostileUpload, h.gw, id, 4<<20)
		conn.Write(part)
	default:
		fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n", hostileUpload, h.gw, id)
		fmt.Fprintf(conn, "%x\r\n%s\r\n", len(part), part)
	}
	time.Sleep(30 * time.Millisecond)
	return hostileResult{aborted: true}
}

// hostileWebsocket echoes ten messages of 1 to 8 KiB over a websocket
// and checks each; one in four clients drops the connection without a
// close frame after five.
func hostileWebsocket(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	c, resp, err := websocket.Dial(ctx, "ws://"+h.gw+hostileWS, &websocket.DialOptions{
		HTTPClient: h.ws,
		HTTPHeader: http.Header{"X-Request-Id": {id}},
	})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return failed("websocket: dial (status %d): %v", status, err)
	}
	defer c.CloseNow()
	for i := range 10 {
		if n%4 == 0 && i == 5 {
			c.CloseNow()
			return hostileResult{aborted: true, verified: true}
		}
		msg := hostilePattern(fmt.Sprintf("%s/%d", id, i), 1<<10+i*700)
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			return failed("websocket: write %d: %v", i, err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			return failed("websocket: read %d: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			return corrupted("websocket: message %d came back different (%d bytes, want %d)", i, len(got), len(msg))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		return failed("websocket: close: %v", err)
	}
	return hostileResult{verified: true}
}

// hostileBidiOne is a gRPC-style bidi call over h2c: a long POST whose
// body and answer interleave, ten lines each way, each line sent only
// after the previous echo came back; one in three clients resets the
// stream midway.
func hostileBidiOne(ctx context.Context, h *hostileRun, id string, n int64) hostileResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	req := h.newRequest(ctx, http.MethodPost, hostileBidi, id, pr)
	req.ContentLength = -1
	type answer struct {
		resp *http.Response
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		resp, err := h.h2c.Do(req)
		answers <- answer{resp, err}
	}()
	line := func(i int) string { return fmt.Sprintf("%s/%d %x", id, i, sha256.Sum256([]byte(fmt.Sprint(id, i)))) }
	writeErr := make(chan error, 1)
	go func() { _, err := io.WriteString(pw, line(0)+"\n"); writeErr <- err }()
	var a answer
	select {
	case a = <-answers:
	case <-ctx.Done():
		return failed("bidi: no response headers after the first message: %v", ctx.Err())
	}
	if a.err != nil {
		return transportFailed("bidi: %v", a.err)
	}
	defer a.resp.Body.Close()
	if a.resp.StatusCode != 200 {
		b, _ := io.ReadAll(a.resp.Body)
		return failed("bidi: status %d from %s: %q", a.resp.StatusCode, a.resp.Header.Get("X-Upstream"), truncate(string(b), 80))
	}
	if a.resp.ProtoMajor != 2 {
		return failed("bidi: answered over HTTP/%d, want 2", a.resp.ProtoMajor)
	}
	br := bufio.NewReader(a.resp.Body)
	for i := range 10 {
		if i > 0 {
			if n%3 == 0 && i == 5 {
				cancel()
				return hostileResult{aborted: true, verified: true}
			}
			go func() { _, err := io.WriteString(pw, line(i)+"\n"); writeErr <- err }()
		}
		if err := <-writeErr; err != nil {
			return failed("bidi: writing message %d: %v", i, err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			return failed("bidi: reading echo %d: %v", i, err)
		}
		if want := "echo " + line(i) + "\n"; got != want {
			return corrupted("bidi: echo %d is %q, want %q", i, got, want)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		return failed("bidi: after the last echo: %q, %v", rest, err)
	}
	return hostileResult{verified: true}
}

// adminLoadCaddyfile reloads g with its Caddyfile through the admin
// API's /load.
func adminLoadCaddyfile(g *Gateway) error {
	cfg, err := os.ReadFile(g.Caddyfile)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+g.Admin+"/load", bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("POST /load: status %d: %s", resp.StatusCode, b)
	}
	return nil
}

// quiesce closes every idle connection on both sides of the gateway
// (ours to it, its own to the upstreams), then reads its goroutine count
// from the admin endpoint's /debug/pprof/goroutine until the count is at
// most want+tolerance or 15 s pass (want 0: wait 2 s and read once). It
// returns the count and the profile's stacks with their counts.
func (h *hostileRun) quiesce(t *testing.T, g *Gateway, want, tolerance int) (int, map[string]int) {
	t.Helper()
	for _, c := range []*http.Client{h.h1, h.h2c, h.ws} {
		c.CloseIdleConnections()
	}
	h.legacy.CloseClientConnections()
	h.consolidated.CloseClientConnections()
	deadline := time.Now().Add(15 * time.Second)
	if want == 0 {
		deadline = time.Now().Add(2 * time.Second)
	}
	for {
		n, stacks := goroutines(t, g)
		if (want > 0 && n <= want+tolerance) || time.Now().After(deadline) {
			return n, stacks
		}
		time.Sleep(250 * time.Millisecond)
	}
}

var goroutineTotal = regexp.MustCompile(`^goroutine profile: total (\d+)`)

// goroutines reads the gateway's goroutine profile (debug=1): the total,
// and each distinct stack (its function names) with its count.
func goroutines(t *testing.T, g *Gateway) (int, map[string]int) {
	t.Helper()
	resp, err := Client.Get("http://" + g.Admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatalf("reading the gateway's goroutines: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := goroutineTotal.FindSubmatch(b)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("GET /debug/pprof/goroutine: status %d: %.200q", resp.StatusCode, b)
	}
	total, _ := strconv.Atoi(string(m[1]))
	stacks := map[string]int{}
	for _, block := range strings.Split(string(b), "\n\n")[1:] {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		count, err := strconv.Atoi(strings.Fields(lines[0] + " 0")[0])
		if err != nil {
			continue
		}
		var funcs []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" {
				funcs = append(funcs, f[2])
			}
		}
		stacks[strings.Join(funcs, " < ")] += count
	}
	return total, stacks
}

// stackGrowth lists the n stacks whose goroutine count grew the most.
func stackGrowth(before, after map[string]int, n int) string {
	type grown struct {
		stack string
		by    int
	}
	var gs []grown
	for s, c := range after {
		if d := c - before[s]; d > 0 {
			gs = append(gs, grown{s, d})
		}
	}
	slices.SortFunc(gs, func(a, b grown) int { return b.by - a.by })
	var out strings.Builder
	for _, g := range gs[:min(n, len(gs))] {
		fmt.Fprintf(&out, "  +%d %s\n", g.by, truncate(g.stack, 400))
	}
	return out.String()
}

// sumMetrics adds up every series in Prometheus text whose line matches re.
func sumMetrics(text string, re *regexp.Regexp) float64 {
	sum := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !re.MatchString(line) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
