package tests

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loadItems sends GETs of /items/<n>, n counting up, from 4 workers until
// the returned stop is called.
func loadItems(g *Gateway) (stop func()) {
	var wg sync.WaitGroup
	var n atomic.Int64
	done := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
				resp, err := Client.Get(fmt.Sprintf("http://%s/items/%d", g.HTTP, n.Add(1)))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// TestShadowGatesRollout: a rollout with max_mismatch 1% and a real 5%
// mismatch (consolidated differs in /price on one id in 20) holds at its
// first step and says why, in the switch's record and in 'rollout
// status'; once the difference is fixed and the shadow report reset, it
// advances.
func TestShadowGatesRollout(t *testing.T) {
	_, la := newShadowArm(t, false)
	cons, ca := newShadowArm(t, true)
	cons.mismatchEvery.Store(20)
	g := startShadowGateway(t, "sample 100%\nnoise 10%\nmax_mismatch 1%", la, ca,
		"rollout {\nsteps 10% 50% 100%\nhold 1s\nmin_requests 100\n}")
	stop := loadItems(g)
	defer stop()
	if code, msg := rolloutAPI(t, g, "start", "shadow gate test"); code != 200 {
		t.Fatalf("start: %d %s", code, msg)
	}
	var waiting string
	Eventually(t, 60*time.Second, "the step waiting on the mismatch rate", func() bool {
		waiting = readRollout(t, g).Rollout.Waiting
		return strings.Contains(waiting, "mismatch")
	})
	t.Logf("the step waits: %s", waiting)
	if !strings.HasPrefix(waiting, "waiting: mismatch ") || !strings.Contains(waiting, "> 1% on GET /items/:id") {
		t.Errorf("waiting says %q, want e.g. \"waiting: mismatch 5%% > 1%% on GET /items/:id\"", waiting)
	}
	time.Sleep(3 * time.Second)
	r := readRollout(t, g)
	if r.Rollout.Step != 0 || r.Weight != 10 {
		t.Fatalf("the rollout left its step with a 5%% mismatch: step %d, weight %g, waiting %q", r.Rollout.Step, r.Weight, r.Rollout.Waiting)
	}
	if out, _, code := g.CLI(t, "rollout", "status"); code != 0 || !strings.Contains(out, "mismatch") {
		t.Errorf("rollout status does not say why it waits (exit %d):\n%s", code, out)
	}
	rep, _ := g.shadowReport(t)
	if rep.MismatchRate < 0.03 || rep.MismatchRate > 0.07 {
		t.Errorf("report mismatch rate %.3f, want about 0.05", rep.MismatchRate)
	}

	cons.mismatchEvery.Store(0) // the difference is fixed
	if code := g.AdminJSON(t, http.MethodPost, "/switchback/switches/main/shadow/reset", nil, nil); code != 200 {
		t.Fatalf("shadow reset: %d", code)
	}
	Eventually(t, 60*time.Second, "the rollout advancing past its first step", func() bool {
		return readRollout(t, g).Rollout.Step >= 1
	})
	if d := lastDecision(readRollout(t, g)); d.Kind != "advance" && d.Kind != "complete" {
		t.Errorf("last decision %+v", d)
	}
}
