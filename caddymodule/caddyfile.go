package caddymodule

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("switchback", parseHandler)
	// Like reverse_proxy, a switch answers the request, so it sits with
	// the terminal handlers and works in a site block without route.
	httpcaddyfile.RegisterDirectiveOrder("switchback", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterGlobalOption("switchback", parseGlobal)
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	sb := new(Handler)
	if err := sb.unmarshal(h); err != nil {
		return nil, err
	}
	return sb, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	switchback <name> {
//		weight <percent, 0-100, e.g. 25, 0.5 or 0.5%>
//		mode split|legacy|consolidated
//		sticky cookie [<name>] [{
//			secret <key>
//			max_age <duration>
//		}]
//		sticky header <name>
//		sticky client_ip
//		legacy {
//			<handlers, e.g. reverse_proxy 127.0.0.1:9001>
//		}
//		consolidated {
//			<handlers>
//		}
//		trip off
//		trip {
//			error_rate <percent>|off
//			error_rate <ratio>x legacy [floor <percent>] [min_requests <n>]
//			latency p<quantile> <duration>|off
//			latency p<quantile> <ratio>x legacy [floor <duration>] [min_requests <n>]
//			consecutive_failures <n>|off
//			window <duration>
//			buckets <n>
//			min_requests <n>
//		}
//		replay_to_legacy on|off
//		replay_max_body <size>
//		replay_unsafe <matcher>
//		probe legacy|consolidated [<method>] <path> [interval <duration>] [timeout <duration>]
//		auto_recover {
//			after <duration>
//			probe_weight <percent>
//		}
//		on_trip exec <command> [<args...>]
//		on_trip webhook <url>
//		on_trip restore emergency
//		on_trip restore point <id>
//		on_recover ...
//		rollout {
//			steps <percent>...
//			hold <duration>
//			min_requests <n>|off
//			gate <step> manual
//			on_step|on_complete|on_abort <action>
//		}
//		override header|cookie <name> [trusted <cidr|ip|private_ranges>...]
//	}
//
// The arms are parsed like handle blocks, so any handler works inside.
// Outside an http site (as in tests), the arms cannot be parsed; use JSON.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return h.unmarshal(httpcaddyfile.Helper{Dispenser: d})
}

func (h *Handler) unmarshal(hp httpcaddyfile.Helper) error {
	d := hp.Dispenser
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("switchback needs a switch name: switchback <name> { ... }")
	}
	h.Name = d.Val()
	if err := state.CheckName(h.Name); err != nil {
		return d.Errf("switch name: %v", err)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		repeatable := sub == "on_trip" || sub == "on_recover" || sub == "replay_unsafe"
		if seen[sub] && !repeatable {
			return d.Errf("duplicate subdirective '%s'", sub)
		}
		seen[sub] = true
		switch sub {
		case "weight":
			if !d.NextArg() {
				return d.ArgErr()
			}
			w, err := state.ParseWeight(d.Val())
			if err != nil {
				return d.Errf("%v", err)
			}
			h.Weight = w
			if d.NextArg() {
				return d.ArgErr()
			}
		case "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			m, err := state.ParseMode(d.Val())
			if err != nil {
				return d.Errf("%v", err)
			}
			h.Mode = string(m)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "sticky":
			if err := h.unmarshalSticky(d); err != nil {
				return err
			}
		case "legacy", "consolidated":
			armLine := d.Line()
			sr, err := httpcaddyfile.ParseSegmentAsSubroute(hp.WithDispenser(d.NewFromNextSegment()))
			if err != nil {
				return err
			}
			if s, ok := sr.(*caddyhttp.Subroute); ok && len(s.Routes) == 0 {
				return fmt.Errorf("the %s arm is empty: give it a handler, e.g. reverse_proxy, at %s:%d", sub, d.File(), armLine)
			}
			raw := caddyconfig.JSONModuleObject(sr, "handler", "subroute", nil)
			if sub == "legacy" {
				h.LegacyRaw = raw
			} else {
				h.ConsolidatedRaw = raw
			}
		case "trip":
			if err := h.unmarshalTrip(d); err != nil {
				return err
			}
		case "replay_to_legacy":
			on, err := onOff(d)
			if err != nil {
				return err
			}
			h.ReplayToLegacy = &on
		case "replay_max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := parseSize(d.Val())
			if err != nil {
				return d.Errf("invalid replay_max_body '%s': %v", d.Val(), err)
			}
			h.ReplayMaxBody = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "replay_unsafe":
			if err := h.unmarshalReplayUnsafe(hp.WithDispenser(d)); err != nil {
				return err
			}
		case "probe":
			if err := h.unmarshalProbe(d); err != nil {
				return err
			}
		case "auto_recover":
			if err := h.unmarshalAutoRecover(d); err != nil {
				return err
			}
		case "shadow":
			if err := h.unmarshalShadow(d); err != nil {
				return err
			}
		case "rollout":
			if err := h.unmarshalRollout(d); err != nil {
				return err
			}
		case "override":
			if err := h.unmarshalOverride(d); err != nil {
				return err
			}
		case "on_trip", "on_recover":
			a, err := unmarshalAction(d)
			if err != nil {
				return err
			}
			if sub == "on_trip" {
				h.OnTrip = append(h.OnTrip, a)
			} else {
				h.OnRecover = append(h.OnRecover, a)
			}
		default:
			return d.Errf("unrecognized switchback subdirective '%s'", sub)
		}
	}
	if h.LegacyRaw == nil {
		return d.Errf("switch %s has no legacy arm: add legacy { reverse_proxy ... }", h.Name)
	}
	if h.ConsolidatedRaw == nil {
		return d.Errf("switch %s has no consolidated arm: add consolidated { reverse_proxy ... }", h.Name)
	}
	return nil
}

// unmarshalReplayUnsafe parses "replay_unsafe <matcher>": a named matcher
// (@name, defined in the site) or a path matcher (/api/orders*). Each line
// adds a matcher set; a request that any of them matches is replayed.
func (h *Handler) unmarshalReplayUnsafe(hp httpcaddyfile.Helper) error {
	d := hp.Dispenser
	if !d.NextArg() {
		return d.Err("replay_unsafe needs a matcher: replay_unsafe @name or replay_unsafe /path")
	}
	tok := d.Val()
	if tok == "*" {
		return d.Errf("replay_unsafe '*' would replay every request twice; name the requests that are safe to repeat with a matcher")
	}
	d.Prev()
	set, ok, err := hp.MatcherToken()
	if err != nil {
		return d.Errf("replay_unsafe '%s': %v", tok, err)
	}
	if !ok || set == nil {
		return d.Errf("replay_unsafe '%s' is not a matcher: want @name or a path starting with /", tok)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	h.ReplayUnsafeRaw = append(h.ReplayUnsafeRaw, set)
	return nil
}

func (h *Handler) unmarshalSticky(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	s := &Sticky{Source: d.Val()}
	switch s.Source {
	case "cookie":
		if d.NextArg() {
			s.Name = d.Val()
		}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			switch d.Val() {
			case "secret":
				if !d.NextArg() {
					return d.ArgErr()
				}
				s.Secret = d.Val()
			case "max_age":
				dur, err := oneDuration(d, "max_age")
				if err != nil {
					return err
				}
				s.MaxAge = caddy.Duration(dur)
			default:
				return d.Errf("unrecognized sticky cookie option '%s'", d.Val())
			}
		}
	case "header":
		if !d.NextArg() {
			return d.Err("sticky header needs a header name, e.g. sticky header X-User-ID")
		}
		s.Name = d.Val()
	case "client_ip":
	default:
		return d.Errf("unknown sticky source '%s': want cookie, header or client_ip", s.Source)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	h.Sticky = s
	return nil
}

func (h *Handler) unmarshalTrip(d *caddyfile.Dispenser) error {
	t := &Trip{}
	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("trip takes a block, or 'off'; got '%s'", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		h.Trip = &Trip{Off: true}
		return nil
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		rule := d.Val()
		if relativeLine(d) {
			if seen[rule+" legacy"] {
				return d.Errf("duplicate trip rule '%s ... legacy'", rule)
			}
			seen[rule+" legacy"] = true
			if err := t.unmarshalRelative(d); err != nil {
				return err
			}
			continue
		}
		if seen[rule] {
			return d.Errf("duplicate trip rule '%s'", rule)
		}
		seen[rule] = true
		if ruleOff(d) {
			t.RulesOff = append(t.RulesOff, rule)
			continue
		}
		switch rule {
		case "error_rate":
			if !d.NextArg() {
				return d.ArgErr()
			}
			r, err := health.ParsePercent(d.Val())
			if err != nil {
				return d.Errf("invalid error_rate '%s': %v", d.Val(), err)
			}
			if r <= 0 {
				return d.Errf("invalid error_rate '%s': must be above 0%%", d.Val())
			}
			t.ErrorRate = r
		case "latency":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Err("latency takes a quantile and a limit, e.g. latency p99 250ms")
			}
			q, err := health.ParseQuantile(args[0])
			if err != nil {
				return d.Errf("invalid latency quantile '%s': %v", args[0], err)
			}
			lim, err := caddy.ParseDuration(args[1])
			if err != nil || lim <= 0 {
				return d.Errf("invalid latency limit '%s': want a positive duration such as 250ms", args[1])
			}
			t.LatencyQuantile, t.Latency = q, caddy.Duration(lim)
		case "consecutive_failures":
			n, err := oneInt(d, rule)
			if err != nil {
				return err
			}
			if n <= 0 {
				return d.Errf("invalid consecutive_failures %d: must be at least 1", n)
			}
			t.ConsecutiveFailures = n
		case "window":
			dur, err := oneDuration(d, rule)
			if err != nil {
				return err
			}
			t.Window = caddy.Duration(dur)
		case "buckets":
			n, err := oneInt(d, rule)
			if err != nil {
				return err
			}
			if n < 1 || n > 600 {
				return d.Errf("invalid buckets %d: must be between 1 and 600", n)
			}
			t.Buckets = n
		case "min_requests":
			n, err := oneInt(d, rule)
			if err != nil {
				return err
			}
			if n < 0 {
				return d.Errf("invalid min_requests %d: must not be negative", n)
			}
			t.MinRequests = n
		default:
			return d.Errf("unknown trip rule '%s': want error_rate, latency, consecutive_failures, window, buckets or min_requests (error_rate and latency may also be relative: error_rate 2x legacy)", rule)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	// Write out the defaults of the rules left unsaid, so the adapted
	// JSON shows every rule in effect.
	if t.ErrorRate == 0 && !t.off(health.RuleErrorRate) {
		t.ErrorRate = DefaultErrorRate
	}
	if t.ConsecutiveFailures == 0 && !t.off(health.RuleConsecutiveFailures) {
		t.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if err := t.check(); err != nil {
		return d.Errf("trip: %v", err)
	}
	if err := (&Handler{Trip: t}).rules().Validate(); err != nil {
		return d.Errf("trip: %v", err)
	}
	h.Trip = t
	return nil
}

// ruleOff says whether the trip rule at the cursor reads "<rule> off",
// and if so consumes the "off". Only the rules proper can be off.
func ruleOff(d *caddyfile.Dispenser) bool {
	if !slices.Contains(tripRules, d.Val()) || !d.NextArg() {
		return false
	}
	if d.Val() == "off" && d.CountRemainingArgs() == 0 {
		return true
	}
	d.Prev()
	return false
}

func (h *Handler) unmarshalProbe(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 2 {
		return d.Err("probe takes an arm and a path, e.g. probe legacy GET /health interval 2s")
	}
	p := &Probe{Arm: args[0]}
	if p.Arm != armLegacy && p.Arm != armConsolidated {
		return d.Errf("invalid probe arm '%s': want legacy or consolidated", p.Arm)
	}
	rest := args[1:]
	if !strings.HasPrefix(rest[0], "/") {
		p.Method, rest = strings.ToUpper(rest[0]), rest[1:]
	}
	if len(rest) == 0 || !strings.HasPrefix(rest[0], "/") {
		return d.Err("probe needs a path starting with /, e.g. /health")
	}
	p.Path, rest = rest[0], rest[1:]
	for len(rest) > 0 {
		if len(rest) < 2 {
			return d.Errf("probe option '%s' needs a value", rest[0])
		}
		dur, err := caddy.ParseDuration(rest[1])
		if err != nil || dur <= 0 {
			return d.Errf("invalid probe %s '%s': want a positive duration", rest[0], rest[1])
		}
		switch rest[0] {
		case "interval":
			p.Interval = caddy.Duration(dur)
		case "timeout":
			p.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("unknown probe option '%s': want interval or timeout", rest[0])
		}
		rest = rest[2:]
	}
	h.Probe = p
	return nil
}

func (h *Handler) unmarshalAutoRecover(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	a := &AutoRecover{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "after":
			dur, err := oneDuration(d, "after")
			if err != nil {
				return err
			}
			a.After = caddy.Duration(dur)
		case "probe_weight":
			if !d.NextArg() {
				return d.ArgErr()
			}
			w, err := state.ParseWeight(d.Val())
			if err != nil || w == 0 || !strings.HasSuffix(d.Val(), "%") {
				return d.Errf("invalid probe_weight '%s': want a percent from 0.01%% to 100%%, like 1%%", d.Val())
			}
			a.ProbeWeight = w
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown auto_recover option '%s': want after or probe_weight", d.Val())
		}
	}
	h.AutoRecover = a
	return nil
}

func unmarshalAction(d *caddyfile.Dispenser) (Action, error) {
	args := d.RemainingArgs()
	if len(args) < 2 {
		return Action{}, d.Errf("%s takes an action: exec <command> [args...], webhook <url> or restore emergency|point <id>", d.Val())
	}
	var a Action
	switch args[0] {
	case "exec":
		a.Exec = args[1:]
	case "webhook":
		if len(args) != 2 {
			return Action{}, d.Err("webhook takes one URL")
		}
		a.Webhook = args[1]
	case "restore":
		switch {
		case args[1] == "emergency" && len(args) == 2:
			a.Restore = "emergency"
		case args[1] == "point" && len(args) == 3:
			a.Restore, a.Point = "point", args[2]
		default:
			return Action{}, d.Err("restore takes 'emergency' or 'point <id>'")
		}
	default:
		return Action{}, d.Errf("unknown action '%s': want exec, webhook or restore", args[0])
	}
	if err := a.check(); err != nil {
		return Action{}, d.Errf("%v", err)
	}
	return a, nil
}

// parseGlobal parses the switchback global option. Syntax:
//
//	switchback {
//		state local [<path>]
//		state consul {
//			address <host:port>
//			token <token>
//			prefix <prefix>
//			datacenter <dc>
//			tls {
//				ca_file <path>
//				cert_file <path>
//				key_file <path>
//			}
//		}
//		gateway <name>
//		lock_wait <duration>
//		backups <dir>
//		logs <dir>
//		points {
//			full_system <paths...>
//			configuration_only <paths...>
//			data <paths...>
//			component <name> <paths...>
//		}
//		retention {
//			keep_count <n>
//			keep_days <n>
//		}
//		hooks {
//			pre_restore <command line>
//			post_restore <command line>
//			timeout <duration>
//		}
//		validate {
//			url <url> [<status>]
//		}
//	}
func parseGlobal(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the switchback global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "switchback", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option's tokens; see
// parseGlobal for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("duplicate switchback option '%s'", opt)
		}
		seen[opt] = true
		switch opt {
		case "state":
			if err := a.unmarshalState(d); err != nil {
				return err
			}
		case "gateway":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.Gateway = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "lock_wait":
			dur, err := oneDuration(d, opt)
			if err != nil {
				return err
			}
			a.LockWait = caddy.Duration(dur)
		case "backups", "logs":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dir, err := absPath(d.Val())
			if err != nil {
				return d.Errf("%s: %v", opt, err)
			}
			if opt == "backups" {
				a.Backups = dir
			} else {
				a.Logs = dir
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "points":
			if err := a.unmarshalPoints(d); err != nil {
				return err
			}
		case "retention":
			r := &Retention{}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				key := d.Val()
				n, err := oneInt(d, key)
				if err != nil {
					return err
				}
				if n < 0 {
					return d.Errf("invalid %s %d: must not be negative", key, n)
				}
				switch key {
				case "keep_count":
					r.KeepCount = n
				case "keep_days":
					r.KeepDays = n
				default:
					return d.Errf("unknown retention option '%s': want keep_count or keep_days", key)
				}
			}
			a.Retention = r
		case "hooks":
			hk := &Hooks{}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				key := d.Val()
				switch key {
				case "pre_restore", "post_restore":
					args := d.RemainingArgs()
					if len(args) == 0 {
						return d.Errf("%s needs a command", key)
					}
					cmd := strings.Join(args, " ")
					if key == "pre_restore" {
						hk.PreRestore = cmd
					} else {
						hk.PostRestore = cmd
					}
				case "timeout":
					dur, err := oneDuration(d, key)
					if err != nil {
						return err
					}
					hk.Timeout = dur
				default:
					return d.Errf("unknown hook '%s': want pre_restore, post_restore or timeout", key)
				}
			}
			a.Hooks = hk
		case "validate":
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				if d.Val() != "url" {
					return d.Errf("unknown validate check '%s': want url <url> [<status>]", d.Val())
				}
				args := d.RemainingArgs()
				if len(args) < 1 || len(args) > 2 {
					return d.Err("url takes a URL and an optional status, e.g. url http://127.0.0.1:9002/health 200")
				}
				v := ValidateURL{URL: args[0], Status: 200}
				if !strings.HasPrefix(v.URL, "http://") && !strings.HasPrefix(v.URL, "https://") {
					return d.Errf("invalid validate url '%s': want http:// or https://", v.URL)
				}
				if len(args) == 2 {
					st, err := strconv.Atoi(args[1])
					if err != nil || st < 100 || st > 599 {
						return d.Errf("invalid validate status '%s': want an HTTP status code", args[1])
					}
					v.Status = st
				}
				a.Validate = append(a.Validate, v)
			}
		default:
			return d.Errf("unrecognized switchback option '%s'", opt)
		}
	}
	return nil
}

func (a *App) unmarshalState(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Err("state takes a backend: state local [<path>] or state consul { ... }")
	}
	switch d.Val() {
	case "local":
		s := &StateConfig{Backend: "local"}
		if d.NextArg() {
			p, err := absPath(d.Val())
			if err != nil {
				return d.Errf("state local: %v", err)
			}
			s.Path = p
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		a.State = s
	case "consul":
		if d.NextArg() {
			return d.ArgErr()
		}
		c := &ConsulConfig{}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			key := d.Val()
			switch key {
			case "address", "token", "prefix", "datacenter":
				if !d.NextArg() {
					return d.ArgErr()
				}
				val := d.Val()
				switch key {
				case "address":
					c.Address = val
				case "token":
					c.Token = val
				case "prefix":
					c.Prefix = val
				case "datacenter":
					c.Datacenter = val
				}
				if d.NextArg() {
					return d.ArgErr()
				}
			case "tls":
				for n2 := d.Nesting(); d.NextBlock(n2); {
					k := d.Val()
					if !d.NextArg() {
						return d.ArgErr()
					}
					switch k {
					case "ca_file":
						c.TLS.CAFile = d.Val()
					case "cert_file":
						c.TLS.CertFile = d.Val()
					case "key_file":
						c.TLS.KeyFile = d.Val()
					default:
						return d.Errf("unknown consul tls option '%s': want ca_file, cert_file or key_file", k)
					}
				}
			default:
				return d.Errf("unknown consul option '%s': want address, token, prefix, datacenter or tls", key)
			}
		}
		a.State = &StateConfig{Backend: "consul", Consul: c}
	default:
		return d.Errf("unknown state backend '%s': want local or consul", d.Val())
	}
	return nil
}

func (a *App) unmarshalPoints(d *caddyfile.Dispenser) error {
	a.Points = map[string][]string{}
	a.Components = map[string][]string{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		kind := d.Val()
		args := d.RemainingArgs()
		switch kind {
		case "full_system", "configuration_only", "data":
			if len(args) == 0 {
				return d.Errf("%s needs at least one path", kind)
			}
			if _, dup := a.Points[kind]; dup {
				return d.Errf("duplicate point type '%s'", kind)
			}
			paths, err := absPaths(args)
			if err != nil {
				return d.Errf("%s: %v", kind, err)
			}
			a.Points[kind] = paths
		case "component":
			if len(args) < 2 {
				return d.Err("component takes a name and at least one path")
			}
			if err := state.CheckName(args[0]); err != nil {
				return d.Errf("component name: %v", err)
			}
			if _, dup := a.Components[args[0]]; dup {
				return d.Errf("duplicate component '%s'", args[0])
			}
			paths, err := absPaths(args[1:])
			if err != nil {
				return d.Errf("component %s: %v", args[0], err)
			}
			a.Components[args[0]] = paths
		default:
			return d.Errf("unknown point type '%s': want full_system, configuration_only, data or component", kind)
		}
	}
	return nil
}

func absPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("empty path")
	}
	return filepath.Abs(p)
}

func absPaths(ps []string) ([]string, error) {
	out := make([]string, len(ps))
	for i, p := range ps {
		a, err := absPath(p)
		if err != nil {
			return nil, err
		}
		out[i] = a
	}
	return out, nil
}

func oneInt(d *caddyfile.Dispenser, name string) (int, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil {
		return 0, d.Errf("invalid %s '%s': want a whole number", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return n, nil
}

func oneDuration(d *caddyfile.Dispenser, name string) (time.Duration, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return 0, d.Errf("invalid %s '%s': %v", name, d.Val(), err)
	}
	if dur <= 0 {
		return 0, d.Errf("invalid %s '%s': must be positive", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return dur, nil
}

func onOff(d *caddyfile.Dispenser) (bool, error) {
	if !d.NextArg() {
		return false, d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return false, d.ArgErr()
	}
	switch v {
	case "on", "true":
		return true, nil
	case "off", "false":
		return false, nil
	}
	return false, d.Errf("invalid value '%s': want on or off", v)
}

// parseSize parses a byte size such as 65536, 64KiB, 64KB or 1MiB.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"B", 1}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)) && (u.suffix != "B" || len(s) > 1) {
			num, mult = s[:len(s)-len(u.suffix)], u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a size such as 65536, 64KiB or 1MiB")
	}
	if n > (1<<40)/mult {
		return 0, fmt.Errorf("size too large")
	}
	return n * mult, nil
}

// Interface guards.
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
)
