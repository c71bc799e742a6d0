// Rollout benchmark: on three gateways sharing one Consul, under 300
// req/s, how long a rollout takes to act. It reports figures; it is not a
// timed pass/fail test. Run it with:
//
//	SWITCHBACK_BENCH=1 go test -run '^TestRolloutBench$' -v -count=1 -timeout 15m ./tests/bench/
//
// SWITCHBACK_BENCH_TRIALS=N changes the number of runs (default 5).
//
// Each run walks steps 1% to 20% (hold 500ms, min_requests off, so a
// step's conditions are met exactly when its hold ends) and waits at 20%
// for a manual gate before 100%. Decision latency is, for each step, from
// the end of its hold (step_started + hold, the wall time the deciding
// gateway wrote) until the last of the three gateways' admin API shows
// the next weight, polled every millisecond. Then consolidated starts
// answering 500 for every gateway; the fault time is from its first
// failing answer until the last gateway shows mode legacy, and until the
// last request reached consolidated. The run ends with a retry.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

const rolloutBenchTemplate = `{
	admin {ADMIN}
	switchback {
		state consul {
			address {CONSUL}
			prefix bench-rollout
		}
		gateway {NAME}
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		weight 0
		mode split
		sticky header X-User
		trip {
			consecutive_failures 5
		}
		rollout {
			steps 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100
			hold 500ms
			min_requests off
			gate 100 manual
		}
		legacy {
			respond "legacy"
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
}
`

// benchRollout is what the bench reads of a switch.
type benchRollout struct {
	Mode    string  `json:"mode"`
	Weight  float64 `json:"weight"`
	Pending bool    `json:"pending"`
	Rollout struct {
		Waiting     string    `json:"waiting"`
		State       string    `json:"state"`
		Step        int       `json:"step"`
		StepStarted time.Time `json:"step_started"`
	} `json:"rollout"`
}

func readBenchRollout(ctx context.Context, admin string) (benchRollout, bool) {
	var s benchRollout
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/switchback/switches/main", nil)
	resp, err := benchClient.Do(req)
	if err != nil {
		return s, false
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s) == nil
}

func TestRolloutBench(t *testing.T) {
	if os.Getenv("SWITCHBACK_BENCH") == "" {
		t.Skip("set SWITCHBACK_BENCH=1 to run the rollout benchmark")
	}
	trials := envCount(t, "SWITCHBACK_BENCH_TRIALS", 5)
	agent := consultest.Start(t)
	bin := buildSwitchback(t)
	var failing atomic.Bool
	var firstFault, lastHit atomic.Int64
	consolidated := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UnixNano()
		lastHit.Store(now)
		if failing.Load() {
			firstFault.CompareAndSwap(0, now)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Write([]byte("consolidated"))
	}))
	defer consolidated.Close()
	var gws []*benchGateway
	for i := range 3 {
		dir := t.TempDir()
		g := &benchGateway{admin: freePort(t), http: freePort(t)}
		cfg := strings.NewReplacer("{ADMIN}", g.admin, "{HTTP}", g.http, "{DIR}", dir, "{CONSUL}", agent.Addr,
			"{CONSOLIDATED}", strings.TrimPrefix(consolidated.URL, "http://"), "{NAME}", fmt.Sprintf("gw-%d", i)).Replace(rolloutBenchTemplate)
		startSwitchback(t, bin, dir, cfg, func() bool { return g.mode(context.Background()) != "" })
		gws = append(gws, g)
	}

	// 300 req/s over the three gateways, random users.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent, clientErrs atomic.Int64
	for _, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				<-tick.C
				go func() {
					req, _ := http.NewRequest(http.MethodGet, "http://"+g.http+"/", nil)
					req.Header.Set("X-User", strconv.FormatUint(rand.Uint64(), 36))
					sent.Add(1)
					resp, err := benchClient.Do(req)
					if err != nil {
						clientErrs.Add(1)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						clientErrs.Add(1)
					}
				}()
			}
		}()
	}
	began := time.Now()
	defer func() { cancel(); wg.Wait() }()

	var decisions, faults, drains []time.Duration
	action := "start"
	for trial := range trials {
		change(t, gws[trial%3], "rollout", fmt.Sprintf(`{"action":%q,"reason":"bench"}`, action))
		action = "retry"
		// Follow the steps: for each, when its hold ended and when the
		// last gateway showed the next weight.
		for step := 0; step < 19; step++ {
			var met time.Time
			want := float64(step + 2)
			deadline := time.Now().Add(20 * time.Second)
			for {
				if time.Now().After(deadline) {
					var seen []string
					for _, g := range gws {
						s, _ := readBenchRollout(ctx, g.admin)
						seen = append(seen, fmt.Sprintf("%s %v%% rollout %s step %d since %s (pending %v, %s)", s.Mode, s.Weight, s.Rollout.State, s.Rollout.Step, s.Rollout.StepStarted.Format(time.StampMilli), s.Pending, s.Rollout.Waiting))
					}
					if resp, err := benchClient.Get("http://" + gws[0].admin + "/switchback/switches/main"); err == nil {
						var full struct {
							Reason  string `json:"reason"`
							History []any  `json:"history"`
						}
						json.NewDecoder(resp.Body).Decode(&full)
						resp.Body.Close()
						t.Logf("gw-0: %s; last events %v", full.Reason, full.History[max(0, len(full.History)-3):])
					}
					t.Fatalf("trial %d: step %d (%v%%) not reached by all gateways in 20s: %s", trial, step+2, want, strings.Join(seen, "; "))
				}
				all := true
				for _, g := range gws {
					s, ok := readBenchRollout(ctx, g.admin)
					if !ok || s.Weight < want {
						all = false
						if ok && s.Rollout.Step == step && met.IsZero() {
							met = s.Rollout.StepStarted.Add(500 * time.Millisecond)
						}
						break
					}
				}
				if all {
					break
				}
				time.Sleep(time.Millisecond)
			}
			if !met.IsZero() {
				decisions = append(decisions, time.Since(met))
			}
		}
		// At 20%, waiting for approval: break consolidated.
		time.Sleep(300 * time.Millisecond)
		firstFault.Store(0)
		failing.Store(true)
		waitMode(t, gws, "legacy")
		legacyAt := time.Now()
		time.Sleep(500 * time.Millisecond) // let stragglers show in lastHit
		ff := time.Unix(0, firstFault.Load())
		faults = append(faults, legacyAt.Sub(ff))
		drains = append(drains, time.Unix(0, lastHit.Load()).Sub(ff))
		failing.Store(false)
	}
	elapsed := time.Since(began)
	pct := func(xs []time.Duration, p float64) time.Duration {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))].Round(100 * time.Microsecond)
	}
	t.Logf("load: %.0f req/s over 3 gateways, %d client errors of %d", float64(sent.Load())/elapsed.Seconds(), clientErrs.Load(), sent.Load())
	t.Logf("decision latency (hold met -> all 3 gateways at the next weight), %d steps: p50 %s, p99 %s, max %s",
		len(decisions), pct(decisions, 0.5), pct(decisions, 0.99), slices.Max(decisions).Round(100*time.Microsecond))
	t.Logf("consolidated fault -> all 3 gateways at 100%% legacy, %d trials: p50 %s, max %s", len(faults), pct(faults, 0.5), slices.Max(faults).Round(100*time.Microsecond))
	t.Logf("consolidated fault -> last request on consolidated, %d trials: p50 %s, max %s", len(drains), pct(drains, 0.5), slices.Max(drains).Round(100*time.Microsecond))
	t.Logf("Flagger's documented minimum to roll back: interval x threshold = 60s x 1 = 60s")
	t.Logf("machine: %d CPUs, shared with other builds; figures vary from run to run", runtime.NumCPU())
}
