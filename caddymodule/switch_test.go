package caddymodule

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync/atomic"
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

// TestWriteBackKeepsNewerLocalChange checks that a write-back finishing
// after a newer local change (a trip while the write was in flight) does
// not replace that change in memory.
func TestWriteBackKeepsNewerLocalChange(t *testing.T) {
	a := testApp(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Add(-time.Minute)
	sw := newSwitch("main")
	sw.applyLocked(state.Switch{Name: "main", Mode: state.ModeSplit, Weight: 30, Since: t0}, true)

	// The store's switch is empty; the write-back writes our pending
	// record. Simulate a trip landing in memory before it returns by
	// tripping from inside the store's write path.
	a.store = &hookStore{Store: a.store, beforeCAS: func() {
		sw.changeLocal(func(cur *state.Switch) bool {
			cur.Mode, cur.Tripped, cur.Since = state.ModeLegacy, true, t0.Add(time.Second)
			return true
		})
	}}
	if !a.writeBack(ctx, sw) {
		t.Fatal("writeBack failed")
	}
	rec, pending := sw.Record()
	if rec.Mode != state.ModeLegacy || !pending {
		t.Fatalf("after write-back: %s pending=%v, want the newer trip kept, pending its own write", rec.Mode, pending)
	}
	if sw.view.Load().mode != state.ModeLegacy {
		t.Fatalf("requests see %s, want legacy", sw.view.Load().mode)
	}
}

// hookStore runs beforeCAS once, before the first CAS.
type hookStore struct {
	state.Store
	beforeCAS func()
}

func (h *hookStore) CAS(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	if f := h.beforeCAS; f != nil {
		h.beforeCAS = nil
		f()
	}
	return h.Store.CAS(ctx, key, value, version)
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

// watchStore is a store whose Watch is a function, for the sync loop.
type watchStore struct {
	state.Store
	watch func(ctx context.Context, index uint64) ([]state.Entry, uint64, error)
}

func (w watchStore) Watch(ctx context.Context, ns string, index uint64) ([]state.Entry, uint64, error) {
	return w.watch(ctx, index)
}

// TestSyncLoopPace checks the sync loop's pace: a change that follows
// another at once is applied at once, and a watch that keeps returning at
// once does not become a hot loop.
func TestSyncLoopPace(t *testing.T) {
	record := func(t *testing.T, mode state.Mode, since time.Time) []state.Entry {
		b, err := json.Marshal(state.Switch{Name: "main", Mode: mode, Since: since})
		if err != nil {
			t.Fatal(err)
		}
		return []state.Entry{{Key: "switches/main", Value: b, Version: 1}}
	}
	t.Run("back-to-back changes", func(t *testing.T) {
		a := testApp(t)
		sw := newSwitch("main")
		a.registry["main"] = sw
		t0 := time.Now().UTC()
		var calls atomic.Int64
		a.store = watchStore{Store: a.store, watch: func(ctx context.Context, index uint64) ([]state.Entry, uint64, error) {
			n := calls.Add(1)
			switch n {
			case 1:
				return record(t, state.ModeSplit, t0), 1, nil
			case 2, 3, 4:
				// A change each time the loop asks: each returns at once.
				return record(t, []state.Mode{state.ModeLegacy, state.ModeSplit, state.ModeLegacy}[n-2], t0.Add(time.Duration(n)*time.Second)), uint64(n), nil
			}
			<-ctx.Done()
			return nil, index, ctx.Err()
		}}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		start := time.Now()
		go a.syncLoop(ctx)
		for {
			if rec, _ := sw.Record(); rec.Since.Equal(t0.Add(4 * time.Second)) {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("the changes were not applied in 5s")
			}
			time.Sleep(time.Millisecond)
		}
		if took := time.Since(start); took > 40*time.Millisecond {
			t.Errorf("three back-to-back changes took %s to apply, want no pause between them", took)
		}
	})
	t.Run("no hot loop", func(t *testing.T) {
		for _, progress := range []bool{true, false} {
			a := testApp(t)
			a.registry["main"] = newSwitch("main")
			var calls atomic.Int64
			a.store = watchStore{Store: a.store, watch: func(ctx context.Context, index uint64) ([]state.Entry, uint64, error) {
				n := uint64(calls.Add(1))
				if !progress && index != 0 {
					n = index
				}
				return nil, n, nil
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			a.syncLoop(ctx)
			cancel()
			// At most one round per fastPause (5ms) with progress, fewer
			// without: 40 in 200ms, and a margin.
			if n := calls.Load(); n > 50 {
				t.Errorf("progress=%v: %d watches in 200ms: a hot loop", progress, n)
			}
		}
	})
}
