package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

// tripped is the monitor's OnTrip: a rule fired on consolidated. The switch
// goes to legacy in memory at once, on the goroutine that saw the failure,
// so the very next request is served by legacy; writing the store, events,
// logs and actions follow on their own goroutine.
func (h *Handler) tripped(v health.Verdict) {
	now := time.Now().UTC()
	legacyBad, legacyWhy := h.legacyHealth(health.Now())
	ev := h.tripEvidence(v) // nil unless a rollout is under way
	var aborted state.Decision
	abortedRollout := false
	trip := func(cur *state.Switch) bool {
		if cur.Mode == state.ModeLegacy && cur.Tripped {
			return false // tripped already, here or elsewhere
		}
		if !cur.Tripped {
			cur.RecoverWeight = cur.Weight
		}
		cur.Mode, cur.Tripped, cur.Rule, cur.Reason = state.ModeLegacy, true, v.Rule, v.Reason
		cur.By, cur.Gateway, cur.Since = "trip "+v.Rule, h.app.gateway, now
		cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = legacyBad, legacyWhy
		if d, ok := abortOnTrip(cur, v, ev, h.app.gateway, now); ok {
			aborted, abortedRollout = d, true
		}
		cur.Record(state.Event{Kind: "trip", Mode: state.ModeLegacy, Weight: cur.Weight, Rule: v.Rule, Reason: v.Reason, By: cur.By, Gateway: h.app.gateway, At: now})
		return true
	}
	if !h.sw.changeLocal(trip) {
		return
	}
	h.sw.metrics.trip(h.Name, v.Rule).Inc()
	goTask(h.logger, taskTrip, func() {
		fields := []zap.Field{zap.String("rule", v.Rule), zap.String("reason", v.Reason), zap.String("gateway", h.app.gateway)}
		if legacyBad {
			h.logger.Error("switch tripped to legacy, but LEGACY ALSO UNHEALTHY", append(fields, zap.String("legacy", legacyWhy))...)
		} else {
			h.logger.Error("switch tripped to legacy", fields...)
		}
		rec, err := h.sw.persist(h.ctx, h.app, trip, nil)
		if err != nil {
			h.logger.Error("trip not yet written to the state store", zap.Error(err))
		}
		// The fleet's actions run once per trip, on the gateway whose
		// write won. A gateway that cannot reach the store cannot know,
		// and runs them: two pages are better than none.
		won := err != nil || tripWrittenBy(rec, h.app.gateway, now)
		if abortedRollout && won {
			h.rolloutDecided(rec, aborted)
		}
		data := map[string]any{"event": "tripped", "switch": h.Name, "rule": v.Rule, "reason": v.Reason, "gateway": h.app.gateway, "legacy_unhealthy": legacyBad}
		if v.Evidence != nil {
			data["threshold"], data["p_value"], data["evidence"] = v.Threshold, v.PValue, *v.Evidence
		}
		h.app.emit("switchback.tripped", data)
		if !won {
			h.logger.Info("on_trip left to the gateway whose trip was written first", zap.String("by", rec.Gateway), zap.String("rule", rec.Rule))
			return
		}
		h.runActions(h.ctx, "on_trip", h.OnTrip, data)
	})
}

// tripWrittenBy says whether rec holds the trip that gateway made at at:
// its latest trip event is that one. Another gateway's trip, written
// first, leaves ours unwritten (it would trip a tripped switch).
func tripWrittenBy(rec state.Switch, gateway string, at time.Time) bool {
	for i := len(rec.History) - 1; i >= 0; i-- {
		if e := rec.History[i]; e.Kind == "trip" {
			return e.Gateway == gateway && e.At.Equal(at)
		}
	}
	return false
}

// legacyHealth says whether legacy is failing too at now (on the clock of
// health.Now), by its window and its probe, with a reason for the record.
func (h *Handler) legacyHealth(now int64) (bool, string) {
	if bad, why := h.monitor.LegacyUnhealthy(now); bad {
		return true, "legacy also unhealthy: " + why
	}
	if h.probe != nil && h.Probe.Arm == armLegacy && !h.probe.Healthy() {
		return true, fmt.Sprintf("legacy also unhealthy: probe %s %s: %s", h.probe.Method, h.Probe.Path, h.probe.LastError())
	}
	return false, ""
}

// legacyWatchLoop keeps watching legacy while the switch is tripped. A trip
// judges legacy at the instant it fires, when legacy's window may not yet
// hold enough of its failures; once all traffic is on legacy, a legacy
// that breaks the rules is marked unhealthy on the record, logged and
// counted, so the gateway never shows a failing legacy as all well.
func (h *Handler) legacyWatchLoop(ctx context.Context) {
	tick := time.NewTicker(legacyWatchEvery)
	defer tick.Stop()
	var goodSince time.Time // legacy healthy without a break since, while marked unhealthy
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rec, _ := h.sw.Record()
		now := time.Now()
		switch {
		case !rec.Tripped:
			goodSince = time.Time{}
		case rec.LegacyUnhealthy:
			goodSince = h.watchLegacyRecovery(ctx, rec, now, goodSince)
		default:
			h.watchLegacyFailure(ctx, rec, now)
		}
	}
}

// watchLegacyFailure marks a tripped switch's legacy unhealthy when it
// breaks the rules or its probe fails.
func (h *Handler) watchLegacyFailure(ctx context.Context, rec state.Switch, now time.Time) {
	bad, why := h.legacyHealth(health.Mono(now))
	if !bad {
		return
	}
	changed := false
	_, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		if !cur.Tripped || cur.LegacyUnhealthy || !cur.Since.Equal(rec.Since) {
			return false
		}
		cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = true, why
		changed = true
		return true
	})
	if !changed {
		return
	}
	h.logger.Error("switch is on legacy, but LEGACY ALSO UNHEALTHY", zap.String("legacy", why), zap.String("trip", rec.Reason), zap.Error(err))
	h.app.emit("switchback.legacy_unhealthy", map[string]any{"switch": h.Name, "reason": why, "gateway": h.app.gateway})
}

// watchLegacyRecovery clears the unhealthy mark once legacy has been
// positively healthy for a whole window, so the mark says how legacy is,
// not how it once was, and a legacy hovering at a threshold does not flap.
// It returns the new start of legacy's healthy run.
func (h *Handler) watchLegacyRecovery(ctx context.Context, rec state.Switch, now, goodSince time.Time) time.Time {
	bad, _ := h.legacyHealth(health.Mono(now))
	if bad || !h.monitor.LegacyHealthy(health.Mono(now)) {
		return time.Time{}
	}
	if goodSince.IsZero() {
		return now
	}
	span := h.monitor.Rules().Window
	if now.Sub(goodSince) < span {
		return goodSince
	}
	changed := false
	_, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
		if !cur.Tripped || !cur.LegacyUnhealthy || !cur.Since.Equal(rec.Since) {
			return false
		}
		cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = false, ""
		changed = true
		return true
	})
	if changed {
		h.logger.Warn("legacy healthy again; the switch stays tripped", zap.String("was", rec.LegacyUnhealthyReason), zap.Duration("healthy_for", now.Sub(goodSince)), zap.Error(err))
		h.app.emit("switchback.legacy_healthy", map[string]any{"switch": h.Name, "gateway": h.app.gateway})
	}
	return time.Time{}
}

// legacyWatchEvery is how often a tripped switch re-judges legacy.
const legacyWatchEvery = 250 * time.Millisecond

// noteRemoteTrip logs a trip that another gateway made.
func (h *Handler) noteRemoteTrip(rec state.Switch) {
	if rec.Gateway == h.app.gateway {
		return
	}
	h.logger.Warn("switch tripped on another gateway; following it to legacy",
		zap.String("gateway", rec.Gateway), zap.String("reason", rec.Reason))
}

// autoRecoverLoop runs the half-open cycle of auto_recover for the config's
// lifetime: after a trip, legacy serves alone for After; then ProbeWeight
// percent of keys try consolidated; if the window stays healthy for After,
// the weight before the trip returns. A rule firing while half-open trips
// the switch again at once (through the monitor, as any trip).
func (h *Handler) autoRecoverLoop(ctx context.Context) {
	after := time.Duration(h.AutoRecover.After)
	if after <= 0 {
		after = 60 * time.Second
	}
	probeWeight := h.AutoRecover.ProbeWeight
	if probeWeight == 0 {
		probeWeight = state.WeightPercent(1)
	}
	tick := time.NewTicker(min(after/10, 500*time.Millisecond))
	defer tick.Stop()
	var clock stateClock
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rec, _ := h.sw.Record()
		if !rec.Tripped || clock.age(rec.Since, time.Now(), health.Now()) < after {
			continue
		}
		now := time.Now().UTC()
		switch rec.Mode {
		case state.ModeLegacy:
			h.sw.win.Load().consolidated.Reset()
			changed := false
			_, err := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
				if !cur.Tripped || cur.Mode != state.ModeLegacy || !cur.Since.Equal(rec.Since) {
					return false
				}
				changed = true
				cur.Mode, cur.Weight, cur.Since, cur.By, cur.Gateway = state.ModeSplit, probeWeight, now, "auto_recover", h.app.gateway
				cur.Reason = fmt.Sprintf("auto_recover: half-open, %s%% to consolidated for %s", probeWeight, after)
				cur.Record(state.Event{Kind: "half_open", Mode: cur.Mode, Weight: cur.Weight, Reason: cur.Reason, By: cur.By, Gateway: cur.Gateway, At: now})
				return true
			})
			if !changed {
				continue // reset, re-tripped or moved elsewhere meanwhile
			}
			h.monitor.Rearm()
			h.logger.Warn("auto_recover: half-open", zap.Stringer("probe_weight", probeWeight), zap.Error(err))
		case state.ModeSplit:
			st := h.sw.win.Load().consolidated.Stats(health.Now())
			if !h.monitor.Armed() || st.Requests == 0 {
				continue // tripped again, or nothing to judge yet
			}
			if _, bad := h.monitor.Rules().Evaluate(st); bad {
				continue // the monitor trips it
			}
			changed := false
			recovered, _ := h.sw.change(ctx, h.app, func(cur *state.Switch) bool {
				if !cur.Tripped || cur.Mode != state.ModeSplit || !cur.Since.Equal(rec.Since) {
					return false
				}
				changed = true
				cur.Weight, cur.Tripped, cur.Rule = cur.RecoverWeight, false, ""
				cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = false, ""
				cur.Since, cur.By, cur.Gateway = now, "auto_recover", h.app.gateway
				cur.Reason = fmt.Sprintf("auto_recover: consolidated healthy for %s (n=%d)", after, st.Requests)
				cur.Record(state.Event{Kind: "recover", Mode: cur.Mode, Weight: cur.Weight, Reason: cur.Reason, By: cur.By, Gateway: cur.Gateway, At: now})
				return true
			})
			// Only a recovery made here is announced: the switch may have
			// tripped again, or been changed by an admin or another
			// gateway, since rec was read. A store that is down does not
			// matter: the recovery holds here and is written later.
			if changed {
				h.recovered(recovered)
			}
		}
	}
}

// stateClock times how long a switch has been in the state its record
// began at Since. Since is wall-clock time, perhaps another host's, so its
// age is read from the wall clock once, when this process first sees that
// Since, and from then on advanced by the monotonic clock: a clock step
// afterwards neither cuts auto_recover's cool-down short nor stretches
// it. A Since in the future (a host whose clock runs ahead) counts as now.
type stateClock struct {
	since time.Time     // the Since being timed
	age0  time.Duration // its age when first seen
	mono0 int64         // health.Now() then
}

// age returns the age of since at wallNow (time.Now()) and mono
// (health.Now(), read at the same moment).
func (c *stateClock) age(since, wallNow time.Time, mono int64) time.Duration {
	if !c.since.Equal(since) {
		c.since, c.age0, c.mono0 = since, max(wallNow.Round(0).Sub(since), 0), mono
	}
	return c.age0 + time.Duration(mono-c.mono0)
}

// recovered logs, emits and runs on_recover after a recovery on this
// gateway. The actions run under the config's context, not the caller's:
// an admin request's context ends with its response.
func (h *Handler) recovered(rec state.Switch) {
	h.logger.Info("switch recovered", zap.String("reason", rec.Reason), zap.String("by", rec.By), zap.Stringer("weight", rec.Weight))
	data := map[string]any{"event": "recovered", "switch": h.Name, "reason": rec.Reason, "by": rec.By, "gateway": h.app.gateway, "weight": rec.Weight}
	h.app.emit("switchback.recovered", data)
	goTask(h.logger, taskActions, func() { h.runActions(h.ctx, "on_recover", h.OnRecover, data) })
}

// startProbe starts the active probe of an arm. The probe is sent through
// the arm's own handler chain rather than to an address, so it checks what
// users of that arm would get, through the same reverse_proxy and options.
//
// A handler may expect of a request what Caddy's Server.ServeHTTP gives it
// (caddyhttp.PrepareRequest): the *caddyhttp.Server that serves it (
// reverse_proxy reads its log settings, invoke its named routes), the
// replacer with the http.* placeholders, the vars with the client IP, the
// route groups, the original request and the extra log fields. So the
// probe's request is prepared with the very Server the switch is served
// by. Caddy's http app provisions each server's routes under a context
// that holds that server (caddyhttp.ServerCtxKey), and the handler's own
// context is derived from it, so Provision can take it from there: it is
// the real server, not a stand-in whose zero fields might differ from
// what a real request sees. A switch provisioned outside an http server
// has no such server, and a probe there is a config error.
func (h *Handler) startProbe(ctx caddy.Context) error {
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return fmt.Errorf("switch %s: probe: the switch is not served by an http server, so its arm cannot be probed", h.Name)
	}
	arm := h.legacy
	if h.Probe.Arm == armConsolidated {
		arm = h.consolidated
	}
	method := h.Probe.Method
	if method == "" {
		method = http.MethodGet
	}
	interval, timeout := time.Duration(h.Probe.Interval), time.Duration(h.Probe.Timeout)
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	h.probe = &health.Probe{
		Method:   method,
		URL:      "http://switchback-probe" + h.Probe.Path,
		Interval: interval,
		Timeout:  timeout,
		Client:   &http.Client{Transport: armTransport{arm: arm, server: srv, logger: h.logger, task: taskProbe}, Timeout: timeout},
	}
	goLoop(ctx, h.logger, taskProbe, h.probe.Run)
	return nil
}

// armTransport is an http.RoundTripper that serves a request with an arm's
// handler chain in process, as the server would serve a request from this
// host.
type armTransport struct {
	arm    caddyhttp.MiddlewareHandler
	server *caddyhttp.Server
	logger *zap.Logger
	task   string // whose request it is, for a panic's log and count (default probe)
}

// probeRemoteAddr is the client address of a probe: the gateway itself.
const probeRemoteAddr = "127.0.0.1:0"

func (t armTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r.RemoteAddr = probeRemoteAddr
	w := httptest.NewRecorder()
	if err := t.serve(w, r); err != nil {
		return nil, err
	}
	return w.Result(), nil
}

// serve serves r with the arm into w. An arm that panics fails the
// request, as it would fail a client's (the http server recovers a
// handler's panic), and never ends the caller's loop.
// http.ErrAbortHandler is how reverse_proxy gives up on a broken upstream
// stream: an arm failure, not a fault of ours.
func (t armTransport) serve(w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				task := t.task
				if task == "" {
					task = taskProbe
				}
				notePanic(t.logger, task, v)
			}
			err = fmt.Errorf("the arm panicked: %v", v)
		}
	}()
	r.RequestURI = r.URL.RequestURI()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, t.server)
	return t.arm.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("the arm did not answer"))
	}))
}
