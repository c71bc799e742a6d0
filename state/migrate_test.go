package state_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
	"github.com/leanvibe/switchback/state/consul/consultest"
	"github.com/leanvibe/switchback/state/local"
)

func openLocal(t *testing.T, name string) *local.Store {
	t.Helper()
	s, err := local.Open(filepath.Join(t.TempDir(), name+".db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func switchJSON(t *testing.T, mode state.Mode, weight int, since time.Time) string {
	t.Helper()
	b, err := json.Marshal(state.Switch{Name: "main", Mode: mode, Weight: state.WeightPercent(weight), Since: since})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func put(t *testing.T, s state.Store, kv map[string]string) {
	t.Helper()
	for k, v := range kv {
		if _, err := s.Put(context.Background(), k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
}

func dump(t *testing.T, s state.Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ns := range state.MigrateNamespaces {
		entries, err := s.List(context.Background(), ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out[e.Key] = string(e.Value)
		}
	}
	return out
}

func TestMigrate(t *testing.T) {
	older := switchJSON(t, state.ModeSplit, 30, t0)
	newer := switchJSON(t, state.ModeConsolidated, 100, t0.Add(time.Minute))
	tieLegacy := switchJSON(t, state.ModeLegacy, 0, t0)
	tests := []struct {
		name      string
		from, to  map[string]string
		want      map[string]string // the destination afterwards
		counts    state.MigrateCounts
		conflicts []string
	}{
		{
			name:   "into an empty store",
			from:   map[string]string{"switches/main": older, "points/p1": `{"id":"p1"}`, "operations/op1": `{"id":"op1"}`},
			to:     nil,
			want:   map[string]string{"switches/main": older, "points/p1": `{"id":"p1"}`, "operations/op1": `{"id":"op1"}`},
			counts: state.MigrateCounts{Copied: 3},
		},
		{
			name:   "equal entries are skipped, equal JSON too",
			from:   map[string]string{"points/p1": `{"id":"p1","size":1}`},
			to:     map[string]string{"points/p1": `{ "size": 1, "id": "p1" }`},
			want:   map[string]string{"points/p1": `{ "size": 1, "id": "p1" }`},
			counts: state.MigrateCounts{Unchanged: 1},
		},
		{
			name:   "a newer source switch replaces the destination's",
			from:   map[string]string{"switches/main": newer},
			to:     map[string]string{"switches/main": older},
			want:   map[string]string{"switches/main": newer},
			counts: state.MigrateCounts{Copied: 1},
		},
		{
			name:      "a newer destination switch is kept",
			from:      map[string]string{"switches/main": older},
			to:        map[string]string{"switches/main": newer},
			want:      map[string]string{"switches/main": newer},
			counts:    state.MigrateCounts{Kept: 1},
			conflicts: []string{"switches/main"},
		},
		{
			name:   "on a tie legacy wins",
			from:   map[string]string{"switches/main": tieLegacy},
			to:     map[string]string{"switches/main": older},
			want:   map[string]string{"switches/main": tieLegacy},
			counts: state.MigrateCounts{Copied: 1},
		},
		{
			name:      "a differing point or operation keeps the destination's",
			from:      map[string]string{"points/p1": `{"id":"p1","size":1}`, "operations/op1": `{"status":"failed"}`},
			to:        map[string]string{"points/p1": `{"id":"p1","size":2}`, "operations/op1": `{"status":"done"}`},
			want:      map[string]string{"points/p1": `{"id":"p1","size":2}`, "operations/op1": `{"status":"done"}`},
			counts:    state.MigrateCounts{Kept: 2},
			conflicts: []string{"points/p1", "operations/op1"},
		},
		{
			name:   "the cookie secret is copied",
			from:   map[string]string{"secrets/cookie": "0123abcd"},
			want:   map[string]string{"secrets/cookie": "0123abcd"},
			counts: state.MigrateCounts{Copied: 1},
		},
		{
			name:      "a fleet's differing secret is kept",
			from:      map[string]string{"secrets/cookie": "0123abcd"},
			to:        map[string]string{"secrets/cookie": "ffffeeee"},
			want:      map[string]string{"secrets/cookie": "ffffeeee"},
			counts:    state.MigrateCounts{Kept: 1},
			conflicts: []string{"secrets/cookie"},
		},
		{
			name:   "destination-only entries stay",
			from:   map[string]string{"points/p1": `{"id":"p1"}`},
			to:     map[string]string{"points/p2": `{"id":"p2"}`},
			want:   map[string]string{"points/p1": `{"id":"p1"}`, "points/p2": `{"id":"p2"}`},
			counts: state.MigrateCounts{Copied: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			from, to := openLocal(t, "from"), openLocal(t, "to")
			put(t, from, tt.from)
			put(t, to, tt.to)

			dry, err := state.Migrate(ctx, from, to, state.MigrateOptions{DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := dump(t, to); !reflect.DeepEqual(got, nonNil(tt.to)) {
				t.Fatalf("dry run changed the destination: %v", got)
			}

			r, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Total(); got != tt.counts {
				t.Errorf("counts = %+v, want %+v", got, tt.counts)
			}
			if dry.Total() != r.Total() {
				t.Errorf("dry run counted %+v, the run %+v", dry.Total(), r.Total())
			}
			var conflicts []string
			for _, c := range r.Conflicts {
				conflicts = append(conflicts, c.Key)
				if c.Reason == "" {
					t.Errorf("conflict %s has no reason", c.Key)
				}
			}
			if !reflect.DeepEqual(conflicts, tt.conflicts) {
				t.Errorf("conflicts = %v, want %v", conflicts, tt.conflicts)
			}
			if got := dump(t, to); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("destination = %v, want %v", got, tt.want)
			}

			// A second run changes nothing and copies nothing.
			again, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if again.Total().Copied != 0 {
				t.Errorf("re-run copied %d entries, want 0", again.Total().Copied)
			}
			if got := dump(t, to); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("destination after a re-run = %v, want %v", got, tt.want)
			}
		})
	}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func TestMigrateSkipsBadSwitch(t *testing.T) {
	ctx := context.Background()
	from, to := openLocal(t, "from"), openLocal(t, "to")
	put(t, from, map[string]string{"switches/bad": `{"mode":"sideways"}`, "points/p1": `{"id":"p1"}`})
	r, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), "switches/bad") {
		t.Fatalf("err = %v, want one naming switches/bad", err)
	}
	if r.Total().Copied != 1 {
		t.Fatalf("copied %d, want the point copied despite the bad switch", r.Total().Copied)
	}
	if _, err := to.Get(ctx, "switches/bad"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("bad switch was copied: %v", err)
	}
}

func TestMigrateLocalToConsul(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	from := openLocal(t, "from")
	to, err := consul.Open(consul.Config{Address: agent.Addr, Prefix: "migrated"}, consul.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()

	src := map[string]string{
		"switches/main":  switchJSON(t, state.ModeLegacy, 0, t0),
		"switches/api":   switchJSON(t, state.ModeSplit, 25, t0),
		"points/p1":      `{"id":"p1","type":"full_system"}`,
		"points/p2":      `{"id":"p2","type":"data","metadata":"` + strings.Repeat("m", 300<<10) + `"}`,
		"operations/op1": `{"id":"op1","kind":"restore","status":"done"}`,
		"secrets/cookie": "8a1f2c3d4e5f60718293a4b5c6d7e8f9",
	}
	put(t, from, src)
	l, err := from.Lock(ctx, state.RestoreLock, []byte("someone"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()

	r, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Total(); got.Copied != len(src) {
		t.Fatalf("copied %+v, want %d", got, len(src))
	}
	if got := dump(t, to); !reflect.DeepEqual(got, src) {
		t.Fatalf("consul holds %d entries that differ from the source", len(got))
	}
	if locks, err := to.List(ctx, state.NSLocks); err != nil || len(locks) != 0 {
		t.Fatalf("locks in consul = %v, %v; locks must not be migrated", locks, err)
	}
	again, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Total(); got.Unchanged != len(src) {
		t.Fatalf("re-run: %+v, want all %d unchanged", got, len(src))
	}
}

// racingStore writes a newer switch just before Migrate's first CAS, as a
// gateway using the destination might.
type racingStore struct {
	state.Store
	newer []byte
	raced bool
}

func (s *racingStore) CAS(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	if !s.raced {
		s.raced = true
		if _, err := s.Store.Put(ctx, key, s.newer); err != nil {
			return 0, err
		}
	}
	return s.Store.CAS(ctx, key, value, version)
}

func TestMigrateLosesRace(t *testing.T) {
	ctx := context.Background()
	from := openLocal(t, "from")
	older := switchJSON(t, state.ModeSplit, 30, t0)
	newer := switchJSON(t, state.ModeLegacy, 0, t0.Add(time.Hour))
	put(t, from, map[string]string{"switches/main": older})
	to := &racingStore{Store: openLocal(t, "to"), newer: []byte(newer)}
	r, err := state.Migrate(ctx, from, to, state.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Total(); got.Kept != 1 || got.Copied != 0 {
		t.Fatalf("counts = %+v, want the racing newer switch kept", got)
	}
	if got := dump(t, to)["switches/main"]; got != newer {
		t.Fatalf("destination switch = %s, want the newer one written during the migration", got)
	}
	if s := r.String(); !strings.Contains(s, "switches: 0 copied, 0 unchanged, 1 kept") || !strings.Contains(s, "kept switches/main: destination is newer") {
		t.Fatalf("report:\n%s", s)
	}
}
