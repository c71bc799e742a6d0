// Package tests holds switchback's end-to-end tests. They build the real
// binary, start it with a real config in front of real HTTP upstreams, and
// drive it as a user does: over HTTP, through the admin API and the CLI.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds cmd/switchback once per test run and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		dir, err := os.MkdirTemp("", "switchback-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "switchback")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/switchback")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building switchback: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreePort returns a free loopback TCP port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Upstream is a real HTTP server standing in for legacy or consolidated.
// It answers its name with 200, and on the path /trailer adds the trailer
// X-Checksum: sum-<name>. Faults can be switched on and off while it
// serves (Fail, Delay, HangUp, BreakStreams); each switch also restarts
// FaultWindow's clock. A delay comes before the answer; a hang-up wins
// over a broken stream, and both win over a status.
//
// An Upstream also keeps what a test may want to check afterwards: how
// many requests reached each path, the header and body of every request
// that carried an X-Test-Id, when it served its first faulty answer and
// when the latest request reached it (see FaultWindow).
type Upstream struct {
	*httptest.Server
	Name string
	Hits atomic.Int64 // requests received

	status      atomic.Int64 // status to answer instead of 200; 0: none
	delay       atomic.Int64 // ns to wait before answering; 0: none
	hangUp      atomic.Bool  // close the connection without an answer
	breakStream atomic.Bool  // answer 200, flush a few bytes, then close
	firstFault  atomic.Int64 // Unix ns of the first faulty answer; 0: none yet
	lastHit     atomic.Int64 // Unix ns of the latest request's arrival

	mu     sync.Mutex
	paths  map[string]int           // requests by URL path
	tagged map[string]taggedRequest // requests by X-Test-Id
}

// taggedRequest is what an Upstream keeps of a request with an X-Test-Id.
type taggedRequest struct {
	header http.Header
	body   []byte
}

// NewUpstream starts an upstream that answers its name with 200.
func NewUpstream(t testing.TB, name string) *Upstream {
	t.Helper()
	u := &Upstream{Name: name, paths: map[string]int{}, tagged: map[string]taggedRequest{}}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Server.Close)
	return u
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.Hits.Add(1)
	u.arrived(time.Now())
	u.record(r)
	w.Header().Set("X-Upstream", u.Name)
	if d := u.delay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
		defer u.faulted()
	}
	status := u.status.Load()
	switch {
	case u.hangUp.Load():
		closeConn(w)
		u.faulted()
	case u.breakStream.Load():
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, "partial-"+u.Name)
		http.NewResponseController(w).Flush()
		time.Sleep(50 * time.Millisecond)
		closeConn(w)
		u.faulted()
	case status != 0:
		w.WriteHeader(int(status))
		fmt.Fprintf(w, "%s failing with %d", u.Name, status)
		u.faulted()
	case r.URL.Path == "/trailer":
		w.Header().Set("Trailer", "X-Checksum")
		fmt.Fprint(w, u.Name)
		w.Header().Set("X-Checksum", "sum-"+u.Name)
	default:
		fmt.Fprint(w, u.Name)
	}
}

// arrived moves lastHit forward to now; a request that arrived earlier but
// got here later does not move it back.
func (u *Upstream) arrived(now time.Time) {
	ns := now.UnixNano()
	for {
		last := u.lastHit.Load()
		if ns <= last || u.lastHit.CompareAndSwap(last, ns) {
			return
		}
	}
}

// record reads the request body and notes the path; a request with an
// X-Test-Id also has its header and body kept under that id.
func (u *Upstream) record(r *http.Request) {
	id := r.Header.Get("X-Test-Id")
	var body []byte
	if id != "" {
		body, _ = io.ReadAll(r.Body)
	} else {
		io.Copy(io.Discard, r.Body)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.paths[r.URL.Path]++
	if id != "" {
		u.tagged[id] = taggedRequest{header: r.Header.Clone(), body: body}
	}
}

// faulted notes the time of the first faulty answer.
func (u *Upstream) faulted() {
	u.firstFault.CompareAndSwap(0, time.Now().UnixNano())
}

// closeConn closes the connection of the request that w answers.
func closeConn(w http.ResponseWriter) {
	if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
		c.Close()
	}
}

// Addr is the upstream's host:port.
func (u *Upstream) Addr() string { return strings.TrimPrefix(u.URL, "http://") }

// Fail makes it answer status (0 restores 200).
func (u *Upstream) Fail(status int) {
	u.firstFault.Store(0)
	u.status.Store(int64(status))
}

// Delay adds latency to every answer (0 removes it).
func (u *Upstream) Delay(d time.Duration) {
	u.firstFault.Store(0)
	u.delay.Store(int64(d))
}

// HangUp makes it close every connection without an answer (false stops).
func (u *Upstream) HangUp(on bool) {
	u.firstFault.Store(0)
	u.hangUp.Store(on)
}

// BreakStreams makes it answer 200, flush "partial-<name>", then close
// the connection mid-body (false stops).
func (u *Upstream) BreakStreams(on bool) {
	u.firstFault.Store(0)
	u.breakStream.Store(on)
}

// FaultWindow returns when it served its first faulty answer since a fault
// was last switched, and when the latest request reached it, so a test can
// time a failover from the one to the other. first is the zero time if no
// faulty answer was served, last if no request came.
func (u *Upstream) FaultWindow() (first, last time.Time) {
	return unixNano(u.firstFault.Load()), unixNano(u.lastHit.Load())
}

// unixNano is the time ns after the Unix epoch; 0 is the zero time.
func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// PathHits is how many requests for path reached it.
func (u *Upstream) PathHits(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.paths[path]
}

// RequestHeader returns the header of the request that carried X-Test-Id
// id; ok is false if none reached it.
func (u *Upstream) RequestHeader(id string) (h http.Header, ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r, ok := u.tagged[id]
	return r.header, ok
}

// RequestBody returns the body of the request that carried X-Test-Id id;
// ok is false if none reached it.
func (u *Upstream) RequestBody(id string) (body []byte, ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r, ok := u.tagged[id]
	return r.body, ok
}

// Gateway is a running switchback process.
type Gateway struct {
	t         testing.TB
	Dir       string // working directory, holds the state file and logs
	Admin     string // admin host:port
	HTTP      string // gateway host:port
	Caddyfile string // path of the config file
	Env       []string
	cmd       *exec.Cmd
	logs      *bytes.Buffer
	logsMu    *sync.Mutex
	exited    chan struct{}
}

// GatewayConfig fills a Caddyfile template: {ADMIN}, {HTTP}, {DIR},
// {LEGACY} and {CONSOLIDATED} are replaced.
type GatewayConfig struct {
	Template     string
	Legacy       *Upstream
	Consolidated *Upstream
	Dir          string // default: a new temp dir
	Env          []string
	Extra        map[string]string // more {KEY} replacements
}

// DefaultTemplate is a gateway with one switch "main".
const DefaultTemplate = `{
	admin {ADMIN}
	switchback {
		state local {DIR}/state.db
		backups {DIR}/backups
		logs {DIR}/logs
	}
}
http://{HTTP} {
	switchback main {
		weight 20
		mode split
		sticky cookie sb_user
		legacy {
			reverse_proxy {LEGACY}
		}
		consolidated {
			reverse_proxy {CONSOLIDATED}
		}
	}
	header >X-Switchback-Arm {http.switchback.arm}
}
`

// StartGateway writes the config and starts switchback run with it.
func StartGateway(t testing.TB, cfg GatewayConfig) *Gateway {
	t.Helper()
	bin := Binary(t)
	g := prepareGateway(t, cfg)
	g.start(bin)
	t.Cleanup(g.Stop)
	return g
}

// prepareGateway picks the gateway's ports and writes its config to
// Caddyfile in its directory, without starting it.
func prepareGateway(t testing.TB, cfg GatewayConfig) *Gateway {
	t.Helper()
	if cfg.Template == "" {
		cfg.Template = DefaultTemplate
	}
	dir := cfg.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	g := &Gateway{
		t:     t,
		Dir:   dir,
		Admin: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		HTTP:  fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		Env:   cfg.Env,
	}
	g.Caddyfile = filepath.Join(dir, "Caddyfile")
	g.WriteConfig(cfg)
	return g
}

// WriteConfig (re)writes the gateway's Caddyfile from cfg.
func (g *Gateway) WriteConfig(cfg GatewayConfig) {
	g.t.Helper()
	repl := map[string]string{"{ADMIN}": g.Admin, "{HTTP}": g.HTTP, "{DIR}": g.Dir}
	if cfg.Legacy != nil {
		repl["{LEGACY}"] = cfg.Legacy.Addr()
	}
	if cfg.Consolidated != nil {
		repl["{CONSOLIDATED}"] = cfg.Consolidated.Addr()
	}
	for k, v := range cfg.Extra {
		repl["{"+k+"}"] = v
	}
	text := cfg.Template
	for k, v := range repl {
		text = strings.ReplaceAll(text, k, v)
	}
	if err := os.WriteFile(g.Caddyfile, []byte(text), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

func (g *Gateway) start(bin string) {
	g.t.Helper()
	g.logs, g.logsMu = new(bytes.Buffer), new(sync.Mutex)
	cmd := exec.Command(bin, "run", "--config", g.Caddyfile, "--adapter", "caddyfile")
	cmd.Dir = g.Dir
	cmd.Env = append(processEnv(g.Dir), g.Env...)
	w := &lockedWriter{mu: g.logsMu, w: g.logs}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.cmd = cmd
	g.exited = make(chan struct{})
	go func() { cmd.Wait(); close(g.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + g.Admin + "/switchback/switches")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-g.exited:
			g.t.Fatalf("switchback exited at start:\n%s", g.Logs())
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("switchback did not come up in 20s:\n%s", g.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Logs returns what the process printed.
func (g *Gateway) Logs() string {
	g.logsMu.Lock()
	defer g.logsMu.Unlock()
	return g.logs.String()
}

// Stop stops the process gracefully.
func (g *Gateway) Stop() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	select {
	case <-g.exited:
		return
	default:
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-g.exited
	}
	forgetConns()
}

// forgetConns drops Client's idle connections once a gateway is gone: a
// later gateway may get the same port, and a POST sent on a connection
// the dead one held fails with EOF (Go retries only idempotent requests).
func forgetConns() { Client.CloseIdleConnections() }

// Kill kills the process with SIGKILL.
func (g *Gateway) Kill() {
	g.cmd.Process.Kill()
	<-g.exited
	forgetConns()
}

// Restart stops the process and starts it again with the same config.
func (g *Gateway) Restart() {
	g.t.Helper()
	g.Stop()
	g.start(Binary(g.t))
}

// Client is an HTTP client for the gateway: no cookie jar, no redirects.
var Client = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
}

// Get sends a GET to the gateway with optional cookie and returns the body,
// the arm header and the response.
func (g *Gateway) Get(t testing.TB, path string, cookie *http.Cookie) (string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+g.HTTP+path, nil)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp
}

// AdminJSON calls the admin API and decodes the JSON answer into out (if
// not nil). It returns the status code.
func (g *Gateway) AdminJSON(t testing.TB, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://"+g.Admin+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// SwitchState is the part of GET /switchback/switches/{name} tests read.
type SwitchState struct {
	Name                  string  `json:"name"`
	Mode                  string  `json:"mode"`
	Weight                float64 `json:"weight"` // percent, 0.01 resolution
	Reason                string  `json:"reason"`
	By                    string  `json:"by"`
	Gateway               string  `json:"gateway"`
	Tripped               bool    `json:"tripped"`
	Rule                  string  `json:"rule"`
	LegacyUnhealthy       bool    `json:"legacy_unhealthy"`
	LegacyUnhealthyReason string  `json:"legacy_unhealthy_reason"`
	History               []struct {
		Kind   string    `json:"kind"`
		Mode   string    `json:"mode"`
		Weight float64   `json:"weight"`
		Rule   string    `json:"rule"`
		Reason string    `json:"reason"`
		By     string    `json:"by"`
		At     time.Time `json:"at"`
	} `json:"history"`
}

// Switch reads a switch through the admin API.
func (g *Gateway) Switch(t testing.TB, name string) SwitchState {
	t.Helper()
	var s SwitchState
	if code := g.AdminJSON(t, http.MethodGet, "/switchback/switches/"+name, nil, &s); code != 200 {
		t.Fatalf("GET switch %s: status %d", name, code)
	}
	return s
}

// CLI runs the switchback binary with args against this gateway's admin
// address, in its directory, and returns stdout, stderr and the exit code.
func (g *Gateway) CLI(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	return RunCLI(t, g.Dir, append(args, "--address", g.Admin)...)
}

// RunCLI runs the switchback binary in dir.
func RunCLI(t testing.TB, dir string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	cmd.Dir = dir
	cmd.Env = processEnv(dir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running switchback %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// processEnv is the environment for a switchback process working in dir:
// this one's, with Caddy's data and config directories under dir.
func processEnv(dir string) []string {
	return append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
}

// Eventually polls cond until it is true or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
