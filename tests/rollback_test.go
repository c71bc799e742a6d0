package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

// RollbackTemplate is a gateway with one switch "main" and every rollback
// option: point types over {DIR}/srv/app, {DIR}/srv/config and {DIR}/srv/data,
// retention, hooks that append to {DIR}/hooks.log (pre_restore waits
// while {DIR}/slow exists, so a test can hold a restore open), and a
// validate URL on the legacy upstream.
const RollbackTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		points {
			full_system {DIR}/srv/app {DIR}/srv/config {DIR}/srv/data
			configuration_only {DIR}/srv/config
			data {DIR}/srv/data
			component orchestrator {DIR}/srv/app/core
		}
		retention {
			keep_count 10
			keep_days 30
		}
		hooks {
			pre_restore "echo pre >> {DIR}/hooks.log; touch {DIR}/pre-started; while [ -e {DIR}/slow ]; do sleep 0.05; done"
			post_restore "echo post >> {DIR}/hooks.log"
		}
		validate {
			url http://{LEGACY}/health 200
		}
	}
}
http://{HTTP} {
	switchback main {
		weight 20
		mode split
		sticky cookie sb_user
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

// rbEnv is a host with the rollback config: a directory with the trees,
// the config file, and the upstreams. The gateway runs only when a test
// starts it.
type rbEnv struct {
	t       *testing.T
	dir     string
	host    string // dir/srv, which holds the trees
	cfg     GatewayConfig
	config  string // the Caddyfile
	gw      *Gateway
	legacy  *Upstream
	consol  *Upstream
	adminAt string // admin address in the config (the gateway's when started)
}

func newRBEnv(t *testing.T) *rbEnv {
	t.Helper()
	dir := t.TempDir()
	e := &rbEnv{t: t, dir: dir, host: filepath.Join(dir, "srv"), legacy: NewUpstream(t, "legacy"), consol: NewUpstream(t, "consolidated")}
	e.cfg = GatewayConfig{Template: RollbackTemplate, Legacy: e.legacy, Consolidated: e.consol, Dir: e.dir}
	// Write the config without a gateway, for offline tests; StartGateway
	// rewrites it with the ports it picks.
	g := prepareGateway(t, e.cfg)
	e.config, e.adminAt = g.Caddyfile, g.Admin
	writeFiles(t, e.host, map[string]string{
		"app/main.py":          "print('v1')\n",
		"app/core/orch.py":     "orchestrator v1\n",
		"app/core/empty/":      "",
		"app/link":             "->core/orch.py",
		"app/bin/run.sh":       "#!/bin/sh\necho run\n",
		"config/settings.toml": "a = 1\n",
		"config/.env":          "SECRET=1\n",
		"data/db.json":         `{"rows": 1}`,
		"data/dup1":            "same",
		"data/dup2":            "same",
	})
	os.Chmod(filepath.Join(e.host, "app/bin/run.sh"), 0o755)
	return e
}

// start starts the gateway on this env's directory and config.
func (e *rbEnv) start() *Gateway {
	e.t.Helper()
	e.gw = StartGateway(e.t, e.cfg)
	e.adminAt = e.gw.Admin
	return e.gw
}

// offline runs the CLI with --config (the gateway must not answer).
func (e *rbEnv) offline(args ...string) (string, string, int) {
	e.t.Helper()
	return RunCLI(e.t, e.dir, append(args, "--config", e.config)...)
}

// online runs the CLI against the running gateway.
func (e *rbEnv) online(args ...string) (string, string, int) {
	e.t.Helper()
	return e.gw.CLI(e.t, args...)
}

// roots are the trees the full_system point covers.
func (e *rbEnv) roots() []string {
	return []string{filepath.Join(e.host, "app"), filepath.Join(e.host, "config"), filepath.Join(e.host, "data")}
}

// tree describes the roots exactly.
func (e *rbEnv) tree() string {
	e.t.Helper()
	return treeSnapshot(e.t, e.roots()...)
}

// writeFiles creates files from a map of relative path to content; a
// value starting with "->" makes a symlink, a path ending in "/" a
// directory.
func writeFiles(t testing.TB, base string, files map[string]string) {
	t.Helper()
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := filepath.Join(base, k)
		if strings.HasSuffix(k, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if target, ok := strings.CutPrefix(files[k], "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(files[k]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// treeSnapshot describes trees exactly: each entry's path, type and mode,
// a file's size, content hash and mtime, a link's target, a directory's
// mtime. Two equal snapshots are the same trees.
func treeSnapshot(t testing.TB, roots ...string) string {
	t.Helper()
	var b strings.Builder
	for _, root := range roots {
		fmt.Fprintf(&b, "== %s\n", root)
		if _, err := os.Lstat(root); os.IsNotExist(err) {
			b.WriteString("<absent>\n")
			continue
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fmt.Fprintf(&b, "%s %v", rel, info.Mode())
			switch {
			case info.Mode().IsRegular():
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				fmt.Fprintf(&b, " %d %x %d", len(data), sum[:8], info.ModTime().UnixNano())
			case info.IsDir():
				fmt.Fprintf(&b, " %d", info.ModTime().UnixNano())
			case info.Mode()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				fmt.Fprintf(&b, " -> %s", target)
			}
			b.WriteString("\n")
			return nil
		})
		if err != nil {
			t.Fatalf("snapshot of %s: %v", root, err)
		}
	}
	return b.String()
}

// pointJSON is the part of a point record the tests read.
type pointJSON struct {
	ID           string          `json:"id"`
	Type         string          `json:"type"`
	Components   []string        `json:"components"`
	Roots        []string        `json:"roots"`
	Files        int             `json:"files"`
	Size         int64           `json:"size"`
	Tags         []string        `json:"tags"`
	Metadata     json.RawMessage `json:"metadata"`
	Auto         string          `json:"auto"`
	Verified     bool            `json:"verified"`
	LastVerified *time.Time      `json:"last_verified"`
}

// opJSON is the part of an operation record the tests read.
type opJSON struct {
	ID               string `json:"id"`
	Kind             string `json:"kind"`
	Trigger          string `json:"trigger"`
	Reason           string `json:"reason"`
	Point            string `json:"point"`
	PreRollbackPoint string `json:"pre_rollback_point"`
	Status           string `json:"status"`
	DryRun           bool   `json:"dry_run"`
	Steps            []struct {
		Name     string    `json:"name"`
		Start    time.Time `json:"start"`
		Duration string    `json:"duration"`
		Error    string    `json:"error"`
		Detail   string    `json:"detail"`
	} `json:"steps_completed"`
	Errors []string `json:"errors"`
	Plan   *struct {
		Added    []string `json:"added"`
		Removed  []string `json:"removed"`
		Modified []string `json:"modified"`
	} `json:"plan"`
	Journal *struct {
		Phase string `json:"phase"`
	} `json:"journal"`
}

// stepStart returns when step name began (zero if it did not run).
func (op opJSON) stepStart(name string) time.Time {
	for _, s := range op.Steps {
		if s.Name == name {
			return s.Start
		}
	}
	return time.Time{}
}

func decode[T any](t testing.TB, what, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s: decoding %q: %v", what, out, err)
	}
	return v
}

// mustCLI fails the test unless the command exits with want.
func mustCLI(t testing.TB, want int, stdout, stderr string, code int, what string) {
	t.Helper()
	if code != want {
		t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, code, want, stdout, stderr)
	}
}

var pointID = regexp.MustCompile(`^rollback-\d{8}-\d{6}(-\d+)?$`)

// objectPath is where the object store keeps content.
func objectPath(dir, content string) string {
	sum := sha256.Sum256([]byte(content))
	d := hex.EncodeToString(sum[:])
	return filepath.Join(dir, "backups", "objects", d[:2], d)
}

// corrupt overwrites the object holding content.
func corrupt(t testing.TB, dir, content string) {
	t.Helper()
	p := objectPath(dir, content)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatalf("object of %q: %v", content, err)
	}
	if err := os.WriteFile(p, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// change edits, adds, removes, re-modes and re-links entries in every root.
func (e *rbEnv) change() {
	e.t.Helper()
	writeFiles(e.t, e.host, map[string]string{
		"app/main.py":          "print('v2')\n",
		"app/new.py":           "new\n",
		"app/link":             "->main.py",
		"config/settings.toml": "a = 2\n",
		"data/db.json":         `{"rows": 2}`,
	})
	os.Remove(filepath.Join(e.host, "data/dup2"))
	os.RemoveAll(filepath.Join(e.host, "app/core/empty"))
	os.Chmod(filepath.Join(e.host, "app/bin/run.sh"), 0o700)
}

func TestRollbackCLIOffline(t *testing.T) {
	e := newRBEnv(t)
	// The gateway runs once so the switch record exists in the store, then
	// stops: everything below works offline.
	e.start()
	e.gw.Stop()

	// point create: ids, metadata, tags.
	out, errOut, code := e.offline("point", "create", "--type", "full_system", "--metadata", `{"phase": "pre-migration"}`, "--tag", "baseline", "--json")
	mustCLI(t, 0, out, errOut, code, "point create")
	full := decode[pointJSON](t, "point create", out)
	if !pointID.MatchString(full.ID) || full.Type != "full_system" || full.Files < 8 || len(full.Tags) != 1 || full.Tags[0] != "baseline" {
		t.Fatalf("created %+v", full)
	}
	if m := decode[map[string]string](t, "metadata", string(full.Metadata)); m["phase"] != "pre-migration" {
		t.Errorf("metadata = %s", full.Metadata)
	}
	if !strings.Contains(errOut, "working offline") {
		t.Errorf("offline mode not announced: %q", errOut)
	}
	newTree := e.tree()
	for _, bad := range []string{`[1,2]`, `"text"`, `{"a":`, `null`} {
		out, errOut, code := e.offline("point", "create", "--type", "full_system", "--metadata", bad)
		mustCLI(t, 2, out, errOut, code, "create --metadata "+bad)
		if !strings.Contains(errOut, "--metadata must be a JSON object") {
			t.Errorf("--metadata %s: stderr %q", bad, errOut)
		}
	}
	out, errOut, code = e.offline("point", "create", "--type", "nonsense")
	mustCLI(t, 1, out, errOut, code, "create --type nonsense")
	if !strings.Contains(errOut, `unknown point type "nonsense"`) {
		t.Errorf("--type nonsense: %q", errOut)
	}
	var ids []string
	for _, args := range [][]string{{"--type", "configuration_only"}, {"--type", "data"}, {"--type", "partial_component", "--component", "orchestrator"}} {
		out, errOut, code := e.offline(append([]string{"point", "create", "--json"}, args...)...)
		mustCLI(t, 0, out, errOut, code, "point create "+strings.Join(args, " "))
		p := decode[pointJSON](t, "create", out)
		if !pointID.MatchString(p.ID) {
			t.Errorf("id %q", p.ID)
		}
		ids = append(ids, p.ID)
	}
	if ids[0] == ids[1] || ids[1] == ids[2] {
		t.Errorf("ids not unique: %v", ids)
	}

	// point list.
	out, errOut, code = e.offline("point", "list", "--json")
	mustCLI(t, 0, out, errOut, code, "point list")
	if pts := decode[[]pointJSON](t, "list", out); len(pts) != 4 {
		t.Fatalf("list: %d points, want 4 (the bad creates must not add any)", len(pts))
	}
	out, _, _ = e.offline("point", "list", "--json", "--limit", "2")
	if pts := decode[[]pointJSON](t, "list", out); len(pts) != 2 {
		t.Errorf("--limit 2: %d points", len(pts))
	}
	out, _, _ = e.offline("point", "list", "--json", "--type", "data")
	if pts := decode[[]pointJSON](t, "list", out); len(pts) != 1 || pts[0].Type != "data" {
		t.Errorf("--type data: %+v", pts)
	}
	out, _, code = e.offline("point", "list")
	if code != 0 || !strings.Contains(out, full.ID) || !strings.Contains(out, "baseline") || !strings.Contains(out, "pre-migration") {
		t.Errorf("list (human): exit %d\n%s", code, out)
	}
	_, errOut, code = e.offline("point", "list", "--limit", "-1")
	mustCLI(t, 2, "", errOut, code, "list --limit -1")

	// verify.
	out, errOut, code = e.offline("point", "verify", full.ID, "--json")
	mustCLI(t, 0, out, errOut, code, "verify")

	// rollback --dry-run lists the changes and changes nothing.
	e.change()
	oldTree := e.tree()
	out, errOut, code = e.offline("rollback", full.ID, "--trigger", "manual", "--dry-run", "--json")
	mustCLI(t, 0, out, errOut, code, "rollback --dry-run")
	dry := decode[opJSON](t, "dry run", out)
	if dry.Plan == nil || !dry.DryRun {
		t.Fatalf("dry run: %s", out)
	}
	in := func(list []string, rel string) bool {
		for _, p := range list {
			if p == filepath.Join(e.host, rel) {
				return true
			}
		}
		return false
	}
	for _, c := range []struct {
		list []string
		rel  string
	}{
		{dry.Plan.Added, "data/dup2"}, {dry.Plan.Added, "app/core/empty"},
		{dry.Plan.Removed, "app/new.py"},
		{dry.Plan.Modified, "app/main.py"}, {dry.Plan.Modified, "app/link"}, {dry.Plan.Modified, "app/bin/run.sh"}, {dry.Plan.Modified, "config/settings.toml"},
	} {
		if !in(c.list, c.rel) {
			t.Errorf("dry run plan misses %s: %+v", c.rel, *dry.Plan)
		}
	}
	if got := e.tree(); got != oldTree {
		t.Fatalf("dry run changed the tree:\n%s", got)
	}
	out, _, _ = e.offline("rollback", full.ID, "--trigger", "manual", "--dry-run")
	if !strings.Contains(out, "+ "+filepath.Join(e.host, "data/dup2")) || !strings.Contains(out, "- "+filepath.Join(e.host, "app/new.py")) || !strings.Contains(out, "~ "+filepath.Join(e.host, "app/main.py")) {
		t.Errorf("dry run (human) does not list the changes:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "hooks.log")); err == nil {
		t.Error("dry run ran the hooks")
	}

	// --only restores one path and keeps the rest as it is live.
	out, errOut, code = e.offline("rollback", full.ID, "--trigger", "manual", "--only", filepath.Join(e.host, "config"), "--json")
	mustCLI(t, 0, out, errOut, code, "rollback --only")
	if b, _ := os.ReadFile(filepath.Join(e.host, "config/settings.toml")); string(b) != "a = 1\n" {
		t.Errorf("--only config: settings.toml = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(e.host, "app/main.py")); string(b) != "print('v2')\n" {
		t.Errorf("--only config restored app/main.py too: %q", b)
	}
	_, errOut, code = e.offline("rollback", full.ID, "--trigger", "manual", "--only", "/etc")
	if code == 0 || !strings.Contains(errOut, "not inside any path of the point") {
		t.Errorf("--only /etc: exit %d, %q", code, errOut)
	}

	// A full rollback restores the tree exactly and runs the hooks.
	os.Remove(filepath.Join(e.dir, "hooks.log"))
	out, errOut, code = e.offline("rollback", full.ID, "--trigger", "manual", "--reason", "bad deploy", "--json")
	mustCLI(t, 0, out, errOut, code, "rollback")
	rb := decode[opJSON](t, "rollback", out)
	if rb.Status != "completed" || rb.PreRollbackPoint == "" || rb.Trigger != "manual" {
		t.Errorf("rollback record: %+v", rb)
	}
	if got := e.tree(); got != newTree {
		t.Fatalf("rollback did not restore the point exactly:\n%s\n--- want\n%s", got, newTree)
	}
	if b, _ := os.ReadFile(filepath.Join(e.dir, "hooks.log")); string(b) != "pre\npost\n" {
		t.Errorf("hooks.log = %q, want pre then post", b)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "logs", "rollback-"+rb.ID+".json")); err != nil {
		t.Errorf("no log file for %s: %v", rb.ID, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(e.host, ".*switchback-*"))
	if len(leftovers) > 0 {
		t.Errorf("leftovers: %v", leftovers)
	}

	// ops list, show, report.
	out, errOut, code = e.offline("ops", "list", "--json", "--limit", "50")
	mustCLI(t, 0, out, errOut, code, "ops list")
	ops := decode[[]opJSON](t, "ops list", out)
	kinds := map[string]int{}
	for _, op := range ops {
		kinds[op.Kind]++
	}
	if kinds["create"] < 4 || kinds["rollback"] < 3 || kinds["verify"] < 1 {
		t.Errorf("ops list kinds: %v", kinds)
	}
	out, errOut, code = e.offline("ops", "show", rb.ID)
	mustCLI(t, 0, out, errOut, code, "ops show")
	for _, s := range []string{rb.ID, "COMPLETED", "pre_checks", "swap", "post_restore", "validate"} {
		if !strings.Contains(out, s) {
			t.Errorf("ops show lacks %q:\n%s", s, out)
		}
	}
	out, errOut, code = e.offline("ops", "report", rb.ID)
	mustCLI(t, 0, out, errOut, code, "ops report")
	for _, s := range []string{"# INCIDENT REPORT - ROLLBACK EXECUTED", "bad deploy", full.ID, "| Step |", "**Status:** Completed"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}

	// Unknown ids.
	for _, args := range [][]string{
		{"point", "verify", "rollback-20000101-000000"},
		{"rollback", "rollback-20000101-000000", "--trigger", "manual"},
		{"ops", "show", "op-nope"},
		{"ops", "report", "op-nope"},
	} {
		_, errOut, code := e.offline(args...)
		if code != 1 || !strings.Contains(errOut, "not found") {
			t.Errorf("%v: exit %d, stderr %q; want 1 and \"not found\"", args, code, errOut)
		}
	}
	// Usage mistakes.
	for _, args := range [][]string{
		{"rollback", full.ID},          // no --trigger
		{"rollback", "--trigger", "x"}, // no id
		{"point", "verify"},
		{"point", "create"},
		{"validate", "--level", "extreme"},
		{"point", "list", "--bogus"},
	} {
		_, errOut, code := e.offline(args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage); stderr %q", args, code, errOut)
		}
	}

	// validate levels.
	for _, level := range []string{"basic", "standard", "comprehensive"} {
		out, errOut, code := e.offline("validate", "--level", level)
		mustCLI(t, 0, out, errOut, code, "validate "+level)
	}
	e.legacy.Fail(500)
	out, errOut, code = e.offline("validate", "--level", "basic")
	mustCLI(t, 4, out, errOut, code, "validate with a failing URL")
	if !strings.Contains(out, "FAIL") {
		t.Errorf("validate failure not shown:\n%s", out)
	}
	e.legacy.Fail(0)
	os.WriteFile(filepath.Join(e.host, "config/settings.toml"), []byte("drift"), 0o644)
	out, errOut, code = e.offline("validate", "--level", "standard")
	mustCLI(t, 4, out, errOut, code, "validate standard with a drifted file")
	os.WriteFile(filepath.Join(e.host, "config/settings.toml"), []byte("a = 1\n"), 0o644)

	// verify: a corrupt object fails naming the path, and a rollback of
	// that point refuses before touching anything.
	corrupt(t, e.dir, "orchestrator v1\n")
	out, errOut, code = e.offline("point", "verify", full.ID)
	if code != 1 || !strings.Contains(out+errOut, "app/core/orch.py") || !strings.Contains(out+errOut, "corrupt") {
		t.Errorf("verify of a corrupt object: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	out, _, _ = e.offline("point", "list", "--json")
	for _, p := range decode[[]pointJSON](t, "list", out) {
		if p.ID == full.ID && (p.Verified || p.LastVerified == nil) {
			t.Errorf("point %s not marked as failed verification: %+v", p.ID, p)
		}
	}
	e.change()
	changed := e.tree()
	out, errOut, code = e.offline("point", "list", "--json")
	before := out
	_, errOut, code = e.offline("rollback", full.ID, "--trigger", "manual")
	if code != 1 || !strings.Contains(errOut, "app/core/orch.py") {
		t.Errorf("rollback of a corrupt point: exit %d, stderr %q", code, errOut)
	}
	if got := e.tree(); got != changed {
		t.Error("a refused rollback changed the tree")
	}
	if out, _, _ = e.offline("point", "list", "--json"); !samePointIDs(t, out, before) {
		t.Errorf("a refused rollback changed the catalog:\n%s\n--- before\n%s", out, before)
	}

	// cleanup: --dry-run removes nothing; the tagged point and the newest
	// full_system stay. The points are made 40 days old first.
	agePoints(t, e.dir, 40*24*time.Hour)
	out, errOut, code = e.offline("point", "list", "--json")
	all := decode[[]pointJSON](t, "list", out)
	out, errOut, code = e.offline("point", "cleanup", "--keep-count", "1", "--keep-days", "30", "--dry-run", "--json")
	mustCLI(t, 0, out, errOut, code, "cleanup --dry-run")
	rep := decode[struct {
		Removed []string `json:"removed"`
		Kept    []string `json:"kept"`
		DryRun  bool     `json:"dry_run"`
	}](t, "cleanup", out)
	if !rep.DryRun || len(rep.Removed) == 0 || len(rep.Removed)+len(rep.Kept) != len(all) {
		t.Errorf("cleanup --dry-run: %+v (of %d points)", rep, len(all))
	}
	if out, _, _ := e.offline("point", "list", "--json"); len(decode[[]pointJSON](t, "list", out)) != len(all) {
		t.Error("cleanup --dry-run removed points")
	}
	newestFull := ""
	for _, p := range all { // newest first
		if p.Type == "full_system" {
			newestFull = p.ID
			break
		}
	}
	for _, id := range rep.Removed {
		if id == full.ID || id == newestFull {
			t.Errorf("cleanup would remove %s (tagged or newest full_system)", id)
		}
	}
	out, errOut, code = e.offline("point", "cleanup", "--keep-count", "1", "--keep-days", "30", "--json")
	mustCLI(t, 0, out, errOut, code, "cleanup")
	out, _, _ = e.offline("point", "list", "--json")
	left := decode[[]pointJSON](t, "list", out)
	if len(left) != len(all)-len(rep.Removed) {
		t.Errorf("cleanup left %d points, want %d", len(left), len(all)-len(rep.Removed))
	}

	// emergency with the gateway down: the switch moves to legacy in the
	// store, the newest verified full_system point is restored, and each
	// phase's time is printed. A gateway started then serves legacy.
	os.WriteFile(objectPath(e.dir, "orchestrator v1\n"), []byte("orchestrator v1\n"), 0o440)
	out, errOut, code = e.offline("point", "verify", full.ID)
	mustCLI(t, 0, out, errOut, code, "verify after repair")
	e.change()
	out, errOut, code = e.offline("emergency", "--reason", "p99 over SLO")
	mustCLI(t, 0, out, errOut, code, "emergency offline")
	for _, s := range []string{"force_legacy", "select_point", "pre_checks", "swap", "validate", "total", "ms"} {
		if !strings.Contains(out, s) {
			t.Errorf("emergency output lacks %q:\n%s", s, out)
		}
	}
	if got := e.tree(); got != newTree {
		t.Errorf("emergency did not restore %s:\n%s", full.ID, got)
	}
	out, errOut, code = e.offline("traffic", "status", "--json")
	mustCLI(t, 0, out, errOut, code, "traffic status")
	if !strings.Contains(out, `"mode": "legacy"`) || !strings.Contains(out, "emergency: p99 over SLO") {
		t.Errorf("switch after an offline emergency:\n%s", out)
	}
	g := e.start()
	for i := 0; i < 20; i++ {
		body, resp := g.Get(t, "/", &http.Cookie{Name: "sb_user", Value: fmt.Sprint("u", i)})
		if body != "legacy" || resp.Header.Get("X-Switchback-Arm") != "legacy" {
			t.Fatalf("after the offline emergency the gateway served %q (arm %q)", body, resp.Header.Get("X-Switchback-Arm"))
		}
	}
	if s := g.Switch(t, "main"); s.Mode != "legacy" {
		t.Errorf("switch mode %s", s.Mode)
	}
}

// agePoints makes every point in dir's state store older by d, by
// rewriting its catalog record (the gateway must be stopped).
func agePoints(t testing.TB, dir string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	st, err := local.Open(filepath.Join(dir, "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	entries, err := st.List(ctx, state.NSPoints)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var rec map[string]any
		if err := json.Unmarshal(e.Value, &rec); err != nil {
			t.Fatal(err)
		}
		created, err := time.Parse(time.RFC3339Nano, rec["created"].(string))
		if err != nil {
			t.Fatal(err)
		}
		rec["created"] = created.Add(-d)
		b, _ := json.Marshal(rec)
		if _, err := st.Put(ctx, e.Key, b); err != nil {
			t.Fatal(err)
		}
	}
}

// samePointIDs compares two point lists by id.
func samePointIDs(t testing.TB, a, b string) bool {
	t.Helper()
	ids := func(s string) string {
		var out []string
		for _, p := range decode[[]pointJSON](t, "list", s) {
			out = append(out, p.ID)
		}
		return strings.Join(out, ",")
	}
	return ids(a) == ids(b)
}

func TestRollbackCLIGateway(t *testing.T) {
	e := newRBEnv(t)
	g := e.start()

	out, errOut, code := e.online("point", "create", "--type", "full_system", "--tag", "pre-migration", "--metadata", `{"phase":"pre"}`, "--json")
	mustCLI(t, 0, out, errOut, code, "point create")
	full := decode[pointJSON](t, "create", out)
	if !pointID.MatchString(full.ID) {
		t.Fatalf("id %q", full.ID)
	}
	if strings.Contains(errOut, "offline") {
		t.Errorf("worked offline with the gateway up: %q", errOut)
	}
	newTree := e.tree()
	_, errOut, code = e.online("point", "create", "--type", "full_system", "--metadata", "[]")
	mustCLI(t, 2, "", errOut, code, "create --metadata []")
	out, errOut, code = e.online("point", "list", "--json")
	mustCLI(t, 0, out, errOut, code, "point list")
	if pts := decode[[]pointJSON](t, "list", out); len(pts) != 1 || pts[0].ID != full.ID {
		t.Fatalf("list: %s", out)
	}
	out, errOut, code = e.online("point", "verify", full.ID)
	mustCLI(t, 0, out, errOut, code, "verify")

	// Rollback through the gateway.
	e.change()
	oldTree := e.tree()
	out, errOut, code = e.online("rollback", full.ID, "--trigger", "manual", "--dry-run", "--json")
	mustCLI(t, 0, out, errOut, code, "dry run")
	if e.tree() != oldTree {
		t.Fatal("dry run changed the tree")
	}
	out, errOut, code = e.online("rollback", full.ID, "--trigger", "manual", "--json")
	mustCLI(t, 0, out, errOut, code, "rollback")
	if got := e.tree(); got != newTree {
		t.Fatalf("rollback through the gateway:\n%s\n--- want\n%s", got, newTree)
	}

	// Two restores at once: the second exits 3 naming the host and op.
	e.change()
	slow := filepath.Join(e.dir, "slow")
	os.WriteFile(slow, nil, 0o644)
	os.Remove(filepath.Join(e.dir, "pre-started"))
	first := exec.Command(Binary(t), "rollback", full.ID, "--trigger", "first", "--address", g.Admin, "--json")
	first.Dir = e.dir
	var firstOut strings.Builder
	first.Stdout, first.Stderr = &firstOut, &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "the first restore's pre_restore hook", func() bool {
		_, err := os.Stat(filepath.Join(e.dir, "pre-started"))
		return err == nil
	})
	for _, off := range []bool{false, true} {
		var out, errOut string
		var code int
		if off {
			// Offline, on the same state store, while the gateway restores.
			out, errOut, code = RunCLI(t, e.dir, "rollback", full.ID, "--trigger", "second", "--address", "127.0.0.1:1", "--config", e.config)
		} else {
			out, errOut, code = e.online("rollback", full.ID, "--trigger", "second")
		}
		if code != 3 || !regexp.MustCompile(`restore in progress on \S+ \(op op-[0-9a-f-]+\)`).MatchString(errOut) {
			t.Errorf("second restore (offline %v): exit %d, want 3 and \"restore in progress on HOST (op ID)\"\nstdout: %s\nstderr: %s", off, code, out, errOut)
		}
	}
	os.Remove(slow)
	if err := first.Wait(); err != nil {
		t.Fatalf("first restore: %v\n%s", err, firstOut.String())
	}
	if got := e.tree(); got != newTree {
		t.Error("the first restore did not finish the tree")
	}

	// Admin API: points, verify, rollback, operations, bad input.
	var pts []pointJSON
	if code := g.AdminJSON(t, "GET", "/switchback/points?type=full_system", nil, &pts); code != 200 || len(pts) < 2 {
		t.Errorf("GET points: %d %+v", code, pts)
	}
	before := len(pts)
	var created pointJSON
	if code := g.AdminJSON(t, "POST", "/switchback/points", map[string]any{"type": "data", "metadata": map[string]string{"by": "api"}, "tags": []string{"api"}}, &created); code != 201 || created.Type != "data" {
		t.Errorf("POST points: %d %+v", code, created)
	}
	var rep struct {
		OK bool `json:"ok"`
	}
	if code := g.AdminJSON(t, "POST", "/switchback/points/"+created.ID+"/verify", nil, &rep); code != 200 || !rep.OK {
		t.Errorf("POST verify: %d %+v", code, rep)
	}
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		msg                string
	}{
		{"bad JSON", "POST", "/switchback/points", `{"type":`, 400, ""},
		{"unknown field", "POST", "/switchback/points", `{"type":"data","bogus":1}`, 400, "bogus"},
		{"unknown type", "POST", "/switchback/points", map[string]any{"type": "everything"}, 400, "unknown point type"},
		{"metadata not an object", "POST", "/switchback/points", map[string]any{"type": "data", "metadata": []int{1}}, 400, "metadata must be a JSON object"},
		{"unknown component", "POST", "/switchback/points", map[string]any{"type": "partial_component", "component": "nope"}, 404, "unknown component"},
		{"unknown point", "GET", "/switchback/points/rollback-20000101-000000", nil, 404, "not found"},
		{"verify unknown point", "POST", "/switchback/points/rollback-20000101-000000/verify", nil, 404, "not found"},
		{"rollback unknown point", "POST", "/switchback/points/rollback-20000101-000000/rollback", map[string]any{"trigger": "x"}, 404, "not found"},
		{"rollback bad body", "POST", "/switchback/points/" + full.ID + "/rollback", `[1]`, 400, ""},
		{"rollback outside", "POST", "/switchback/points/" + full.ID + "/rollback", map[string]any{"trigger": "x", "only": []string{"/etc/passwd"}}, 400, "not inside any path"},
		{"traversal id", "POST", "/switchback/points/..%2f..%2fetc/rollback", map[string]any{"trigger": "x"}, 404, ""},
		{"unknown operation", "GET", "/switchback/operations/op-nope", nil, 404, "not found"},
		{"bad limit", "GET", "/switchback/operations?limit=-3", nil, 400, "limit"},
		{"wrong method", "DELETE", "/switchback/points", nil, 405, ""},
		{"emergency bad body", "POST", "/switchback/emergency", `{"reason": 5}`, 400, ""},
	} {
		var got struct {
			Error string `json:"error"`
		}
		code := g.AdminJSON(t, c.method, c.path, c.body, &got)
		if code != c.status || got.Error == "" || !strings.Contains(got.Error, c.msg) {
			t.Errorf("%s: %s %s = %d %q, want %d with an error containing %q", c.name, c.method, c.path, code, got.Error, c.status, c.msg)
		}
	}
	if code := g.AdminJSON(t, "GET", "/switchback/points?type=full_system", nil, &pts); code != 200 || len(pts) != before {
		t.Errorf("bad requests changed the catalog: %d full_system points, had %d", len(pts), before)
	}
	if got := e.tree(); got != newTree {
		t.Error("bad requests changed the tree")
	}
	var ops []opJSON
	if code := g.AdminJSON(t, "GET", "/switchback/operations?limit=3", nil, &ops); code != 200 || len(ops) != 3 {
		t.Errorf("GET operations?limit=3: %d, %d records", code, len(ops))
	}
	var one opJSON
	if code := g.AdminJSON(t, "GET", "/switchback/operations/"+ops[0].ID, nil, &one); code != 200 || one.ID != ops[0].ID {
		t.Errorf("GET operations/%s: %d %+v", ops[0].ID, code, one)
	}
	out, errOut, code = e.online("ops", "report", ops[0].ID)
	mustCLI(t, 0, out, errOut, code, "ops report")
	if !strings.HasPrefix(out, "# INCIDENT REPORT") {
		t.Errorf("report:\n%s", out)
	}
	_, errOut, code = e.online("ops", "show", "op-nope")
	if code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("ops show op-nope: exit %d %q", code, errOut)
	}
	_, errOut, code = e.online("rollback", "rollback-20000101-000000", "--trigger", "x")
	if code != 1 || !strings.Contains(errOut, "rollback point rollback-20000101-000000 not found") {
		t.Errorf("rollback of an unknown id: exit %d %q", code, errOut)
	}

	// validate through the gateway.
	out, errOut, code = e.online("validate", "--level", "standard")
	mustCLI(t, 0, out, errOut, code, "validate standard")
	e.legacy.Fail(503)
	out, errOut, code = e.online("validate", "--level", "basic")
	mustCLI(t, 4, out, errOut, code, "validate, failing")
	e.legacy.Fail(0)

	// Emergency through the admin API: the switch moves to legacy at once.
	if s := g.Switch(t, "main"); s.Mode != "split" {
		t.Fatalf("switch starts in %s", s.Mode)
	}
	e.change()
	var em opJSON
	if code := g.AdminJSON(t, "POST", "/switchback/emergency", map[string]string{"reason": "error rate"}, &em); code != 200 || em.Status != "completed" {
		t.Fatalf("POST emergency: %d %+v", code, em)
	}
	if s := g.Switch(t, "main"); s.Mode != "legacy" {
		t.Errorf("after emergency the switch is %s", s.Mode)
	}
	for i := 0; i < 10; i++ {
		body, _ := g.Get(t, "/", &http.Cookie{Name: "sb_user", Value: fmt.Sprint("u", i)})
		if body != "legacy" {
			t.Fatalf("after emergency served %q", body)
		}
	}
	if e.tree() != newTree {
		t.Error("emergency did not restore the newest full_system point")
	}
	// And through the CLI, which prints the phases.
	out, errOut, code = e.online("emergency", "--reason", "again")
	mustCLI(t, 0, out, errOut, code, "emergency")
	if !strings.Contains(out, "force_legacy") || !strings.Contains(out, "through the gateway") || !strings.Contains(out, "total") {
		t.Errorf("emergency output:\n%s", out)
	}

	// A gateway that does not answer, without --config: an error that
	// suggests --config.
	_, errOut, code = RunCLI(t, e.dir, "point", "list", "--address", fmt.Sprintf("127.0.0.1:%d", FreePort(t)))
	if code != 1 || !strings.Contains(errOut, "does not answer") || !strings.Contains(errOut, "--config") {
		t.Errorf("unreachable gateway: exit %d %q", code, errOut)
	}
}
