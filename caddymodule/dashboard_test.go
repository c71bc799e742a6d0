package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestDashboardParseErrors feeds bad switchback_dashboard blocks to the
// adapter: each is refused, naming the mistake and its line.
func TestDashboardParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, body, msg string }{
		{"argument", "\tswitchback_dashboard readonly\n", "takes no arguments, got 'readonly'"},
		{"unknown option", "\tswitchback_dashboard {\n\t\twall\n\t}\n", "unknown switchback_dashboard option 'wall'"},
		{"duplicate", "\tswitchback_dashboard {\n\t\tread_only\n\t\tread_only\n\t}\n", "duplicate switchback_dashboard option 'read_only'"},
		{"read_only with an argument", "\tswitchback_dashboard {\n\t\tread_only yes\n\t}\n", "wrong argument count"},
		{"user without a value", "\tswitchback_dashboard {\n\t\tuser\n\t}\n", "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adapt(t, ":8080 {\n"+tc.body+"}\n")
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %v, want one naming the line and saying %q", err, tc.msg)
			}
		})
	}
}

// FuzzDashboardParse feeds arbitrary blocks to the directive's parser: it
// may refuse them, but must never panic.
func FuzzDashboardParse(f *testing.F) {
	f.Add("read_only\n")
	f.Add("user {http.auth.user.id}\n")
	f.Add("user\n")
	f.Add("read_only x\nuser a b\n")
	f.Fuzz(func(t *testing.T, body string) {
		var d Dashboard
		_ = d.UnmarshalCaddyfile(caddyfile.NewTestDispenser("switchback_dashboard {\n" + body + "\n}\n"))
	})
}

func TestDashboardCheckAction(t *testing.T) {
	for _, tc := range []struct {
		name     string
		readOnly bool
		headers  map[string]string
		ok       bool
	}{
		{"page's own request", false, map[string]string{"Origin": "https://ops.example.com", "Sec-Fetch-Site": "same-origin", "X-Switchback-Action": "1"}, true},
		{"origin only", false, map[string]string{"Origin": "https://ops.example.com", "X-Switchback-Action": "1"}, true},
		{"default port", false, map[string]string{"Origin": "https://ops.example.com:443", "X-Switchback-Action": "1"}, true},
		{"sec-fetch-site only", false, map[string]string{"Sec-Fetch-Site": "same-origin", "X-Switchback-Action": "1"}, true},
		{"no header", false, map[string]string{"Origin": "https://ops.example.com", "Sec-Fetch-Site": "same-origin"}, false},
		{"other origin", false, map[string]string{"Origin": "https://evil.example", "X-Switchback-Action": "1"}, false},
		{"other port", false, map[string]string{"Origin": "https://ops.example.com:8443", "X-Switchback-Action": "1"}, false},
		{"subdomain", false, map[string]string{"Origin": "https://x.ops.example.com", "X-Switchback-Action": "1"}, false},
		{"origin null", false, map[string]string{"Origin": "null", "X-Switchback-Action": "1"}, false},
		{"origin with a path", false, map[string]string{"Origin": "https://ops.example.com/x", "X-Switchback-Action": "1"}, false},
		{"cross-site", false, map[string]string{"Origin": "https://ops.example.com", "Sec-Fetch-Site": "cross-site", "X-Switchback-Action": "1"}, false},
		{"same-site", false, map[string]string{"Sec-Fetch-Site": "same-site", "X-Switchback-Action": "1"}, false},
		{"neither", false, map[string]string{"X-Switchback-Action": "1"}, false},
		{"read-only", true, map[string]string{"Origin": "https://ops.example.com", "Sec-Fetch-Site": "same-origin", "X-Switchback-Action": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "https://ops.example.com/api/switches/main/mode", nil)
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			err := (&Dashboard{ReadOnly: tc.readOnly}).checkAction(r)
			if (err == nil) != tc.ok {
				t.Errorf("checkAction: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestCleanName(t *testing.T) {
	if got := cleanName(" al\x00ice\n "); got != "alice" {
		t.Errorf("cleanName: %q", got)
	}
	if got := cleanName(strings.Repeat("x", 300)); len(got) != 128 {
		t.Errorf("cleanName keeps %d bytes, want 128", len(got))
	}
}
