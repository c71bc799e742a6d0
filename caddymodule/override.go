package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/state"
)

// Override lets testers send a request to a named arm whatever the
// switch's mode and weight, so QA can try consolidated before the first
// step of a rollout, or while the switch is tripped. The request names
// the arm in a header or a cookie, with one of two values:
//
//   - "consolidated" or "legacy", honoured only from a Trusted client
//     address (the client IP as Caddy determines it, which honours the
//     server's trusted_proxies);
//   - a signed value "<arm>.<expiry>.<mac>" from anywhere, made by
//     "switchback override sign <arm>": expiry is a Unix time in seconds,
//     and mac the first 16 bytes of HMAC-SHA256 over the switch, the arm
//     and the expiry, in unpadded base64url, keyed with the state store's
//     override key (secrets/override, made on first use and shared by the
//     fleet; apart from the sticky cookie key, so neither can stand for
//     the other).
//
// Any other value, a forged or expired one, or a plain one from an
// untrusted address, is ignored, and counted: the request goes by the
// normal pick. An overridden request is counted in its own series
// (switchback_override_requests_total), never in the arm's window, so it
// never trips the switch and never counts as a rollout's evidence; and a
// failure on consolidated is not replayed on legacy, since the tester
// asked to see consolidated's answer.
type Override struct {
	// Source is "header" or "cookie".
	Source string `json:"source"`

	// Name is the header or cookie name, e.g. X-Switchback-Arm or
	// sb_force.
	Name string `json:"name"`

	// Trusted are the client addresses (CIDRs or single IPs, or
	// "private_ranges") that may name an arm with a plain value. Empty
	// means only signed values are honoured.
	Trusted []string `json:"trusted,omitempty"`
}

// privateRanges is what "private_ranges" stands for, as in Caddy's own
// matchers and trusted_proxies.
var privateRanges = []string{"192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/8", "127.0.0.1/8", "fd00::/8", "::1"}

// prefixes parses Trusted.
func (o *Override) prefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range o.Trusted {
		if s == "private_ranges" {
			for _, p := range privateRanges {
				pf, _ := parsePrefix(p)
				out = append(out, pf)
			}
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("override trusted %q: want a CIDR such as 10.0.0.0/8, an IP, or private_ranges", s)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// check validates o; it has no side effects.
func (o *Override) check(sticky Sticky) error {
	switch o.Source {
	case "header", "cookie":
	default:
		return fmt.Errorf("override source %q: want header or cookie", o.Source)
	}
	if o.Name == "" {
		return fmt.Errorf("override %s needs a name, e.g. override header X-Switchback-Arm", o.Source)
	}
	if o.Source == sticky.Source && strings.EqualFold(o.Name, sticky.Name) {
		return fmt.Errorf("override %s %s is also the sticky %s: give the override a name of its own", o.Source, o.Name, sticky.Source)
	}
	_, err := o.prefixes()
	return err
}

// unmarshalOverride parses
//
//	override header|cookie <name> [trusted <cidr|ip|private_ranges>...]
func (h *Handler) unmarshalOverride(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 2 {
		return d.Err("override takes a source and a name, e.g. override header X-Switchback-Arm trusted 10.0.0.0/8")
	}
	o := &Override{Source: args[0], Name: args[1]}
	if o.Source != "header" && o.Source != "cookie" {
		return d.Errf("unknown override source '%s': want header or cookie", o.Source)
	}
	if rest := args[2:]; len(rest) > 0 {
		if rest[0] != "trusted" {
			return d.Errf("unknown override option '%s': want trusted <cidr...>", rest[0])
		}
		if len(rest) == 1 {
			return d.Err("override trusted needs at least one CIDR, IP or private_ranges")
		}
		o.Trusted = rest[1:]
	}
	if _, err := o.prefixes(); err != nil {
		return d.Errf("%v", err)
	}
	h.Override = o
	return nil
}

// Reasons an override was ignored, the reason label of
// switchback_override_ignored_total.
const (
	overrideMalformed = "malformed"
	overrideUntrusted = "untrusted"
	overrideForged    = "forged"
	overrideExpired   = "expired"
	overrideNoKey     = "no_key" // signed, but the key is not loaded yet
)

var overrideReasons = []string{overrideMalformed, overrideUntrusted, overrideForged, overrideExpired, overrideNoKey}

// overrider applies a switch's Override to requests. It is built once in
// Provision and only read after, except for the key, which may arrive
// late when the store is down at Provision.
type overrider struct {
	name     string // the switch's
	header   string // canonical header name, or ""
	cookie   string // cookie name, or ""
	trusted  []netip.Prefix
	key      atomic.Pointer[[]byte]
	requests [2]*metrics.Counter // by arm index
	failures [2]*metrics.Counter
	ignored  map[string]*metrics.Counter
}

// newOverrider compiles o for switch sw.
func newOverrider(o *Override, sw *Switch) (*overrider, error) {
	trusted, err := o.prefixes()
	if err != nil {
		return nil, err
	}
	ov := &overrider{name: sw.name, trusted: trusted, ignored: map[string]*metrics.Counter{}}
	if o.Source == "header" {
		ov.header = http.CanonicalHeaderKey(o.Name)
	} else {
		ov.cookie = o.Name
	}
	set := sw.metrics.set
	for i, arm := range []string{armLegacy, armConsolidated} {
		ov.requests[i] = set.GetOrCreateCounter(fmt.Sprintf(`switchback_override_requests_total{switch=%q,arm=%q}`, sw.name, arm))
		ov.failures[i] = set.GetOrCreateCounter(fmt.Sprintf(`switchback_override_failures_total{switch=%q,arm=%q}`, sw.name, arm))
	}
	for _, r := range overrideReasons {
		ov.ignored[r] = set.GetOrCreateCounter(fmt.Sprintf(`switchback_override_ignored_total{switch=%q,reason=%q}`, sw.name, r))
	}
	return ov, nil
}

// value returns the override value the request carries, if any. It
// allocates nothing.
func (ov *overrider) value(r *http.Request) (string, bool) {
	if ov.header != "" {
		if v := r.Header[ov.header]; len(v) > 0 && v[0] != "" {
			return v[0], true
		}
		return "", false
	}
	for _, line := range r.Header["Cookie"] {
		for len(line) > 0 {
			var v string
			var match bool
			v, line, match = nextCookie(line, ov.cookie)
			if match && v != "" {
				return v, true
			}
		}
	}
	return "", false
}

// arm says which arm the request is sent to by its override, if it has
// one that holds. A request without the header or cookie costs a map
// lookup and allocates nothing. One that has it but does not hold is
// counted by reason and goes by the normal pick.
func (ov *overrider) arm(r *http.Request) (string, bool) {
	val, ok := ov.value(r)
	if !ok {
		return "", false
	}
	arm, reason := ov.judge(r, val, time.Now())
	if reason != "" {
		ov.ignored[reason].Inc()
		return "", false
	}
	return arm, true
}

// judge returns the arm an override value names, or why it is ignored.
func (ov *overrider) judge(r *http.Request, val string, now time.Time) (arm, reason string) {
	v, err := parseOverrideValue(val)
	switch {
	case err != nil:
		return "", overrideMalformed
	case !v.signed:
		if !ov.trustedClient(r) {
			return "", overrideUntrusted
		}
		return v.arm, ""
	}
	key := ov.key.Load()
	switch {
	case key == nil:
		return "", overrideNoKey
	case !v.validMAC(*key, ov.name):
		return "", overrideForged
	case now.Unix() >= v.expiry:
		return "", overrideExpired
	}
	return v.arm, ""
}

// trustedClient says whether the request comes from a trusted address:
// the client IP as Caddy determined it (honouring trusted_proxies), or the
// connection's peer when Caddy set none.
func (ov *overrider) trustedClient(r *http.Request) bool {
	if len(ov.trusted) == 0 {
		return false
	}
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		ip, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range ov.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// overrideValue is a parsed override value.
type overrideValue struct {
	arm    string
	signed bool
	expiry int64  // Unix seconds; signed only
	mac    string // base64url; signed only
}

// overrideMACLen is the length of an override value's MAC: 16 bytes in
// unpadded base64url.
const overrideMACLen = 22

// maxOverrideValue bounds the length of a value worth parsing.
const maxOverrideValue = 64

// parseOverrideValue parses "consolidated", "legacy", or
// "<arm>.<expiry>.<mac>" with expiry a Unix time in decimal seconds and
// mac 22 base64url characters.
func parseOverrideValue(s string) (overrideValue, error) {
	if len(s) > maxOverrideValue {
		return overrideValue{}, errors.New("too long")
	}
	arm, rest, signed := strings.Cut(s, ".")
	if arm != armLegacy && arm != armConsolidated {
		return overrideValue{}, fmt.Errorf("unknown arm %q: want legacy or consolidated", arm)
	}
	if !signed {
		return overrideValue{arm: arm}, nil
	}
	exp, mac, ok := strings.Cut(rest, ".")
	if !ok || exp == "" || len(exp) > 12 || len(mac) != overrideMACLen {
		return overrideValue{}, errors.New("want <arm>.<expiry>.<mac>")
	}
	n := int64(0)
	for i := 0; i < len(exp); i++ {
		c := exp[i]
		if c < '0' || c > '9' {
			return overrideValue{}, errors.New("expiry is not a number")
		}
		n = n*10 + int64(c-'0')
	}
	for i := 0; i < len(mac); i++ {
		c := mac[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return overrideValue{}, errors.New("mac is not base64url")
		}
	}
	return overrideValue{arm: arm, signed: true, expiry: n, mac: mac}, nil
}

// overrideMAC returns the MAC of an override of switch sw to arm until
// expiry (Unix seconds).
func overrideMAC(key []byte, sw, arm string, expiry int64) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("switchback override v1\x00" + sw + "\x00" + arm + "\x00" + strconv.FormatInt(expiry, 10)))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// validMAC checks v's MAC for switch sw, in constant time.
func (v overrideValue) validMAC(key []byte, sw string) bool {
	want := overrideMAC(key, sw, v.arm, v.expiry)
	return subtle.ConstantTimeCompare([]byte(want), []byte(v.mac)) == 1
}

// signOverride makes a signed override value of switch sw to arm, valid
// until expiry.
func signOverride(key []byte, sw, arm string, expiry time.Time) string {
	exp := expiry.Unix()
	return arm + "." + strconv.FormatInt(exp, 10) + "." + overrideMAC(key, sw, arm, exp)
}

// overrideKeyName is the override key's name under secrets/.
const overrideKeyName = "override"

// startOverride compiles the switch's override and loads its key. When the
// store is down, plain values from trusted addresses work at once and
// signed ones are refused (counted as no_key) until a retry loads it.
func (h *Handler) startOverride(ctx caddy.Context) error {
	ov, err := newOverrider(h.Override, h.sw)
	if err != nil {
		return fmt.Errorf("switch %s: %w", h.Name, err)
	}
	h.ovr = ov
	load := func(ctx context.Context) error {
		key, err := h.app.loadSecretNamed(ctx, overrideKeyName)
		if err == nil {
			ov.key.Store(&key)
		}
		return err
	}
	if err := load(ctx); err != nil {
		if !errors.Is(err, state.ErrUnavailable) {
			return fmt.Errorf("switch %s: override key: %w", h.Name, err)
		}
		h.logger.Warn("state store unavailable: signed overrides are refused until the override key loads", zap.Error(err))
		goLoop(ctx, h.logger, taskOverrideKey, func(ctx context.Context) {
			for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				if load(ctx) == nil {
					h.logger.Info("override key loaded: signed overrides are honoured")
					return
				}
			}
		})
	}
	return nil
}

// serveOverride serves a request on the arm its override names. It is
// counted apart and never observed in the arm's window, and a failure is
// not replayed: the tester sees the arm's own answer.
func (h *Handler) serveOverride(arm string, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	hd := h.legacy
	if arm == armConsolidated {
		hd = h.consolidated
	}
	setArm(repl, arm)
	if repl != nil {
		repl.Set("http.switchback.override", true)
	}
	rec := getRecorder(w, false)
	err, aborted := callArm(hd, rec, r, next)
	i := armIndex(arm)
	h.ovr.requests[i].Inc()
	if classify(r, rec, err, aborted != nil) == outcomeFailed {
		h.ovr.failures[i].Inc()
	}
	putRecorder(rec)
	if aborted != nil {
		panic(aborted)
	}
	return err
}

// OverrideToken is a signed override value, as "switchback override sign"
// and POST /switchback/switches/{name}/override/sign return it.
type OverrideToken struct {
	Switch  string    `json:"switch"`
	Arm     string    `json:"arm"`
	Value   string    `json:"value"`
	Expires time.Time `json:"expires"`
}

// OverrideSignRequest is the body of POST
// /switchback/switches/{name}/override/sign.
type OverrideSignRequest struct {
	// Arm is "consolidated" or "legacy".
	Arm string `json:"arm"`
	// TTL is how long the value is honoured (default 24h, at most 30
	// days).
	TTL caddy.Duration `json:"ttl,omitempty"`
}

// Defaults and limits of a signed override's lifetime.
const (
	DefaultOverrideTTL = 24 * time.Hour
	MaxOverrideTTL     = 30 * 24 * time.Hour
)

// checkSign validates a sign request and returns its TTL.
func (req OverrideSignRequest) check() (time.Duration, error) {
	if req.Arm != armLegacy && req.Arm != armConsolidated {
		return 0, fmt.Errorf("unknown arm %q: want consolidated or legacy", req.Arm)
	}
	ttl := time.Duration(req.TTL)
	if ttl == 0 {
		ttl = DefaultOverrideTTL
	}
	if ttl < time.Second || ttl > MaxOverrideTTL {
		return 0, fmt.Errorf("ttl %v out of range: want 1s to %v", ttl, MaxOverrideTTL)
	}
	return ttl, nil
}

// signOverrideFor signs an override of switch name with the store's
// override key: the gateway's admin API and the offline CLI both come
// here.
func (a *App) signOverrideFor(ctx context.Context, name string, req OverrideSignRequest, now time.Time) (OverrideToken, error) {
	ttl, err := req.check()
	if err != nil {
		return OverrideToken{}, err
	}
	key, err := a.loadSecretNamed(ctx, overrideKeyName)
	if err != nil {
		return OverrideToken{}, fmt.Errorf("override key: %w", err)
	}
	exp := now.Add(ttl).Truncate(time.Second)
	return OverrideToken{Switch: name, Arm: req.Arm, Value: signOverride(key, name, req.Arm, exp), Expires: exp.UTC()}, nil
}

// POST /switchback/switches/{name}/override/sign
func (a *App) handleOverrideSign(w http.ResponseWriter, r *http.Request, name string) error {
	var req OverrideSignRequest
	if _, err := a.postToSwitch(r, name, &req); err != nil {
		return err
	}
	if _, err := req.check(); err != nil {
		return apiErr(http.StatusBadRequest, "%v", err)
	}
	tok, err := a.signOverrideFor(r.Context(), name, req, time.Now())
	if err != nil {
		return apiErr(http.StatusServiceUnavailable, "%v", err)
	}
	return writeJSON(w, http.StatusOK, tok)
}
