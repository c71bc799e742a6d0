package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
)

// TestConsulConfigPlaceholders checks that the consul block's fields take
// Caddy placeholders, so `token {env.CONSUL_HTTP_TOKEN}` keeps the token
// out of the JSON config: the store sends the variable's value, and the
// config keeps the placeholder.
func TestConsulConfigPlaceholders(t *testing.T) {
	var mu sync.Mutex
	var gotToken, gotPath string
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotToken, gotPath = r.Header.Get("X-Consul-Token"), r.URL.Path
		mu.Unlock()
		http.NotFound(w, r)
	}))
	defer agent.Close()

	t.Setenv("SB_TEST_CONSUL_TOKEN", "s3cret-token")
	t.Setenv("SB_TEST_CONSUL_ADDR", strings.TrimPrefix(agent.URL, "http://"))
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	cfg := &ConsulConfig{
		Address: "{env.SB_TEST_CONSUL_ADDR}",
		Token:   "{env.SB_TEST_CONSUL_TOKEN}",
		Prefix:  "fleet-{env.SB_TEST_UNSET_VAR}a",
	}
	st, err := openConsul(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Get(context.Background(), state.Key(state.NSSwitches, "main")); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get: %v, want ErrNotFound from the fake agent", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if gotToken != "s3cret-token" {
		t.Errorf("agent got token %q, want the expanded {env.SB_TEST_CONSUL_TOKEN}", gotToken)
	}
	if want := "/v1/kv/fleet-a/switches/main"; gotPath != want {
		t.Errorf("agent got path %q, want %q (prefix expanded, unset variable empty)", gotPath, want)
	}
	if strings.Contains(st.Describe(), "s3cret") {
		t.Errorf("Describe shows the token: %s", st.Describe())
	}
	if cfg.Token != "{env.SB_TEST_CONSUL_TOKEN}" {
		t.Errorf("config changed to %q: the token must not be written into the config", cfg.Token)
	}
}

func TestExpandConsulConfigKeepsUnknownPlaceholders(t *testing.T) {
	got := expandConsulConfig(&ConsulConfig{Token: "{not.a.placeholder}", TLS: consul.TLSConfig{CAFile: "{env.SB_TEST_NONE}"}})
	if got.Token != "{not.a.placeholder}" {
		t.Errorf("token %q: an unknown placeholder must stay as written", got.Token)
	}
	if got.TLS.CAFile != "" {
		t.Errorf("ca_file %q: an unset variable must expand to empty", got.TLS.CAFile)
	}
	if (expandConsulConfig(nil) != ConsulConfig{}) {
		t.Error("nil config must expand to the zero config")
	}
}
