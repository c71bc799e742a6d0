package tests

// End-to-end tests of config reloads: a config that Caddy rejects changes
// nothing on the running switch, and one it commits takes over fully.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state/consul/consultest"
)

// reloadTemplate is a gateway with switch "main" at weight {WEIGHT} whose
// trip block is {TRIP}.
const reloadTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		gateway gw-test
	}
}
http://{HTTP} {
	switchback main {
		weight {WEIGHT}
		mode split
		sticky cookie sb_user
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
		{TRIP}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

type reloadEnv struct {
	g                    *Gateway
	legacy, consolidated *Upstream
}

func startReloadEnv(t *testing.T) *reloadEnv {
	t.Helper()
	e := &reloadEnv{legacy: NewUpstream(t, "legacy"), consolidated: NewUpstream(t, "consolidated")}
	e.g = StartGateway(t, e.config("20", "trip {\n\t\t\tconsecutive_failures 5\n\t\t}"))
	return e
}

func (e *reloadEnv) config(weight, trip string) GatewayConfig {
	return GatewayConfig{Template: reloadTemplate, Legacy: e.legacy, Consolidated: e.consolidated,
		Extra: map[string]string{"WEIGHT": weight, "TRIP": trip}}
}

// adapted returns the JSON of a config, as `switchback adapt` makes it.
func (e *reloadEnv) adapted(t *testing.T, cfg GatewayConfig) map[string]any {
	t.Helper()
	dir := t.TempDir()
	g := *e.g
	g.Caddyfile = filepath.Join(dir, "Caddyfile")
	g.WriteConfig(cfg)
	out, errOut, code := RunCLI(t, dir, "adapt", "--config", g.Caddyfile, "--adapter", "caddyfile")
	if code != 0 {
		t.Fatalf("adapt: exit %d: %s", code, errOut)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("adapt output: %v: %s", err, out)
	}
	return doc
}

// withUnknownModule appends, after the switch's route, a route whose
// handler is a module that does not exist, so Caddy rejects the config
// after provisioning the switch.
func withUnknownModule(t *testing.T, doc map[string]any) []byte {
	t.Helper()
	servers := doc["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	for _, s := range servers {
		srv := s.(map[string]any)
		routes, _ := srv["routes"].([]any)
		srv["routes"] = append(routes, map[string]any{"handle": []any{map[string]any{"handler": "no_such_module"}}})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// load posts a JSON config to the admin API and returns the status and body.
func (e *reloadEnv) load(t *testing.T, cfg []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.g.Admin+"/load", bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "application/json")
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// stored reads the switch from the state store, through the offline CLI.
func (e *reloadEnv) stored(t *testing.T) SwitchState {
	t.Helper()
	out, errOut, code := RunCLI(t, e.g.Dir, "traffic", "status", "--config", e.g.Caddyfile, "--json")
	if code != 0 {
		t.Fatalf("traffic status --config: exit %d: %s", code, errOut)
	}
	var st struct {
		Switches []SwitchState `json:"switches"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("traffic status --json: %v: %s", err, out)
	}
	for _, s := range st.Switches {
		if s.Name == "main" {
			return s
		}
	}
	t.Fatalf("no switch main in the store: %s", out)
	return SwitchState{}
}

// trips makes consolidated fail and sends new users until the switch
// trips, then heals consolidated.
func (e *reloadEnv) trips(t *testing.T, what string) {
	t.Helper()
	e.consolidated.Fail(http.StatusInternalServerError)
	defer e.consolidated.Fail(0)
	deadline := time.Now().Add(15 * time.Second)
	for !e.g.Switch(t, "main").Tripped {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the switch did not trip in 15s with consolidated failing:\n%s", what, e.g.Logs())
		}
		for range 20 {
			if _, resp := e.g.Get(t, "/", nil); resp.StatusCode != 200 {
				t.Fatalf("%s: status %d: a failure on consolidated reached the client", what, resp.StatusCode)
			}
		}
	}
}

func (e *reloadEnv) reset(t *testing.T) {
	t.Helper()
	if _, errOut, code := e.g.CLI(t, "traffic", "reset", "--reason", "test"); code != 0 {
		t.Fatalf("traffic reset: exit %d: %s", code, errOut)
	}
	if sw := e.g.Switch(t, "main"); sw.Tripped || sw.Mode != "split" {
		t.Fatalf("after reset: %+v", sw)
	}
}

// TestRejectedReloadChangesNothing: a config that Caddy rejects after
// provisioning the switch (an unknown module further on) leaves the
// running switch exactly as it was: the weight in the store and in force,
// the windows its monitor reads, and its ability to trip, also after a
// reset.
func TestRejectedReloadChangesNothing(t *testing.T) {
	e := startReloadEnv(t)
	before := e.stored(t)
	if before.Weight != 20 {
		t.Fatalf("stored weight at start = %v, want 20", before.Weight)
	}

	for _, tc := range []struct{ name, weight, trip string }{
		{"weight 20 to 80", "80", "trip {\n\t\t\tconsecutive_failures 5\n\t\t}"},
		{"window change", "20", "trip {\n\t\t\tconsecutive_failures 5\n\t\t\twindow 3s\n\t\t}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := withUnknownModule(t, e.adapted(t, e.config(tc.weight, tc.trip)))
			code, body := e.load(t, bad)
			if code < 400 || !strings.Contains(body, "no_such_module") {
				t.Fatalf("POST /load of a config with an unknown module: %d %s; want it rejected", code, body)
			}
			if sw := e.g.Switch(t, "main"); sw.Weight != 20 || sw.Mode != "split" {
				t.Fatalf("live switch after the rejected reload: weight %v mode %s, want 20 split", sw.Weight, sw.Mode)
			}
			if st := e.stored(t); st.Weight != 20 || len(st.History) != len(before.History) {
				t.Fatalf("stored switch after the rejected reload: weight %v, %v events (was %v); want it untouched", st.Weight, len(st.History), len(before.History))
			}
			// The new users split at 20%, not 80%.
			cons := 0
			for range 200 {
				if _, resp := e.g.Get(t, "/", nil); resp.Header.Get("X-Switchback-Arm") == "consolidated" {
					cons++
				}
			}
			if cons > 70 {
				t.Fatalf("%d of 200 new users went to consolidated after the rejected reload; want about 40 (weight 20)", cons)
			}
			e.trips(t, "after the rejected reload")
			e.reset(t)
			e.trips(t, "after the rejected reload and a reset")
			e.reset(t)
		})
	}
}

// TestCommittedReloadTakesOver: a reload that Caddy commits applies the
// new weight to the store and a new window to the monitor, and the old
// config's cleanup leaves the new one able to trip.
func TestCommittedReloadTakesOver(t *testing.T) {
	e := startReloadEnv(t)
	e.g.WriteConfig(e.config("40", "trip {\n\t\t\tconsecutive_failures 5\n\t\t\twindow 3s\n\t\t}"))
	if _, errOut, code := RunCLI(t, e.g.Dir, "reload", "--config", e.g.Caddyfile, "--address", e.g.Admin); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, errOut)
	}
	if sw := e.g.Switch(t, "main"); sw.Weight != 40 {
		t.Fatalf("live weight after reload = %v, want 40", sw.Weight)
	}
	if st := e.stored(t); st.Weight != 40 {
		t.Fatalf("stored weight after reload = %v, want 40", st.Weight)
	}
	var detail struct {
		Rules struct {
			Window string `json:"window"`
		} `json:"rules"`
		Arms map[string]struct {
			Window string `json:"window"`
		} `json:"arms"`
	}
	e.g.AdminJSON(t, http.MethodGet, "/switchback/switches/main", nil, &detail)
	if detail.Rules.Window != "3s" || detail.Arms["consolidated"].Window != "3s" {
		t.Fatalf("after a reload to window 3s: rules window %q, consolidated window %q", detail.Rules.Window, detail.Arms["consolidated"].Window)
	}
	e.trips(t, "after the reload")
	e.reset(t)
	e.trips(t, "after the reload and a reset")
}

// TestFleetRejectedReloadChangesNothing: on Consul, a reload that one
// gateway rejects (weight 50 to 80, and an unknown module) reaches no
// gateway of the fleet: every one stays at weight 50.
func TestFleetRejectedReloadChangesNothing(t *testing.T) {
	agent := consultest.Start(t)
	f := startFleet(t, agent.Addr, agent.Addr)
	g := f.gws[0]
	src, err := os.ReadFile(g.Caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(strings.Replace(string(src), "weight 50", "weight 80", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := RunCLI(t, dir, "adapt", "--config", file, "--adapter", "caddyfile")
	if code != 0 {
		t.Fatalf("adapt: exit %d: %s", code, errOut)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	e := &reloadEnv{g: g}
	if code, body := e.load(t, withUnknownModule(t, doc)); code < 400 || !strings.Contains(body, "no_such_module") {
		t.Fatalf("POST /load with an unknown module: %d %s; want it rejected", code, body)
	}
	time.Sleep(2 * time.Second) // a change reaches the fleet well within this
	for i, gw := range f.gws {
		if s := gw.Switch(t, "main"); s.Weight != 50 {
			t.Errorf("gw-%v: weight %v after gw-0 rejected a reload to 80; want 50 (by %s: %s)", i, s.Weight, s.By, s.Reason)
		}
	}
}

// TestActionOutlivesReload: an on_trip action belongs to the trip, not to
// the config that saw it. A reload while it runs does not cancel it.
func TestActionOutlivesReload(t *testing.T) {
	out := filepath.Join(t.TempDir(), "acted")
	trip := "trip {\n\t\t\tconsecutive_failures 5\n\t\t}\n\t\ton_trip exec sh -c \"sleep 2; echo done >> " + out + "\""
	e := &reloadEnv{legacy: NewUpstream(t, "legacy"), consolidated: NewUpstream(t, "consolidated")}
	e.g = StartGateway(t, e.config("20", trip))
	e.trips(t, "with a slow on_trip")
	e.g.WriteConfig(e.config("30", trip))
	if _, errOut, code := RunCLI(t, e.g.Dir, "reload", "--config", e.g.Caddyfile, "--address", e.g.Admin); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("the action finished before the reload; the test proves nothing")
	}
	Eventually(t, 10*time.Second, "the on_trip exec to finish after the reload", func() bool {
		b, _ := os.ReadFile(out)
		return string(b) == "done\n"
	})
}
