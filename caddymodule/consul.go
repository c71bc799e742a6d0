package caddymodule

import (
	"fmt"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
)

// ConsulConfig configures the consul state backend; see consul.Config.
type ConsulConfig = consul.Config

func openConsul(cfg *ConsulConfig) (state.Store, error) {
	if cfg == nil {
		cfg = &ConsulConfig{}
	}
	st, err := consul.Open(*cfg, consul.Options{})
	if err != nil {
		return nil, fmt.Errorf("opening consul state store: %w", err)
	}
	return st, nil
}
