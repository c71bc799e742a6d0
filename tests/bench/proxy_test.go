// Proxy overhead: plain Caddy reverse_proxy against switchback in split
// 50/50 with both arms on the same upstream, side by side in one run, with
// wrk as the load. It reports; it is not a timed pass/fail test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestProxyBench$' -v -count=1 ./tests/bench/
//
// SWITCHBACK_BENCH_DURATION (default 5s) sets each wrk run's length. The
// runs alternate between the paths for 6 rounds and each figure is the
// median over its rounds, so drift on a shared machine hits all of them.
package bench

import (
	"cmp"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
)

const proxyBenchConfig = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
	}
	log {
		level ERROR
	}
}
http://{PLAIN} {
	reverse_proxy {UPSTREAM}
}
http://{LEGACY} {
	switchback pinned {
		mode legacy
		replay_to_legacy off
		legacy {
			reverse_proxy {UPSTREAM}
		}
		consolidated {
			reverse_proxy {UPSTREAM}
		}
	}
}
http://{SWITCH} {
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

type wrkResult struct {
	rps, p50, p99 float64 // req/s, ms, ms
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrors  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

func runWrk(t *testing.T, url, duration string, header string) wrkResult {
	t.Helper()
	args := []string{"-t", "2", "-c", "32", "-d", duration, "--latency"}
	if header != "" {
		args = append(args, "-H", header)
	}
	out, err := exec.Command("wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	if m := wrkErrors.FindString(string(out)); m != "" {
		t.Fatalf("wrk saw errors against %s: %s\n%s", url, m, out)
	}
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no Requests/sec in wrk output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, l := range wrkLatency.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(l[2], 64)
		switch l[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if l[1] == "50" {
			r.p50 = v
		} else {
			r.p99 = v
		}
	}
	return r
}

func median[T cmp.Ordered](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func TestProxyBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the proxy overhead benchmark")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk is needed: apt-get install wrk")
	}
	duration := os.Getenv("SWITCHBACK_BENCH_DURATION")
	if duration == "" {
		duration = "5s"
	}
	bin := buildSwitchback(t)

	// The upstream: a small Go server, the same for both.
	upstream := freePort(t)
	srv := &http.Server{Addr: upstream, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from upstream\n")
	})}
	go srv.ListenAndServe()
	defer srv.Close()

	dir := t.TempDir()
	admin, plain, sw, pinned := freePort(t), freePort(t), freePort(t), freePort(t)
	cfg := strings.NewReplacer("{ADMIN}", admin, "{PLAIN}", plain, "{SWITCH}", sw, "{LEGACY}", pinned, "{UPSTREAM}", upstream, "{DIR}", dir).Replace(proxyBenchConfig)
	// The gateway is up once the switch issues a sticky cookie.
	var cookie string
	startSwitchback(t, bin, dir, cfg, func() bool {
		resp, err := http.Get("http://" + sw + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		for _, c := range resp.Cookies() {
			if c.Name == "sb_user" {
				cookie = "Cookie: sb_user=" + c.Value
			}
		}
		return cookie != ""
	})

	// Warm up both paths.
	runWrk(t, "http://"+plain+"/", "2s", "")
	runWrk(t, "http://"+sw+"/", "2s", cookie)

	type series struct{ rps, p50, p99 []float64 }
	results := map[string]*series{"plain": {}, "pinned": {}, "sticky": {}, "new": {}}
	add := func(name string, r wrkResult) {
		s := results[name]
		s.rps, s.p50, s.p99 = append(s.rps, r.rps), append(s.p50, r.p50), append(s.p99, r.p99)
	}
	for round := 0; round < 6; round++ {
		add("plain", runWrk(t, "http://"+plain+"/", duration, ""))
		add("pinned", runWrk(t, "http://"+pinned+"/", duration, ""))
		add("sticky", runWrk(t, "http://"+sw+"/", duration, cookie))
		add("new", runWrk(t, "http://"+sw+"/", duration, ""))
	}
	base := results["plain"]
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "path\treq/s\tp50 ms\tp99 ms\treq/s vs plain\tp99 vs plain")
	for _, row := range []struct{ name, label string }{
		{"plain", "plain Caddy reverse_proxy"},
		{"pinned", "switchback mode legacy, no replay"},
		{"sticky", "switchback split 50/50, returning user (signed cookie)"},
		{"new", "switchback split 50/50, new user every request (cookie issued)"},
	} {
		s := results[row.name]
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.3f\t%.3fx\t%.3fx\n", row.label, median(s.rps), median(s.p50), median(s.p99),
			median(s.rps)/median(base.rps), median(s.p99)/median(base.p99))
	}
	tw.Flush()
}
