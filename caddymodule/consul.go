package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
)

// ConsulConfig configures the consul state backend; see consul.Config.
// Every field may hold Caddy's global placeholders, expanded when the store
// opens, so that a secret need not sit in the config:
//
//	token {env.CONSUL_HTTP_TOKEN}
//	tls { ca_file {env.CONSUL_CACERT} }
type ConsulConfig = consul.Config

// openConsul opens the Consul store that cfg describes (nil: every field
// at its default). cfg itself is not changed: the expanded values, the
// token above all, live only in the store, never in the config that the
// admin API serves.
func openConsul(cfg *ConsulConfig) (state.Store, error) {
	c := expandConsulConfig(cfg)
	st, err := consul.Open(c, consul.Options{})
	if err != nil {
		return nil, fmt.Errorf("opening consul state store: %w", err)
	}
	return st, nil
}

// expandConsulConfig returns a copy of cfg with Caddy's global placeholders
// ({env.*}, {system.*}, {time.*}, ...) replaced. Unknown placeholders are
// left as they are; an unset environment variable expands to "", which
// means the field's default.
func expandConsulConfig(cfg *ConsulConfig) ConsulConfig {
	if cfg == nil {
		return ConsulConfig{}
	}
	repl := caddy.NewReplacer()
	c := *cfg
	for _, f := range []*string{&c.Address, &c.Token, &c.Prefix, &c.Datacenter, &c.TLS.CAFile, &c.TLS.CertFile, &c.TLS.KeyFile} {
		*f = repl.ReplaceKnown(*f, "")
	}
	return c
}
