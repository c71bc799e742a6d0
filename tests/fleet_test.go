package tests

// Fleet mode end to end: three gateway processes share one Consul.
//
// Each gateway talks to one Consul agent address. A real deployment runs a
// Consul client agent on every gateway host and points the gateway at it
// (127.0.0.1:8500); the client agent forwards to whichever server leads, so
// losing a server, the leader included, costs only an election. These tests
// have no client agents: in the leader-loss test each gateway talks to a
// different server of a 3-server cluster, so killing the leader also takes
// one gateway's agent away, the harder case, in which that gateway must
// serve on its last known state and say the store is degraded.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

// fleetTemplate is a gateway of a fleet on Consul. Its switch splits by
// the X-User header, so a test picks users on both arms without cookies,
// and trips after five failures in a row. Backups and the paths of points
// are in {SHARED}, as a fleet's shared storage would be; the pre_restore
// hook holds the restore lock for a while, so two restores overlap.
const fleetTemplate = `{
	admin {ADMIN}
	switchback {
		state consul {
			address {CONSUL}
			prefix {PREFIX}
		}
		gateway {NAME}
		backups {SHARED}/backups
		logs {DIR}/logs
		points {
			configuration_only {SHARED}/app
		}
		hooks {
			pre_restore sleep 3
		}
	}
}
http://{HTTP} {
	switchback main {
		weight 50
		mode split
		sticky header X-User
		trip {
			consecutive_failures 5
		}
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

// fleet is n gateways on one Consul prefix, with one legacy upstream for
// all and a consolidated upstream per gateway, so a test can make
// consolidated fail for one gateway's traffic only.
type fleet struct {
	gws          []*Gateway
	legacy       *Upstream
	consolidated []*Upstream
	shared       string
	prefix       string
}

// startFleet starts one gateway per Consul address in addrs.
func startFleet(t *testing.T, addrs ...string) *fleet {
	t.Helper()
	return startFleetWith(t, fleetTemplate, addrs...)
}

// startFleetWith is startFleet with another Caddyfile template.
func startFleetWith(t *testing.T, template string, addrs ...string) *fleet {
	t.Helper()
	f := &fleet{
		legacy: NewUpstream(t, "legacy"),
		shared: t.TempDir(),
		prefix: "fleet-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())),
	}
	if err := os.MkdirAll(filepath.Join(f.shared, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.shared, "app", "app.conf"), []byte("version 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, addr := range addrs {
		c := NewUpstream(t, fmt.Sprintf("consolidated-%d", i))
		f.consolidated = append(f.consolidated, c)
		f.gws = append(f.gws, StartGateway(t, GatewayConfig{
			Template:     template,
			Legacy:       f.legacy,
			Consolidated: c,
			Extra: map[string]string{
				"CONSUL": addr,
				"PREFIX": f.prefix,
				"NAME":   fmt.Sprintf("gw-%d", i),
				"SHARED": f.shared,
			},
		}))
	}
	return f
}

// fleetGet sends GET / as user to g. It returns the body and the arm that
// answered, or an error for a transport error or a status other than 200.
func fleetGet(g *Gateway, user string) (string, string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+"/", nil)
	req.Header.Set("X-User", user)
	resp, err := Client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), resp.Header.Get("X-Switchback-Arm"), nil
}

// fleetAllLegacy reports whether 20 users' requests to g are all answered by
// legacy. It fails the test on a client error.
func fleetAllLegacy(t *testing.T, g *Gateway) bool {
	t.Helper()
	for u := range 20 {
		body, arm, err := fleetGet(g, fmt.Sprintf("user-%d", u))
		if err != nil {
			t.Fatalf("client error from %s: %v", g.HTTP, err)
		}
		if body != "legacy" || arm != "legacy" {
			return false
		}
	}
	return true
}

// fleetLoad sends light traffic to every gateway until stopped, and counts
// requests and client errors.
type fleetLoad struct {
	requests, errors atomic.Int64
	mu               sync.Mutex
	first            []string
	cancel           context.CancelFunc
	wg               sync.WaitGroup
}

// startFleetLoad sends a request every 10ms to each gateway, as rotating users.
func startFleetLoad(gws ...*Gateway) *fleetLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &fleetLoad{cancel: cancel}
	for i, g := range gws {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				l.requests.Add(1)
				if _, _, err := fleetGet(g, fmt.Sprintf("load-%d-%d", i, n%50)); err != nil {
					l.errors.Add(1)
					l.mu.Lock()
					if len(l.first) < 5 {
						l.first = append(l.first, fmt.Sprintf("gw-%d: %v", i, err))
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

// stop stops the load and fails the test if any request failed.
func (l *fleetLoad) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	if l.requests.Load() < 100 {
		t.Errorf("only %d requests under load", l.requests.Load())
	}
	if n := l.errors.Load(); n > 0 {
		t.Errorf("%d client errors of %d requests; first: %v", n, l.requests.Load(), l.first)
	}
	t.Logf("load: %d requests, %d client errors", l.requests.Load(), l.errors.Load())
}

// fleetStoreStatus reads GET /switchback/switches's store status.
func fleetStoreStatus(t *testing.T, g *Gateway) string {
	t.Helper()
	var out struct {
		Store struct {
			Status string `json:"status"`
		} `json:"store"`
	}
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches", nil, &out); code != 200 {
		t.Fatalf("GET /switchback/switches: status %d", code)
	}
	return out.Store.Status
}

// fleetDegradedMetric reads switchback_store_degraded from the metrics.
func fleetDegradedMetric(t *testing.T, g *Gateway) string {
	t.Helper()
	b := g.metrics(t)
	for _, line := range strings.Split(b, "\n") {
		if strings.HasPrefix(line, "switchback_store_degraded{") {
			return line[strings.LastIndexByte(line, ' ')+1:]
		}
	}
	t.Fatalf("no switchback_store_degraded in metrics:\n%s", b)
	return ""
}

// tripGateway makes consolidated fail for gateway i and sends it traffic
// until its switch trips. Failed requests are replayed on legacy, so no
// client sees an error.
func (f *fleet) tripGateway(t *testing.T, i int) {
	t.Helper()
	f.consolidated[i].Fail(http.StatusInternalServerError)
	g := f.gws[i]
	n := 0
	Eventually(t, 20*time.Second, fmt.Sprintf("gw-%d to trip", i), func() bool {
		for range 10 {
			n++
			if _, _, err := fleetGet(g, fmt.Sprintf("trip-%d", n)); err != nil {
				t.Fatalf("client error while tripping gw-%d: %v", i, err)
			}
		}
		s := g.Switch(t, "main")
		return s.Mode == "legacy" && s.Tripped
	})
}

// waitAll waits until every gateway's switch satisfies cond.
func (f *fleet) waitAll(t *testing.T, timeout time.Duration, what string, cond func(SwitchState) bool) {
	t.Helper()
	for i, g := range f.gws {
		Eventually(t, timeout, fmt.Sprintf("gw-%d: %s", i, what), func() bool { return cond(g.Switch(t, "main")) })
	}
}

func fleetTripped(s SwitchState) bool { return s.Mode == "legacy" && s.Tripped }

func TestFleetTripReachesAll(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleet(t, agent.Addr, agent.Addr, agent.Addr)
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); s.Mode != "split" || s.Weight != 50 {
			t.Fatalf("gw-%v starts %s at %v, want split at 50", i, s.Mode, s.Weight)
		}
	}
	f.tripGateway(t, 0)
	f.waitAll(t, 10*time.Second, "tripped to legacy", fleetTripped)
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); s.Gateway != "gw-0" || !strings.HasPrefix(s.By, "trip") {
			t.Errorf("gw-%d: last change by %q on %q, want the trip on gw-0", i, s.By, s.Gateway)
		}
		if !fleetAllLegacy(t, g) {
			t.Errorf("gw-%d: tripped, but traffic still reaches consolidated", i)
		}
	}
}

// TestFleetPagesOncePerTrip: consolidated fails for the whole fleet at
// once, and every gateway trips on its own traffic before it sees
// another's trip. The on_trip exec (a page) still runs once, on the
// gateway whose trip was written first.
func TestFleetPagesOncePerTrip(t *testing.T) {
	agent := consultest.Start(t)
	tmpl := strings.Replace(fleetTemplate, "\t\ttrip {", "\t\ton_trip exec sh -c \"echo $SWITCHBACK_GATEWAY >> {SHARED}/pages\"\n\t\ttrip {", 1)
	if tmpl == fleetTemplate {
		t.Fatal("the template has no trip block to add on_trip to")
	}
	f := startFleetWith(t, tmpl, agent.Addr, agent.Addr, agent.Addr)
	for _, c := range f.consolidated {
		c.Fail(http.StatusInternalServerError)
	}
	var wg sync.WaitGroup
	for i, g := range f.gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 2000 && !fleetTripped(g.Switch(t, "main")); n++ {
				var inner sync.WaitGroup
				for k := range 8 {
					inner.Add(1)
					go func() {
						defer inner.Done()
						fleetGet(g, fmt.Sprintf("page-%d-%d-%d", i, n, k))
					}()
				}
				inner.Wait()
			}
		}()
	}
	wg.Wait()
	f.waitAll(t, 10*time.Second, "tripped to legacy", fleetTripped)
	local := 0
	for _, g := range f.gws {
		if strings.Contains(g.metrics(t), "switchback_trips_total{") {
			local++
		}
	}
	pages := filepath.Join(f.shared, "pages")
	Eventually(t, 10*time.Second, "the page", func() bool { _, err := os.Stat(pages); return err == nil })
	time.Sleep(3 * time.Second) // time for any other gateway's page
	b, err := os.ReadFile(pages)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(b))
	t.Logf("%d of 3 gateways tripped on their own traffic; pages from %v", local, lines)
	if len(lines) != 1 {
		t.Fatalf("%d pages for one trip (%v), want 1", len(lines), lines)
	}
	if s := f.gws[0].Switch(t, "main"); s.Gateway != lines[0] {
		t.Errorf("page from %s, but the trip written is %s's", lines[0], s.Gateway)
	}
}

func TestFleetWeightChangeReachesAll(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleet(t, agent.Addr, agent.Addr, agent.Addr)
	var s SwitchState
	if code := f.gws[1].AdminJSON(t, http.MethodPost, "/switchback/switches/main/weight", map[string]any{"weight": 80, "reason": "ramp up"}, &s); code != 200 {
		t.Fatalf("weight change: status %d", code)
	}
	f.waitAll(t, 10*time.Second, "weight 80", func(s SwitchState) bool { return s.Mode == "split" && s.Weight == 80 })
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); s.Reason != "ramp up" || s.Gateway != "gw-1" {
			t.Errorf("gw-%d: reason %q on %q, want gw-1's change", i, s.Reason, s.Gateway)
		}
	}
}

func TestFleetLeaderLoss(t *testing.T) {
	cluster := consultest.StartCluster(t, 3)
	f := startFleet(t, cluster.Addrs()...)
	leader := cluster.WaitLeader(t)
	t.Logf("leader is server-%d; gw-%d talks to it", leader, leader)
	l := startFleetLoad(f.gws...)

	time.Sleep(500 * time.Millisecond) // some traffic before the kill
	cluster.Kill(leader)
	orphan := f.gws[leader]
	Eventually(t, 15*time.Second, "the gateway whose server died to report degraded", func() bool {
		return fleetStoreStatus(t, orphan) == "degraded"
	})
	if s := orphan.Switch(t, "main"); s.Mode != "split" || s.Weight != 50 {
		t.Errorf("gw-%v without its server: %s at %v, want its last known split at 50", leader, s.Mode, s.Weight)
	}
	newLeader := cluster.WaitLeader(t)
	t.Logf("new leader is server-%d", newLeader)

	// A change after the kill, through a gateway whose server lives,
	// reaches the other survivor. The store may refuse writes until the
	// survivors' election settles; the gateway then answers 202 and writes
	// the change when it can.
	via := (leader + 1) % 3
	var s SwitchState
	code := f.gws[via].AdminJSON(t, http.MethodPost, "/switchback/switches/main/weight", map[string]any{"weight": 70, "reason": "after leader loss"}, &s)
	if code != 200 && code != 202 {
		t.Fatalf("weight change through gw-%d: status %d", via, code)
	}
	for i, g := range f.gws {
		if i == leader {
			continue
		}
		Eventually(t, 20*time.Second, fmt.Sprintf("gw-%d to follow the change", i), func() bool {
			s := g.Switch(t, "main")
			return s.Weight == 70 && s.Reason == "after leader loss"
		})
		Eventually(t, 20*time.Second, fmt.Sprintf("gw-%d store ok", i), func() bool { return fleetStoreStatus(t, g) == "ok" })
	}
	if s := orphan.Switch(t, "main"); s.Weight != 50 {
		t.Errorf("gw-%v, cut off from Consul, changed to weight %v", leader, s.Weight)
	}

	// Its server back, the orphan converges too.
	cluster.Agents[leader].Start()
	Eventually(t, 30*time.Second, fmt.Sprintf("gw-%d to converge after its server returned", leader), func() bool {
		s := orphan.Switch(t, "main")
		return s.Weight == 70 && fleetStoreStatus(t, orphan) == "ok"
	})
	l.stop(t)
}

func TestFleetConsulOutage(t *testing.T) {
	cluster := consultest.StartCluster(t, 1)
	agent := cluster.Agents[0]
	f := startFleet(t, agent.Addr, agent.Addr, agent.Addr)
	for i, g := range f.gws {
		if st, m := fleetStoreStatus(t, g), fleetDegradedMetric(t, g); st != "ok" || m != "0" {
			t.Fatalf("gw-%d before the outage: store %s, metric %s", i, st, m)
		}
	}
	l := startFleetLoad(f.gws...)
	time.Sleep(300 * time.Millisecond)

	down := time.Now()
	agent.Stop()
	for i, g := range f.gws {
		Eventually(t, 10*time.Second, fmt.Sprintf("gw-%d to report the store degraded", i), func() bool {
			return fleetStoreStatus(t, g) == "degraded" && fleetDegradedMetric(t, g) == "1"
		})
	}
	// During the outage: first an admin change on gw-1, then a trip on
	// gw-0. Both hold on their gateway only; the trip is newer and must win.
	var s SwitchState
	if code := f.gws[1].AdminJSON(t, http.MethodPost, "/switchback/switches/main/weight", map[string]any{"weight": 90, "reason": "during outage"}, &s); code != 202 {
		t.Fatalf("weight change during the outage: status %d, want 202 (held locally)", code)
	}
	time.Sleep(20 * time.Millisecond) // a later since for the trip
	f.tripGateway(t, 0)
	if s := f.gws[2].Switch(t, "main"); s.Mode != "split" {
		t.Fatalf("gw-2 changed to %s while Consul was down", s.Mode)
	}
	if rest := 10*time.Second - time.Since(down); rest > 0 {
		time.Sleep(rest) // Consul stays down for 10s
	}
	for i, g := range f.gws {
		if st := fleetStoreStatus(t, g); st != "degraded" {
			t.Errorf("gw-%d after 10s of outage: store %s, want degraded", i, st)
		}
	}
	agent.Start()

	f.waitAll(t, 30*time.Second, "the outage's trip", fleetTripped)
	for i, g := range f.gws {
		Eventually(t, 30*time.Second, fmt.Sprintf("gw-%d store ok after the outage", i), func() bool {
			return fleetStoreStatus(t, g) == "ok" && fleetDegradedMetric(t, g) == "0"
		})
		if s := g.Switch(t, "main"); s.Gateway != "gw-0" {
			t.Errorf("gw-%d: last change on %q (%s), want gw-0's trip", i, s.Gateway, s.Reason)
		}
		if !fleetAllLegacy(t, g) {
			t.Errorf("gw-%d: tripped, but traffic still reaches consolidated", i)
		}
	}
	l.stop(t)
	// It stays so: no gateway writes its older state back.
	time.Sleep(2 * time.Second)
	for i, g := range f.gws {
		if s := g.Switch(t, "main"); !fleetTripped(s) {
			t.Errorf("gw-%v went back to %s at %v", i, s.Mode, s.Weight)
		}
	}
}

func TestFleetRestartLoadsState(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleet(t, agent.Addr, agent.Addr, agent.Addr)
	f.gws[2].Stop()
	var s SwitchState
	if code := f.gws[0].AdminJSON(t, http.MethodPost, "/switchback/switches/main/mode", map[string]any{"mode": "consolidated", "reason": "cutover"}, &s); code != 200 {
		t.Fatalf("mode change: status %d", code)
	}
	f.gws[2].start(Binary(t))
	s = f.gws[2].Switch(t, "main")
	if s.Mode != "consolidated" || s.Reason != "cutover" {
		t.Fatalf("gw-2 after restart: %s (%q), want the fleet's consolidated (cutover)", s.Mode, s.Reason)
	}
	for u := range 10 {
		if body, _, err := fleetGet(f.gws[2], fmt.Sprintf("user-%d", u)); err != nil || body != "consolidated-2" {
			t.Fatalf("gw-2 after restart answered %q, %v; want consolidated", body, err)
		}
	}
}

func TestFleetConcurrentRollback(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleet(t, agent.Addr, agent.Addr)
	out, errOut, code := f.gws[0].CLI(t, "point", "create", "--type", "configuration_only", "--json")
	if code != 0 {
		t.Fatalf("point create: exit %d\n%s%s", code, out, errOut)
	}
	var point struct {
		ID string `json:"id"`
	}
	if err := fleetJSON(out, &point); err != nil || point.ID == "" {
		t.Fatalf("point create printed %q: %v", out, err)
	}
	// gw-1 sees gw-0's point in the shared catalog. A point belongs to the
	// host that made it, so each gateway restores a point of its own.
	if out, errOut, code := f.gws[1].CLI(t, "point", "list", "--json"); code != 0 || !strings.Contains(out, point.ID) {
		t.Fatalf("gw-1 point list: exit %d, %s%s; want %s", code, out, errOut, point.ID)
	}
	out, errOut, code = f.gws[1].CLI(t, "point", "create", "--type", "configuration_only", "--json")
	var point1 struct {
		ID string `json:"id"`
	}
	if err := fleetJSON(out, &point1); code != 0 || err != nil || point1.ID == "" {
		t.Fatalf("gw-1 point create: exit %d %s%s", code, out, errOut)
	}
	ids := []string{point.ID, point1.ID}

	type result struct {
		out, errOut string
		code        int
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, e, c := f.gws[i].CLI(t, "rollback", ids[i], "--trigger", "manual")
			results[i] = result{o, e, c}
		}()
	}
	wg.Wait()
	var ok, held int
	for i, r := range results {
		switch r.code {
		case 0:
			ok++
		case 3:
			held++
			if !strings.Contains(r.errOut, "restore in progress on gw-") || !strings.Contains(r.errOut, "(op ") {
				t.Errorf("gw-%d: exit 3 with %q, want \"restore in progress on HOST (op ID)\"", i, r.errOut)
			}
		default:
			t.Errorf("gw-%d: exit %d\n%s%s", i, r.code, r.out, r.errOut)
		}
	}
	if ok != 1 || held != 1 {
		t.Fatalf("%d restored and %d found the lock held, want exactly one of each:\n%+v", ok, held, results)
	}
}

func TestFleetStateMigrate(t *testing.T) {
	agent := consultest.Start(t)
	legacy, consolidated := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	single := StartGateway(t, GatewayConfig{
		Template: strings.Replace(DefaultTemplate, "logs {DIR}/logs", "logs {DIR}/logs\n\t\tpoints {\n\t\t\tconfiguration_only {DIR}/app\n\t\t}", 1),
		Legacy:   legacy, Consolidated: consolidated, Dir: dir,
	})
	if code := single.AdminJSON(t, http.MethodPost, "/switchback/switches/main/weight", map[string]any{"weight": 35}, nil); code != 200 {
		t.Fatalf("weight: status %d", code)
	}
	if _, errOut, code := single.CLI(t, "point", "create", "--type", "configuration_only"); code != 0 {
		t.Fatalf("point create: exit %d: %s", code, errOut)
	}
	// A request with no cookie makes the sticky-cookie key.
	single.Get(t, "/", nil)
	single.Stop() // the bbolt file is the gateway's while it runs

	dbPath := filepath.Join(single.Dir, "state.db")
	migrate := func() fleetMigrateReport {
		t.Helper()
		out, errOut, code := RunCLI(t, single.Dir, "state", "migrate", "--from", "local", dbPath, "--to", "consul",
			"--prefix", "migrated", "--consul-address", agent.Addr, "--json")
		if code != 0 {
			t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
		}
		var r fleetMigrateReport
		if err := fleetJSON(out, &r); err != nil {
			t.Fatalf("migrate --json printed %q: %v", out, err)
		}
		return r
	}
	first := migrate()
	for _, ns := range []string{"switches", "points", "operations", "secrets"} {
		if first.count(ns).Copied == 0 {
			t.Errorf("first run copied no %s: %+v", ns, first.Namespaces)
		}
	}
	second := migrate()
	for _, c := range second.Namespaces {
		if c.Copied != 0 || c.Kept != 0 {
			t.Errorf("second run: %+v, want every entry unchanged", c)
		}
		if c.Unchanged != first.count(c.Namespace).Copied {
			t.Errorf("second run: %d %s unchanged, the first copied %d", c.Unchanged, c.Namespace, first.count(c.Namespace).Copied)
		}
	}

	// A gateway on Consul takes the migrated state.
	g := StartGateway(t, GatewayConfig{
		Template: strings.Replace(DefaultTemplate, "state local {DIR}/state.db", "state consul {\n\t\t\taddress "+agent.Addr+"\n\t\t\tprefix migrated\n\t\t}", 1),
		Legacy:   legacy, Consolidated: consolidated,
	})
	if s := g.Switch(t, "main"); s.Weight != 35 {
		t.Errorf("gateway on the migrated store: weight %v, want 35", s.Weight)
	}
}

// fleetMigrateReport is state.MigrateReport as --json prints it.
type fleetMigrateReport struct {
	Namespaces []fleetMigrateCounts
}

type fleetMigrateCounts struct {
	Namespace               string
	Copied, Unchanged, Kept int
}

func (r fleetMigrateReport) count(ns string) fleetMigrateCounts {
	for _, n := range r.Namespaces {
		if n.Namespace == ns {
			return n
		}
	}
	return fleetMigrateCounts{Namespace: ns}
}

func fleetJSON(s string, v any) error { return json.Unmarshal([]byte(s), v) }
