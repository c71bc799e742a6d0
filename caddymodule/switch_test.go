package caddymodule

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

// testApp is an App on a local store in a temp dir, enough for the
// switch's change, persist and write-back paths.
func testApp(t *testing.T) *App {
	t.Helper()
	st, err := local.Open(filepath.Join(t.TempDir(), "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &App{store: st, logger: zap.NewNop(), rt: new(appRuntime), gateway: "gw-test", registry: map[string]*Switch{}}
}

func putSwitch(t *testing.T, st state.Store, rec state.Switch) {
	t.Helper()
	if _, err := state.UpdateSwitch(context.Background(), st, rec.Name, func(state.Switch, bool) (state.Switch, bool) { return rec, true }); err != nil {
		t.Fatal(err)
	}
}

// TestPersistRedecideIsNewer checks that a change re-decided on a record
// another writer stored after it supersedes that record: its Since is not
// left older, which would let a stale pending change win a later
// write-back.
func TestPersistRedecideIsNewer(t *testing.T) {
	a := testApp(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Add(-time.Minute)
	sw := newSwitch("main")
	sw.applyLocked(state.Switch{Name: "main", Mode: state.ModeSplit, Weight: 20, Since: t0}, false)

	// Another gateway set consolidated after our trip's time.
	tripAt := t0.Add(10 * time.Second)
	theirs := state.Switch{Name: "main", Mode: state.ModeConsolidated, Weight: 20, Since: t0.Add(20 * time.Second)}
	putSwitch(t, a.store, theirs)

	trip := func(cur *state.Switch) bool {
		if cur.Mode == state.ModeLegacy && cur.Tripped {
			return false
		}
		cur.Mode, cur.Tripped, cur.Since = state.ModeLegacy, true, tripAt
		return true
	}
	got, err := sw.change(ctx, a, trip)
	if err != nil {
		t.Fatal(err)
	}
	stored, _, err := state.GetSwitch(ctx, a.store, "main")
	if err != nil {
		t.Fatal(err)
	}
	if stored.Mode != state.ModeLegacy || !stored.Tripped {
		t.Fatalf("stored %s tripped=%v, want the trip re-decided on top", stored.Mode, stored.Tripped)
	}
	if !stored.Supersedes(theirs) {
		t.Errorf("stored since %s does not supersede theirs (%s): the re-decided change went back in time", stored.Since, theirs.Since)
	}
	rec, pending := sw.Record()
	if pending || !rec.Since.Equal(stored.Since) || !got.Since.Equal(stored.Since) {
		t.Errorf("in memory since %s pending=%v, returned %s; want the stored %s", rec.Since, pending, got.Since, stored.Since)
	}
}

// TestPersistCanceledIsNotDegraded checks that a write given up by its
// caller (a request gone, a config reload) leaves the change pending
// without calling the store degraded, and that the write-back takes it.
func TestPersistCanceledIsNotDegraded(t *testing.T) {
	a := testApp(t)
	a.store = ctxStore{a.store}
	sw := newSwitch("main")
	a.registry["main"] = sw
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := sw.change(ctx, a, func(cur *state.Switch) bool {
		cur.Mode, cur.Since = state.ModeLegacy, time.Now().UTC()
		return true
	})
	if err == nil {
		t.Fatal("change with a canceled context: no error")
	}
	if st := a.storeStatus(); st.Status != "ok" {
		t.Fatalf("store %s (%s) after a canceled write, want ok", st.Status, st.Error)
	}
	if rec, pending := sw.Record(); rec.Mode != state.ModeLegacy || !pending {
		t.Fatalf("after a canceled write: %s pending=%v, want legacy held pending", rec.Mode, pending)
	}
	if !a.writeBack(context.Background(), sw) {
		t.Fatal("writeBack failed")
	}
	if stored, _, err := state.GetSwitch(context.Background(), a.store, "main"); err != nil || stored.Mode != state.ModeLegacy {
		t.Fatalf("stored %v, %v; want legacy written back", stored.Mode, err)
	}
	if _, pending := sw.Record(); pending {
		t.Fatal("still pending after the write-back")
	}
}

// ctxStore answers a done context with its error, as the Consul store
// does; the local store does not look at the context.
type ctxStore struct{ state.Store }

func (s ctxStore) Get(ctx context.Context, key string) (state.Entry, error) {
	if err := ctx.Err(); err != nil {
		return state.Entry{}, err
	}
	return s.Store.Get(ctx, key)
}
