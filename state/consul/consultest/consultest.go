// Package consultest runs real Consul agents for tests, on free loopback
// ports, stopped when the test ends:
//
//   - Start: a dev agent, in memory. Most tests want this. Restart brings it
//     back empty, with its indexes starting over (an index reset).
//   - StartCluster(t, 3): three servers, for leader-loss tests (Kill the
//     Leader).
//   - StartCluster(t, 1): one server with a data directory, for outage
//     tests whose data must survive Stop and Start.
//
// The binary comes from, in order: `consul` on PATH, $SWITCHBACK_CONSUL, or
// a build of the pinned Consul (tests/tools/consul, Version) cached at
// ${XDG_CACHE_HOME:-$HOME/.cache}/switchback/consul-<Version>. The first
// test that needs the cached build makes it, about 3 minutes; a file lock
// makes parallel test packages wait for that one build.
//
// No silent skips: when Consul cannot be had or started, a test fails if
// CI=true and is skipped otherwise, with a message saying how to get Consul.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the Consul release tests/tools/consul pins.
const Version = "1.14.11"

// EnvBinary names a Consul binary to use when none is on PATH.
const EnvBinary = "SWITCHBACK_CONSUL"

// StartTimeout bounds how long an agent or cluster may take to elect a
// leader.
const StartTimeout = 60 * time.Second

const howTo = "to run it, put consul on PATH, set " + EnvBinary + "=/path/to/consul, " +
	"or build the pinned one: cd tests/tools/consul && GOFLAGS=-mod=mod go build -o ~/.cache/switchback/consul-" + Version + " github.com/hashicorp/consul"

// unavailable stops a test that cannot get Consul: fatal on CI, a skip
// with instructions elsewhere.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("consul unavailable (CI=true, so this fails instead of skipping): %s", msg)
	}
	t.Skipf("consul unavailable: %s; %s", msg, howTo)
}

// binaryMu makes tests in one process share one lookup.
var binaryMu sync.Mutex

// Binary returns the path of a Consul binary, building and caching the
// pinned one if there is none. See the package documentation for the
// order.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("consul"); err == nil {
		return p
	}
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			unavailable(t, "%s=%s: %v", EnvBinary, p, err)
		}
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		unavailable(t, "no cache directory for the consul build: %v", err)
	}
	path := filepath.Join(cache, "switchback", "consul-"+Version)

	binaryMu.Lock()
	defer binaryMu.Unlock()
	if isExecutable(path) {
		return path
	}
	if err := build(t, path); err != nil {
		unavailable(t, "building consul %s: %v", Version, err)
	}
	return path
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// build builds the pinned Consul into path, under a file lock so that
// concurrent test processes build it once.
func build(t testing.TB, path string) error {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	lf, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("waiting for another process building consul into %s", path)
		if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
			return fmt.Errorf("locking %s: %w", lf.Name(), err)
		}
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	if isExecutable(path) {
		return nil // another process built it while we waited
	}

	dir, err := toolsDir()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
	t.Logf("building consul %s into %s (about 3 minutes, once)", Version, path)
	start := time.Now()
	cmd := exec.Command(goBin, "build", "-o", tmp, "github.com/hashicorp/consul")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go build in %s: %v\n%s", dir, err, tail(out, 40))
	}
	t.Logf("built consul %s in %s", Version, time.Since(start).Round(time.Second))
	return os.Rename(tmp, path)
}

// toolsDir finds tests/tools/consul: beside this source file, or above
// the working directory (for binaries built with -trimpath).
func toolsDir() (string, error) {
	var tries []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		tries = append(tries, filepath.Join(filepath.Dir(file), "..", "..", "..", "tests", "tools", "consul"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			tries = append(tries, filepath.Join(d, "tests", "tools", "consul"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range tries {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Clean(d), nil
		}
	}
	return "", errors.New("tests/tools/consul not found beside the source or above the working directory")
}

// Agent is one running Consul agent.
type Agent struct {
	// Addr is the host:port of the agent's HTTP API.
	Addr string

	// Name is the agent's node name.
	Name string

	// ServerAddr is the host:port of its server RPC (as /v1/status/leader
	// names the leader).
	ServerAddr string

	t    testing.TB
	bin  string
	args []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// ports are an agent's listening ports.
type ports struct{ http, server, serfLAN, serfWAN int }

// Start starts a dev agent (in-memory, a server and its own leader) on free
// loopback ports, waits until it has elected itself leader and registered
// its node, and stops it when the test ends.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin := Binary(t)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var p ports
		if p, err = freePorts(); err != nil {
			break
		}
		a := newAgent(t, bin, "dev", p, []string{"-dev"})
		if err = a.start(); err == nil {
			if err = waitReady(a, 1); err == nil {
				return a
			}
		}
		a.Stop()
	}
	unavailable(t, "starting a dev agent: %v", err)
	return nil
}

func newAgent(t testing.TB, bin, name string, p ports, extra []string) *Agent {
	t.Helper()
	a := &Agent{
		Addr:       net.JoinHostPort("127.0.0.1", strconv.Itoa(p.http)),
		Name:       name,
		ServerAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.server)),
		t:          t,
		bin:        bin,
		log:        filepath.Join(t.TempDir(), name+".log"),
	}
	a.args = append([]string{"agent"}, extra...)
	a.args = append(a.args,
		"-node", name,
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-http-port", strconv.Itoa(p.http),
		"-server-port", strconv.Itoa(p.server),
		"-serf-lan-port", strconv.Itoa(p.serfLAN),
		"-serf-wan-port", strconv.Itoa(p.serfWAN),
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-grpc-tls-port", "-1",
		"-disable-host-node-id",
		"-log-level", "info",
	)
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			b, _ := os.ReadFile(a.log)
			t.Logf("consul agent %s log (last lines):\n%s", a.Name, tail(b, 30))
		}
	})
	return a
}

func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(a.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.bin, a.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	a.cmd, a.done = cmd, done
	return nil
}

// exited reports whether the agent's process has ended.
func (a *Agent) exited() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return true
	}
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Stop stops the agent (SIGTERM, then SIGKILL after 5s) and waits for it
// to exit. Stopping a stopped agent does nothing.
func (a *Agent) Stop() { a.signal(syscall.SIGTERM) }

// Kill kills the agent with SIGKILL, as a crash would, and waits for it to
// exit.
func (a *Agent) Kill() { a.signal(syscall.SIGKILL) }

func (a *Agent) signal(sig syscall.Signal) {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd, a.done = nil, nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Restart stops the agent and starts it again on the same ports, then
// waits until it has a leader. A dev agent comes back empty, with its
// indexes starting over; a cluster server keeps its data directory.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.Start()
}

// Start starts a stopped agent again on the same ports and waits until it
// has a leader.
func (a *Agent) Start() {
	a.t.Helper()
	if err := a.start(); err != nil {
		a.t.Fatalf("restarting consul agent %s: %v", a.Name, err)
	}
	if err := waitReady(a, 0); err != nil {
		a.t.Fatalf("restarting consul agent %s: %v", a.Name, err)
	}
}

// Cluster is a set of Consul servers on loopback.
type Cluster struct {
	Agents []*Agent
}

// StartCluster starts n servers (-server -bootstrap-expect n, each joined
// to the others, data in t.TempDir()) and waits until they have elected a
// leader that all of them know. The servers are stopped when the test ends.
// With n = 1 it is a single server that, unlike a dev agent, keeps its data
// across Restart.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartCluster: n = %d", n)
	}
	bin := Binary(t)
	ps := make([]ports, n)
	for i := range ps {
		p, err := freePorts()
		if err != nil {
			unavailable(t, "finding free ports: %v", err)
		}
		ps[i] = p
	}
	c := &Cluster{}
	for i := range n {
		extra := []string{
			"-server",
			"-bootstrap-expect", strconv.Itoa(n),
			"-data-dir", t.TempDir(),
			"-retry-interval", "200ms",
			"-hcl", `performance { raft_multiplier = 1 }`,
			"-hcl", `gossip_lan { gossip_interval = "100ms" probe_interval = "200ms" probe_timeout = "100ms" suspicion_mult = 3 }`,
		}
		for j, p := range ps {
			if j != i {
				extra = append(extra, "-retry-join", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.serfLAN)))
			}
		}
		a := newAgent(t, bin, fmt.Sprintf("server-%d", i), ps[i], extra)
		if err := a.start(); err != nil {
			unavailable(t, "starting server %d: %v", i, err)
		}
		c.Agents = append(c.Agents, a)
	}
	for _, a := range c.Agents {
		if err := waitReady(a, n); err != nil {
			unavailable(t, "cluster of %d: %v", n, err)
		}
	}
	return c
}

// Addrs are the HTTP addresses of all agents, running or not.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Agents))
	for i, a := range c.Agents {
		out[i] = a.Addr
	}
	return out
}

// Leader returns the index in Agents of the current leader, as the first
// running agent that knows one says, or -1 if none does.
func (c *Cluster) Leader() int {
	for _, a := range c.Agents {
		if a.exited() {
			continue
		}
		leader, err := get(a.Addr, "/v1/status/leader")
		if err != nil || leader == `""` {
			continue
		}
		for i, b := range c.Agents {
			if strings.Trim(leader, `"`+"\n") == b.ServerAddr {
				return i
			}
		}
	}
	return -1
}

// Kill kills agent i with SIGKILL.
func (c *Cluster) Kill(i int) { c.Agents[i].Kill() }

// WaitLeader waits until the running agents agree on a leader and returns
// its index, failing the test after StartTimeout.
func (c *Cluster) WaitLeader(t testing.TB) int {
	t.Helper()
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if i := c.Leader(); i >= 0 && !c.Agents[i].exited() {
			return i
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no consul leader after %s", StartTimeout)
	return -1
}

// waitReady waits until a has a leader, knows servers raft peers (when
// servers > 0), and has its own node and its serfHealth check in the
// catalog, which sessions need.
func waitReady(a *Agent, servers int) error {
	deadline := time.Now().Add(StartTimeout)
	var last string
	for time.Now().Before(deadline) {
		if a.exited() {
			b, _ := os.ReadFile(a.log)
			return fmt.Errorf("agent %s exited:\n%s", a.Name, tail(b, 20))
		}
		leader, err := get(a.Addr, "/v1/status/leader")
		switch {
		case err != nil:
			last = err.Error()
		case leader == `""`:
			last = "no leader yet"
		default:
			peers, _ := get(a.Addr, "/v1/status/peers")
			node, _ := get(a.Addr, "/v1/catalog/node/"+a.Name)
			checks, _ := get(a.Addr, "/v1/health/node/"+a.Name)
			switch {
			case servers > 0 && strings.Count(peers, ":") < servers:
				last = "raft peers " + peers
			case node == "" || node == "null":
				last = "node not registered yet"
			case !strings.Contains(checks, "serfHealth"):
				// A session needs the node's serfHealth check; without
				// it session creation fails with "Missing check".
				last = "serfHealth check not registered yet"
			default:
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("agent %s not ready after %s: %s", a.Name, StartTimeout, last)
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func get(addr, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	return strings.TrimSpace(string(b)), err
}

// freePorts picks four distinct loopback ports that are free for TCP, and
// for UDP too (serf uses both).
func freePorts() (ports, error) {
	var got []int
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for len(got) < 4 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, err
		}
		closers = append(closers, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		closers = append(closers, u)
		got = append(got, port)
	}
	return ports{http: got[0], server: got[1], serfLAN: got[2], serfWAN: got[3]}, nil
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
