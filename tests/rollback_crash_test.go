package tests

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashEnv is a host whose live trees are in the "old" state, with a point
// of the "new" state, saved whole in pristine so each run starts alike.
type crashEnv struct {
	*rbEnv
	point    string
	oldTree  string
	newTree  string
	pristine string
}

// newCrashEnv builds the trees: a few thousand small files, a few large
// ones, empty dirs and symlinks; a point of them; then changes to every
// root (edits, additions, removals, a rewritten large file).
func newCrashEnv(t *testing.T) *crashEnv {
	t.Helper()
	e := newRBEnv(t)
	files := map[string]string{"app/core/empty/": "", "data/link": "->../app/d0/f0"}
	for i := 0; i < 3000; i++ {
		files[fmt.Sprintf("app/d%d/f%d", i%40, i)] = strings.Repeat(fmt.Sprint("new", i, " "), i%50+1)
	}
	for i := 0; i < 20; i++ {
		files[fmt.Sprintf("config/c%d.toml", i)] = fmt.Sprint("c=", i)
	}
	writeFiles(t, e.host, files)
	r := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 8<<20)
	for i := 0; i < 3; i++ {
		for j := range big {
			big[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(e.host, fmt.Sprintf("data/big%d", i)), big, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := e.offline("point", "create", "--type", "full_system", "--json")
	mustCLI(t, 0, out, errOut, code, "point create")
	c := &crashEnv{rbEnv: e, point: decode[pointJSON](t, "create", out).ID}
	c.newTree = e.tree()
	old := map[string]string{"config/c3.toml": "c=old", "config/extra": "x", "data/link": "->elsewhere"}
	for i := 0; i < 3000; i += 7 {
		old[fmt.Sprintf("app/d%d/f%d", i%40, i)] = fmt.Sprint("old", i)
	}
	writeFiles(t, e.host, old)
	os.RemoveAll(filepath.Join(e.host, "app/d3"))
	os.Remove(filepath.Join(e.host, "data/big1"))
	big[0] ^= 0xff
	os.WriteFile(filepath.Join(e.host, "data/big2"), big, 0o600)
	c.oldTree = e.tree()
	if c.oldTree == c.newTree {
		t.Fatal("setup: old and new trees are the same")
	}
	c.pristine = filepath.Join(t.TempDir(), "pristine")
	if out, err := exec.Command("cp", "-a", e.dir, c.pristine).CombinedOutput(); err != nil {
		t.Fatalf("saving the pristine state: %v\n%s", err, out)
	}
	return c
}

// reset puts the whole work dir (trees, state store, backups, logs) back
// as newCrashEnv left it, at the same path: points name absolute roots.
func (c *crashEnv) reset() {
	c.t.Helper()
	if err := os.RemoveAll(c.dir); err != nil {
		c.t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", c.pristine, c.dir).CombinedOutput(); err != nil {
		c.t.Fatalf("reset: %v\n%s", err, out)
	}
	if got := c.tree(); got != c.oldTree {
		c.t.Fatal("reset did not bring back the old tree")
	}
}

// rollbackCmd is an offline restore of the point by the real binary.
func (c *crashEnv) rollbackCmd() (*exec.Cmd, *strings.Builder) {
	cmd := exec.Command(Binary(c.t), "rollback", c.point, "--trigger", "crash-test", "--config", c.config)
	cmd.Dir = c.dir
	cmd.Env = processEnv(c.dir)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

// check runs the next command, which recovers (and with cliRecovers must
// say so), and checks that every root
// is exactly the old or exactly the new tree, all alike, with no leftovers,
// and that the restore's record agrees. It returns "old" or "new".
func (c *crashEnv) check(label string, cliRecovers bool) string {
	t := c.t
	t.Helper()
	out, errOut, code := c.offline("ops", "list", "--json", "--limit", "0")
	mustCLI(t, 0, out, errOut, code, label+": ops list")
	got := c.tree()
	outcome := ""
	switch got {
	case c.oldTree:
		outcome = "old"
	case c.newTree:
		outcome = "new"
	default:
		t.Fatalf("%s: after recovery the trees are neither old nor new:\n%s", label, diffLines(got, c.oldTree, c.newTree))
	}
	ents, _ := os.ReadDir(c.host)
	for _, d := range ents {
		if strings.Contains(d.Name(), ".switchback-") {
			t.Errorf("%s: leftover %s", label, d.Name())
		}
	}
	var restore *opJSON
	for _, op := range decode[[]opJSON](t, "ops list", out) {
		if op.Status == "running" {
			t.Errorf("%s: op %s (%s) still running after recovery", label, op.ID, op.Kind)
		}
		if op.Kind == "rollback" && op.Trigger == "crash-test" {
			restore = &op
		}
	}
	switch {
	case restore == nil:
		// Killed before the record was written.
		if outcome != "old" {
			t.Errorf("%s: no record of the restore, but the trees are new", label)
		}
	case outcome == "new" && restore.Status != "rolled_forward" && restore.Status != "completed",
		outcome == "old" && restore.Status != "rolled_back" && restore.Status != "failed":
		t.Errorf("%s: record says %s but the trees are %s (journal %+v)", label, restore.Status, outcome, restore.Journal)
	case outcome == "old" && restore.Status == "failed" && restore.Journal != nil && restore.Journal.Phase != "done":
		t.Errorf("%s: failed with a journal in phase %s", label, restore.Journal.Phase)
	}
	if cliRecovers && restore != nil && strings.HasPrefix(restore.Status, "rolled_") && !strings.Contains(errOut, "finished interrupted operation "+restore.ID) {
		t.Errorf("%s: recovery of %s not announced: %q", label, restore.ID, errOut)
	}
	if outcome == "old" {
		// The pre-rollback point of a reverted restore is gone again.
		out, _, _ := c.offline("point", "list", "--json")
		if pts := decode[[]pointJSON](t, "list", out); len(pts) != 1 {
			t.Errorf("%s: trees are old but the catalog has %d points", label, len(pts))
		}
	}
	return outcome
}

// restoreOp returns the record of the crash-test restore.
func (c *crashEnv) restoreOp() opJSON {
	c.t.Helper()
	out, errOut, code := c.offline("ops", "list", "--json", "--limit", "0")
	mustCLI(c.t, 0, out, errOut, code, "ops list")
	for _, op := range decode[[]opJSON](c.t, "ops list", out) {
		if op.Kind == "rollback" && op.Trigger == "crash-test" {
			return op
		}
	}
	c.t.Fatal("no crash-test restore recorded")
	return opJSON{}
}

// diffLines shows the lines of got that are in neither want.
func diffLines(got string, wants ...string) string {
	var b strings.Builder
	n := 0
	for _, w := range wants {
		have := map[string]bool{}
		for _, l := range strings.Split(w, "\n") {
			have[l] = true
		}
		fmt.Fprintf(&b, "--- not in want %d:\n", n)
		k := 0
		for _, l := range strings.Split(got, "\n") {
			if !have[l] && k < 10 {
				fmt.Fprintln(&b, l)
				k++
			}
		}
		n++
	}
	return b.String()
}

// TestCrashCLIRollback kills a real `switchback rollback --config` with
// SIGKILL at instants spread over a whole restore, then runs the next
// command and checks the outcome.
func TestCrashCLIRollback(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the real binary 24 times")
	}
	c := newCrashEnv(t)
	// Measure an uninterrupted restore, and when its fsync step began:
	// the stages are complete from then on, and the swap follows.
	c.reset()
	cmd, out := c.rollbackCmd()
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("uninterrupted restore: %v\n%s", err, out)
	}
	full := time.Since(t0)
	if got := c.check("uninterrupted", true); got != "new" {
		t.Fatalf("uninterrupted restore left the %s tree", got)
	}
	tail := c.restoreOp().stepStart("fsync").Sub(t0)
	if tail <= 0 || tail > full {
		t.Fatalf("fsync step at %s of %s", tail, full)
	}
	// Half the kills are spread over the whole restore, half over its
	// tail from fsync on, each jittered within its slot and over 1.1× the
	// measured time (the machine may be slower now).
	const runs = 24
	outcomes := map[string]int{}
	for i := 0; i < runs; i++ {
		c.reset()
		from, to, k := time.Duration(0), full, i
		if i >= runs/2 {
			from, k = tail, i-runs/2
		}
		slot := float64(to-from) * 1.1 / (runs / 2)
		delay := from + time.Duration(slot*float64(k)+rand.Float64()*slot)
		cmd, out := c.rollbackCmd()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		err := cmd.Wait()
		timer.Stop()
		killed := false
		if ee, ok := err.(*exec.ExitError); ok {
			ws, _ := ee.Sys().(syscall.WaitStatus)
			killed = ws.Signaled() && ws.Signal() == syscall.SIGKILL
		}
		if err != nil && !killed {
			t.Fatalf("run %d: restore failed: %v\n%s", i, err, out)
		}
		label := fmt.Sprintf("run %d (kill at %s)", i, delay.Round(time.Millisecond))
		got := c.check(label, true)
		if !killed {
			got += " (finished)"
		}
		outcomes[got]++
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("uninterrupted restore %s (fsync from %s); outcomes over %d kills: %v", full.Round(time.Millisecond), tail.Round(time.Millisecond), runs, outcomes)
	if outcomes["old"] == 0 || outcomes["new"] == 0 {
		t.Logf("note: the kills did not land on both sides of the swap: %v", outcomes)
	}
}

// TestCrashGatewayRestore kills the gateway while it restores through the
// admin API; the next gateway start finishes or reverts the restore.
func TestCrashGatewayRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the gateway")
	}
	c := newCrashEnv(t)
	// Measure a restore through the gateway.
	c.reset()
	g := c.start()
	t0 := time.Now()
	var op opJSON
	if code := g.AdminJSON(t, "POST", "/switchback/points/"+c.point+"/rollback", map[string]string{"trigger": "crash-test"}, &op); code != 200 {
		t.Fatalf("restore through the gateway: %d %+v", code, op)
	}
	full := time.Since(t0)
	tail := op.stepStart("fsync").Sub(t0)
	g.Stop()
	outcomes := map[string]int{}
	// One kill while staging, the others from fsync on.
	for i, at := range []time.Duration{tail / 2, tail, tail + (full-tail)/3, tail + (full-tail)*2/3} {
		c.reset()
		g := c.start()
		done := make(chan struct{})
		go func() {
			defer close(done)
			body, _ := json.Marshal(map[string]string{"trigger": "crash-test"})
			resp, err := Client.Post("http://"+g.Admin+"/switchback/points/"+c.point+"/rollback", "application/json", strings.NewReader(string(body)))
			if err == nil {
				resp.Body.Close()
			}
		}()
		time.Sleep(at)
		g.Kill()
		<-done
		// The next start recovers in the background.
		g.start(Binary(t))
		label := fmt.Sprintf("gateway kill %d at %s", i, at.Round(time.Millisecond))
		Eventually(t, 30*time.Second, label+": recovery", func() bool {
			var ops []opJSON
			if g.AdminJSON(t, http.MethodGet, "/switchback/operations", nil, &ops) != 200 {
				return false
			}
			for _, op := range ops {
				if op.Status == "running" {
					return false
				}
			}
			return true
		})
		g.Stop()
		outcomes[c.check(label, false)]++
	}
	t.Logf("restore through the gateway %s (fsync from %s); outcomes: %v", full.Round(time.Millisecond), tail.Round(time.Millisecond), outcomes)
}
