package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
)

// FuzzSwitchChangeBody feeds arbitrary bodies to the mode, weight and reset
// routes' decoding: each is refused with an error or yields a change that
// leaves the switch valid. Nothing panics.
func FuzzSwitchChangeBody(f *testing.F) {
	for _, s := range []string{`{"mode":"legacy","reason":"x"}`, `{"weight":30}`, `{"weight":"abc"}`, `{"weight":1e3}`, `{`, `[]`, `{"mode":"split","weight":-0}`} {
		f.Add("mode", s)
		f.Add("weight", s)
		f.Add("reset", s)
	}
	f.Fuzz(func(t *testing.T, action, body string) {
		r := httptest.NewRequest(http.MethodPost, "/switchback/switches/main/change", strings.NewReader(body))
		var req changeRequest
		if err := decodeBody(r, &req); err != nil {
			return
		}
		fn, err := switchChange(action, req, "fuzz", "gw", time.Unix(0, 0))
		if err != nil {
			return
		}
		sw := state.Switch{Name: "main", Mode: state.ModeSplit, Weight: 20}
		fn(&sw)
		if _, err := state.ParseMode(string(sw.Mode)); err != nil {
			t.Fatalf("body %q made mode %q", body, sw.Mode)
		}
		if err := state.CheckWeight(sw.Weight); err != nil {
			t.Fatalf("body %q made weight %d", body, sw.Weight)
		}
	})
}
