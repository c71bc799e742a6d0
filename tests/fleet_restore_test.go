package tests

// Rolling restores in a fleet: three gateway processes on one Consul, each
// with its own tree, backups, data dir (so its own host id) and gateway
// name. Points belong to the host that made them; an automatic restore
// waits its turn for the fleet's restore lock.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

// rollingTemplate is one host of the fleet: its paths, backups and logs
// are its own ({DIR}); only the store is shared. Its switch restores on a
// trip; pre_restore holds the lock for a while so the restores of the
// fleet would overlap without the lock.
const rollingTemplate = `{
	admin {ADMIN}
	switchback {
		state consul {
			address {CONSUL}
			prefix {PREFIX}
		}
		gateway {NAME}
		lock_wait 2m
		backups {DIR}/backups
		logs {DIR}/logs
		points {
			full_system {DIR}/app
		}
		hooks {
			pre_restore sleep 1
		}
	}
}
http://{HTTP} {
	switchback {SWITCH} {
		weight 100
		mode split
		sticky header X-User
		trip {
			consecutive_failures 3
		}
		on_trip restore emergency
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
}
`

// fleetOp is what these tests read of an operation record.
type fleetOp struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	Trigger string `json:"trigger"`
	Point   string `json:"point"`
	Status  string `json:"status"`
	Host    string `json:"host"`
	HostID  string `json:"host_id"`
	Lock    *struct {
		Acquired time.Time  `json:"acquired"`
		Released *time.Time `json:"released"`
		Waited   string     `json:"waited"`
	} `json:"lock"`
	Errors []string `json:"errors"`
}

type fleetPoint struct {
	ID     string `json:"id"`
	Host   string `json:"host"`
	HostID string `json:"host_id"`
}

func TestFleetRollingRestore(t *testing.T) {
	agent := consultest.Start(t)
	prefix := "fleet-rolling-" + fmt.Sprint(time.Now().UnixNano())
	legacy := NewUpstream(t, "legacy")
	const n = 3
	gws := make([]*Gateway, n)
	cons := make([]*Upstream, n)
	points := make([]string, n)
	for i := range n {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"app/app.conf": "version 1\n", fmt.Sprintf("app/only-on-%d", i): "x"})
		cons[i] = NewUpstream(t, fmt.Sprintf("consolidated-%d", i))
		gws[i] = StartGateway(t, GatewayConfig{
			Template: rollingTemplate, Legacy: legacy, Consolidated: cons[i], Dir: dir,
			Extra: map[string]string{"CONSUL": agent.Addr, "PREFIX": prefix, "NAME": fmt.Sprintf("gw-%d", i), "SWITCH": fmt.Sprintf("main-%d", i)},
		})
		out, errOut, code := gws[i].CLI(t, "point", "create", "--type", "full_system", "--json")
		if code != 0 {
			t.Fatalf("gw-%d point create: exit %d\n%s%s", i, code, out, errOut)
		}
		var p fleetPoint
		if err := fleetJSON(out, &p); err != nil || p.Host != fmt.Sprintf("gw-%d", i) || p.HostID == "" {
			t.Fatalf("gw-%d point create printed %q (%v): want its host and host id", i, out, err)
		}
		points[i] = p.ID
		writeFiles(t, dir, map[string]string{"app/app.conf": "version 2\n"})
	}

	// The point list shows each point's host, on every gateway.
	out, errOut, code := gws[2].CLI(t, "point", "list")
	if code != 0 {
		t.Fatalf("point list: exit %d %s", code, errOut)
	}
	for i, id := range points {
		if !lineHas(out, id, fmt.Sprintf("gw-%d", i)) {
			t.Errorf("point list does not show %s on gw-%d:\n%s", id, i, out)
		}
	}
	// Another host's point is refused at the pre-check, naming its host.
	out, errOut, code = gws[1].CLI(t, "rollback", points[0], "--trigger", "manual")
	want := "point " + points[0] + " was created on gw-0; its objects are not here"
	if code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("gw-1 restoring gw-0's point: exit %d, %q; want exit 1 and %q", code, errOut, want)
	}

	// Consolidated fails behind every gateway at once: all three trip,
	// and each restores its own newest point, one host at a time.
	for _, c := range cons {
		c.Fail(500)
	}
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 10; k++ {
				fleetGet(g, fmt.Sprintf("user-%d-%d", i, k))
			}
		}()
	}
	wg.Wait()
	ops := make([]fleetOp, n)
	Eventually(t, 90*time.Second, "three emergency restores", func() bool {
		for i, g := range gws {
			var list []fleetOp
			if g.AdminJSON(t, "GET", "/switchback/operations", nil, &list) != 200 {
				return false
			}
			found := false
			for _, op := range list {
				if op.Kind == "emergency" && op.Host == fmt.Sprintf("gw-%d", i) && op.Status != "running" {
					ops[i], found = op, true
				}
			}
			if !found {
				return false
			}
		}
		return true
	})
	type span struct {
		gw       int
		from, to time.Time
	}
	var spans []span
	waited := 0
	for i, op := range ops {
		if op.Status != "completed" || op.Point != points[i] {
			t.Errorf("gw-%d: emergency %s %s restored %q, want completed and its own %s (errors %v)", i, op.ID, op.Status, op.Point, points[i], op.Errors)
			continue
		}
		if op.Lock == nil || op.Lock.Released == nil {
			t.Errorf("gw-%d: emergency %s has no lock span: %+v", i, op.ID, op.Lock)
			continue
		}
		if d, _ := time.ParseDuration(op.Lock.Waited); d > 500*time.Millisecond {
			waited++
		}
		spans = append(spans, span{i, op.Lock.Acquired, *op.Lock.Released})
		b, err := os.ReadFile(filepath.Join(gws[i].Dir, "app/app.conf"))
		if err != nil || string(b) != "version 1\n" {
			t.Errorf("gw-%d: app.conf is %q (%v) after its restore, want version 1", i, b, err)
		}
	}
	sort.Slice(spans, func(a, b int) bool { return spans[a].from.Before(spans[b].from) })
	for k := 1; k < len(spans); k++ {
		if spans[k].from.Before(spans[k-1].to) {
			t.Errorf("gw-%d held the restore lock from %s while gw-%d held it until %s",
				spans[k].gw, spans[k].from.Format(time.StampMicro), spans[k-1].gw, spans[k-1].to.Format(time.StampMicro))
		}
	}
	if len(spans) == n && waited < n-1 {
		t.Errorf("only %d of %d restores waited for the lock; the trips did not overlap: %+v", waited, n, spans)
	}
	for _, s := range spans {
		t.Logf("gw-%d held the lock %s to %s", s.gw, s.from.Format(time.StampMilli), s.to.Format(time.StampMilli))
	}

	// A manual rollback fails fast while another host holds the lock,
	// unless told to wait.
	writeFiles(t, gws[1].Dir, map[string]string{"app/app.conf": "version 3\n"})
	writeFiles(t, gws[2].Dir, map[string]string{"app/app.conf": "version 3\n"})
	done := make(chan int, 1)
	go func() {
		_, _, code := gws[1].CLI(t, "rollback", points[1], "--trigger", "manual")
		done <- code
	}()
	Eventually(t, 20*time.Second, "gw-1's restore to hold the lock", func() bool {
		var list []fleetOp
		gws[1].AdminJSON(t, "GET", "/switchback/operations", nil, &list)
		return len(list) > 0 && list[0].Kind == "rollback" && list[0].Lock != nil
	})
	t0 := time.Now()
	_, errOut, code = gws[2].CLI(t, "rollback", points[2], "--trigger", "manual")
	if code != 3 || !strings.Contains(errOut, "restore in progress on gw-1") || time.Since(t0) > 5*time.Second {
		t.Errorf("manual rollback while gw-1 restores: exit %d after %s, %q; want exit 3 at once", code, time.Since(t0), errOut)
	}
	out, errOut, code = gws[2].CLI(t, "rollback", points[2], "--trigger", "manual", "--wait", "1m", "--json")
	if code != 0 {
		t.Errorf("manual rollback --wait 1m: exit %d %s%s", code, out, errOut)
	}
	if c := <-done; c != 0 {
		t.Errorf("gw-1's rollback: exit %d", c)
	}
	for _, i := range []int{1, 2} {
		if b, _ := os.ReadFile(filepath.Join(gws[i].Dir, "app/app.conf")); string(b) != "version 1\n" {
			t.Errorf("gw-%d: app.conf %q after the manual rollback", i, b)
		}
	}
}

// lineHas reports whether some line of out holds every one of words.
func lineHas(out string, words ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
	}
	return false
}

// TestFleetStartupRecoveryWaitsForLock: a gateway killed while its
// restore holds the fleet's restore lock (in pre_restore) restarts at
// once; the lock is still held (by its dead Consul session, until the
// session's TTL runs out), and the startup recovery must keep trying
// until it gets it, then finish the restore (rolled back: nothing was
// staged, and post_restore runs, since pre_restore had begun) instead of
// giving up silently and leaving it running.
func TestFleetStartupRecoveryWaitsForLock(t *testing.T) {
	agent := consultest.Start(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app/app.conf": "version 1\n"})
	g := StartGateway(t, GatewayConfig{
		Template: strings.Replace(rollingTemplate, "pre_restore sleep 1", "pre_restore sleep 30\n\t\t\tpost_restore touch {DIR}/post-ran", 1),
		Legacy:   NewUpstream(t, "legacy"), Consolidated: NewUpstream(t, "consolidated"), Dir: dir,
		Extra: map[string]string{"CONSUL": agent.Addr, "PREFIX": "startup-" + fmt.Sprint(time.Now().UnixNano()), "NAME": "gw-a", "SWITCH": "main"},
	})
	out, errOut, code := g.CLI(t, "point", "create", "--type", "full_system", "--json")
	if code != 0 {
		t.Fatalf("point create: exit %d\n%s%s", code, out, errOut)
	}
	var p fleetPoint
	if err := fleetJSON(out, &p); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"app/app.conf": "version 2\n"})
	go g.CLI(t, "rollback", p.ID, "--trigger", "manual")
	var op fleetOp
	Eventually(t, 30*time.Second, "the restore to hold the lock", func() bool {
		var list []fleetOp
		g.AdminJSON(t, "GET", "/switchback/operations", nil, &list)
		if len(list) > 0 && list[0].Kind == "rollback" && list[0].Lock != nil {
			op = list[0]
			return true
		}
		return false
	})
	g.Kill()
	g.start(Binary(t))
	Eventually(t, 90*time.Second, "the startup recovery to finish "+op.ID, func() bool {
		var got fleetOp
		return g.AdminJSON(t, "GET", "/switchback/operations/"+op.ID, nil, &got) == 200 && got.Status != "running" && func() bool { op = got; return true }()
	})
	if op.Status != "rolled_back" {
		t.Errorf("the killed restore ended %s, want rolled_back (errors %v)", op.Status, op.Errors)
	}
	if !strings.Contains(g.Logs(), "will try again") {
		t.Errorf("the startup recovery never found the lock held; the test did not test the wait:\n%s", g.Logs())
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "app/app.conf")); string(b) != "version 2\n" {
		t.Errorf("app.conf is %q after recovery, want the tree as it was (version 2)", b)
	}
	// Killed in pre_restore, which may have stopped the application:
	// recovery starts it again.
	if _, err := os.Stat(filepath.Join(dir, "post-ran")); err != nil {
		t.Errorf("recovery did not run post_restore: %v", err)
	}
}
