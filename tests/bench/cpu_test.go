// Gateway CPU per request: plain Caddy reverse_proxy against switchback
// (split 50/50, a returning user on the consolidated arm, replay on),
// both arms on the one upstream. It reports; it is not a timed pass/fail
// test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestCPUBench$' -v -count=1 -timeout 20m ./tests/bench/
//
// Method: one binary, two processes (one per config), one upstream. Each
// gateway is pinned to CPU 0; the upstream (this test process) and wrk
// are pinned to CPU 1, so the gateway's own cost is what core 0 spends.
// Both gateways get the same request, the sticky cookie included.
// The runs alternate in pairs (plain first in even pairs, switchback
// first in odd ones) for SWITCHBACK_BENCH_PAIRS pairs (default 9) of
// SWITCHBACK_BENCH_DURATION (default 5s) each. A run's CPU per request is
// the gateway's utime+stime from /proc/<pid>/stat over the run divided by
// the requests wrk completed; the figures are medians over the runs, and
// the ratios are switchback's median over plain's (the median of the
// per-pair ratios is printed too). What else ran on core 0 during each
// run (its busy time from /proc/stat minus the gateway's) is printed, as
// the noise floor.
package bench

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"

	"golang.org/x/sys/unix"
)

const cpuPlainConfig = `{
	admin {ADMIN}
	log {
		level ERROR
	}
}
http://{HTTP} {
	reverse_proxy {UPSTREAM}
}
`

const cpuSwitchConfig = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
	}
	log {
		level ERROR
	}
}
http://{HTTP} {
	switchback main {
		weight 50
		mode split
		sticky cookie sb_user
		legacy {
			reverse_proxy {UPSTREAM}
		}
		consolidated {
			reverse_proxy {UPSTREAM}
		}
	}
}
`

// gatewayCPU and loadCPU are the cores the gateways and the rest use.
const gatewayCPU, loadCPU = 0, 1

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat
// (100 on Linux, whatever the kernel's HZ).
const clockTicks = 100

type cpuRun struct {
	requests   int64
	seconds    float64 // wrk's own measure of the run
	cpu        float64 // gateway utime+stime over the run, s
	core0Other float64 // core 0's busy time not spent by the gateway, s
}

func (r cpuRun) cpuPerRequest() float64 { return r.cpu / float64(r.requests) } // s
func (r cpuRun) rps() float64           { return float64(r.requests) / r.seconds }

func TestCPUBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the CPU per request benchmark")
	}
	for _, tool := range []string{"wrk", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (apt-get install wrk util-linux)", tool)
		}
	}
	duration := os.Getenv("SWITCHBACK_BENCH_DURATION")
	if duration == "" {
		duration = "5s"
	}
	pairs := envCount(t, "SWITCHBACK_BENCH_PAIRS", 9)
	bin := buildSwitchback(t)

	// This process (the upstream) on the load core, every thread of it.
	pinAll(t, os.Getpid(), loadCPU)
	upstream := freePort(t)
	srv := &http.Server{Addr: upstream, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from upstream\n")
	})}
	go srv.ListenAndServe()
	defer srv.Close()

	start := func(name, tmpl string, ready func(addr string) func() bool) (cmd *exec.Cmd, addr, admin string) {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		admin, addr = freePort(t), freePort(t)
		cfg := strings.NewReplacer("{ADMIN}", admin, "{HTTP}", addr, "{UPSTREAM}", upstream, "{DIR}", dir).Replace(tmpl)
		cmd = startSwitchback(t, bin, dir, cfg, ready(addr))
		pinAll(t, cmd.Process.Pid, gatewayCPU)
		return cmd, addr, admin
	}
	plainCmd, plainAddr, _ := start("plain", cpuPlainConfig, func(addr string) func() bool { return answers200("http://" + addr + "/") })
	// The switchback gateway is up once it issues a sticky cookie; keep
	// one that it sends to the consolidated arm (which holds a 5xx back
	// for replay), learnt from its request counter.
	var cookie string
	switchCmd, switchAddr, switchAdmin := start("switchback", cpuSwitchConfig, func(addr string) func() bool { return answers200("http://" + addr + "/") })
	for i := 0; cookie == "" && i < 50; i++ {
		before := consolidatedRequests(t, switchAdmin)
		resp, err := http.Get("http://" + switchAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if consolidatedRequests(t, switchAdmin) > before {
			for _, c := range resp.Cookies() {
				if c.Name == "sb_user" {
					cookie = "Cookie: sb_user=" + c.Value
				}
			}
		}
	}
	if cookie == "" {
		t.Fatal("no sticky cookie on the consolidated arm in 50 tries")
	}

	// Warm up both.
	runCPU(t, plainCmd.Process.Pid, "http://"+plainAddr+"/", "2s", cookie)
	runCPU(t, switchCmd.Process.Pid, "http://"+switchAddr+"/", "2s", cookie)

	load0, _ := os.ReadFile("/proc/loadavg")
	var plain, sw []cpuRun
	for p := 0; p < pairs; p++ {
		// Both get the very same request, the cookie included: a browser
		// sends its cookies to a plain Caddy too, and parsing, cloning and
		// forwarding the header is Caddy's cost, not ours. What switchback
		// adds is reading and verifying it.
		runPlain := func() {
			plain = append(plain, runCPU(t, plainCmd.Process.Pid, "http://"+plainAddr+"/", duration, cookie))
		}
		runSwitch := func() { sw = append(sw, runCPU(t, switchCmd.Process.Pid, "http://"+switchAddr+"/", duration, cookie)) }
		if p%2 == 0 {
			runPlain()
			runSwitch()
		} else {
			runSwitch()
			runPlain()
		}
		t.Logf("pair %d: plain %.0f req/s %.2f µs/req (core 0 other %.2fs), switchback %.0f req/s %.2f µs/req (core 0 other %.2fs)", p+1,
			plain[p].rps(), plain[p].cpuPerRequest()*1e6, plain[p].core0Other, sw[p].rps(), sw[p].cpuPerRequest()*1e6, sw[p].core0Other)
	}
	load1, _ := os.ReadFile("/proc/loadavg")

	col := func(runs []cpuRun, f func(cpuRun) float64) []float64 {
		out := make([]float64, len(runs))
		for i, r := range runs {
			out[i] = f(r)
		}
		return out
	}
	cpuOf := func(r cpuRun) float64 { return r.cpuPerRequest() * 1e6 }
	rpsOf := func(r cpuRun) float64 { return r.rps() }
	otherOf := func(r cpuRun) float64 { return r.core0Other }
	var cpuRatios, rpsRatios []float64
	for i := range plain {
		cpuRatios = append(cpuRatios, cpuOf(sw[i])/cpuOf(plain[i]))
		rpsRatios = append(rpsRatios, rpsOf(sw[i])/rpsOf(plain[i]))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%d pairs of %s, medians\tCPU µs/request\treq/s\tcore 0 other, s\n", pairs, duration)
	fmt.Fprintf(tw, "plain Caddy reverse_proxy\t%.2f\t%.0f\t%.2f\n", median(col(plain, cpuOf)), median(col(plain, rpsOf)), median(col(plain, otherOf)))
	fmt.Fprintf(tw, "switchback split 50/50, returning user on consolidated\t%.2f\t%.0f\t%.2f\n", median(col(sw, cpuOf)), median(col(sw, rpsOf)), median(col(sw, otherOf)))
	fmt.Fprintf(tw, "ratio of medians (target CPU ≤ 1.03×, req/s ≥ 0.97×)\t%.3f×\t%.3f×\t\n", median(col(sw, cpuOf))/median(col(plain, cpuOf)), median(col(sw, rpsOf))/median(col(plain, rpsOf)))
	fmt.Fprintf(tw, "median of per-pair ratios (min–max)\t%.3f× (%.3f–%.3f)\t%.3f× (%.3f–%.3f)\t\n",
		median(cpuRatios), minOf(cpuRatios), maxOf(cpuRatios), median(rpsRatios), minOf(rpsRatios), maxOf(rpsRatios))
	tw.Flush()
	fmt.Printf("load average before: %s", load0)
	fmt.Printf("load average after:  %s", load1)
}

// consolidatedRequests reads switch main's consolidated request counter
// from the admin API at admin.
func consolidatedRequests(t *testing.T, admin string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/switchback/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, `switchback_requests_total{switch="main",arm="consolidated"} `); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// pinAll pins every thread of process pid to cpu; threads it starts
// later inherit that.
func pinAll(t *testing.T, pid, cpu int) {
	t.Helper()
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			t.Fatalf("pinning thread %d of %d to CPU %d: %v", tid, pid, cpu, err)
		}
	}
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)\b`)
)

// runCPU runs wrk (one thread, 16 connections, pinned to the load core)
// against url and measures the gateway pid's CPU over the run.
func runCPU(t *testing.T, pid int, url, duration, header string) cpuRun {
	t.Helper()
	args := []string{"-c", strconv.Itoa(loadCPU), "wrk", "-t", "1", "-c", "16", "-d", duration}
	if header != "" {
		args = append(args, "-H", header)
	}
	cpu0 := procCPU(t, pid)
	core0 := coreBusy(t, gatewayCPU)
	out, err := exec.Command("taskset", append(args, url)...).CombinedOutput()
	cpu1 := procCPU(t, pid)
	core1 := coreBusy(t, gatewayCPU)
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	if m := wrkErrors.FindString(string(out)); m != "" {
		t.Fatalf("wrk saw errors against %s: %s\n%s", url, m, out)
	}
	m := wrkRequests.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no request count in wrk output:\n%s", out)
	}
	var r cpuRun
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.seconds, _ = strconv.ParseFloat(m[2], 64)
	switch m[3] {
	case "us":
		r.seconds /= 1e6
	case "ms":
		r.seconds /= 1e3
	case "m":
		r.seconds *= 60
	}
	r.cpu = cpu1 - cpu0
	r.core0Other = max(0, (core1-core0)-r.cpu)
	if r.requests == 0 {
		t.Fatalf("wrk completed no request against %s:\n%s", url, out)
	}
	return r
}

// procCPU is process pid's utime+stime so far, in seconds.
func procCPU(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which may hold spaces: state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks
}

// coreBusy is how long CPU cpu has been busy (not idle or iowait), in
// seconds, from /proc/stat.
func coreBusy(t *testing.T, cpu int) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("cpu%d ", cpu)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)[1:]
		busy := 0.0
		for i, v := range f {
			x, _ := strconv.ParseFloat(v, 64)
			// user nice system idle iowait irq softirq steal guest guest_nice;
			// guest time is already in user.
			if i != 3 && i != 4 && i < 8 {
				busy += x
			}
		}
		return busy / clockTicks
	}
	t.Fatalf("no %q line in /proc/stat", prefix)
	return 0
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
