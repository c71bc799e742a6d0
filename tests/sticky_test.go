package tests

import (
	"net/http"
	"strings"
	"testing"
)

// stickyTemplate is a gateway behind a trusted proxy (127.0.0.1) whose
// cookie is signed with {SECRET}.
const stickyTemplate = `{
	admin {ADMIN}
	servers {
		trusted_proxies static 127.0.0.1/32
	}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		weight 50
		sticky cookie sb_user {
			secret {SECRET}
		}
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

// TestStickyCookiesThroughGateway: through the real binary, a stale
// cookie of the same name sent first does not re-bucket the user, and the
// cookie is Secure when a trusted proxy says the client used https.
func TestStickyCookiesThroughGateway(t *testing.T) {
	legacy, cons := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	g := StartGateway(t, GatewayConfig{Template: stickyTemplate, Legacy: legacy, Consolidated: cons,
		Env: []string{"SB_TEST_SECRET=" + strings.Repeat("s", 40)}, Extra: map[string]string{"SECRET": "{env.SB_TEST_SECRET}"}})

	get := func(cookie, proto string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+"/", nil)
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		if proto != "" {
			req.Header.Set("X-Forwarded-Proto", proto)
		}
		resp, err := Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := get("", "https")
	cs := resp.Cookies()
	if len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("behind a trusted proxy saying https: cookies %v, want one Secure cookie", cs)
	}
	if cs := get("", "http").Cookies(); len(cs) != 1 || cs[0].Secure {
		t.Fatalf("over plain http: cookies %v, want one cookie, not Secure", cs)
	}
	valid, arm := cs[0].Value, resp.Header.Get("X-Switchback-Arm")
	stale := "sb_user=0123456789abcdef0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAA"
	for range 20 {
		r := get(stale+"; sb_user="+valid, "")
		if len(r.Cookies()) != 0 {
			t.Fatalf("a stale cookie sent first made the gateway re-issue: %v", r.Cookies())
		}
		if got := r.Header.Get("X-Switchback-Arm"); got != arm {
			t.Fatalf("the user moved from %s to %s", arm, got)
		}
	}
}

// TestBadCookieSecretFailsLoad: a secret under 32 bytes or an unset
// {env.X} fails the config at load, saying what is wrong, naming the
// switch and never printing the secret.
func TestBadCookieSecretFailsLoad(t *testing.T) {
	legacy, cons := NewUpstream(t, "legacy"), NewUpstream(t, "consolidated")
	for _, tc := range []struct{ secret, msg string }{
		{"short-secret-value", "18 bytes, and must be at least 32"},
		{"{env.SB_TEST_SURELY_UNSET}", "{env.SB_TEST_SURELY_UNSET} is unset or empty"},
	} {
		g := prepareGateway(t, GatewayConfig{Template: stickyTemplate, Legacy: legacy, Consolidated: cons, Extra: map[string]string{"SECRET": tc.secret}})
		_, errOut, code := RunCLI(t, g.Dir, "validate", "--config", g.Caddyfile, "--adapter", "caddyfile")
		if code == 0 || !strings.Contains(errOut, "switch main: sticky cookie secret") || !strings.Contains(errOut, tc.msg) {
			t.Errorf("secret %q: exit %d, want an error naming switch main and saying %q:\n%s", tc.secret, code, tc.msg, errOut)
		}
		if strings.Contains(errOut, "short-secret-value") {
			t.Errorf("the error prints the secret:\n%s", errOut)
		}
	}
}
