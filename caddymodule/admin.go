package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/leanvibe/switchback/health"
	"github.com/leanvibe/switchback/state"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is admin.api.switchback: switches, rollback points, operations,
// metrics and the dashboard, under /switchback/. It sits behind Caddy's
// admin endpoint and so behind its protections (listen address, origin
// enforcement, remote admin's mTLS).
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.switchback",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/switchback/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// maxBody bounds an admin request body.
const maxBody = 1 << 20

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rel := strings.TrimPrefix(r.URL.Path, "/switchback/")
	if rest, ok := strings.CutPrefix(rel, "ui"); ok && (rest == "" || rest[0] == '/') {
		return serveUI(w, r, uiAdmin, rest)
	}
	app, err := activeApp()
	if err != nil {
		return err
	}
	return app.serveAPI(w, r, rel)
}

// serveAPI routes one request of the switchback API, rel being its path
// below the API's root ("switches/main/mode"). The admin endpoint serves
// it under /switchback/ and the switchback_dashboard handler under api/;
// the routes and what they do are the same for both.
func (app *App) serveAPI(w http.ResponseWriter, r *http.Request, rel string) error {
	path := strings.TrimSuffix(rel, "/")
	parts := strings.Split(path, "/")
	switch {
	case path == "session":
		return app.handleSession(w, r)
	case path == "switches":
		return app.handleSwitches(w, r)
	case parts[0] == "switches" && len(parts) == 2:
		return app.handleSwitch(w, r, parts[1])
	case parts[0] == "switches" && len(parts) >= 3 && parts[2] == "shadow":
		return app.handleShadow(w, r, parts[1], parts[3:])
	case parts[0] == "switches" && len(parts) == 3 && parts[2] == "rollout":
		return app.handleRollout(w, r, parts[1])
	case parts[0] == "switches" && len(parts) == 4 && parts[2] == "override" && parts[3] == "sign":
		return app.handleOverrideSign(w, r, parts[1])
	case parts[0] == "switches" && len(parts) == 3:
		return app.handleSwitchAction(w, r, parts[1], parts[2])
	case path == "metrics":
		return app.handleMetrics(w, r)
	case parts[0] == "points" || parts[0] == "operations" || path == "emergency" || path == "validate" || path == "cleanup":
		return app.handleRollbackAPI(w, r, parts)
	}
	return apiErr(http.StatusNotFound, "no such switchback endpoint: %s", r.URL.Path)
}

// activeApp is the switchback app of the running config.
func activeApp() (*App, error) {
	v, err := caddy.ActiveContext().AppIfConfigured("switchback")
	if err != nil {
		return nil, apiErr(http.StatusServiceUnavailable, "the running config has no switchback app: load a config with a switchback directive or global option")
	}
	return v.(*App), nil
}

func apiErr(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

func method(r *http.Request, want string) error {
	if r.Method != want {
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed: use %s", r.Method, want)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// decodeBody decodes a JSON object body strictly: unknown fields, trailing
// data and bodies over 1 MiB are refused with a message saying what is
// wrong.
func decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, "reading request body: %v", err)
	}
	if len(body) > maxBody {
		return apiErr(http.StatusRequestEntityTooLarge, "request body over %d bytes", maxBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr):
			return apiErr(http.StatusBadRequest, "invalid request body: field %q must be a %s, got a JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return apiErr(http.StatusBadRequest, "invalid request body: malformed JSON: the body ends before the object does")
		case errors.As(err, &syntaxErr):
			return apiErr(http.StatusBadRequest, "invalid request body: malformed JSON at byte %d: %v", syntaxErr.Offset, err)
		}
		return apiErr(http.StatusBadRequest, "invalid request body: %v", err)
	}
	if dec.More() {
		return apiErr(http.StatusBadRequest, "invalid request body: extra data after the JSON object")
	}
	return nil
}

// who describes the author of a change: on the dashboard, the user that
// the site's authentication named (see actorFrom); on the admin endpoint,
// the body's "by" if given, and the remote address.
func who(r *http.Request, by string) string {
	if actor, ok := actorFrom(r); ok {
		return actor
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if by == "" {
		by = "admin api"
	}
	if len(by) > 128 {
		by = by[:128]
	}
	return by + " from " + host
}

// SwitchStatus is a switch as the admin API shows it.
type SwitchStatus struct {
	state.Switch
	Pending bool                 `json:"pending,omitempty"` // not yet in the store
	Arms    map[string]ArmStatus `json:"arms,omitempty"`
	Rules   *RuleStatus          `json:"rules,omitempty"`

	// RolloutEvidence is the fleet's evidence at the rollout's current
	// step, as the engine last summed it.
	RolloutEvidence *state.Evidence `json:"rollout_evidence,omitempty"`
	// BothUnhealthy says both arms fail alike, as this gateway judges
	// now: the relative rules hold, since moving traffic would not help.
	BothUnhealthy       bool   `json:"both_unhealthy"`
	BothUnhealthyReason string `json:"both_unhealthy_reason,omitempty"`
}

// ArmStatus is an arm's window.
type ArmStatus struct {
	Requests            uint64  `json:"requests"`
	Failures            uint64  `json:"failures"`
	ErrorRate           float64 `json:"error_rate"`
	P50                 float64 `json:"p50_ms"`
	P90                 float64 `json:"p90_ms"`
	P99                 float64 `json:"p99_ms"`
	P999                float64 `json:"p999_ms"`
	ConsecutiveFailures uint64  `json:"consecutive_failures"`
	Window              string  `json:"window"`
	ProbeHealthy        *bool   `json:"probe_healthy,omitempty"`
	ProbeError          string  `json:"probe_error,omitempty"`
}

// RuleStatus shows the trip rules in force.
type RuleStatus struct {
	Armed               bool    `json:"armed"`
	Off                 bool    `json:"off,omitempty"`
	ErrorRate           float64 `json:"error_rate,omitempty"`
	LatencyQuantile     float64 `json:"latency_quantile,omitempty"`
	LatencyMS           float64 `json:"latency_ms,omitempty"`
	ConsecutiveFailures uint64  `json:"consecutive_failures,omitempty"`
	// RulesOff names the rules not in effect (with a zero above).
	RulesOff    []string `json:"rules_off,omitempty"`
	MinRequests uint64   `json:"min_requests"`
	Window      string   `json:"window"`
	AutoRecover bool     `json:"auto_recover,omitempty"`
	// Relative lists the rules relative to legacy, with the arms'
	// current ratio.
	Relative []RelativeRuleStatus `json:"relative,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (a *App) switchStatus(sw *Switch, detail bool) SwitchStatus {
	rec, pending := sw.Record()
	if !detail {
		rec.History = nil
	}
	sw.rolloutStatus(&rec)
	st := SwitchStatus{Switch: rec, Pending: pending, Arms: map[string]ArmStatus{}, RolloutEvidence: sw.rolloutEvidence(rec.Rollout)}
	now := health.Now()
	h := sw.handler.Load()
	if win := sw.win.Load(); win != nil {
		for _, arm := range []string{armLegacy, armConsolidated} {
			s := win.arm(arm).Stats(now)
			as := ArmStatus{
				Requests: s.Requests, Failures: s.Failures, ErrorRate: s.ErrorRate,
				P50: ms(s.P50), P90: ms(s.P90), P99: ms(s.P99), P999: ms(s.P999),
				ConsecutiveFailures: s.ConsecutiveFailures, Window: (time.Duration(win.buckets) * win.width).String(),
			}
			if h != nil && h.probe != nil && h.Probe.Arm == arm {
				ok := h.probe.Healthy()
				as.ProbeHealthy, as.ProbeError = &ok, h.probe.LastError()
			}
			st.Arms[arm] = as
		}
	}
	if h != nil && h.monitor != nil {
		r := h.monitor.Rules()
		st.Rules = &RuleStatus{
			Armed: h.monitor.Armed(), Off: h.Trip != nil && h.Trip.Off,
			ErrorRate: r.ErrorRate, LatencyQuantile: r.LatencyQuantile, LatencyMS: ms(r.LatencyLimit),
			ConsecutiveFailures: r.ConsecutiveFailures, MinRequests: r.MinRequests, Window: r.Window.String(),
			AutoRecover: h.AutoRecover != nil,
		}
		if r.ErrorRate == 0 {
			st.Rules.RulesOff = append(st.Rules.RulesOff, health.RuleErrorRate)
		}
		if r.LatencyQuantile == 0 {
			st.Rules.RulesOff = append(st.Rules.RulesOff, health.RuleLatency)
		}
		if r.ConsecutiveFailures == 0 {
			st.Rules.RulesOff = append(st.Rules.RulesOff, health.RuleConsecutiveFailures)
		}
		st.Rules.Relative = relativeStatus(h.monitor, now)
	}
	if st.BothUnhealthy = sw.both.Load(); st.BothUnhealthy {
		if why := sw.bothReason.Load(); why != nil {
			st.BothUnhealthyReason = *why
		}
	}
	return st
}

func (a *App) lookup(name string) (*Switch, error) {
	sw, ok := a.registry[name]
	if !ok {
		return nil, apiErr(http.StatusNotFound, "unknown switch %q (switches: %s)", name, strings.Join(a.switchNames(), ", "))
	}
	return sw, nil
}

// GET /switchback/switches
func (a *App) handleSwitches(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	out := struct {
		Gateway  string         `json:"gateway"`
		Store    StoreStatus    `json:"store"`
		Switches []SwitchStatus `json:"switches"`
	}{Gateway: a.gateway, Store: a.storeStatus(), Switches: []SwitchStatus{}}
	for _, name := range a.switchNames() {
		out.Switches = append(out.Switches, a.switchStatus(a.registry[name], false))
	}
	return writeJSON(w, http.StatusOK, out)
}

// GET /switchback/switches/{name}
func (a *App) handleSwitch(w http.ResponseWriter, r *http.Request, name string) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	sw, err := a.lookup(name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.switchStatus(sw, true))
}

// switchChange builds the change of a mode, weight or reset request; the
// admin API and the offline CLI both apply it.
func switchChange(action string, req changeRequest, by, gateway string, now time.Time) (func(cur *state.Switch) bool, error) {
	switch action {
	case "mode":
		mode, err := state.ParseMode(req.Mode)
		if err != nil {
			return nil, apiErr(http.StatusBadRequest, "%v", err)
		}
		weight, given := state.Weight(0), len(req.Weight) > 0
		if given {
			if weight, err = parseWeight(req.Weight); err != nil {
				return nil, err
			}
		}
		return func(cur *state.Switch) bool {
			if given {
				cur.Weight = weight
			} else if mode != state.ModeLegacy && cur.Tripped {
				cur.Weight = cur.RecoverWeight
			}
			setMode(cur, mode, req.Reason, by, gateway, now)
			return true
		}, nil
	case "weight":
		if len(req.Weight) == 0 {
			return nil, apiErr(http.StatusBadRequest, `missing weight: send {"weight": N} with N a percent from 0 to 100, like 25 or 0.5`)
		}
		if req.Mode != "" {
			return nil, apiErr(http.StatusBadRequest, "set the mode with the mode action, not weight")
		}
		weight, err := parseWeight(req.Weight)
		if err != nil {
			return nil, err
		}
		return func(cur *state.Switch) bool {
			cur.Weight, cur.Reason, cur.By, cur.Gateway, cur.Since = weight, req.Reason, by, gateway, now
			cur.Record(state.Event{Kind: "weight", Mode: cur.Mode, Weight: weight, Reason: req.Reason, By: by, Gateway: gateway, At: now})
			return true
		}, nil
	case "reset":
		if req.Mode != "" || len(req.Weight) > 0 {
			return nil, apiErr(http.StatusBadRequest, "reset takes only a reason: it returns the switch to split at its weight before the trip")
		}
		return func(cur *state.Switch) bool {
			if cur.Tripped {
				cur.Weight = cur.RecoverWeight
			}
			reason := req.Reason
			if reason == "" {
				reason = "reset"
			}
			setMode(cur, state.ModeSplit, reason, by, gateway, now)
			cur.History[len(cur.History)-1].Kind = "recover"
			return true
		}, nil
	}
	return nil, apiErr(http.StatusNotFound, "unknown switch action %q: want mode, weight or reset", action)
}

// changeRequest is the body of the mode, weight and reset routes.
type changeRequest struct {
	Mode   string          `json:"mode,omitempty"`
	Weight json.RawMessage `json:"weight,omitempty"`
	Reason string          `json:"reason,omitempty"`
	By     string          `json:"by,omitempty"`
}

// parseWeight reads a weight: a JSON number of percent from 0 to 100 with
// at most two decimals (25, 0.5, 12.25).
func parseWeight(raw json.RawMessage) (state.Weight, error) {
	var w state.Weight
	if string(bytes.TrimSpace(raw)) == "null" {
		// Unmarshal leaves a Weight be on null, which would read as 0%.
		return 0, apiErr(http.StatusBadRequest, "invalid weight null: must be a number of percent from 0 to 100, like 25 or 0.5")
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return 0, apiErr(http.StatusBadRequest, "%v", err)
	}
	return w, nil
}

// postToSwitch checks that r is a POST to the switch name and decodes its
// body into req: what every switch action's route does first.
func (a *App) postToSwitch(r *http.Request, name string, req any) (*Switch, error) {
	if err := method(r, http.MethodPost); err != nil {
		return nil, err
	}
	sw, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	if err := decodeBody(r, req); err != nil {
		return nil, err
	}
	return sw, nil
}

// POST /switchback/switches/{name}/{mode|weight|reset}
func (a *App) handleSwitchAction(w http.ResponseWriter, r *http.Request, name, action string) error {
	var req changeRequest
	sw, err := a.postToSwitch(r, name, &req)
	if err != nil {
		return err
	}
	fn, err := switchChange(action, req, who(r, req.By), a.gateway, time.Now().UTC())
	if err != nil {
		return err
	}
	wasTripped := func() bool { rec, _ := sw.Record(); return rec.Tripped }()
	rec, err := sw.change(r.Context(), a, fn)
	status := http.StatusOK
	out := struct {
		SwitchStatus
		Warning string `json:"warning,omitempty"`
	}{SwitchStatus: a.switchStatus(sw, false)}
	if err != nil {
		if !errors.Is(err, state.ErrUnavailable) {
			return apiErr(http.StatusInternalServerError, "%v", err)
		}
		status, out.Warning = http.StatusAccepted, err.Error()
	}
	if wasTripped && !rec.Tripped && rec.Mode != state.ModeLegacy {
		if h := sw.handler.Load(); h != nil {
			h.recovered(rec)
		}
	}
	return writeJSON(w, status, out)
}

func (a *App) switchNames() []string {
	names := make([]string, 0, len(a.registry))
	for n := range a.registry {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// GET /switchback/metrics, in Prometheus text format.
func (a *App) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	if err := method(r, http.MethodGet); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	var buf bytes.Buffer
	var series bytes.Buffer
	fmt.Fprintf(&series, "switchback_store_degraded{backend=%q} %g\n", a.store.Describe(), b2f(a.rt.degraded.Load()))
	names := a.switchNames()
	for _, name := range names {
		a.registry[name].metrics.set.WritePrometheus(&series)
	}
	// Keep each metric's series together across switches, as the text
	// format wants.
	lines := strings.SplitAfter(strings.TrimSuffix(series.String(), "\n"), "\n")
	slices.SortStableFunc(lines, func(x, y string) int {
		return strings.Compare(metricName(x), metricName(y))
	})
	for _, l := range lines {
		buf.WriteString(strings.TrimSuffix(l, "\n") + "\n")
	}
	fmt.Fprintln(&buf, "# TYPE switchback_request_duration_seconds histogram")
	for _, name := range names {
		if win := a.registry[name].win.Load(); win != nil {
			for _, arm := range []string{armLegacy, armConsolidated} {
				win.arm(arm).Cumulative().WritePrometheus(&buf, "switchback_request_duration_seconds", fmt.Sprintf(`switch=%q,arm=%q`, name, arm))
			}
		}
	}
	a.writeRollbackMetrics(&buf)
	goroutinePanics.WritePrometheus(&buf)
	_, err := w.Write(buf.Bytes())
	return err
}

func metricName(line string) string {
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		return line[:i]
	}
	return line
}
