package tests

// End-to-end tests of tester overrides (issue 12): signed and trusted
// overrides are honoured, forged and untrusted ones ignored, and
// overridden requests never trip the switch.

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// overrideTemplate is a switch at weight 0, so only an override reaches
// consolidated. The loopback is a trusted proxy and X-Forwarded-For names
// the client, so a test can speak from any address; 10.0.0.0/8 may
// override with a plain value.
const overrideTemplate = `{
	admin {ADMIN}
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		weight 0
		mode split
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
		trip {
			consecutive_failures 3
			min_requests 5
		}
		override header X-Switchback-Arm trusted 10.0.0.0/8
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

// forced sends a GET from client address ip with the override value.
func forced(t *testing.T, g *Gateway, ip, value string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+"/qa", nil)
	req.Header.Set("X-Forwarded-For", ip)
	if value != "" {
		req.Header.Set("X-Switchback-Arm", value)
	}
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOverrides(t *testing.T) {
	legacy, cons := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: overrideTemplate, Legacy: legacy, Consolidated: cons})

	out, errOut, code := g.CLI(t, "override", "sign", "consolidated", "--ttl", "1h")
	if code != 0 {
		t.Fatalf("override sign: exit %d: %s", code, errOut)
	}
	signed := strings.TrimSpace(out)
	if !strings.HasPrefix(signed, "consolidated.") || strings.Count(signed, ".") != 2 {
		t.Fatalf("signed value %q, want consolidated.<expiry>.<mac>", signed)
	}
	forged := signed[:len(signed)-4] + "AAAA"
	if forged == signed {
		forged = signed[:len(signed)-4] + "BBBB"
	}
	for _, tc := range []struct{ name, ip, value, want string }{
		{"no override", "203.0.113.7", "", "legacy"},
		{"plain from a trusted address", "10.20.30.40", "consolidated", "consolidated"},
		{"plain from an untrusted address", "203.0.113.7", "consolidated", "legacy"},
		{"signed from an untrusted address", "203.0.113.7", signed, "consolidated"},
		{"forged", "203.0.113.7", forged, "legacy"},
		{"forged from a trusted address", "10.20.30.40", forged, "legacy"},
		{"garbage", "10.20.30.40", "yes-please", "legacy"},
	} {
		if _, body := forced(t, g, tc.ip, tc.value); body != tc.want {
			t.Errorf("%s: answered by %q, want %q", tc.name, body, tc.want)
		}
	}
	m := g.metrics(t)
	for series, want := range map[string]float64{
		`switchback_override_requests_total{switch="main",arm="consolidated"}`: 2,
		`switchback_override_ignored_total{switch="main",reason="untrusted"}`:  1,
		`switchback_override_ignored_total{switch="main",reason="forged"}`:     2,
		`switchback_override_ignored_total{switch="main",reason="malformed"}`:  1,
		`switchback_requests_total{switch="main",arm="consolidated"}`:          0,
	} {
		if v := metricValue(m, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
	if _, errOut, code := g.CLI(t, "override", "sign", "both"); code != 2 || !strings.Contains(errOut, `unknown arm "both"`) {
		t.Errorf("override sign both: exit %d, want 2 (usage): %s", code, errOut)
	}

	// Overridden requests never trip: consolidated fails every one.
	cons.Fail(http.StatusInternalServerError)
	for i := range 100 {
		ip := "10.0.0.9"
		value := "consolidated"
		if i%2 == 1 {
			ip, value = "198.51.100.3", signed
		}
		if status, body := forced(t, g, ip, value); status != 500 || !strings.HasPrefix(body, "consolidated failing") {
			t.Fatalf("forced request %d: %d %q, want consolidated's own 500 (not replayed)", i, status, body)
		}
	}
	time.Sleep(500 * time.Millisecond) // a few monitor ticks
	if s := g.Switch(t, "main"); s.Tripped || s.Mode != "split" {
		t.Fatalf("overridden failures moved the switch: %+v", s)
	}
	m = g.metrics(t)
	if v := metricValue(m, `switchback_override_failures_total{switch="main",arm="consolidated"}`); v != 100 {
		t.Errorf("override failures = %v, want 100", v)
	}
	if v := metricValue(m, `switchback_failures_total{switch="main",arm="consolidated"}`); v != 0 {
		t.Errorf("failures_total{consolidated} = %v, want 0: overrides are counted apart", v)
	}

	// Offline, the CLI signs with the store's key, which the gateway
	// honours once it is back.
	g.Stop()
	out, errOut, code = RunCLI(t, g.Dir, "override", "sign", "consolidated", "--switch", "main", "--config", g.Caddyfile, "--address", g.Admin)
	if code != 0 {
		t.Fatalf("offline override sign: exit %d: %s", code, errOut)
	}
	offline := strings.TrimSpace(out)
	cons.Fail(0)
	g.Restart()
	Eventually(t, 10*time.Second, "the gateway back", func() bool {
		resp, err := Client.Get("http://" + g.HTTP + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	if _, body := forced(t, g, "203.0.113.7", offline); body != "consolidated" {
		t.Errorf("offline-signed value: answered by %q, want consolidated", body)
	}
	if _, errOut, code := RunCLI(t, g.Dir, "override", "sign", "consolidated", "--switch", "nope", "--address", g.Admin); code == 0 || !strings.Contains(errOut, `unknown switch "nope"`) {
		t.Errorf("sign for an unknown switch: exit %d: %s", code, errOut)
	}
}
