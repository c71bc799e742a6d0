package caddymodule

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/leanvibe/switchback/state"
)

// TestRolloutHoldUnderClockSkew: a step entered by a gateway whose clock
// runs two minutes behind is stamped two minutes in the past; another
// gateway must still hold it a whole hold from when it saw it (it advanced
// at once before). The gateway that entered a step trusts its own stamp,
// so a restart does not restart the hold.
func TestRolloutHoldUnderClockSkew(t *testing.T) {
	ctx := context.Background()
	cfg := &Rollout{Steps: []state.Weight{100, 5000, 10000}, Hold: caddy.Duration(time.Minute), MinRequests: -1}
	for _, tc := range []struct {
		writer string
		want   string // waiting at first sight
	}{
		{"gw-slow", "waiting: hold 1m0s"},
		{"gw-a", ""}, // its own stamp: the hold has passed
	} {
		t.Run(tc.writer, func(t *testing.T) {
			a := rolloutGateway(t, filepath.Join(t.TempDir(), "state.db"), "gw-a", cfg)
			stamp := time.Now().UTC().Add(-2 * time.Minute).Round(0)
			rec := state.Switch{Name: "main", Mode: state.ModeSplit, Since: stamp}
			rec.Rollout = cfg.plan()
			if _, err := rolloutControl(&rec, rolloutRequest{Action: "start"}, cfg.plan(), "test", tc.writer, stamp); err != nil {
				t.Fatal(err)
			}
			putSwitch(t, a.app.store, rec)
			follow(t, a)
			var clock stateClock
			mono := int64(1e12)
			a.evaluateRollout(ctx, &clock, time.Now(), mono)
			got := follow(t, a)
			waiting := ""
			if v := a.sw.rollout.Load(); v != nil {
				waiting = v.waiting
			}
			if tc.want != "" {
				if got.Rollout.Step != 0 || waiting != tc.want {
					t.Fatalf("step stamped by %s 2m ago: step %d, waiting %q; want step 0 and %q", tc.writer, got.Rollout.Step, waiting, tc.want)
				}
				// A wall clock stepped an hour ahead does not end the hold...
				a.evaluateRollout(ctx, &clock, time.Now().Add(time.Hour), mono+int64(30*time.Second))
				if got := follow(t, a); got.Rollout.Step != 0 {
					t.Fatal("a step of the wall clock ended the hold")
				}
				// ...the monotonic clock does.
				a.evaluateRollout(ctx, &clock, time.Now(), mono+int64(61*time.Second))
				got = follow(t, a)
			}
			if got.Rollout.Step != 1 {
				t.Fatalf("step stamped by %s: still at step %d after its hold", tc.writer, got.Rollout.Step)
			}
		})
	}
}
