package caddymodule

import (
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/leanvibe/switchback/state"
)

// TestShadowRolloutHooks: shadow's counts reach the rollout's stats by
// step, starting over at a new step, and max_mismatch becomes a step gate
// that reads the fleet's evidence.
func TestShadowRolloutHooks(t *testing.T) {
	legacy := &jsonArm{price: func(string) int { return 1 }}
	cons := &jsonArm{price: func(p string) int {
		if p == "/items/0" {
			return 2
		}
		return 1
	}}
	maxMismatch := 0.01
	h := withShadow(t, testHandler(t, state.ModeLegacy, 0, legacy, cons), &Shadow{Sample: 1, Noise: new(float64), MaxMismatch: &maxMismatch})
	h.Rollout = &Rollout{Steps: []state.Weight{100, 500}, MinRequests: 4}
	h.publishShadowCounts()
	fn := h.sw.shadowCounts.Load()
	if fn == nil {
		t.Fatal("no shadow counts registered")
	}
	if s := (*fn)("run1/0"); s.Compared != 0 {
		t.Fatalf("a new step starts at %+v", s)
	}
	for i := 0; i < 4; i++ {
		h.ServeHTTP(httptest.NewRecorder(), shadowRequest("GET", fmt.Sprintf("/items/%d", i), ""), nil)
	}
	waitFor(t, "4 pairs", func() bool { return (*fn)("run1/0").Compared == 4 })
	s := (*fn)("run1/0")
	if s.Mismatched != 1 || s.Routes["GET /items/:id"] != [2]uint64{4, 1} {
		t.Errorf("step counts %+v", s)
	}
	if s := (*fn)("run1/1"); s.Compared != 0 {
		t.Errorf("the next step starts at %+v", s)
	}

	h.addShadowGate()
	if len(h.stepGates) != 1 {
		t.Fatalf("%d step gates", len(h.stepGates))
	}
	gate := h.stepGates[0]
	ev := &state.Evidence{Shadow: &state.ShadowEvidence{Compared: 4, Mismatched: 1, WorstRoute: "GET /items/:id"}}
	if w := gate(ev); w != "waiting: mismatch 25% > 1% on GET /items/:id" {
		t.Errorf("gate says %q", w)
	}
	if w := gate(&state.Evidence{}); w != "waiting: 0/4 shadow pairs compared" {
		t.Errorf("gate without shadow evidence says %q", w)
	}
	if w := gate(&state.Evidence{Shadow: &state.ShadowEvidence{Compared: 400, Mismatched: 4}}); w != "" {
		t.Errorf("gate at 1%% says %q", w)
	}

	// Without a shadow block, no counts and no gate.
	h2 := testHandler(t, state.ModeLegacy, 0, legacy, cons)
	h2.sw = h.sw
	h2.publishShadowCounts()
	h2.addShadowGate()
	if h.sw.shadowCounts.Load() != nil || len(h2.stepGates) != 0 {
		t.Error("a config without shadow left shadow's hooks in place")
	}
}
