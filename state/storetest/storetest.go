// Package storetest is the conformance suite every state.Store backend
// passes. Backends call Run from their own tests with a function that opens
// a fresh, empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
)

// Run runs the suite. open must return a new, empty store each call; two
// calls within one subtest must return stores that share data (as two
// processes on one file, or two gateways on one Consul, would).
func Run(t *testing.T, open func(t *testing.T) (a, b state.Store)) {
	t.Helper()
	ctx := context.Background()

	t.Run("get missing", func(t *testing.T) {
		a, _ := open(t)
		if _, err := a.Get(ctx, "switches/none"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("stats", func(t *testing.T) {
		a, _ := open(t)
		if err := a.PublishStats(ctx, "main", "gw-a", []byte(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		if err := a.PublishStats(ctx, "main", "gw-b", []byte(`{"n":2}`)); err != nil {
			t.Fatal(err)
		}
		if err := a.PublishStats(ctx, "main", "gw-a", []byte(`{"n":3}`)); err != nil {
			t.Fatal(err)
		}
		if err := a.PublishStats(ctx, "other", "gw-a", []byte(`{"n":4}`)); err != nil {
			t.Fatal(err)
		}
		got, err := a.ListStats(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || string(got["gw-a"]) != `{"n":3}` || string(got["gw-b"]) != `{"n":2}` {
			t.Fatalf("ListStats(main) = %q, want gw-a {n:3} and gw-b {n:2}", got)
		}
		if got, _ := a.ListStats(ctx, "none"); len(got) != 0 {
			t.Fatalf("ListStats(none) = %q, want empty", got)
		}
		for _, bad := range [][2]string{{"../x", "gw"}, {"main", "a/b"}, {"main", ""}} {
			if err := a.PublishStats(ctx, bad[0], bad[1], []byte("{}")); err == nil {
				t.Errorf("PublishStats(%q, %q) accepted", bad[0], bad[1])
			}
		}
		if err := a.PublishStats(ctx, "main", "gw-c", make([]byte, state.MaxValueSize+1)); err == nil {
			t.Error("PublishStats accepted a value over MaxValueSize")
		}
	})

	t.Run("put get list delete", func(t *testing.T) {
		a, b := open(t)
		v1, err := a.Put(ctx, "points/p1", []byte(`{"id":"p1"}`))
		if err != nil {
			t.Fatal(err)
		}
		if v1 == 0 {
			t.Fatal("Put returned version 0")
		}
		if _, err := a.Put(ctx, "points/p2", []byte(`{"id":"p2"}`)); err != nil {
			t.Fatal(err)
		}
		e, err := b.Get(ctx, "points/p1")
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Value) != `{"id":"p1"}` || e.Version != v1 || e.Key != "points/p1" {
			t.Fatalf("Get = %+v, want value p1 at version %d", e, v1)
		}
		list, err := b.List(ctx, state.NSPoints)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].Key != "points/p1" || list[1].Key != "points/p2" {
			t.Fatalf("List = %+v, want p1, p2", list)
		}
		if other, _ := b.List(ctx, state.NSOperations); len(other) != 0 {
			t.Fatalf("List(operations) = %+v, want empty", other)
		}
		if err := a.Delete(ctx, "points/p1"); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx, "points/p1"); err != nil {
			t.Fatalf("second Delete: %v", err)
		}
		if _, err := b.Get(ctx, "points/p1"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("Get after Delete: err = %v", err)
		}
	})

	t.Run("cas", func(t *testing.T) {
		a, b := open(t)
		v1, err := a.CAS(ctx, "switches/main", []byte("1"), 0)
		if err != nil {
			t.Fatalf("CAS create: %v", err)
		}
		if _, err := b.CAS(ctx, "switches/main", []byte("x"), 0); !errors.Is(err, state.ErrConflict) {
			t.Fatalf("CAS create over existing: err = %v, want ErrConflict", err)
		}
		v2, err := b.CAS(ctx, "switches/main", []byte("2"), v1)
		if err != nil {
			t.Fatalf("CAS at current version: %v", err)
		}
		if v2 <= v1 {
			t.Fatalf("version went from %d to %d", v1, v2)
		}
		if _, err := a.CAS(ctx, "switches/main", []byte("3"), v1); !errors.Is(err, state.ErrConflict) {
			t.Fatalf("CAS at stale version: err = %v, want ErrConflict", err)
		}
		e, _ := a.Get(ctx, "switches/main")
		if string(e.Value) != "2" {
			t.Fatalf("value = %q, want 2", e.Value)
		}
	})

	t.Run("concurrent update switch", func(t *testing.T) {
		a, b := open(t)
		var wg sync.WaitGroup
		const n = 10
		for i := 0; i < n; i++ {
			st := a
			if i%2 == 1 {
				st = b
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := state.UpdateSwitch(ctx, st, "main", func(cur state.Switch, _ bool) (state.Switch, bool) {
					cur.Mode = state.ModeSplit
					cur.Weight++
					return cur, true
				})
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		sw, _, err := state.GetSwitch(ctx, a, "main")
		if err != nil {
			t.Fatal(err)
		}
		if sw.Weight != n {
			t.Fatalf("weight = %d after %d CAS increments; an update was lost", sw.Weight, n)
		}
	})

	t.Run("bad keys", func(t *testing.T) {
		a, _ := open(t)
		for _, key := range []string{"", "switches", "switches/", "nope/x", "switches/../x", "switches/a/b", "points/.hidden"} {
			if _, err := a.Put(ctx, key, []byte("x")); err == nil {
				t.Errorf("Put(%q) succeeded, want an error", key)
			}
		}
		if _, err := a.Put(ctx, "points/big", make([]byte, state.MaxValueSize+1)); err == nil {
			t.Error("Put of a value over MaxValueSize succeeded")
		}
	})

	t.Run("watch", func(t *testing.T) {
		a, b := open(t)
		if _, err := a.Put(ctx, "switches/one", []byte("1")); err != nil {
			t.Fatal(err)
		}
		entries, idx, err := b.Watch(ctx, state.NSSwitches, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || idx == 0 {
			t.Fatalf("Watch(0) = %d entries, index %d", len(entries), idx)
		}
		got := make(chan error, 1)
		start := time.Now()
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			entries, idx2, err := b.Watch(wctx, state.NSSwitches, idx)
			if err == nil && (idx2 <= idx || len(entries) != 2) {
				err = fmt.Errorf("Watch woke with index %d (was %d) and %d entries", idx2, idx, len(entries))
			}
			got <- err
		}()
		time.Sleep(300 * time.Millisecond)
		if _, err := a.Put(ctx, "switches/two", []byte("2")); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Fatalf("Watch returned after %s, before the write", d)
		}

		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, idx3, _ := b.Watch(ctx, state.NSSwitches, 0)
		if _, _, err := b.Watch(wctx, state.NSSwitches, idx3); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Watch with no change: err = %v, want deadline exceeded", err)
		}
	})

	t.Run("lock", func(t *testing.T) {
		a, b := open(t)
		l, err := a.Lock(ctx, state.RestoreLock, []byte(`{"host":"h1","op":"op-1"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.Lock(ctx, state.RestoreLock, []byte(`{"host":"h2","op":"op-2"}`))
		var held *state.LockHeldError
		if !errors.As(err, &held) || !errors.Is(err, state.ErrLockHeld) {
			t.Fatalf("second Lock: err = %v, want *LockHeldError", err)
		}
		if string(held.Holder) != `{"host":"h1","op":"op-1"}` {
			t.Fatalf("holder = %q", held.Holder)
		}
		select {
		case <-l.Lost():
			t.Fatal("lock reported lost while held")
		default:
		}
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
		var l2 state.Lock
		deadline := time.Now().Add(20 * time.Second) // Consul's lock-delay may hold it briefly
		for {
			l2, err = b.Lock(ctx, state.RestoreLock, []byte(`{"host":"h2","op":"op-2"}`))
			if err == nil || !errors.Is(err, state.ErrLockHeld) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("Lock after Unlock: %v", err)
		}
		l2.Unlock()
	})
}
