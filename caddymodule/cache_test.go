package caddymodule

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/leanvibe/switchback/state"
)

// TestSwitchCache: the cache writes what the snapshot says when touched
// and once more at the end, reads it back with its pending flag, and
// treats a corrupt record or a file that is not bbolt as no cache, with a
// warning.
func TestSwitchCache(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	path := filepath.Join(t.TempDir(), "switch-cache.db")
	c, err := openSwitchCache(path, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer c.st.Close()
	rec := state.Switch{Name: "main", Mode: state.ModeLegacy, Weight: 30, Tripped: true, Since: time.Now().UTC().Round(0)}
	snap := map[string]cachedSwitch{}
	snapshot := func() map[string]cachedSwitch { return snap }
	ctx, cancel := context.WithCancel(context.Background())
	go c.run(ctx, snapshot)

	b, _ := json.Marshal(rec)
	snap = map[string]cachedSwitch{"main": {Record: b, Pending: true}}
	c.touch()
	eventually(t, "the cached record", func() bool {
		got, pending, ok := c.load(context.Background(), "main")
		return ok && pending && got.Mode == state.ModeLegacy && got.Weight == 30 && got.Since.Equal(rec.Since)
	})
	// The last write happens when the loop ends, even without a touch.
	rec.Mode, rec.Weight, rec.Tripped = state.ModeSplit, 40, false
	b, _ = json.Marshal(rec)
	snap = map[string]cachedSwitch{"main": {Record: b}}
	cancel()
	c.wait(5 * time.Second)
	if got, pending, ok := c.load(context.Background(), "main"); !ok || pending || got.Mode != state.ModeSplit || got.Weight != 40 {
		t.Fatalf("after the final write: %+v pending=%v ok=%v", got, pending, ok)
	}
	if _, _, ok := c.load(context.Background(), "other"); ok {
		t.Error("a switch never cached was found")
	}

	// A record that does not decode is ignored, with a warning.
	if _, err := c.st.Put(context.Background(), state.Key(state.NSSwitches, "main"), []byte(`{"record":{"mode":"sideways"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.load(context.Background(), "main"); ok {
		t.Error("a corrupt record was used")
	}
	if n := logs.FilterMessage("switch cache record corrupt; ignoring it").Len(); n != 1 {
		t.Errorf("%d warnings about the corrupt record, want 1", n)
	}

	// A file that is not bbolt cannot be opened, and is left as it was.
	bad := filepath.Join(t.TempDir(), "not-bolt.db")
	os.WriteFile(bad, []byte("not a database"), 0o600)
	if _, err := openSwitchCache(bad, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "switch cache") {
		t.Errorf("opening a non-bbolt cache: %v", err)
	}
	if b, _ := os.ReadFile(bad); string(b) != "not a database" {
		t.Errorf("the bad file was changed: %q", b)
	}
}
