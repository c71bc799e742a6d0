package caddymodule

import (
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/shadow"
)

// unmarshalShadow parses the shadow block of a switch:
//
//	shadow {
//		sample       <percent>          # default 10%
//		methods      <method...>        # default GET HEAD OPTIONS
//		max_body     <size>             # default 256KiB
//		max_inflight <n>                # default 64
//		timeout      <duration>         # default 5s
//		noise        <percent>|off      # default 5%
//		ignore header <name...>
//		ignore json   <pointer...>      # RFC 6901, * is one segment
//		redact header <name...>
//		redact json   <pointer...>
//		max_mismatch <percent>          # rollout gate; unset, no gate
//	}
//
// ignore and redact may be repeated; the other options may not.
func (h *Handler) unmarshalShadow(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("shadow takes a block, not '%s'", d.Val())
	}
	s := &Shadow{}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] && opt != "ignore" && opt != "redact" {
			return d.Errf("duplicate shadow option '%s'", opt)
		}
		seen[opt] = true
		switch opt {
		case "sample", "max_mismatch":
			f, err := onePercent(d, opt)
			if err != nil {
				return err
			}
			if opt == "sample" {
				if f <= 0 {
					return d.Errf("invalid sample '%s': must be above 0%% (drop the shadow block to turn shadowing off)", d.Val())
				}
				s.Sample = f
			} else {
				s.MaxMismatch = &f
			}
		case "noise":
			if !d.NextArg() {
				return d.ArgErr()
			}
			f := 0.0
			if d.Val() != "off" {
				var err error
				if f, err = health.ParsePercent(d.Val()); err != nil {
					return d.Errf("invalid noise '%s': %v (or 'off')", d.Val(), err)
				}
			}
			s.Noise = &f
			if d.NextArg() {
				return d.ArgErr()
			}
		case "methods":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("methods needs at least one method, e.g. methods GET HEAD")
			}
			for _, m := range args {
				m = strings.ToUpper(m)
				if err := checkMethod(m); err != nil {
					return d.Errf("%v", err)
				}
				if slices.Contains(s.Methods, m) {
					return d.Errf("method %s is listed twice", m)
				}
				s.Methods = append(s.Methods, m)
			}
		case "max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := parseSize(d.Val())
			if err != nil || n <= 0 {
				return d.Errf("invalid max_body '%s': want a positive size such as 256KiB", d.Val())
			}
			s.MaxBody = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_inflight":
			n, err := oneInt(d, opt)
			if err != nil {
				return err
			}
			if n < 1 || n > 10000 {
				return d.Errf("invalid max_inflight %d: must be between 1 and 10000", n)
			}
			s.MaxInflight = n
		case "timeout":
			dur, err := oneDuration(d, opt)
			if err != nil {
				return err
			}
			s.Timeout = caddy.Duration(dur)
		case "ignore", "redact":
			args := d.RemainingArgs()
			if len(args) < 2 || (args[0] != "header" && args[0] != "json") {
				return d.Errf("%s takes 'header <name...>' or 'json <pointer...>'", opt)
			}
			switch opt + " " + args[0] {
			case "ignore header":
				s.IgnoreHeaders = append(s.IgnoreHeaders, args[1:]...)
			case "ignore json":
				s.IgnoreJSON = append(s.IgnoreJSON, args[1:]...)
			case "redact header":
				s.RedactHeaders = append(s.RedactHeaders, args[1:]...)
			case "redact json":
				s.RedactJSON = append(s.RedactJSON, args[1:]...)
			}
			if _, err := shadow.NewRules(s.rulesOptions()); err != nil {
				return d.Errf("%v", err)
			}
		default:
			return d.Errf("unknown shadow option '%s': want sample, methods, max_body, max_inflight, timeout, noise, ignore, redact or max_mismatch", opt)
		}
	}
	h.Shadow = s
	return nil
}

// onePercent reads one percentage argument.
func onePercent(d *caddyfile.Dispenser, name string) (float64, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	f, err := health.ParsePercent(d.Val())
	if err != nil {
		return 0, d.Errf("invalid %s '%s': %v", name, d.Val(), err)
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return f, nil
}
