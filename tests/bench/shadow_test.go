// Shadow overhead: the client's p50 and p99 through three switches in one
// gateway, with shadow off, at sample 10% and at sample 100%, under an
// open-loop load of 300 GET/s each, with the ratios to shadow off. It
// reports; it is not a timed pass/fail test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestShadowBench$' -v -count=1 ./tests/bench/
//
// SWITCHBACK_BENCH_DURATION (default 10s) sets each run's length. The
// runs alternate between the switches for 3 rounds and each figure is
// the median over its rounds, so drift on a shared machine hits all three.
package bench

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

const shadowBenchConfig = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
	}
	log {
		level ERROR
	}
}
http://{OFF} {
	switchback off {
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
}
http://{S10} {
	switchback s10 {
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
		shadow {
			sample 10%
		}
	}
}
http://{S100} {
	switchback s100 {
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
		shadow {
			sample 100%
			max_inflight 256
		}
	}
}
`

// jsonUpstream answers a small JSON document with a field that differs on
// every answer, as a real API would.
func jsonUpstream(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"items":[{"id":1,"price":10},{"id":2,"price":20}],"generated_at":%d}`, r.URL.Path, time.Now().UnixNano())
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func quantileOf(rs []foResult, q float64) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	d := make([]time.Duration, len(rs))
	for i, r := range rs {
		d[i] = r.end.Sub(r.start)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*q)]
}

func TestShadowBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the shadow benchmark")
	}
	dur := 10 * time.Second
	if s := os.Getenv("SWITCHBACK_BENCH_DURATION"); s != "" {
		var err error
		if dur, err = time.ParseDuration(s); err != nil {
			t.Fatalf("SWITCHBACK_BENCH_DURATION: %v", err)
		}
	}
	const rate = 300
	bin := buildSwitchback(t)
	dir := t.TempDir()
	admin := freePort(t)
	names := []string{"off", "s10", "s100"}
	addrs := map[string]string{}
	repl := []string{"{ADMIN}", admin, "{DIR}", dir, "{LEGACY}", jsonUpstream(t), "{CONSOLIDATED}", jsonUpstream(t)}
	for _, n := range names {
		addrs[n] = freePort(t)
		repl = append(repl, "{"+strings.ToUpper(n)+"}", addrs[n])
	}
	startSwitchback(t, bin, dir, strings.NewReplacer(repl...).Replace(shadowBenchConfig), answers200("http://"+addrs["off"]+"/"))
	foLoad("http://"+addrs["s100"]+"/items/1", rate, 2*time.Second, 64) // warm up

	p50, p99 := map[string][]time.Duration{}, map[string][]time.Duration{}
	errs := map[string]int{}
	for round := 0; round < 3; round++ {
		for _, n := range names {
			rs := foLoad("http://"+addrs[n]+"/items/1", rate, dur, 64)
			for _, r := range rs {
				if !r.ok {
					errs[n]++
				}
			}
			p50[n] = append(p50[n], quantileOf(rs, 0.50))
			p99[n] = append(p99[n], quantileOf(rs, 0.99))
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nshadow overhead at %d req/s, %s per run, 3 rounds (medians), %d CPUs, %s\n", rate, dur, runtime.NumCPU(), runtime.Version())
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shadow\tp50\tp99\tp50 / off\tp99 / off\terrors\t")
	for _, n := range names {
		a, b := median(p50[n]), median(p99[n])
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t\n", map[string]string{"off": "off", "s10": "sample 10%", "s100": "sample 100%"}[n],
			a.Round(10*time.Microsecond), b.Round(10*time.Microsecond), ratio(a, median(p50["off"])), ratio(b, median(p99["off"])), errs[n])
	}
	tw.Flush()
	t.Log(out.String())
}
