package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
)

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

// casFailStore fails every CAS with err.
type casFailStore struct {
	state.Store
	err error
}

func (s casFailStore) CAS(context.Context, string, []byte, uint64) (uint64, error) { return 0, s.err }

// TestCookieSecretStoreLostBeforeWrite checks that a store lost between
// reading the cookie secret (none yet) and writing a new one gives this
// process a key of its own, as a store down from the start does, rather
// than failing the config with "not found".
func TestCookieSecretStoreLostBeforeWrite(t *testing.T) {
	a := testApp(t)
	a.store = casFailStore{Store: a.store, err: fmt.Errorf("consul cas: %w: connection refused", state.ErrUnavailable)}
	secret, err := a.cookieSecret(context.Background())
	if err != nil {
		t.Fatalf("cookieSecret: %v, want a key for this process", err)
	}
	if len(secret) < 16 {
		t.Fatalf("secret of %d bytes", len(secret))
	}
}
