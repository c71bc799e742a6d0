// Failover benchmark: switchback against HAProxy, each in front of the
// same two real upstreams, consolidated as the primary and legacy as the
// fallback. A steady open-loop load runs; at a known instant consolidated
// starts failing (500s, or closed connections). It reports the time to
// full failover, the errors clients saw and the p99 during the event. It
// is a report, not a timed pass/fail test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestFailoverBench$' -v -count=1 -timeout 10m ./tests/bench/
//
// SWITCHBACK_BENCH_RATE sets the load in requests per second (default
// 400). HAProxy (apt-get install haproxy) is run when it is on PATH:
// `observe layer7`, `error-limit 10`, `on-error mark-down`, legacy as the
// `backup` server; switchback runs its default rules (error_rate 5%,
// consecutive_failures 10) with replay_to_legacy on.
//
// The load is a Go generator, not wrk: wrk is closed-loop and cannot hold
// a fixed rate, so its p99 would measure saturation, not the failover.
package bench

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"
)

// foUpstream is an upstream whose fault is switched at run time. It notes
// its first failing answer and the last proxied request that reached it
// (health checks, on /health, are not counted).
type foUpstream struct {
	*httptest.Server
	name      string
	fault     atomic.Int32 // 0 none, 1 answer 500, 2 close the connection
	firstFail atomic.Int64 // Unix ns
	lastHit   atomic.Int64 // Unix ns
	hits      atomic.Int64
}

func newFoUpstream(t *testing.T, name string) *foUpstream {
	u := &foUpstream{name: name}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *foUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

func (u *foUpstream) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	if r.URL.Path != "/health" {
		u.hits.Add(1)
		for last := u.lastHit.Load(); now > last && !u.lastHit.CompareAndSwap(last, now); last = u.lastHit.Load() {
		}
	}
	io.Copy(io.Discard, r.Body)
	w.Header().Set("X-Upstream", u.name)
	switch u.fault.Load() {
	case 1:
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, u.name+" failing")
		if r.URL.Path != "/health" {
			u.firstFail.CompareAndSwap(0, time.Now().UnixNano())
		}
		return
	case 2:
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
		if r.URL.Path != "/health" {
			u.firstFail.CompareAndSwap(0, time.Now().UnixNano())
		}
		return
	}
	io.WriteString(w, u.name)
}

// foResult is one request of the load.
type foResult struct {
	start, end time.Time
	ok         bool
}

// foLoad sends GETs at a fixed rate (open loop: a slow answer does not
// slow the schedule) from a bounded pool of workers, for d.
func foLoad(url string, rate int, d time.Duration, workers int) []foResult {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: workers, MaxConnsPerHost: workers},
	}
	tokens := make(chan time.Time, 4*workers)
	var mu sync.Mutex
	var results []foResult
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []foResult
			for range tokens {
				start := time.Now()
				ok := false
				if resp, err := client.Get(url); err == nil {
					_, rerr := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = rerr == nil && resp.StatusCode < 300
				}
				mine = append(mine, foResult{start: start, end: time.Now(), ok: ok})
			}
			mu.Lock()
			results = append(results, mine...)
			mu.Unlock()
		}()
	}
	began := time.Now()
	tick := time.NewTicker(2 * time.Millisecond)
	issued := 0
	for now := range tick.C {
		if now.Sub(began) >= d {
			break
		}
		for due := int(now.Sub(began).Seconds() * float64(rate)); issued < due; issued++ {
			select {
			case tokens <- now:
			default: // every worker busy and the queue full: dropped
			}
		}
	}
	tick.Stop()
	close(tokens)
	wg.Wait()
	client.CloseIdleConnections()
	return results
}

// foFigures are one run's figures.
type foFigures struct {
	proxy, fault     string
	failover         time.Duration // first failing answer to last request on consolidated
	errors, requests int
	rate             float64
	p99Base, p99     time.Duration // before the fault; during the event
}

func p99(rs []foResult) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	d := make([]time.Duration, len(rs))
	for i, r := range rs {
		d[i] = r.end.Sub(r.start)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)*99/100]
}

// foRun runs the scenario against a proxy listening at url: load for
// warm+event, the fault switched on after warm.
func foRun(t *testing.T, proxy, fault string, url string, legacy, consolidated *foUpstream, rate int) foFigures {
	const warm, event = 3 * time.Second, 3 * time.Second
	var faultNS atomic.Int64
	timer := time.AfterFunc(warm, func() {
		faultNS.Store(time.Now().UnixNano())
		if fault == "500" {
			consolidated.fault.Store(1)
		} else {
			consolidated.fault.Store(2)
		}
	})
	defer timer.Stop()
	results := foLoad(url, rate, warm+event, 256)
	faultAt := time.Unix(0, faultNS.Load())
	f := foFigures{proxy: proxy, fault: fault, requests: len(results)}
	var first, last time.Time
	var base, during []foResult
	for _, r := range results {
		if first.IsZero() || r.start.Before(first) {
			first = r.start
		}
		if r.end.After(last) {
			last = r.end
		}
		if !r.ok {
			f.errors++
		}
		switch {
		case r.start.Before(faultAt):
			base = append(base, r)
		case r.start.Before(faultAt.Add(2 * time.Second)):
			during = append(during, r)
		}
	}
	f.rate = float64(len(results)) / last.Sub(first).Seconds()
	f.p99Base, f.p99 = p99(base), p99(during)
	if ff := consolidated.firstFail.Load(); ff != 0 {
		f.failover = time.Duration(consolidated.lastHit.Load() - ff)
	} else {
		t.Errorf("%s/%s: consolidated never served a failing answer", proxy, fault)
	}
	t.Logf("%s/%s: %d requests at %.0f/s, %d errors, failover %v, p99 %v before, %v during; %d on legacy, %d on consolidated",
		proxy, fault, f.requests, f.rate, f.errors, f.failover, f.p99Base, f.p99, legacy.hits.Load(), consolidated.hits.Load())
	return f
}

const foCaddyfile = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	log {
		output discard
	}
	switchback main {
		mode consolidated
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
}
`

const foHAProxyCfg = `global
	maxconn 4096
defaults
	mode http
	timeout connect 2s
	timeout client 10s
	timeout server 10s
frontend fe
	bind {HTTP}
	default_backend be
backend be
	option httpchk GET /health
	server consolidated {CONSOLIDATED} check inter 1s fall 3 rise 2 observe layer7 error-limit 10 on-error mark-down
	server legacy {LEGACY} check inter 1s backup
`

func TestFailoverBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the failover benchmark")
	}
	rate := envCount(t, "SWITCHBACK_BENCH_RATE", 400)
	bin := buildSwitchback(t)
	haproxy, _ := exec.LookPath("haproxy")
	if haproxy == "" {
		t.Log("haproxy is not on PATH: switchback alone (apt-get install haproxy for the comparison)")
	}
	var figs []foFigures
	for _, fault := range []string{"500", "close"} {
		// switchback
		{
			legacy, consolidated := newFoUpstream(t, "legacy"), newFoUpstream(t, "consolidated")
			dir := t.TempDir()
			admin, addr := freePort(t), freePort(t)
			cfg := strings.NewReplacer("{ADMIN}", admin, "{HTTP}", addr, "{DIR}", dir,
				"{LEGACY}", legacy.addr(), "{CONSOLIDATED}", consolidated.addr()).Replace(foCaddyfile)
			cmd := startSwitchback(t, bin, dir, cfg, answers200("http://"+addr+"/"))
			figs = append(figs, foRun(t, "switchback", fault, "http://"+addr+"/load", legacy, consolidated, rate))
			cmd.Process.Kill()
		}
		if haproxy == "" {
			continue
		}
		{
			legacy, consolidated := newFoUpstream(t, "legacy"), newFoUpstream(t, "consolidated")
			dir := t.TempDir()
			addr := freePort(t)
			cfg := strings.NewReplacer("{HTTP}", addr, "{LEGACY}", legacy.addr(), "{CONSOLIDATED}", consolidated.addr()).Replace(foHAProxyCfg)
			path := filepath.Join(dir, "haproxy.cfg")
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(haproxy, "-c", "-f", path).CombinedOutput(); err != nil {
				t.Fatalf("haproxy -c: %v\n%s", err, out)
			}
			cmd := exec.Command(haproxy, "-db", "-f", path)
			startProcess(t, cmd, answers200("http://"+addr+"/"))
			figs = append(figs, foRun(t, "haproxy", fault, "http://"+addr+"/load", legacy, consolidated, rate))
			cmd.Process.Kill()
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "\nfailover at %d req/s target, %d CPUs, %s\n", rate, runtime.NumCPU(), runtime.Version())
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault\tproxy\trequests\treq/s\tclient errors\tfull failover\tp99 before\tp99 during (2s)\t")
	for _, f := range figs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%d\t%s\t%s\t%s\t\n", f.fault, f.proxy, f.requests, f.rate, f.errors,
			f.failover.Round(time.Millisecond), f.p99Base.Round(100*time.Microsecond), f.p99.Round(100*time.Microsecond))
	}
	tw.Flush()
	for i := 0; i+1 < len(figs); i += 2 {
		sb, hp := figs[i], figs[i+1]
		fmt.Fprintf(&out, "%s: haproxy/switchback  failover %s  errors %d vs %d  p99 during %s\n", sb.fault,
			ratio(hp.failover, sb.failover), hp.errors, sb.errors, ratio(hp.p99, sb.p99))
	}
	t.Log(out.String())
}

func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}
