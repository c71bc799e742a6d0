package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

var testOverrideKey = []byte("0123456789abcdef0123456789abcdef")

// overrideHandler is a testHandler at weight 0 (every request to legacy)
// with an override header trusted from 10.0.0.0/8.
func overrideHandler(t testing.TB, o *Override) *Handler {
	t.Helper()
	h := testHandler(t, state.ModeSplit, 0, answer(200, "legacy"), answer(503, "consolidated"))
	h.Override = o
	ov, err := newOverrider(o, h.sw)
	if err != nil {
		t.Fatal(err)
	}
	key := append([]byte(nil), testOverrideKey...)
	ov.key.Store(&key)
	h.ovr = ov
	return h
}

// from makes a request with the given client IP, as Caddy sets it.
func from(ip string) *http.Request {
	r := request("GET", "")
	r.RemoteAddr = ip + ":5555"
	caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, ip)
	return r
}

func TestOverride(t *testing.T) {
	now := time.Now()
	valid := signOverride(testOverrideKey, "t", armConsolidated, now.Add(time.Hour))
	expired := signOverride(testOverrideKey, "t", armConsolidated, now.Add(-time.Second))
	otherSwitch := signOverride(testOverrideKey, "other", armConsolidated, now.Add(time.Hour))
	otherKey := signOverride([]byte("another key, another key, another"), "t", armConsolidated, now.Add(time.Hour))
	// Changing the arm of a signed value breaks its MAC.
	toLegacy := signOverride(testOverrideKey, "t", armLegacy, now.Add(time.Hour))
	tampered := armConsolidated + strings.TrimPrefix(toLegacy, armLegacy)
	later := strings.Replace(valid, ".", ".9", 1) // a later expiry, same MAC

	for _, tc := range []struct {
		name, ip, value string
		want            string // body served
		ignored         string // reason counted, if ignored
	}{
		{"no override", "203.0.113.5", "", "legacy", ""},
		{"plain from trusted", "10.1.2.3", "consolidated", "consolidated", ""},
		{"plain from untrusted", "203.0.113.5", "consolidated", "legacy", overrideUntrusted},
		{"signed from untrusted", "203.0.113.5", valid, "consolidated", ""},
		{"signed from trusted", "10.1.2.3", valid, "consolidated", ""},
		{"expired", "203.0.113.5", expired, "legacy", overrideExpired},
		{"other switch's", "203.0.113.5", otherSwitch, "legacy", overrideForged},
		{"other key's", "203.0.113.5", otherKey, "legacy", overrideForged},
		{"arm changed", "203.0.113.5", tampered, "legacy", overrideForged},
		{"expiry changed", "203.0.113.5", later, "legacy", overrideForged},
		{"forged from trusted", "10.1.2.3", "consolidated.9999999999.AAAAAAAAAAAAAAAAAAAAAA", "legacy", overrideForged},
		{"garbage", "10.1.2.3", "prod", "legacy", overrideMalformed},
		{"ipv4-mapped trusted", "::ffff:10.9.9.9", "consolidated", "consolidated", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, src := range []string{"header", "cookie"} {
				h := overrideHandler(t, &Override{Source: src, Name: map[string]string{"header": "X-Switchback-Arm", "cookie": "sb_force"}[src], Trusted: []string{"10.0.0.0/8"}})
				r := from(tc.ip)
				if tc.value != "" {
					if src == "header" {
						r.Header.Set("X-Switchback-Arm", tc.value)
					} else {
						r.Header.Set("Cookie", "sb_user=x; sb_force="+tc.value)
					}
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r, nil)
				if w.Body.String() != tc.want {
					t.Errorf("%s: served by %q, want %q", src, w.Body.String(), tc.want)
				}
				for reason, c := range h.ovr.ignored {
					if want := b2u(reason == tc.ignored); c.Get() != want {
						t.Errorf("%s: ignored{%s} = %d, want %d", src, reason, c.Get(), want)
					}
				}
				overridden := tc.want == "consolidated"
				if got := h.ovr.requests[1].Get(); got != b2u(overridden) {
					t.Errorf("%s: override requests = %d", src, got)
				}
				// An overridden request is never in a window.
				if st := h.sw.win.Load().consolidated.Stats(health.Now()); st.Requests != 0 {
					t.Errorf("%s: consolidated window holds %d requests", src, st.Requests)
				}
				if overridden && h.sw.metrics.requests[1].Get() != 0 {
					t.Errorf("%s: counted in switchback_requests_total", src)
				}
			}
		})
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// TestOverrideNeverTrips drives many failures through forced consolidated:
// the monitor never sees them, and a failure is not replayed.
func TestOverrideNeverTrips(t *testing.T) {
	h := overrideHandler(t, &Override{Source: "header", Name: "X-Switchback-Arm", Trusted: []string{"10.0.0.0/8"}})
	tripped := false
	h.monitor = health.NewMonitor(health.MonitorOptions{
		Rules:        health.Rules{ErrorRate: 0.05, ConsecutiveFailures: 3, Window: 10 * time.Second},
		Consolidated: h.win.consolidated, Legacy: h.win.legacy,
		OnTrip: func(health.Verdict) { tripped = true },
	})
	for range 500 {
		r := from("10.0.0.1")
		r.Header.Set("X-Switchback-Arm", "consolidated")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r, nil)
		if w.Code != 503 || w.Body.String() != "consolidated" {
			t.Fatalf("got %d %q: a forced consolidated failure must reach the tester, not be replayed", w.Code, w.Body.String())
		}
	}
	h.monitor.Check(health.Now())
	if tripped || !h.monitor.Armed() {
		t.Fatal("overridden failures tripped the switch")
	}
	if h.ovr.failures[1].Get() != 500 || h.sw.metrics.replays.Get() != 0 {
		t.Errorf("override failures %d, replays %d", h.ovr.failures[1].Get(), h.sw.metrics.replays.Get())
	}
}

func TestOverrideNoKey(t *testing.T) {
	h := overrideHandler(t, &Override{Source: "header", Name: "X-Switchback-Arm"})
	h.ovr.key.Store(nil)
	r := from("203.0.113.1")
	r.Header.Set("X-Switchback-Arm", signOverride(testOverrideKey, "t", armConsolidated, time.Now().Add(time.Hour)))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r, nil)
	if w.Body.String() != "legacy" || h.ovr.ignored[overrideNoKey].Get() != 1 {
		t.Errorf("served %q, no_key %d", w.Body.String(), h.ovr.ignored[overrideNoKey].Get())
	}
}

func TestOverrideCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		src, err string
		want     Override
	}{
		{"override header X-Switchback-Arm", "", Override{Source: "header", Name: "X-Switchback-Arm"}},
		{"override cookie sb_force trusted 10.0.0.0/8 192.0.2.1 private_ranges", "", Override{Source: "cookie", Name: "sb_force", Trusted: []string{"10.0.0.0/8", "192.0.2.1", "private_ranges"}}},
		{"override", "takes a source and a name", Override{}},
		{"override query x", "unknown override source 'query'", Override{}},
		{"override header X trusted", "at least one CIDR", Override{}},
		{"override header X trusted 10.0.0.0/33", "override trusted \"10.0.0.0/33\"", Override{}},
		{"override header X allow 10.0.0.0/8", "unknown override option 'allow'", Override{}},
	} {
		d := caddyfile.NewTestDispenser(tc.src)
		d.Next()
		var h Handler
		err := h.unmarshalOverride(d)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.src, err, tc.err)
			}
			continue
		}
		if err != nil || h.Override.Source != tc.want.Source || h.Override.Name != tc.want.Name || strings.Join(h.Override.Trusted, " ") != strings.Join(tc.want.Trusted, " ") {
			t.Errorf("%q: %+v, %v", tc.src, h.Override, err)
		}
	}
	if err := (&Override{Source: "cookie", Name: "sb_user"}).check(Sticky{Source: "cookie", Name: "sb_user"}); err == nil {
		t.Error("an override cookie named like the sticky cookie was accepted")
	}
}

func TestSignOverrideRequest(t *testing.T) {
	for _, req := range []OverrideSignRequest{{Arm: "both"}, {Arm: armConsolidated, TTL: -1}, {Arm: armLegacy, TTL: 1 << 62}} {
		if _, err := req.check(); err == nil {
			t.Errorf("%+v accepted", req)
		}
	}
	st, err := local.Open(filepath.Join(t.TempDir(), "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := &App{store: st}
	tok, err := a.signOverrideFor(context.Background(), "main", OverrideSignRequest{Arm: armConsolidated, TTL: 0}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v, err := parseOverrideValue(tok.Value)
	if err != nil || !v.signed || v.arm != armConsolidated {
		t.Fatalf("%q: %+v %v", tok.Value, v, err)
	}
	key, _ := a.loadSecretNamed(context.Background(), overrideKeyName)
	if !v.validMAC(key, "main") || v.validMAC(key, "other") {
		t.Error("the signed value does not verify for its switch alone")
	}
	if d := time.Until(tok.Expires); d < 23*time.Hour || d > 24*time.Hour {
		t.Errorf("expires in %v, want the default 24h", d)
	}
}

// FuzzOverrideValue: the parser never panics, and a value it accepts as
// signed formats back to itself.
func FuzzOverrideValue(f *testing.F) {
	f.Add("consolidated")
	f.Add("legacy")
	f.Add(signOverride(testOverrideKey, "t", armConsolidated, time.Unix(1800000000, 0)))
	f.Add("consolidated.1.")
	f.Add("consolidated..AAAAAAAAAAAAAAAAAAAAAA")
	f.Add("legacy.99999999999999999999.AAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseOverrideValue(s)
		if err != nil {
			return
		}
		if v.arm != armLegacy && v.arm != armConsolidated {
			t.Fatalf("%q: arm %q", s, v.arm)
		}
		if !v.signed {
			if s != v.arm {
				t.Fatalf("%q parsed as plain %q", s, v.arm)
			}
			return
		}
		if v.expiry < 0 || len(v.mac) != overrideMACLen {
			t.Fatalf("%q: %+v", s, v)
		}
		_ = v.validMAC(testOverrideKey, "t")
	})
}

// BenchmarkServeHTTPOverride: a switch with an override configured, and a
// request without the header, must still cost no allocation.
func BenchmarkServeHTTPOverride(b *testing.B) {
	for _, src := range []string{"header", "cookie"} {
		b.Run("absent_"+src, func(b *testing.B) {
			ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
			h := testHandler(b, state.ModeSplit, 50, ok, ok)
			ov, _ := newOverrider(&Override{Source: src, Name: "sb_force", Trusted: []string{"10.0.0.0/8"}}, h.sw)
			h.ovr = ov
			r := request("GET", "")
			_, val := h.signer.Load().issue()
			r.Header.Set("Cookie", "sb_user="+val)
			w := discardWriter{h: http.Header{}}
			h.ServeHTTP(w, r, nil)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				h.ServeHTTP(w, r, nil)
			}
		})
	}
}

func TestServeHTTPOverrideAbsentDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random, so allocation counts mean nothing under -race")
	}
	ok := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(200); return nil })
	h := testHandler(t, state.ModeSplit, 50, ok, ok)
	h.ovr, _ = newOverrider(&Override{Source: "cookie", Name: "sb_force", Trusted: []string{"10.0.0.0/8"}}, h.sw)
	r := request("GET", "")
	_, val := h.signer.Load().issue()
	r.Header.Set("Cookie", "sb_user="+val)
	w := discardWriter{h: http.Header{}}
	h.ServeHTTP(w, r, nil)
	if n := testing.AllocsPerRun(200, func() { h.ServeHTTP(w, r, nil) }); n != 0 {
		t.Errorf("%v allocations per request without an override", n)
	}
}
