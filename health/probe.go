package health

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// Defaults for Probe.
const (
	// DefaultProbeInterval is the time between probes when
	// Probe.Interval is zero.
	DefaultProbeInterval = 5 * time.Second

	// DefaultProbeTimeout bounds one probe when Probe.Timeout is zero.
	DefaultProbeTimeout = 2 * time.Second
)

// Probe actively checks an HTTP endpoint. A response with a 2xx or 3xx
// status is healthy; any other status or a transport error is not. Set
// the exported fields before Run and do not change them afterwards; a
// Probe must not be copied after first use. Its methods are safe for
// concurrent use.
type Probe struct {
	// Method is the HTTP method of the probe (default GET).
	Method string

	// URL is the endpoint to probe. It is required.
	URL string

	// Interval is the time between probes (default 5s).
	Interval time.Duration

	// Timeout bounds one probe, including reading the response headers
	// (default 2s).
	Timeout time.Duration

	// Client sends the probes. Nil means a client on
	// http.DefaultTransport that does not follow redirects, so that a
	// 3xx counts as healthy.
	Client *http.Client

	down      atomic.Bool // false until a probe fails: healthy until proven otherwise
	lastErr   atomic.Pointer[string]
	lastCheck atomic.Int64 // Unix nanoseconds; 0 before the first probe
}

// Validate reports whether the probe's settings are usable: URL must be an
// absolute http or https URL, and Interval and Timeout must not be
// negative. It has no side effects.
func (p *Probe) Validate() error {
	u, err := url.Parse(p.URL)
	switch {
	case err != nil:
		return fmt.Errorf("invalid probe url %q: %v", p.URL, err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("invalid probe url %q: must be an absolute http or https URL", p.URL)
	case p.Interval < 0:
		return fmt.Errorf("probe interval %v is out of range: must be positive, or zero for the default %v", p.Interval, DefaultProbeInterval)
	case p.Timeout < 0:
		return fmt.Errorf("probe timeout %v is out of range: must be positive, or zero for the default %v", p.Timeout, DefaultProbeTimeout)
	}
	return nil
}

// Run probes at once and then every Interval until ctx is done.
func (p *Probe) Run(ctx context.Context) {
	interval := p.Interval
	if interval <= 0 {
		interval = DefaultProbeInterval
	}
	p.Check(ctx)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.Check(ctx)
		}
	}
}

// Check probes once and records the outcome, which it also returns. A
// probe cut short because ctx is done records nothing and returns
// ctx.Err().
func (p *Probe) Check(ctx context.Context) error {
	err := p.do(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	p.lastCheck.Store(time.Now().UnixNano())
	if err != nil {
		msg := err.Error()
		p.lastErr.Store(&msg)
		p.down.Store(true)
		return err
	}
	p.lastErr.Store(nil)
	p.down.Store(false)
	return nil
}

// do sends one probe.
func (p *Probe) do(ctx context.Context) error {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	method := p.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, p.URL, nil)
	if err != nil {
		return fmt.Errorf("building probe request: %w", err)
	}
	client := p.Client
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("%s %s: status %s", method, p.URL, resp.Status)
	}
	return nil
}

// Healthy reports whether the last probe succeeded. It is true before the
// first probe completes.
func (p *Probe) Healthy() bool { return !p.down.Load() }

// LastError returns the error of the last probe, or "" if it succeeded or
// none completed yet.
func (p *Probe) LastError() string {
	if s := p.lastErr.Load(); s != nil {
		return *s
	}
	return ""
}

// LastCheck returns when the last probe completed, or the zero time
// before the first.
func (p *Probe) LastCheck() time.Time {
	if ns := p.lastCheck.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}
