package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/state/local"
)

func stickyRequest(cookies ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	for _, c := range cookies {
		r.Header.Add("Cookie", c)
	}
	return r
}

// TestDuplicateCookieNames: a browser that holds a stale cookie of the
// same name (another Domain, sent first) keeps its key: any valid cookie
// of the name is taken and nothing is re-issued.
func TestDuplicateCookieNames(t *testing.T) {
	h := testHandler(t, "split", 50, nil, nil)
	key, val := h.signer.Load().issue()
	stale := newCookieSigner([]byte("an old key of some other deployment"))
	_, staleVal := stale.issue()
	for _, hdr := range [][]string{
		{"sb_user=" + staleVal + "; sb_user=" + val},
		{"sb_user=garbage", "other=1; sb_user=" + val},
		{"sb_user=" + val + "; sb_user=" + staleVal},
	} {
		w := httptest.NewRecorder()
		got, ok := h.stickyKey(w, stickyRequest(hdr...))
		if !ok || got != key {
			t.Errorf("Cookie %q: key %q, want the valid cookie's %q", hdr, got, key)
		}
		if sc := w.Header().Get("Set-Cookie"); sc != "" {
			t.Errorf("Cookie %q: re-issued %q", hdr, sc)
		}
	}
}

// TestKeyRotation: after the key changes, a cookie signed with the
// previous one keeps its key and is signed again with the new one, until
// the grace ends; a third key keeps only one previous key.
func TestKeyRotation(t *testing.T) {
	h := testHandler(t, "split", 50, nil, nil)
	old := h.signer.Load()
	key, val := old.issue()
	now := time.Now()
	h.signer.Store(newCookieSigner([]byte("the new key, at least 32 bytes long")).after(old, now))

	w := httptest.NewRecorder()
	got, _ := h.stickyKey(w, stickyRequest("sb_user="+val))
	if got != key {
		t.Fatalf("a cookie signed with the previous key got key %q, want its own %q", got, key)
	}
	resp := http.Response{Header: w.Header()}
	cs := resp.Cookies()
	if len(cs) != 1 || !strings.HasPrefix(cs[0].Value, key+".") {
		t.Fatalf("re-signed cookie %v, want key %s signed with the new key", cs, key)
	}
	if k, ok := h.signer.Load().verify(cs[0].Value); !ok || k != key {
		t.Fatal("the re-signed cookie does not verify with the new key")
	}
	// The same key again (a reload with no change) keeps the grace.
	same := newCookieSigner([]byte("the new key, at least 32 bytes long")).after(h.signer.Load(), now)
	if _, resign, ok := same.find(stickyRequest("sb_user="+val).Header, "sb_user"); !ok || !resign {
		t.Fatal("a reload with the same key dropped the previous key's grace")
	}
	// A third key accepts the second, not the first.
	third := newCookieSigner([]byte("a third key, at least 32 bytes long")).after(same, now)
	if third.prev == nil || third.prev.id != same.id || third.prev.prev != nil {
		t.Fatal("a third key should hold the second as its one previous key")
	}
	// After the grace the previous key is refused.
	late := newCookieSigner([]byte("the new key, at least 32 bytes long")).after(old, now.Add(-RotationGrace-time.Second))
	if _, _, ok := late.find(stickyRequest("sb_user="+val).Header, "sb_user"); ok {
		t.Fatal("a cookie signed with the previous key was accepted after the grace")
	}
}

// TestConfiguredSecret: a short secret or an unset {env.X} fails the load
// with a message that says what is wrong and never shows the secret.
func TestConfiguredSecret(t *testing.T) {
	t.Setenv("SB_TEST_SHORT", "0123456789")
	t.Setenv("SB_TEST_GOOD", strings.Repeat("k", 32))
	for _, tc := range []struct{ raw, msg string }{
		{"tooshort-secret", "15 bytes, and must be at least 32"},
		{"{env.SB_TEST_SHORT}", "10 bytes"},
		{"{env.SB_TEST_UNSET_XYZ}", "{env.SB_TEST_UNSET_XYZ} is unset or empty"},
		{"prefix-{env.SB_TEST_UNSET_XYZ}-tail-of-a-long-enough-secret", "{env.SB_TEST_UNSET_XYZ} is unset or empty"},
	} {
		_, err := configuredSecret(tc.raw)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: error %v, want %q", tc.raw, err, tc.msg)
			continue
		}
		if strings.Contains(err.Error(), "0123456789") || strings.Contains(err.Error(), "tooshort") || strings.Contains(err.Error(), "tail-of") {
			t.Errorf("%q: the error shows the secret: %v", tc.raw, err)
		}
	}
	if s, err := configuredSecret("{env.SB_TEST_GOOD}"); err != nil || len(s) != 32 {
		t.Errorf("a 32-byte secret from the environment: %q, %v", s, err)
	}
}

// TestSecureCookieBehindTrustedProxy: the cookie is Secure when the client
// used https, whether TLS ended here or at a trusted proxy that says so;
// an untrusted client's X-Forwarded-Proto is ignored.
func TestSecureCookieBehindTrustedProxy(t *testing.T) {
	h := testHandler(t, "split", 50, nil, nil)
	for _, tc := range []struct {
		name    string
		trusted bool
		proto   string
		want    bool
	}{
		{"trusted proxy, https", true, "https", true},
		{"trusted proxy, http", true, "http", false},
		{"untrusted, claims https", false, "https", false},
	} {
		r := stickyRequest()
		r.Header.Set("X-Forwarded-Proto", tc.proto)
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.TrustedProxyVarKey: tc.trusted}))
		w := httptest.NewRecorder()
		h.stickyKey(w, r)
		cs := (&http.Response{Header: w.Header()}).Cookies()
		if len(cs) != 1 || cs[0].Secure != tc.want {
			t.Errorf("%s: cookies %v, want Secure %v", tc.name, cs, tc.want)
		}
	}
}

// TestCookieKeyKeptAcrossReload: a config loaded while the store is down
// signs with the key the running config used with that store, the
// fleet's or the process's own, instead of a new one that would move
// every user.
func TestCookieKeyKeptAcrossReload(t *testing.T) {
	for _, upFirst := range []bool{true, false} {
		st, err := local.Open(filepath.Join(t.TempDir(), "state.db"), local.Options{})
		if err != nil {
			t.Fatal(err)
		}
		flaky := &flakyStore{Store: st}
		flaky.down.Store(!upFirst)
		first := &App{store: flaky, logger: zap.NewNop(), rt: new(appRuntime)}
		k1, err := first.cookieSecret(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		flaky.down.Store(true)
		second := &App{store: flaky, logger: zap.NewNop(), rt: new(appRuntime)}
		k2, err := second.cookieSecret(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if string(k1) != string(k2) {
			t.Errorf("store up at first load %v: a reload during an outage changed the cookie key", upFirst)
		}
		if second.rt.secretEphemeral.Load() != !upFirst {
			t.Errorf("store up at first load %v: ephemeral = %v", upFirst, second.rt.secretEphemeral.Load())
		}
		st.Close()
	}
}
