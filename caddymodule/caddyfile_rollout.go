package caddymodule

import (
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/leanvibe/switchback/state"
)

// unmarshalRollout parses a switch's rollout block:
//
//	rollout {
//		steps 1% 5% 25% 50% 100%  # the weights to walk through, increasing
//		hold 5m                   # at least this long at each step
//		min_requests 500          # and this many consolidated requests, fleet-wide (off: none)
//		gate 50% manual           # wait for an approval before entering this step (repeatable)
//		on_step webhook https://hooks.example.com/rollout
//		on_complete exec /usr/local/bin/announce
//		on_abort webhook https://hooks.example.com/rollout
//	}
func (h *Handler) unmarshalRollout(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	r := &Rollout{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		repeatable := sub == "gate" || sub == "on_step" || sub == "on_complete" || sub == "on_abort"
		if seen[sub] && !repeatable {
			return d.Errf("duplicate rollout option '%s'", sub)
		}
		seen[sub] = true
		switch sub {
		case "steps":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("steps needs the weights to walk through, e.g. steps 1% 5% 25% 50% 100%")
			}
			for _, a := range args {
				w, err := state.ParseWeight(a)
				if err != nil {
					return d.Errf("rollout steps: %v", err)
				}
				r.Steps = append(r.Steps, w)
			}
			if err := state.CheckSteps(r.Steps); err != nil {
				return d.Errf("rollout steps: %v", err)
			}
		case "hold":
			dur, err := oneDuration(d, "hold")
			if err != nil {
				return err
			}
			r.Hold = caddy.Duration(dur)
		case "min_requests":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "off" || d.Val() == "0" {
				r.MinRequests = -1
			} else {
				n, err := strconv.Atoi(d.Val())
				if err != nil || n < 0 {
					return d.Errf("invalid min_requests '%s': want a whole number, or off", d.Val())
				}
				r.MinRequests = n
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "gate":
			args := d.RemainingArgs()
			if len(args) != 2 || args[1] != "manual" {
				return d.Err("gate takes a step and its kind: gate <step> manual")
			}
			w, err := state.ParseWeight(args[0])
			if err != nil {
				return d.Errf("rollout gate: %v", err)
			}
			if slices.Contains(r.Gates, w) {
				return d.Errf("rollout gate %s%% is given twice", w)
			}
			r.Gates = append(r.Gates, w)
		case "on_step", "on_complete", "on_abort":
			a, err := unmarshalAction(d)
			if err != nil {
				return err
			}
			switch sub {
			case "on_step":
				r.OnStep = append(r.OnStep, a)
			case "on_complete":
				r.OnComplete = append(r.OnComplete, a)
			default:
				r.OnAbort = append(r.OnAbort, a)
			}
		default:
			return d.Errf("unknown rollout option '%s': want steps, hold, min_requests, gate, on_step, on_complete or on_abort", sub)
		}
	}
	if r.Steps == nil {
		return d.Err("rollout needs steps, e.g. steps 1% 5% 25% 50% 100%")
	}
	if err := r.check(); err != nil {
		return d.Errf("%v", err)
	}
	h.Rollout = r
	return nil
}
