package tests

// End-to-end tests of active probes (issue 10, item 1): the README's probe
// line, with a reverse_proxy arm, starts, probes through the arm and marks
// the arm down when its health endpoint fails.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// healthUpstream is an upstream whose /health answers healthStatus (200
// until changed) and counts its probes; every other path answers name.
type healthUpstream struct {
	*Upstream
	healthStatus atomic.Int64
	probes       atomic.Int64
}

func newHealthUpstream(t *testing.T, name string) *healthUpstream {
	t.Helper()
	u := &healthUpstream{}
	u.healthStatus.Store(http.StatusOK)
	u.Upstream = &Upstream{Name: name, paths: map[string]int{}, tagged: map[string]taggedRequest{}}
	u.Upstream.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			u.probes.Add(1)
			w.WriteHeader(int(u.healthStatus.Load()))
			fmt.Fprint(w, "health of "+name)
			return
		}
		u.Upstream.serve(w, r)
	}))
	t.Cleanup(u.Upstream.Server.Close)
	return u
}

// armProbe is the probe part of an arm's status in the admin API.
type armProbe struct {
	Arms map[string]struct {
		ProbeHealthy *bool  `json:"probe_healthy"`
		ProbeError   string `json:"probe_error"`
	} `json:"arms"`
}

func (g *Gateway) legacyProbe(t *testing.T) (healthy *bool, errText string) {
	t.Helper()
	var s armProbe
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &s); code != 200 {
		t.Fatalf("GET switch: status %d", code)
	}
	a := s.Arms["legacy"]
	return a.ProbeHealthy, a.ProbeError
}

// TestProbeThroughReverseProxy runs the README's probe line against a
// reverse_proxy arm. It used to crash the gateway at start: the probe's
// request had no *caddyhttp.Server in its context and reverse_proxy
// dereferenced it. The probe must go through the arm (it reaches the
// upstream's /health through reverse_proxy), mark the arm down when
// /health fails, up again when it recovers, and make a trip say that
// legacy is unhealthy too.
func TestProbeThroughReverseProxy(t *testing.T) {
	legacy := newHealthUpstream(t, "legacy")
	consolidated := NewUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{
		Template:     failoverTemplate,
		Legacy:       legacy.Upstream,
		Consolidated: consolidated,
		Extra: map[string]string{"MODE": "split", "WEIGHT": "100", "OPTIONS": `
		probe legacy GET /health interval 2s
		trip {
			consecutive_failures 3
		}`},
	})

	Eventually(t, 10*time.Second, "a first probe through the legacy arm", func() bool { return legacy.probes.Load() > 0 })
	if ok, _ := g.legacyProbe(t); ok == nil || !*ok {
		t.Fatalf("legacy probe_healthy = %v, want true", ok)
	}
	// The gateway still serves (it used to die here).
	if body, _ := g.Get(t, "/", nil); body != "consolidated" {
		t.Fatalf("GET / = %q, want consolidated", body)
	}

	legacy.healthStatus.Store(http.StatusServiceUnavailable)
	Eventually(t, 10*time.Second, "the probe to mark legacy down", func() bool {
		ok, _ := g.legacyProbe(t)
		return ok != nil && !*ok
	})
	if _, e := g.legacyProbe(t); !strings.Contains(e, "503") {
		t.Errorf("probe_error = %q, want the 503 named", e)
	}

	// A trip now says legacy is unhealthy too, by its probe.
	consolidated.Fail(http.StatusInternalServerError)
	for range 3 {
		g.Get(t, "/", nil)
	}
	Eventually(t, 5*time.Second, "a trip that names the legacy probe", func() bool {
		s := g.Switch(t, "main")
		return s.Tripped && s.LegacyUnhealthy && strings.Contains(s.LegacyUnhealthyReason, "probe")
	})

	legacy.healthStatus.Store(http.StatusOK)
	Eventually(t, 10*time.Second, "the probe to mark legacy up again", func() bool {
		ok, _ := g.legacyProbe(t)
		return ok != nil && *ok
	})
	if n := legacy.PathHits("/health"); n != 0 {
		t.Errorf("/health reached the plain upstream handler %d times, want all of them counted as probes", n)
	}
	if logs := g.Logs(); strings.Contains(logs, "panic") {
		t.Errorf("the gateway logged a panic:\n%s", logs)
	}
}

var (
	hookBuildOnce sync.Once
	hookBinPath   string
	hookBuildErr  error
)

// hookBinary builds cmd/switchback with the switchback_testhooks tag, whose
// SWITCHBACK_TEST_PANIC makes named goroutines panic once. A release
// build has no such hook.
func hookBinary(t *testing.T) string {
	t.Helper()
	hookBuildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		dir, err := os.MkdirTemp("", "switchback-hooks-bin-")
		if err != nil {
			hookBuildErr = err
			return
		}
		hookBinPath = filepath.Join(dir, "switchback")
		cmd := exec.Command("go", "build", "-tags", "switchback_testhooks", "-o", hookBinPath, "./cmd/switchback")
		cmd.Dir = filepath.Dir(filepath.Dir(file))
		if out, err := cmd.CombinedOutput(); err != nil {
			hookBuildErr = fmt.Errorf("building switchback with test hooks: %v\n%s", err, out)
		}
	})
	if hookBuildErr != nil {
		t.Fatal(hookBuildErr)
	}
	return hookBinPath
}

// metricValue returns the value of one series in GET /switchback/metrics,
// or -1 if it is missing.
func (g *Gateway) metricValue(t *testing.T, series string) float64 {
	t.Helper()
	return metricValue(g.metrics(t), series)
}

// TestGoroutinePanicsSurvived forces a panic at the start of the probe,
// the monitor, the legacy watch and both store loops. The gateway must
// keep serving, count each panic in the metrics, log it with its stack,
// and keep each loop going: the probe probes, a mode change made through
// the store reaches the switch, and a trip still happens and is judged.
func TestGoroutinePanicsSurvived(t *testing.T) {
	legacy := newHealthUpstream(t, "legacy")
	consolidated := NewUpstream(t, "consolidated")
	tasks := []string{"probe", "monitor", "legacy_watch", "store_sync", "pending_write_back"}
	g := prepareGateway(t, GatewayConfig{
		Template:     failoverTemplate,
		Legacy:       legacy.Upstream,
		Consolidated: consolidated,
		Env:          []string{"SWITCHBACK_TEST_PANIC=" + strings.Join(tasks, ",")},
		Extra: map[string]string{"MODE": "split", "WEIGHT": "100", "OPTIONS": `
		probe legacy GET /health interval 200ms
		trip {
			consecutive_failures 3
		}`},
	})
	g.start(hookBinary(t))
	t.Cleanup(g.Stop)

	for _, task := range tasks {
		series := fmt.Sprintf(`switchback_goroutine_panics_total{task=%q}`, task)
		Eventually(t, 10*time.Second, series+" to be 1", func() bool { return g.metricValue(t, series) == 1 })
	}
	if v := g.metricValue(t, `switchback_goroutine_panics_total{task="trip"}`); v != 0 {
		t.Errorf("trip panics = %v, want 0 (a series that exists before any panic)", v)
	}
	if logs := g.Logs(); !strings.Contains(logs, "recovered a panic in a switchback goroutine") || !strings.Contains(logs, "goroutine.go") {
		t.Errorf("no panic logged with its stack:\n%s", logs)
	}
	// The probe loop went on.
	n := legacy.probes.Load()
	Eventually(t, 5*time.Second, "more probes after the panic", func() bool { return legacy.probes.Load() > n+2 })
	// The gateway serves, and trips.
	if body, _ := g.Get(t, "/", nil); body != "consolidated" {
		t.Fatalf("GET / = %q, want consolidated", body)
	}
	consolidated.Fail(http.StatusInternalServerError)
	for range 3 {
		g.Get(t, "/", nil)
	}
	Eventually(t, 5*time.Second, "the trip", func() bool { return g.Switch(t, "main").Tripped })
	// The legacy watch went on: a failing legacy probe is noticed while tripped.
	legacy.healthStatus.Store(http.StatusServiceUnavailable)
	Eventually(t, 5*time.Second, "the legacy watch to mark legacy unhealthy", func() bool { return g.Switch(t, "main").LegacyUnhealthy })
	// The store sync went on: a change written offline by the CLI, on the
	// store directly, reaches the running gateway.
	dead := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	if _, stderr, code := RunCLI(t, g.Dir, "traffic", "reset", "--config", g.Caddyfile, "--address", dead, "--reason", "offline"); code != 0 {
		t.Fatalf("offline reset: exit %d: %s", code, stderr)
	}
	Eventually(t, 5*time.Second, "the offline reset to reach the gateway", func() bool { return !g.Switch(t, "main").Tripped })
	if logs := g.Logs(); strings.Contains(logs, "fatal error") {
		t.Errorf("the process died of a fatal error:\n%s", logs)
	}
}
