package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// TestXcaddyRecipe checks that xcaddy.json pins the Caddy version go.mod
// requires and names this module as a local replacement, and that the
// README shows its command.
func TestXcaddyRecipe(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mod, err := modfile.Parse("go.mod", raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	var caddyVersion string
	for _, r := range mod.Require {
		if r.Mod.Path == "github.com/caddyserver/caddy/v2" {
			caddyVersion = r.Mod.Version
		}
	}
	var recipe struct {
		CaddyVersion string `json:"caddy_version"`
		Plugins      []struct {
			Module  string `json:"module"`
			Replace string `json:"replace"`
		} `json:"plugins"`
		Command string `json:"command"`
	}
	b, err := os.ReadFile(filepath.Join(root, "xcaddy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &recipe); err != nil {
		t.Fatalf("xcaddy.json: %v", err)
	}
	if recipe.CaddyVersion != caddyVersion {
		t.Errorf("xcaddy.json pins Caddy %s, go.mod requires %s", recipe.CaddyVersion, caddyVersion)
	}
	if len(recipe.Plugins) != 1 || recipe.Plugins[0].Module != mod.Module.Mod.Path || recipe.Plugins[0].Replace != "." {
		t.Errorf("xcaddy.json plugins = %+v, want %s replaced by .", recipe.Plugins, mod.Module.Mod.Path)
	}
	want := "xcaddy build " + caddyVersion
	if !strings.HasPrefix(recipe.Command, want) || !strings.Contains(recipe.Command, "--with "+mod.Module.Mod.Path+"=.") {
		t.Errorf("xcaddy.json command %q does not build Caddy %s with this module", recipe.Command, caddyVersion)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), recipe.Command) {
		t.Errorf("README.md does not show the xcaddy command %q", recipe.Command)
	}
}
