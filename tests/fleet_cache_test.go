package tests

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

// TestFleetRestartDuringOutage: gateways that restart while Consul is
// down serve from their switch cache, not from their config. gw-0 trips
// during the outage and is then killed; it comes back tripped, and the
// fleet takes its trip when Consul returns. gw-1, with no change of its
// own, restarts into the fleet's last state (weight 30, set before the
// outage; its config says 50) and does not write it back over the trip.
func TestFleetRestartDuringOutage(t *testing.T) {
	cluster := consultest.StartCluster(t, 1)
	agent := cluster.Agents[0]
	f := startFleet(t, agent.Addr, agent.Addr, agent.Addr)
	var s SwitchState
	if code := f.gws[2].AdminJSON(t, http.MethodPost, "/switchback/switches/main/weight", map[string]any{"weight": 30, "reason": "before outage"}, &s); code != 200 {
		t.Fatalf("weight change: status %d", code)
	}
	f.waitAll(t, 10*time.Second, "weight 30", func(s SwitchState) bool { return s.Mode == "split" && s.Weight == 30 })

	agent.Stop()
	for i, g := range f.gws {
		Eventually(t, 10*time.Second, fmt.Sprintf("gw-%d to report the store degraded", i), func() bool {
			return fleetStoreStatus(t, g) == "degraded"
		})
	}
	f.tripGateway(t, 0)
	time.Sleep(500 * time.Millisecond) // the cache is written off the request path
	f.gws[0].Kill()
	f.gws[0].start(Binary(t))
	s = f.gws[0].Switch(t, "main")
	if !fleetTripped(s) || s.Gateway != "gw-0" {
		t.Fatalf("gw-0 restarted during the outage: %s at %v by %q (%s), want its own trip", s.Mode, s.Weight, s.Gateway, s.Reason)
	}
	if !fleetAllLegacy(t, f.gws[0]) {
		t.Fatal("gw-0 restarted tripped, but traffic reaches consolidated")
	}
	if !strings.Contains(f.gws[0].Logs(), `"from":"the switch cache"`) {
		t.Errorf("gw-0's log does not say it served from the switch cache:\n%s", f.gws[0].Logs())
	}

	f.gws[1].Restart()
	if s = f.gws[1].Switch(t, "main"); s.Mode != "split" || s.Weight != 30 {
		t.Fatalf("gw-1 restarted during the outage: %s at %v (%s), want the fleet's split at 30", s.Mode, s.Weight, s.Reason)
	}

	agent.Start()
	f.waitAll(t, 30*time.Second, "gw-0's trip from before its restart", fleetTripped)
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); s.Gateway != "gw-0" {
			t.Errorf("gw-%d: last change on %q (%s), want gw-0's trip", i, s.Gateway, s.Reason)
		}
	}
	// It stays so: gw-1 does not write its cached state back.
	time.Sleep(2 * time.Second)
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); !fleetTripped(s) {
			t.Errorf("gw-%v went back to %s at %v", i, s.Mode, s.Weight)
		}
	}
}
