package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/shadow"
	"github.com/leanvibe/switchback/state"
)

// Shadow sends a copy of a share of the requests to the arm that did not
// serve them, compares the two answers and reports the differences per
// route (see package shadow). The client only ever gets the serving arm's
// answer, unchanged and never later.
type Shadow struct {
	// Sample is the share of requests, as a fraction (0.1 is 10%), whose
	// copy goes to the other arm (default 10%).
	Sample float64 `json:"sample,omitempty"`

	// Methods are the methods shadowed (default GET, HEAD, OPTIONS). A
	// method not listed, POST included, is never shadowed.
	Methods []string `json:"methods,omitempty"`

	// MaxBody is the largest answer, once decoded, that is compared
	// (default 256 KiB); a larger one is counted as skipped. A request
	// body is copied up to replay_max_body; a larger one is skipped too.
	MaxBody int64 `json:"max_body,omitempty"`

	// MaxInflight is how many shadow requests may be in flight at once
	// (default 64); beyond, a copy is dropped and counted.
	MaxInflight int `json:"max_inflight,omitempty"`

	// Timeout bounds a shadow request (default 5s).
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Noise is the share of sampled requests also sent a second time to
	// the serving arm, to tell noise from real differences (default 5%;
	// 0 turns noise cancellation off).
	Noise *float64 `json:"noise,omitempty"`

	// IgnoreHeaders are headers not compared (Date, Content-Length,
	// Transfer-Encoding, Connection, Keep-Alive and Age never are).
	IgnoreHeaders []string `json:"ignore_headers,omitempty"`

	// IgnoreJSON are JSON Pointers (RFC 6901) not compared, with their
	// subtree; "*" is any one segment.
	IgnoreJSON []string `json:"ignore_json,omitempty"`

	// RedactHeaders and RedactJSON are replaced by "[redacted]" in the
	// samples the report keeps (Authorization, Cookie, Set-Cookie and
	// Proxy-Authorization always are).
	RedactHeaders []string `json:"redact_headers,omitempty"`
	RedactJSON    []string `json:"redact_json,omitempty"`

	// MaxMismatch, if set, is the mismatch rate, as a fraction, above
	// which a rollout step waits.
	MaxMismatch *float64 `json:"max_mismatch,omitempty"`
}

// Defaults of the shadow block.
const (
	DefaultShadowSample      = 0.10
	DefaultShadowNoise       = 0.05
	DefaultShadowMaxInflight = 64
	DefaultShadowTimeout     = 5 * time.Second
	// ShadowHeader marks a shadow request, so an arm's logs can tell it
	// apart.
	ShadowHeader = "X-Switchback-Shadow"
)

// DefaultShadowMethods are shadowed when the block lists none.
var DefaultShadowMethods = []string{http.MethodGet, http.MethodHead, http.MethodOptions}

func (s *Shadow) rulesOptions() shadow.Options {
	return shadow.Options{IgnoreHeaders: s.IgnoreHeaders, IgnoreJSON: s.IgnoreJSON,
		RedactHeaders: s.RedactHeaders, RedactJSON: s.RedactJSON, MaxBody: s.MaxBody}
}

// check validates the block; it has no side effects.
func (s *Shadow) check() error {
	if s == nil {
		return nil
	}
	if s.Sample < 0 || s.Sample > 1 {
		return fmt.Errorf("shadow sample %g must be above 0 and at most 1 (100%%)", s.Sample)
	}
	for name, f := range map[string]*float64{"noise": s.Noise, "max_mismatch": s.MaxMismatch} {
		if f != nil && (*f < 0 || *f > 1 || math.IsNaN(*f)) {
			return fmt.Errorf("shadow %s %g must be between 0 and 1 (100%%)", name, *f)
		}
	}
	for _, m := range s.Methods {
		if err := checkMethod(m); err != nil {
			return fmt.Errorf("shadow methods: %w", err)
		}
	}
	if s.MaxBody < 0 || s.MaxInflight < 0 || s.Timeout < 0 {
		return errors.New("shadow max_body, max_inflight and timeout must not be negative")
	}
	if _, err := shadow.NewRules(s.rulesOptions()); err != nil {
		return fmt.Errorf("shadow: %w", err)
	}
	return nil
}

// checkMethod refuses what is not an upper-case HTTP method token, and
// CONNECT, which cannot be shadowed.
func checkMethod(m string) error {
	if m == "" || strings.ToUpper(m) != m || strings.IndexFunc(m, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
		return fmt.Errorf("invalid method %q: want an upper-case method such as GET", m)
	}
	if m == http.MethodConnect {
		return errors.New("CONNECT cannot be shadowed")
	}
	return nil
}

// shadowRunner is a handler's shadowing, built once in Provision.
type shadowRunner struct {
	h           *Handler
	ctx         context.Context // the config's: copies stop with it
	all         bool            // sample every request
	threshold   uint64          // else a request is sampled when a random uint64 is below it
	methods     []string
	maxBody     int64
	timeout     time.Duration
	noise       float64
	maxMismatch float64 // -1: no gate
	rules       *shadow.Rules
	res         *shadow.Results
	sem         chan struct{}
	server      *caddyhttp.Server
	outcomes    map[shadow.Outcome]*metrics.Counter
}

// provisionShadow builds the handler's shadowing, if it has a shadow
// block. The results belong to the switch, so a reload keeps them.
func (h *Handler) provisionShadow(ctx caddy.Context) error {
	s := h.Shadow
	if s == nil {
		return nil
	}
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return fmt.Errorf("switch %s: shadow: the switch is not served by an http server, so its arms cannot be sent copies", h.Name)
	}
	run, err := newShadowRunner(h, s, srv)
	if err != nil {
		return fmt.Errorf("switch %s: %w", h.Name, err)
	}
	h.shadowRun = run
	return nil
}

func newShadowRunner(h *Handler, s *Shadow, srv *caddyhttp.Server) (*shadowRunner, error) {
	rules, err := shadow.NewRules(s.rulesOptions())
	if err != nil {
		return nil, fmt.Errorf("shadow: %w", err)
	}
	run := &shadowRunner{
		h:           h,
		ctx:         h.ctx,
		methods:     s.Methods,
		maxBody:     s.MaxBody,
		timeout:     time.Duration(s.Timeout),
		noise:       DefaultShadowNoise,
		maxMismatch: -1,
		rules:       rules,
		res:         h.sw.shadowResults(),
		server:      srv,
		outcomes:    map[shadow.Outcome]*metrics.Counter{},
	}
	sample := s.Sample
	if sample == 0 {
		sample = DefaultShadowSample
	}
	run.all = sample >= 1
	run.threshold = uint64(sample * (1 << 64))
	if len(run.methods) == 0 {
		run.methods = DefaultShadowMethods
	}
	if run.maxBody == 0 {
		run.maxBody = shadow.DefaultMaxBody
	}
	if run.timeout == 0 {
		run.timeout = DefaultShadowTimeout
	}
	if s.Noise != nil {
		run.noise = *s.Noise
	}
	if s.MaxMismatch != nil {
		run.maxMismatch = *s.MaxMismatch
	}
	inflight := s.MaxInflight
	if inflight == 0 {
		inflight = DefaultShadowMaxInflight
	}
	run.sem = make(chan struct{}, inflight)
	set := h.sw.metrics.set
	for _, o := range shadow.Outcomes {
		run.outcomes[o] = set.GetOrCreateCounter(fmt.Sprintf(`switchback_shadow_requests_total{switch=%q,outcome=%q}`, h.sw.name, o))
	}
	res := run.res
	set.GetOrCreateGauge(fmt.Sprintf(`switchback_shadow_mismatch_ratio{switch=%q}`, h.sw.name), func() float64 { return res.MismatchRate() })
	return run, nil
}

// shadowResults returns the switch's shadow results, made on first use.
func (sw *Switch) shadowResults() *shadow.Results {
	if r := sw.shadow.Load(); r != nil {
		return r
	}
	sw.shadow.CompareAndSwap(nil, shadow.NewResults(0))
	return sw.shadow.Load()
}

// shadowToLegacy says where copies go: to consolidated during a migration,
// to legacy once consolidated takes all traffic (after a promotion).
func shadowToLegacy(v *view) bool {
	return v.mode == state.ModeConsolidated || (v.mode == state.ModeSplit && v.threshold >= buckets)
}

// direction names the arm copies go to.
func shadowDirection(v *view) string {
	if shadowToLegacy(v) {
		return armLegacy
	}
	return armConsolidated
}

// sample says whether a request's copy goes to the other arm: it is
// served by the arm that copies are taken from, a random draw picks it and
// its method is listed. It allocates nothing and takes no lock.
func (s *shadowRunner) sample(v *view, consolidated bool, r *http.Request) bool {
	if consolidated != shadowToLegacy(v) {
		return false
	}
	if !s.all && rand.Uint64() >= s.threshold {
		return false
	}
	return slices.Contains(s.methods, r.Method)
}

// shadowJob is one sampled request: what the copy needs of it, and the
// serving arm's answer once it is complete (done is closed).
type shadowJob struct {
	method, path string
	url          url.URL
	host, remote string
	header       http.Header
	at           time.Time
	toLegacy     bool
	hasBody      bool

	done    chan struct{}
	body    []byte // the request body, complete (bodyOK)
	bodyOK  bool
	serving shadow.Answer
	skip    bool // the serving answer cannot be compared
}

// serveShadowed serves a sampled request on its arm, as serveArm would,
// with the answer captured on its way to the client, and has a copy sent
// to the other arm once the answer has started.
func (h *Handler) serveShadowed(consolidated bool, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) error {
	s := h.shadowRun
	s.res.Sampled()
	if r.Header.Get("Upgrade") != "" {
		s.skip()
		return h.serveArm(consolidated, w, r, next, repl)
	}
	j := &shadowJob{
		method: r.Method, path: r.URL.Path, host: r.Host, remote: r.RemoteAddr,
		header: r.Header.Clone(), at: time.Now(), toLegacy: consolidated,
		hasBody: hasBody(r), done: make(chan struct{}),
	}
	if r.URL != nil {
		j.url = *r.URL
		j.url.User = nil
	}
	var tb *teeBody
	if j.hasBody {
		tb = newTeeBody(r.Body, h.maxBody)
		orig := r.Body
		r.Body = &tb.first
		defer func() { r.Body = orig }()
	}
	pre := w.Header().Clone() // set before the arm: the gateway's, not the arm's
	cw := &captureWriter{w: w, max: s.maxBody, onStart: func() { s.dispatch(j) }}
	err := h.serveArm(consolidated, cw, r, next, repl)

	if tb != nil {
		j.body, j.bodyOK = takeBody(tb, r.ContentLength)
	}
	j.serving = cw.answer(pre)
	var replayed any
	if repl != nil {
		replayed, _ = repl.Get("http.switchback.replayed")
	}
	// An answer cut short (the client went away, the upstream's stream
	// broke) or replaced by a replay is not the serving arm's answer.
	j.skip = cw.over || cw.broken || err != nil || replayed == true
	close(j.done)
	if !cw.started {
		// The arm answered with an error for Caddy to write: there is
		// no answer to compare.
		s.skip()
	}
	return err
}

// takeBody returns the copy of a request body the arm read, and whether it
// is all of the body. It never waits: a Read still in flight (the arm
// answered before reading the body) leaves the body incomplete.
func takeBody(tb *teeBody, length int64) ([]byte, bool) {
	if !tb.mu.TryLock() {
		return nil, false
	}
	defer tb.mu.Unlock()
	tb.stop() // a transport still writing reads no more
	if tb.over.Load() {
		return nil, false
	}
	complete := errors.Is(tb.srcErr, io.EOF) || (length >= 0 && int64(len(tb.buf)) == length)
	return tb.buf, complete
}

func (s *shadowRunner) skip() {
	s.res.Skip()
	s.outcomes[shadow.Skipped].Inc()
}

// dispatch starts the job on a worker, or drops it when max_inflight
// copies are in flight.
func (s *shadowRunner) dispatch(j *shadowJob) {
	select {
	case s.sem <- struct{}{}:
	default:
		s.res.Drop()
		s.outcomes[shadow.Dropped].Inc()
		return
	}
	goTask(s.h.logger, taskShadow, func() {
		defer func() { <-s.sem }()
		s.run(j)
	})
}

// errShadowTimeout is a copy that took longer than the timeout.
var errShadowTimeout = errors.New("shadow request timed out")

// run sends the copy, waits for the serving answer, asks the serving arm
// again for the noise share, and records the comparison.
func (s *shadowRunner) run(j *shadowJob) {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if j.hasBody && !s.wait(ctx, j) {
		s.skip() // the copy needs the whole body, which comes with the end
		return
	}
	other, serving := s.h.consolidated, s.h.legacy
	if j.toLegacy {
		other, serving = s.h.legacy, s.h.consolidated
	}
	ans, err := s.send(ctx, other, j)
	if err != nil || !s.wait(ctx, j) {
		if err != nil && !errors.Is(err, errShadowTimeout) && ctx.Err() == nil {
			s.h.logger.Debug("shadow request failed", zap.String("method", j.method), zap.String("path", j.path), zap.Error(err))
		}
		s.skip()
		return
	}
	if j.skip || (j.hasBody && !j.bodyOK) {
		s.skip()
		return
	}
	pair := shadow.Pair{Method: j.method, Path: j.path, At: j.at, Serving: j.serving, Shadow: ans}
	// The serving arm is asked again only for a safe method: a listed
	// POST may run once on each arm, never twice on the one in service.
	if safeMethod(j.method) && s.res.WantRepeat(j.method, j.path, s.noise, rand.Float64()) {
		rctx, rcancel := context.WithTimeout(s.ctx, s.timeout)
		if again, err := s.send(rctx, serving, j); err == nil {
			pair.Repeat = &again
		}
		rcancel()
	}
	s.outcomes[s.res.Record(s.rules, pair)].Inc()
}

// safeMethod says whether a method is safe to send twice (RFC 9110 9.2.1).
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions || m == http.MethodTrace
}

// wait waits for the serving answer to be complete, at most until ctx
// ends (an answer that streams on, such as server-sent events, is not
// compared).
func (s *shadowRunner) wait(ctx context.Context, j *shadowJob) bool {
	select {
	case <-j.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// send serves the copy of j with an arm's handler chain, in process, as
// probes are served, and returns its answer, kept up to max_body.
func (s *shadowRunner) send(ctx context.Context, arm caddyhttp.MiddlewareHandler, j *shadowJob) (shadow.Answer, error) {
	u := j.url
	r := (&http.Request{
		Method: j.method, URL: &u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: j.header.Clone(), Host: j.host, RemoteAddr: j.remote, Body: http.NoBody,
	}).WithContext(ctx)
	if j.hasBody {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(j.body)), int64(len(j.body))
	}
	r.Header.Set(ShadowHeader, "1")
	cw := &captureWriter{max: s.maxBody, hdr: http.Header{}}
	t := armTransport{arm: arm, server: s.server, logger: s.h.logger, task: taskShadow}
	err := t.serve(cw, r)
	if ctx.Err() != nil {
		return shadow.Answer{}, errShadowTimeout
	}
	if err != nil {
		var he caddyhttp.HandlerError
		if !cw.started && errors.As(err, &he) && he.StatusCode != 0 {
			// An arm failure is an answer: Caddy would send its status.
			return shadow.Answer{Status: he.StatusCode, Header: http.Header{}}, nil
		}
		return shadow.Answer{}, err
	}
	if cw.over {
		return shadow.Answer{}, shadow.ErrTooLarge
	}
	if !cw.started {
		cw.WriteHeader(http.StatusOK) // an arm that wrote nothing sent an empty 200
	}
	return cw.answer(nil), nil
}

// captureWriter keeps an answer's status, header and up to max bytes of
// its body. On a client's writer (w set) everything passes through
// unchanged as it is written; a shadow answer (w nil) goes nowhere else.
type captureWriter struct {
	w       http.ResponseWriter
	hdr     http.Header // the header map when w is nil
	max     int64
	onStart func() // called once the status went out

	started bool
	status  int
	header  http.Header // as it was when the status went out
	body    []byte
	over    bool
	broken  bool // a write to the client failed
}

func (c *captureWriter) Header() http.Header {
	if c.w != nil {
		return c.w.Header()
	}
	return c.hdr
}

func (c *captureWriter) WriteHeader(code int) {
	if c.started || code < 200 {
		if c.w != nil {
			c.w.WriteHeader(code)
		}
		return
	}
	c.started, c.status = true, code
	c.header = c.Header().Clone()
	if c.w != nil {
		c.w.WriteHeader(code)
	}
	if c.onStart != nil {
		c.onStart()
	}
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if !c.started {
		c.WriteHeader(http.StatusOK)
	}
	n, err := len(p), error(nil)
	if c.w != nil {
		if n, err = c.w.Write(p); err != nil {
			c.broken = true
		}
	}
	if !c.over {
		if int64(len(c.body)+n) > c.max {
			c.over, c.body = true, nil
		} else {
			c.body = append(c.body, p[:n]...)
		}
	}
	return n, err
}

// FlushError implements the interface http.ResponseController looks for.
func (c *captureWriter) FlushError() error {
	if !c.started {
		c.WriteHeader(http.StatusOK)
	}
	if c.w == nil {
		return nil
	}
	return http.NewResponseController(c.w).Flush()
}

// Flush implements http.Flusher.
func (c *captureWriter) Flush() { _ = c.FlushError() }

// Unwrap lets http.ResponseController reach the client's writer.
func (c *captureWriter) Unwrap() http.ResponseWriter { return c.w }

// answer is what was captured. Header values the gateway had set before
// the arm ran (pre: the sticky cookie, Server) are left out: the other
// arm's answer cannot have them.
func (c *captureWriter) answer(pre http.Header) shadow.Answer {
	h := c.header
	for k, pv := range pre {
		if v := h[k]; len(v) >= len(pv) && slices.Equal(v[:len(pv)], pv) {
			if len(v) == len(pv) {
				delete(h, k)
			} else {
				h[k] = v[len(pv):]
			}
		}
	}
	return shadow.Answer{Status: c.status, Header: h, Body: c.body}
}

// gateWaiting says why a rollout step waits on shadow: too few pairs
// compared at the step, or a mismatch rate above max_mismatch (naming the
// worst route), or "" when the step may advance.
func (s *shadowRunner) gateWaiting(compared, mismatched uint64, worstRoute string, minRequests int, maxMismatch float64) string {
	if s == nil || maxMismatch < 0 {
		return ""
	}
	if compared < uint64(max(minRequests, 0)) {
		return fmt.Sprintf("waiting: %d/%d shadow pairs compared", compared, minRequests)
	}
	if compared == 0 {
		return ""
	}
	rate := float64(mismatched) / float64(compared)
	if rate <= maxMismatch {
		return ""
	}
	msg := fmt.Sprintf("waiting: mismatch %s > %s", pct(rate), pct(maxMismatch))
	if worstRoute != "" {
		msg += " on " + worstRoute
	}
	return msg
}

// pct writes a fraction as a percent with at most one decimal (0.024 is
// "2.4%", 0.01 is "1%").
func pct(f float64) string {
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%"
}

// shadowStepAt returns the pairs compared at the rollout step named id,
// for the rollout's gate and fleet stats; the counts start over when the
// step changes.
func (sw *Switch) shadowStepAt(id string) shadow.StepCounts { return sw.shadowResults().StepAt(id) }

// GET /switchback/switches/{name}/shadow and
// POST /switchback/switches/{name}/shadow/reset.
func (a *App) handleShadow(w http.ResponseWriter, r *http.Request, name string, rest []string) error {
	sw, err := a.lookup(name)
	if err != nil {
		return err
	}
	h := sw.handler.Load()
	if h == nil || h.shadowRun == nil {
		return apiErr(http.StatusNotFound, "switch %s has no shadow block", name)
	}
	switch {
	case len(rest) == 0:
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
	case len(rest) == 1 && rest[0] == "reset":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		var req struct {
			Reason string `json:"reason"`
			By     string `json:"by"`
		}
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		sw.shadowResults().Reset()
		h.logger.Info("shadow report reset", zap.String("by", who(r, req.By)), zap.String("reason", req.Reason))
	default:
		return apiErr(http.StatusNotFound, "no such shadow endpoint: %s (want .../shadow or .../shadow/reset)", r.URL.Path)
	}
	rep := sw.shadowResults().Report()
	rep.Switch, rep.Direction = name, shadowDirection(sw.view.Load())
	return writeJSON(w, http.StatusOK, rep)
}
