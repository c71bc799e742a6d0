package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// offlineTemplate is a gateway whose CLI works, with --config, on its store
// and backups while it is stopped.
const offlineTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
		points {
			full_system {DIR}/app
		}
	}
}
http://{HTTP} {
	switchback main {
		weight 20
		legacy {
			respond "legacy"
		}
		consolidated {
			respond "consolidated"
		}
	}
}
`

// jsonLogLines returns the lines of s that look like Caddy's JSON log
// lines.
func jsonLogLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "{") && strings.Contains(l, `"level"`) {
			out = append(out, l)
		}
	}
	return out
}

func TestOfflineCommandsPrintNoLogLines(t *testing.T) {
	g := prepareGateway(t, GatewayConfig{Template: offlineTemplate})
	if err := os.MkdirAll(filepath.Join(g.Dir, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g.Dir, "app", "config.yml"), []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A gateway run writes the switch to the store; the commands below run
	// with it stopped.
	g.start(Binary(t))
	g.Stop()
	cfg := []string{"--config", g.Caddyfile}
	commands := [][]string{
		{"point", "create", "--type", "full_system", "--tag", "quiet-test"},
		{"point", "list"},
		{"traffic", "legacy", "--reason", "quiet test"},
		{"traffic", "status"},
		{"ops", "list"},
		{"validate", "--level", "basic"},
	}
	for _, args := range commands {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			out, errOut, code := RunCLI(t, g.Dir, append(args, cfg...)...)
			if code != 0 {
				t.Fatalf("switchback %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
			}
			if lines := jsonLogLines(errOut + out); len(lines) > 0 {
				t.Errorf("switchback %v printed Caddy log lines:\n%s", args, strings.Join(lines, "\n"))
			}
			if strings.Contains(errOut, "using config from file") || strings.Contains(errOut, "adapted config to JSON") {
				t.Errorf("switchback %v stderr mentions loading the config: %s", args, errOut)
			}
		})
	}
	// With --verbose, Caddy's lines are back: the check above can fail.
	_, errOut, code := RunCLI(t, g.Dir, "traffic", "status", "--verbose", "--config", g.Caddyfile)
	if code != 0 || !strings.Contains(errOut, "adapted config to JSON") {
		t.Errorf("traffic status --verbose: exit %d, stderr %q, want Caddy's \"adapted config to JSON\"", code, errOut)
	}
}

func TestHelpListsOurCommandsFirst(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{nil, {"help"}, {"--help"}, {"-h"}} {
		out, errOut, code := RunCLI(t, dir, args...)
		if code != 0 {
			t.Fatalf("switchback %v: exit %d: %s", args, code, errOut)
		}
		ours := strings.Index(out, "switchback commands:")
		caddys := strings.Index(out, "Caddy commands")
		if ours < 0 || caddys < ours {
			t.Fatalf("switchback %v: want our commands, then Caddy's:\n%s", args, out)
		}
		section := out[ours:caddys]
		prev := -1
		for _, name := range []string{"traffic", "point", "rollback", "emergency", "ops", "validate-system", "state"} {
			i := strings.Index(section, "\n  "+name+" ")
			if i < 0 {
				t.Errorf("switchback %v: %s is not among our commands:\n%s", args, name, section)
				continue
			}
			if i < prev {
				t.Errorf("switchback %v: %s is out of order", args, name)
			}
			prev = i
			line := section[i+1:]
			line = line[:strings.IndexByte(line, '\n')]
			if len(strings.Fields(line)) < 3 {
				t.Errorf("switchback %v: %q has no one-line summary", args, line)
			}
		}
		for _, caddy := range []string{"\n  run ", "\n  adapt ", "\n  reload "} {
			if !strings.Contains(out[caddys:], caddy) {
				t.Errorf("switchback %v: Caddy's %q missing after ours", args, strings.TrimSpace(caddy))
			}
		}
		if strings.Contains(out, "$ caddy run") {
			t.Errorf("switchback %v shows Caddy's examples", args)
		}
	}
}

func TestPointCreateWithoutPointsBlock(t *testing.T) {
	g := prepareGateway(t, GatewayConfig{Template: strings.Replace(offlineTemplate, "\t\tpoints {\n\t\t\tfull_system {DIR}/app\n\t\t}\n", "", 1)})
	out, errOut, code := RunCLI(t, g.Dir, "point", "create", "--type", "full_system", "--config", g.Caddyfile)
	if code != 2 {
		t.Errorf("point create without a points block: exit %d, want 2 (usage)\nstdout: %s", code, out)
	}
	for _, want := range []string{"no paths are configured for point type full_system", "no points block", "points {", "full_system /", "reload"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if lines := jsonLogLines(errOut); len(lines) > 0 {
		t.Errorf("log lines:\n%s", strings.Join(lines, "\n"))
	}
}
