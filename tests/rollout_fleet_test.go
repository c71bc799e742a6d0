package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

// rolloutFleetTemplate is fleetTemplate's gateway with a rollout: four
// steps, a manual gate before 100%, and min_requests that no one gateway
// reaches alone at the first step under the test's load.
var rolloutFleetTemplate = strings.Replace(strings.Replace(fleetTemplate, "weight 50", "weight 0", 1), "		legacy {\n", `		rollout {
			steps 10% 25% 50% 100%
			hold 2s
			min_requests 60
			gate 100% manual
		}
		legacy {
`, 1)

// rolloutLoad sends GETs with random users to each live gateway at rate per
// second, until stopped.
type rolloutLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	dead   []atomic.Bool // gateways the test killed: their errors are expected
	errs   atomic.Int64
	first  atomic.Value // string
}

func startRolloutLoad(f *fleet, rate int) *rolloutLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &rolloutLoad{cancel: cancel, dead: make([]atomic.Bool, len(f.gws))}
	for i, g := range f.gws {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(time.Second / time.Duration(rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if _, _, err := fleetGet(g, strconv.FormatUint(rand.Uint64(), 36)); err != nil && !l.dead[i].Load() {
					l.errs.Add(1)
					l.first.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	return l
}

func (l *rolloutLoad) stop() { l.cancel(); l.wg.Wait() }

var consolidatedRequests = regexp.MustCompile(`switchback_requests_total\{switch="main",arm="consolidated"\} (\d+)`)

// TestFleetRollout runs a rollout on three gateways sharing one Consul:
// each step advances exactly once for the fleet, on the fleet's summed
// evidence, though no gateway alone has min_requests; killing the gateway
// that decided last does not stall it; a gateway restarted mid-rollout
// serves the current step; an approval through any gateway passes the
// gate.
func TestFleetRollout(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleetWith(t, rolloutFleetTemplate, agent.Addr, agent.Addr, agent.Addr)
	l := startRolloutLoad(f, 30)
	defer l.stop()
	if code, msg := rolloutAPI(t, f.gws[0], "start", "fleet test"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}

	// Step 1 (10%) to 2 (25%): 3 gateways x 30/s x 10% is ~9 consolidated
	// requests a second, so 60 takes ~7s, when each gateway alone has ~20.
	var d rolloutDecision
	Eventually(t, 60*time.Second, "the advance to 25%", func() bool {
		r := readRollout(t, f.gws[1])
		for _, x := range r.Rollout.Decisions {
			if x.Kind == "advance" && x.To == 25 {
				d = x
				return true
			}
		}
		return false
	})
	for i, g := range f.gws {
		m := consolidatedRequests.FindStringSubmatch(g.metrics(t))
		n, _ := strconv.Atoi(m[1])
		t.Logf("gw-%d: %d consolidated requests in all when the fleet left 10%%", i, n)
		if n >= 60 {
			t.Errorf("gw-%d alone had %d consolidated requests, so it proves nothing about summing; lower the load", i, n)
		}
	}
	if d.Evidence == nil || d.Evidence.Arms["consolidated"].Requests < 60 || len(d.Evidence.Gateways) != 3 {
		t.Fatalf("advance to 25%% on evidence %+v; want >= 60 consolidated requests from all 3 gateways", d.Evidence)
	}
	f.waitAll(t, 10*time.Second, "weight 25 everywhere", func(s SwitchState) bool { return s.Weight >= 25 })

	// Kill the gateway that decided; the others carry the rollout on.
	decider := -1
	for i := range f.gws {
		if d.Gateway == fmt.Sprintf("gw-%d", i) {
			decider = i
		}
	}
	if decider < 0 {
		t.Fatalf("the advance names gateway %q", d.Gateway)
	}
	l.dead[decider].Store(true)
	f.gws[decider].Kill()
	other := f.gws[(decider+1)%3]
	Eventually(t, 60*time.Second, "the rollout at 50%, waiting for approval of 100%, without the killed gateway", func() bool {
		r := readRollout(t, other)
		return r.Rollout.State == "waiting_approval" && r.Weight == 50
	})
	r := readRollout(t, other)
	advances := map[float64]int{}
	for _, x := range r.Rollout.Decisions {
		if x.Kind == "advance" {
			advances[x.To]++
		}
	}
	for _, x := range r.Rollout.Decisions {
		if x.Kind == "advance" && x.To == 50 && (x.Evidence == nil || len(x.Evidence.Gateways) != 2 || slices.Contains(x.Evidence.Gateways, d.Gateway)) {
			t.Errorf("the advance to 50%% after %s was killed counted gateways %v", d.Gateway, x.Evidence)
		}
	}
	if advances[25] != 1 || advances[50] != 1 {
		t.Errorf("advances by target weight: %v; want each step entered exactly once", advances)
	}
	var total int
	for i, g := range f.gws {
		if i == decider {
			continue
		}
		m := regexp.MustCompile(`switchback_rollout_decisions_total\{switch="main",kind="advance",rule=""\} (\d+)`).FindStringSubmatch(g.metrics(t))
		if m != nil {
			n, _ := strconv.Atoi(m[1])
			total += n
		}
	}
	if total != 1 {
		t.Errorf("the two live gateways counted %d advances; want 1 (the 25%% -> 50%% one)", total)
	}

	// The killed gateway's stats key goes with its session's TTL (10s;
	// Consul may take up to twice that), while the live ones stay.
	statsKeys := func() []string {
		resp, err := http.Get("http://" + agent.Addr + "/v1/kv/" + f.prefix + "/stats/main/?keys")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var keys []string
		json.NewDecoder(resp.Body).Decode(&keys)
		return keys
	}
	Eventually(t, 40*time.Second, "the killed gateway's stats key to expire", func() bool {
		keys := statsKeys()
		return len(keys) == 2 && !slices.ContainsFunc(keys, func(k string) bool { return strings.HasSuffix(k, "/"+d.Gateway) })
	})

	// The killed gateway comes back mid-rollout: it serves the current step.
	f.gws[decider].Restart()
	l.dead[decider].Store(false)
	var back rolloutRecord
	if code := f.gws[decider].AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &back); code != 200 || back.Weight != 50 || back.Rollout == nil || back.Rollout.Step != 2 {
		t.Fatalf("restarted gw-%d: status %d, weight %v, rollout %+v; want step 3 at 50%%", decider, code, back.Weight, back.Rollout)
	}
	cons := 0
	for u := range 200 {
		if _, arm, err := fleetGet(f.gws[decider], fmt.Sprintf("user-%d", u)); err == nil && arm == "consolidated" {
			cons++
		}
	}
	if cons < 70 || cons > 130 {
		t.Errorf("restarted gateway sent %d of 200 users to consolidated at 50%%", cons)
	}

	// Approve through the restarted gateway; the fleet completes.
	if code, msg := rolloutAPI(t, f.gws[decider], "approve", "go"); code != 200 {
		t.Fatalf("approve: %d %s", code, msg)
	}
	Eventually(t, 60*time.Second, "completed", func() bool { return readRollout(t, other).Rollout.State == "completed" })
	f.waitAll(t, 10*time.Second, "weight 100 everywhere", func(s SwitchState) bool { return s.Weight == 100 })
	l.stop()
	if n := l.errs.Load(); n > 0 {
		t.Errorf("%d client errors on live gateways, first %v", n, l.first.Load())
	}
}
