package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults for a switch.
const (
	DefaultReplayMaxBody = 64 << 10
	DefaultCookieMaxAge  = caddy.Duration(365 * 24 * time.Hour)
)

// Handler sends each request to one of two arms, legacy or consolidated,
// by the mode and weight of its switch, and watches each arm's answers.
// Its arms are handler chains, usually reverse_proxy.
type Handler struct {
	// Name names the switch. Required. A switch's state is kept under its
	// name, so two handlers in one config may not share a name.
	Name string `json:"name"`

	// Mode is the initial mode: split, legacy or consolidated (default
	// split). A mode set later through the admin API wins over it until
	// this value itself changes.
	Mode string `json:"mode,omitempty"`

	// Weight is the initial percent of sticky keys sent to consolidated in
	// split mode, 0 to 100 in steps of 0.01 (12.5 is 12.5%; default 0). A
	// weight set later through the admin API wins over it until this
	// value itself changes.
	Weight state.Weight `json:"weight,omitempty"`

	// Sticky says where the key that keeps a user on one arm comes from
	// (default: a cookie named "sb_user").
	Sticky *Sticky `json:"sticky,omitempty"`

	// LegacyRaw is the legacy arm's handler, usually a subroute holding
	// reverse_proxy. Required.
	LegacyRaw json.RawMessage `json:"legacy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// ConsolidatedRaw is the consolidated arm's handler. Required.
	ConsolidatedRaw json.RawMessage `json:"consolidated,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// Trip holds the rules that move the switch to legacy. Nil means the
	// defaults (error_rate 5%, consecutive_failures 10, window 10s,
	// min_requests 20); each rule given replaces only its own default.
	// Set Off to watch without tripping.
	Trip *Trip `json:"trip,omitempty"`

	// ReplayToLegacy replays on legacy a request that failed on
	// consolidated before any byte reached the client (default true).
	ReplayToLegacy *bool `json:"replay_to_legacy,omitempty"`

	// ReplayMaxBody is the largest request body buffered so that the
	// request can be replayed (default 64 KiB). A request with a larger
	// body is not replayed.
	ReplayMaxBody int64 `json:"replay_max_body,omitempty"`

	// ReplayUnsafeRaw are request matcher sets: a request with a method
	// that is not idempotent (POST, PATCH, ...) that one of them matches
	// is replayed on legacy after any failure of consolidated, as a GET
	// is. The operator declares such requests safe to run twice. Without
	// a match, such a request is replayed only when it carries an
	// Idempotency-Key header or consolidated provably never received it.
	ReplayUnsafeRaw caddyhttp.RawMatcherSets `json:"replay_unsafe,omitempty" caddy:"namespace=http.matchers"`

	// Probe actively checks an arm through its own handler chain.
	Probe *Probe `json:"probe,omitempty"`

	// AutoRecover, if set, lets a tripped switch try consolidated again on
	// its own. Nil means recovery is manual.
	AutoRecover *AutoRecover `json:"auto_recover,omitempty"`

	// OnTrip and OnRecover are run, in order, when the switch trips or
	// recovers on this gateway.
	OnTrip    []Action `json:"on_trip,omitempty"`
	OnRecover []Action `json:"on_recover,omitempty"`

	// Shadow, if set, sends copies of a share of the requests to the arm
	// that did not serve them and compares the answers (see shadow.go).
	Shadow *Shadow `json:"shadow,omitempty"`

	// Rollout, if set, walks the weight through steps (see Rollout). Nil
	// means the weight moves only by hand.
	Rollout *Rollout `json:"rollout,omitempty"`
	// Override, if set, lets testers name the arm of a request in a
	// header or cookie (see Override). Nil means no request can.
	Override *Override `json:"override,omitempty"`

	legacy       caddyhttp.MiddlewareHandler
	consolidated caddyhttp.MiddlewareHandler
	app          *App
	sw           *Switch
	win          *windows // this config's windows, the switch's from commit
	monitor      *health.Monitor
	probe        *health.Probe
	signer       *atomic.Pointer[cookieSigner] // swapped when a process-only key gives way to the fleet's
	cookieName   string
	cookieMaxAge int
	headerName   string
	stickyMode   string
	replay       bool
	maxBody      int64
	replayUnsafe caddyhttp.MatcherSets
	shadowRun    *shadowRunner // nil without a shadow block
	ovr          *overrider    // nil without an Override
	logger       *zap.Logger
	ctx          caddy.Context
	stepGates    []stepGate // conditions on leaving a rollout step, added in Provision (rollout.go)
}

// Sticky configures the sticky key.
type Sticky struct {
	// Source is "cookie", "header" or "client_ip" (default cookie).
	Source string `json:"source,omitempty"`

	// Name is the cookie or header name (default "sb_user" for cookies).
	Name string `json:"name,omitempty"`

	// Secret signs cookies. Empty means a random secret kept in the state
	// store, so every gateway sharing the store signs alike. It is never
	// logged or shown by the admin API.
	Secret string `json:"secret,omitempty"`

	// MaxAge is the cookie's lifetime (default 1 year).
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// Trip holds trip rules. Each rule given replaces its own default only:
// error_rate (default 5%) and consecutive_failures (default 10) stay on
// unless named in RulesOff, and latency is off unless given. (Before,
// giving any rule dropped the defaults of the others.)
type Trip struct {
	// Off disables tripping; the windows are still watched and reported.
	Off bool `json:"off,omitempty"`

	// ErrorRate trips when failures/requests over the window exceeds it,
	// as a fraction (0.05 is 5%). 0 means the default, 5%.
	ErrorRate float64 `json:"error_rate,omitempty"`

	// LatencyQuantile and Latency trip when that quantile of time to first
	// byte over the window exceeds Latency (e.g. 0.99 and 250ms). Unset,
	// the latency rule is off.
	LatencyQuantile float64        `json:"latency_quantile,omitempty"`
	Latency         caddy.Duration `json:"latency,omitempty"`

	// ConsecutiveFailures trips after that many failures in a row, for low
	// traffic. 0 means the default, 10.
	ConsecutiveFailures int `json:"consecutive_failures,omitempty"`

	// RulesOff turns rules off by name: "error_rate", "latency" or
	// "consecutive_failures". A rule named here must not also be given.
	RulesOff []string `json:"rules_off,omitempty"`

	// Window is the sliding window's span (default 10s), cut into Buckets
	// buckets (default 10).
	Window  caddy.Duration `json:"window,omitempty"`
	Buckets int            `json:"buckets,omitempty"`

	// MinRequests is how many requests the window must hold before the
	// rate and latency rules may fire (default 20). The rules relative to
	// legacy ask it of each arm's window.
	MinRequests int `json:"min_requests,omitempty"`

	// RelativeErrorRate and RelativeLatency compare consolidated with
	// legacy ("error_rate 2x legacy", "latency p99 1.5x legacy"). They
	// are off unless given, and work beside the rules above.
	RelativeErrorRate *RelativeErrorRate `json:"relative_error_rate,omitempty"`
	RelativeLatency   *RelativeLatency   `json:"relative_latency,omitempty"`
}

// tripRules are the names of the rules a Trip can turn off.
var tripRules = []string{health.RuleErrorRate, health.RuleLatency, health.RuleConsecutiveFailures}

// off says whether the named rule is turned off.
func (t *Trip) off(rule string) bool { return t != nil && slices.Contains(t.RulesOff, rule) }

// check reports a rule both given and turned off, an unknown rule name,
// and every rule being off (which is what "trip off" says).
func (t *Trip) check() error {
	if t == nil || t.Off {
		return nil
	}
	given := map[string]bool{
		health.RuleErrorRate:           t.ErrorRate != 0,
		health.RuleLatency:             t.LatencyQuantile != 0 || t.Latency != 0,
		health.RuleConsecutiveFailures: t.ConsecutiveFailures != 0,
	}
	for i, r := range t.RulesOff {
		if !slices.Contains(tripRules, r) {
			return fmt.Errorf("rules_off: unknown rule %q: want %s", r, strings.Join(tripRules, ", "))
		}
		if slices.Contains(t.RulesOff[:i], r) {
			return fmt.Errorf("rules_off: %s is named twice", r)
		}
		if given[r] {
			return fmt.Errorf("%s is both set and turned off", r)
		}
	}
	if t.off(health.RuleErrorRate) && t.off(health.RuleConsecutiveFailures) && !given[health.RuleLatency] && !t.relative() {
		return fmt.Errorf("every rule is off: write 'trip off' (\"off\": true) to watch without tripping")
	}
	return nil
}

// Probe is an active health check of one arm, sent through that arm's own
// handler chain, so it checks exactly what users would get.
type Probe struct {
	// Arm is "legacy" or "consolidated".
	Arm string `json:"arm"`
	// Method is the HTTP method (default GET).
	Method string `json:"method,omitempty"`
	// Path is the request path, e.g. /health.
	Path string `json:"path"`
	// Interval between probes (default 2s).
	Interval caddy.Duration `json:"interval,omitempty"`
	// Timeout of one probe (default 1s).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// AutoRecover is a half-open state after a trip: once After has passed on
// legacy, ProbeWeight percent of keys go back to consolidated; if its
// window stays healthy for After, the weight before the trip returns, and
// if a rule fires the switch trips again at once.
type AutoRecover struct {
	// After is both the cool-down on legacy and how long the trickle must
	// stay healthy (default 60s).
	After caddy.Duration `json:"after,omitempty"`
	// ProbeWeight is the percent of keys sent to consolidated while
	// half-open, in steps of 0.01 (default 1).
	ProbeWeight state.Weight `json:"probe_weight,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.switchback",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler: its arms, its switch in the app's
// registry, its rules and its monitor.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx = ctx
	h.logger = ctx.Logger().With(zap.String("switch", h.Name))
	if err := h.checkConfig(); err != nil {
		return err
	}
	if h.LegacyRaw == nil || h.ConsolidatedRaw == nil {
		return fmt.Errorf("switch %s: both arms, legacy and consolidated, must have a handler", h.Name)
	}
	mod, err := ctx.LoadModule(h, "LegacyRaw")
	if err != nil {
		return fmt.Errorf("switch %s: loading legacy arm: %w", h.Name, err)
	}
	h.legacy = directArm(mod.(caddyhttp.MiddlewareHandler))
	mod, err = ctx.LoadModule(h, "ConsolidatedRaw")
	if err != nil {
		return fmt.Errorf("switch %s: loading consolidated arm: %w", h.Name, err)
	}
	h.consolidated = directArm(mod.(caddyhttp.MiddlewareHandler))

	h.replay = h.ReplayToLegacy == nil || *h.ReplayToLegacy
	h.maxBody = h.ReplayMaxBody
	if h.maxBody == 0 {
		h.maxBody = DefaultReplayMaxBody
	}
	if h.ReplayUnsafeRaw != nil {
		sets, err := ctx.LoadModule(h, "ReplayUnsafeRaw")
		if err != nil {
			return fmt.Errorf("switch %s: loading replay_unsafe matchers: %w", h.Name, err)
		}
		if err := h.replayUnsafe.FromInterface(sets); err != nil {
			return fmt.Errorf("switch %s: replay_unsafe: %w", h.Name, err)
		}
	}

	appIface, err := ctx.App("switchback")
	if err != nil {
		return fmt.Errorf("switch %s: loading switchback app: %w", h.Name, err)
	}
	h.app = appIface.(*App)

	st := h.sticky()
	h.stickyMode = st.Source
	switch st.Source {
	case "cookie":
		h.cookieName = st.Name
		h.cookieMaxAge = int(time.Duration(st.MaxAge).Seconds())
		// The secret may be a placeholder such as {env.SB_COOKIE_SECRET},
		// so it never has to sit in the JSON config.
		secret, err := configuredSecret(st.Secret)
		if err != nil {
			return fmt.Errorf("switch %s: sticky cookie secret: %w", h.Name, err)
		}
		if len(secret) == 0 {
			if secret, err = h.app.cookieSecret(ctx); err != nil {
				return fmt.Errorf("switch %s: %w", h.Name, err)
			}
		}
		h.signer = new(atomic.Pointer[cookieSigner])
		h.signer.Store(newCookieSigner(secret))
	case "header":
		h.headerName = http.CanonicalHeaderKey(st.Name)
	}

	rules := h.rules()
	sw, err := h.app.register(h)
	if err != nil {
		return err
	}
	h.sw = sw
	if err := h.app.checkRecord(ctx, sw.name); err != nil {
		return err
	}
	if err := h.provisionShadow(ctx); err != nil {
		return err
	}
	h.addShadowGate()
	if h.Override != nil {
		if err := h.startOverride(ctx); err != nil {
			return err
		}
	}
	if h.Probe != nil && ctx.Value(caddyhttp.ServerCtxKey) == nil {
		return fmt.Errorf("switch %s: probe: the switch is not served by an http server, so its arm cannot be probed", h.Name)
	}
	// The windows and monitor are this config's own until commit: a
	// config that changes the window gets new ones, published then.
	h.win = sw.windowsFor(rules.buckets, rules.Window/time.Duration(rules.buckets))
	h.monitor = health.NewMonitor(health.MonitorOptions{
		Rules:        rules.Rules,
		Consolidated: h.win.consolidated,
		Legacy:       h.win.legacy,
		OnTrip:       h.tripped,

		OnBothUnhealthy: h.bothUnhealthy,
		BothUnhealthy:   sw.both.Load(),
	})
	return nil
}

// commit makes this handler's config the one in force on its switch,
// once Caddy has committed the config (App.commit): it publishes the
// windows, takes over the switch (its monitor, rules and actions), settles
// the switch's state with the store and starts the goroutines that watch
// it. Until then the handler may already serve, since Caddy starts a
// config's servers before it commits, but it changes nothing shared. The
// old config's Cleanup, which comes later, finds the switch taken and
// leaves it be.
func (h *Handler) commit() {
	sw := h.sw
	if sw.win.Load() != h.win {
		sw.win.Store(h.win)
	}
	prev := sw.handler.Swap(h)
	h.publishShadowCounts()
	if h.signer != nil && prev != nil && prev.signer != nil {
		// A changed key still accepts the previous one for a while.
		h.signer.Store(h.signer.Load().after(prev.signer.Load(), time.Now()))
	}
	if h.Trip == nil || !h.Trip.Off {
		goLoop(h.ctx, h.logger, taskMonitor, h.monitor.Run)
		goLoop(h.ctx, h.logger, taskLegacyWatch, h.legacyWatchLoop)
	} else if sw.both.Load() {
		h.bothUnhealthy(false, "", health.Comparison{}) // no monitor runs to judge it
	}
	if h.Probe != nil {
		if err := h.startProbe(h.ctx); err != nil {
			h.logger.Error("probe not started", zap.Error(err)) // Provision checked the server; not reached
		}
	}
	if err := h.app.configure(h.ctx, sw, h); err != nil {
		h.logger.Error("config not applied to the switch's stored state; serving on its last known state", zap.Error(err))
	}
	if h.AutoRecover != nil {
		goLoop(h.ctx, h.logger, taskAutoRecover, h.autoRecoverLoop)
	}
	if h.Rollout != nil {
		h.syncPlan(h.ctx) // the record shows the rollout once the config is in force
		goLoop(h.ctx, h.logger, taskRollout, h.rolloutLoop)
	} else {
		h.pauseOrphanRollout(h.ctx)
		goLoop(h.ctx, h.logger, taskStats, h.statsLoop)
	}
}

// directArm returns the single handler of an arm that is a subroute of one
// route with no matchers, group, terminal flag or error routes and one
// handler: "legacy { reverse_proxy ... }", the usual case. Calling that
// handler is what the subroute would do, but Caddy's Subroute compiles its
// route list on every request (the handler after it may differ from one
// request to the next), which costs allocations on the request path. Any
// other arm is kept whole.
func directArm(mh caddyhttp.MiddlewareHandler) caddyhttp.MiddlewareHandler {
	sr, ok := mh.(*caddyhttp.Subroute)
	if !ok || sr.Errors != nil || len(sr.Routes) != 1 {
		return mh
	}
	rt := sr.Routes[0]
	if len(rt.MatcherSets) != 0 || rt.Group != "" || rt.Terminal || len(rt.Handlers) != 1 {
		return mh
	}
	return rt.Handlers[0]
}

// checkConfig validates the handler's own fields; it has no side effects,
// so Validate and Provision share it.
func (h *Handler) checkConfig() error {
	if err := state.CheckName(h.Name); err != nil {
		return fmt.Errorf("switch name: %w", err)
	}
	if h.Mode != "" {
		if _, err := state.ParseMode(h.Mode); err != nil {
			return fmt.Errorf("switch %s: %w", h.Name, err)
		}
	}
	if err := state.CheckWeight(h.Weight); err != nil {
		return fmt.Errorf("switch %s: %w", h.Name, err)
	}
	if h.Sticky != nil {
		switch h.Sticky.Source {
		case "", "cookie", "header", "client_ip":
		default:
			return fmt.Errorf("switch %s: unknown sticky source %q: want cookie, header or client_ip", h.Name, h.Sticky.Source)
		}
		if h.Sticky.Source == "header" && h.Sticky.Name == "" {
			return fmt.Errorf("switch %s: sticky header needs a header name", h.Name)
		}
	}
	if h.ReplayMaxBody < 0 {
		return fmt.Errorf("switch %s: replay_max_body %d must not be negative", h.Name, h.ReplayMaxBody)
	}
	if err := h.Trip.check(); err != nil {
		return fmt.Errorf("switch %s: trip: %w", h.Name, err)
	}
	if err := h.rules().Validate(); err != nil {
		return fmt.Errorf("switch %s: trip: %w", h.Name, err)
	}
	if err := h.Shadow.check(); err != nil {
		return fmt.Errorf("switch %s: %w", h.Name, err)
	}
	if h.Override != nil {
		if err := h.Override.check(h.sticky()); err != nil {
			return fmt.Errorf("switch %s: %w", h.Name, err)
		}
	}
	if p := h.Probe; p != nil {
		if p.Arm != armLegacy && p.Arm != armConsolidated {
			return fmt.Errorf("switch %s: probe arm %q: want legacy or consolidated", h.Name, p.Arm)
		}
		if !strings.HasPrefix(p.Path, "/") {
			return fmt.Errorf("switch %s: probe path %q must start with /", h.Name, p.Path)
		}
	}
	if a := h.AutoRecover; a != nil {
		if a.After < 0 {
			return fmt.Errorf("switch %s: auto_recover after %s must be positive", h.Name, time.Duration(a.After))
		}
		if a.ProbeWeight < 0 || a.ProbeWeight > state.WeightMax {
			return fmt.Errorf("switch %s: auto_recover probe_weight %s%% must be between 0.01%% and 100%%", h.Name, a.ProbeWeight)
		}
	}
	if err := h.Rollout.check(); err != nil {
		return fmt.Errorf("switch %s: %w", h.Name, err)
	}
	for _, list := range [][]Action{h.OnTrip, h.OnRecover} {
		for _, a := range list {
			if err := a.check(); err != nil {
				return fmt.Errorf("switch %s: %w", h.Name, err)
			}
		}
	}
	return nil
}

// Validate implements caddy.Validator.
func (h *Handler) Validate() error { return h.checkConfig() }

// Cleanup releases the switch. Goroutines stop with the config's context.
func (h *Handler) Cleanup() error {
	if h.sw != nil {
		h.handlerGone()
		_, err := switches.Delete(h.Name)
		return err
	}
	return nil
}

func (h *Handler) handlerGone() {
	h.sw.handler.CompareAndSwap(h, nil)
}

// MinSecretLen is the least length of a configured cookie secret.
const MinSecretLen = 32

// configuredSecret expands a configured cookie secret's placeholders. An
// unset or empty placeholder and a secret shorter than MinSecretLen are
// errors, which never show the secret.
func configuredSecret(raw string) ([]byte, error) {
	if raw == "" {
		return nil, nil
	}
	s, err := caddy.NewReplacer().ReplaceOrErr(raw, true, true)
	if err != nil {
		what := "a placeholder in it"
		if names := envPlaceholder.FindAllString(raw, -1); len(names) > 0 {
			what = strings.Join(names, ", ")
		}
		return nil, fmt.Errorf("%s is unset or empty: set it, or drop secret to use the state store's key", what)
	}
	if len(s) < MinSecretLen {
		return nil, fmt.Errorf("it is %d bytes, and must be at least %d (e.g. openssl rand -hex 32)", len(s), MinSecretLen)
	}
	return []byte(s), nil
}

// envPlaceholder finds {env.NAME} placeholders, whose names an error may
// show (never the secret around them).
var envPlaceholder = regexp.MustCompile(`\{env\.[A-Za-z_][A-Za-z0-9_]*\}`)

func (h *Handler) sticky() Sticky {
	s := Sticky{Source: "cookie", Name: "sb_user", MaxAge: DefaultCookieMaxAge}
	if h.Sticky != nil {
		if h.Sticky.Source != "" {
			s.Source = h.Sticky.Source
		}
		if h.Sticky.Name != "" {
			s.Name = h.Sticky.Name
		}
		if h.Sticky.MaxAge > 0 {
			s.MaxAge = h.Sticky.MaxAge
		}
		s.Secret = h.Sticky.Secret
	}
	return s
}

// compiledRules are the trip rules with defaults filled in.
type compiledRules struct {
	health.Rules
	buckets int
}

// Defaults of the trip rules.
const (
	DefaultErrorRate           = 0.05
	DefaultConsecutiveFailures = 10
	DefaultWindow              = 10 * time.Second
	DefaultBuckets             = 10
	DefaultMinRequests         = 20
)

func (h *Handler) rules() compiledRules {
	r := compiledRules{
		Rules: health.Rules{
			ErrorRate:           DefaultErrorRate,
			ConsecutiveFailures: DefaultConsecutiveFailures,
			MinRequests:         DefaultMinRequests,
			Window:              DefaultWindow,
		},
		buckets: DefaultBuckets,
	}
	t := h.Trip
	if t == nil {
		return r
	}
	// Each rule given replaces its own default; RulesOff turns one off.
	if t.ErrorRate != 0 {
		r.ErrorRate = t.ErrorRate
	}
	if t.ConsecutiveFailures != 0 {
		r.ConsecutiveFailures = uint64(max(t.ConsecutiveFailures, 0))
	}
	r.LatencyQuantile, r.LatencyLimit = t.LatencyQuantile, time.Duration(t.Latency)
	if t.off(health.RuleErrorRate) {
		r.ErrorRate = 0
	}
	if t.off(health.RuleLatency) {
		r.LatencyQuantile, r.LatencyLimit = 0, 0
	}
	if t.off(health.RuleConsecutiveFailures) {
		r.ConsecutiveFailures = 0
	}
	if t.Window != 0 {
		r.Window = time.Duration(t.Window)
	}
	if t.Buckets != 0 {
		r.buckets = t.Buckets
	}
	t.relativeRules(&r.Rules)
	if t.MinRequests != 0 {
		r.MinRequests = uint64(max(t.MinRequests, 0))
	} else if r.ErrorRate == 0 && r.LatencyQuantile == 0 && !r.Relative() {
		r.MinRequests = 0 // nothing to gate
	}
	return r
}

// ServeHTTP picks an arm and serves the request there, replaying a failed
// consolidated answer on legacy when it can.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if h.ovr != nil {
		if arm, ok := h.ovr.arm(r); ok {
			return h.serveOverride(arm, w, r, next, repl)
		}
	}
	v := h.sw.view.Load()
	consolidated := h.pick(v, w, r)
	if h.shadowRun != nil && h.shadowRun.sample(v, consolidated, r) {
		return h.serveShadowed(consolidated, w, r, next, repl)
	}
	return h.serveArm(consolidated, w, r, next, repl)
}

// serveArm serves the request on the arm picked.
func (h *Handler) serveArm(consolidated bool, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	if !consolidated {
		return h.serve(armLegacy, h.legacy, w, r, next, repl)
	}
	if !h.replay {
		return h.serve(armConsolidated, h.consolidated, w, r, next, repl)
	}
	return h.serveReplayable(w, r, next, repl)
}

// serveReplayable serves a request on consolidated so that legacy can
// answer instead if consolidated fails before any byte reached the client
// and the request is safe to repeat (see replayClass and neverReceived).
// The arm gets a copy of the request, so its rewrites do not reach the
// replay, and a body that streams through with a copy kept (teeBody).
func (h *Handler) serveReplayable(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	class := h.replayClass(r)
	rec := getRecorder(w, true)
	rec.replace = class != ""
	ar := getArmRequest(r)
	var body *teeBody
	if hasBody(r) {
		body = newTeeBody(r.Body, h.maxBody)
		ar.req.Body, ar.req.GetBody = &body.first, body.getBody
		rec.body = body
	}
	setArm(repl, armConsolidated)
	start := time.Now()
	err, aborted := callArm(h.consolidated, rec, &ar.req, next)
	out := classify(r, rec, err, aborted != nil)
	h.observe(armConsolidated, start, rec, out)
	putArmRequest(ar)

	reason, replay := h.replayDecision(class, rec, err, out, body)
	if out == outcomeFailed {
		h.sw.metrics.decision(reason, replay).Inc()
	}
	if !replay {
		if body != nil {
			body.stop() // a transport still writing reads no more
		}
		held := rec.held
		putRecorder(rec)
		if aborted != nil && !held {
			panic(aborted) // the client's stream broke: as reverse_proxy meant it
		}
		if held {
			// Kept back, yet not replayable after all (the body outgrew
			// its copy meanwhile): nothing reached the client yet.
			return caddyhttp.Error(http.StatusBadGateway, errors.New("switchback: consolidated failed and the request cannot be replayed"))
		}
		return err
	}
	putRecorder(rec)
	// The consolidated answer never reached the client: drop it and let
	// legacy answer instead, with a body of its own.
	h.sw.metrics.replays.Inc()
	if repl != nil {
		repl.Set("http.switchback.replayed", true)
	}
	if body == nil {
		return h.serve(armLegacy, h.legacy, w, r, next, repl)
	}
	orig := r.Body
	r.Body = body.rewind()
	defer func() { r.Body = orig }()
	return h.serve(armLegacy, h.legacy, w, r, next, repl)
}

// replayDecision says whether a consolidated attempt that ended with out
// is replayed on legacy, and why (the reason label of the metric).
func (h *Handler) replayDecision(class string, rec *recorder, err error, out outcome, body *teeBody) (string, bool) {
	if out != outcomeFailed {
		return "", false
	}
	switch {
	case class == "" && !neverReceived(err):
		return skipUnsafeMethod, false
	case rec.sent:
		return skipResponseStarted, false
	case body != nil && !body.replayable():
		return skipBodyTooLarge, false
	case class == "":
		return replayNeverReceived, true
	}
	return class, true
}

// callArm runs an arm and recovers a panic with http.ErrAbortHandler,
// which reverse_proxy uses to abort a stream that broke after its status
// went out, so the caller can judge it. Other panics go on.
func callArm(hd caddyhttp.MiddlewareHandler, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (err error, aborted any) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // the panic value itself
				panic(v)
			}
			aborted = v
		}
	}()
	return hd.ServeHTTP(w, r, next), nil
}

// serve runs one arm and observes its result.
func (h *Handler) serve(arm string, hd caddyhttp.MiddlewareHandler, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	setArm(repl, arm)
	rec := getRecorder(w, false)
	start := time.Now()
	err, aborted := callArm(hd, rec, r, next)
	h.observe(arm, start, rec, classify(r, rec, err, aborted != nil))
	putRecorder(rec)
	if aborted != nil {
		panic(aborted)
	}
	return err
}

// The arm names boxed once, so setting the placeholder allocates nothing.
var (
	boxedLegacy       any = armLegacy
	boxedConsolidated any = armConsolidated
)

func setArm(repl *caddy.Replacer, arm string) {
	if repl == nil {
		return
	}
	if arm == armConsolidated {
		repl.Set("http.switchback.arm", boxedConsolidated)
	} else {
		repl.Set("http.switchback.arm", boxedLegacy)
	}
}

// observe records one answer in the arm's window and counters, and lets
// the monitor judge consolidated's.
// Only upstream failures count: a client that went away is counted apart
// and left out of the windows, and a 4xx of a handler (basic_auth,
// request_body) is an answer like any other.
func (h *Handler) observe(arm string, start time.Time, rec *recorder, out outcome) {
	i := armIndex(arm)
	switch out {
	case outcomeClientGone:
		h.sw.metrics.clientGone[i].Inc()
		return
	case outcomeClientError:
		h.sw.metrics.clientErrors[i].Inc()
	}
	failed := out == outcomeFailed
	end := rec.firstByte
	if end.IsZero() {
		end = time.Now()
	}
	latency := end.Sub(start)
	now := health.Mono(end) // monotonic: a wall clock step must not move the windows
	h.sw.metrics.requests[i].Inc()
	if failed {
		h.sw.metrics.failures[i].Inc()
	}
	win := h.sw.win.Load()
	win.arm(arm).Observe(now, latency, failed)
	if st := h.sw.step.Load(); st != nil {
		st.arms[i].Observe(latency, failed)
	}
	if arm == armConsolidated {
		h.monitor.Observed(now, failed, latency)
	}
}

// pick says whether the request goes to consolidated.
func (h *Handler) pick(v *view, w http.ResponseWriter, r *http.Request) bool {
	switch v.mode {
	case state.ModeLegacy:
		return false
	case state.ModeConsolidated:
		return true
	}
	if v.threshold == 0 {
		return false
	}
	if v.threshold >= buckets {
		return true
	}
	key, ok := h.stickyKey(w, r)
	if !ok {
		return pickRandom(v.threshold)
	}
	return pickConsolidated(h.sw.salt, key, v.threshold)
}

// stickyKey finds the request's sticky key. With cookies, a request with
// no valid signed cookie gets a new key and a Set-Cookie for it.
func (h *Handler) stickyKey(w http.ResponseWriter, r *http.Request) (string, bool) {
	switch h.stickyMode {
	case "header":
		if v := r.Header[h.headerName]; len(v) > 0 && v[0] != "" {
			return v[0], true
		}
		return "", false
	case "client_ip":
		if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
			return ip, true
		}
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		return host, err == nil && host != ""
	}
	s := h.signer.Load()
	key, resign, ok := s.find(r.Header, h.cookieName)
	if ok && !resign {
		return key, true
	}
	val := ""
	if ok {
		val = s.sign(key) // signed with the previous key: same key, new MAC
	} else {
		key, val = s.issue()
	}
	http.SetCookie(w, &http.Cookie{
		Name:     h.cookieName,
		Value:    val,
		Path:     "/",
		MaxAge:   h.cookieMaxAge,
		HttpOnly: true,
		Secure:   clientHTTPS(r),
		SameSite: http.SameSiteLaxMode,
	})
	return key, true
}

// clientHTTPS says whether the client reached us over https: TLS ended
// here, or a trusted proxy (Caddy's trusted_proxies) says so in
// X-Forwarded-Proto, as Caddy's own cookie selection policy decides.
func clientHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); !trusted {
		return false
	}
	v := r.Header["X-Forwarded-Proto"]
	return len(v) > 0 && v[len(v)-1] == "https"
}

// armRequest is the copy of a replayable request that the consolidated arm
// serves. Handlers in the arm (uri, rewrite, request_header) change the
// request in place; on the copy, a replay on legacy still gets the request
// as the client sent it. The copy has its own URL and header map, and
// header values of its own (vals), so not even an in-place edit of a value
// reaches the client's request. Copies are pooled so the request path does
// not allocate; the arm must not keep the request once its ServeHTTP
// returns, which holds for reverse_proxy (it sends its own clone upstream).
type armRequest struct {
	req  http.Request
	url  url.URL
	hdr  http.Header
	vals []string
}

var armRequests = sync.Pool{New: func() any { return &armRequest{hdr: make(http.Header)} }}

func getArmRequest(r *http.Request) *armRequest {
	a := armRequests.Get().(*armRequest)
	a.req = *r
	if r.URL != nil {
		a.url = *r.URL
		a.req.URL = &a.url
	}
	a.vals = copyHeader(a.hdr, r.Header, a.vals)
	a.req.Header = a.hdr
	return a
}

func putArmRequest(a *armRequest) {
	clear(a.hdr)
	clear(a.vals)
	a.req, a.url = http.Request{}, url.URL{}
	armRequests.Put(a)
}

// copyHeader copies src into dst with values of their own, taken from the
// backing array vals, so neither side's in-place edit reaches the other;
// it returns vals for reuse. Each value slice is capped, so an append
// copies rather than running into its neighbour.
func copyHeader(dst, src http.Header, vals []string) []string {
	vals = vals[:0]
	n := 0
	for _, v := range src {
		n += len(v)
	}
	if cap(vals) < n {
		vals = make([]string, 0, n)
	}
	for k, v := range src {
		i := len(vals)
		vals = append(vals, v...)
		dst[k] = vals[i:len(vals):len(vals)]
	}
	return vals
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
