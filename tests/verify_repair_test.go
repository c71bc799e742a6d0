package tests

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyRepairCLI checks `point verify --repair` offline (--config)
// and through the gateway's admin API: corrupt and missing objects are
// rewritten from live files whose content matches, one whose live file
// changed is reported as not repaired, and a later plain verify is clean
// once everything could be repaired.
func TestVerifyRepairCLI(t *testing.T) {
	e := newRBEnv(t)
	out, errOut, code := e.offline("point", "create", "--type", "full_system", "--json")
	mustCLI(t, 0, out, errOut, code, "point create")
	full := decode[pointJSON](t, "create", out)

	corrupt(t, e.dir, "orchestrator v1\n")
	if err := os.Remove(objectPath(e.dir, "a = 1\n")); err != nil {
		t.Fatal(err)
	}
	corrupt(t, e.dir, `{"rows": 1}`)
	// db.json's live content has changed since the point: nothing proves
	// a match, so its object cannot be repaired from it.
	writeFiles(t, e.host, map[string]string{"data/db.json": `{"rows": 2}`})

	out, errOut, code = e.offline("point", "verify", full.ID, "--repair", "--json")
	if code != 1 {
		t.Fatalf("verify --repair with an unrepairable object: exit %d\n%s\n%s", code, out, errOut)
	}
	rep := decode[[]struct {
		OK       bool `json:"ok"`
		Repaired []struct {
			Path, Kind string
		} `json:"repaired"`
		Problems []struct {
			Path        string `json:"path"`
			RepairError string `json:"repair_error"`
		} `json:"problems"`
	}](t, "verify --repair", out)
	if len(rep) != 1 || rep[0].OK || len(rep[0].Repaired) != 2 || len(rep[0].Problems) != 1 {
		t.Fatalf("verify --repair report:\n%s", out)
	}
	if p := rep[0].Problems[0]; p.Path != "db.json" || !strings.Contains(p.RepairError, "differs") {
		t.Errorf("unrepaired problem %+v: want db.json, which differs", p)
	}

	// Through the gateway, once the live file is back.
	writeFiles(t, e.host, map[string]string{"data/db.json": `{"rows": 1}`})
	g := e.start()
	if code := g.AdminJSON(t, http.MethodPost, "/switchback/points/"+full.ID+"/verify", `{"repair":"yes"}`, nil); code != http.StatusBadRequest {
		t.Errorf("verify with a bad repair field: status %d, want 400", code)
	}
	out, errOut, code = e.online("point", "verify", full.ID, "--repair")
	mustCLI(t, 0, out, errOut, code, "verify --repair through the gateway")
	if want := "repaired corrupt object"; !strings.Contains(out, want) || !strings.Contains(out, filepath.Join(e.host, "data/db.json")) {
		t.Errorf("verify --repair output lacks %q and db.json:\n%s", want, out)
	}
	out, errOut, code = e.online("point", "verify", full.ID)
	mustCLI(t, 0, out, errOut, code, "verify after repair")
}
