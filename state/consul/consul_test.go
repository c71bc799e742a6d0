package consul_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
	"github.com/leanvibe/switchback/state/consul/consultest"
	"github.com/leanvibe/switchback/state/storetest"
)

// prefixes hands out a fresh KV folder per store pair, so tests sharing an
// agent start empty.
var prefixes atomic.Int64

func freshPrefix() string { return fmt.Sprintf("test-%d", prefixes.Add(1)) }

// open returns a Store on the agent at addr under prefix.
func open(t testing.TB, addr, prefix string, opts consul.Options) *consul.Store {
	t.Helper()
	s, err := consul.Open(consul.Config{Address: addr, Prefix: prefix}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	agent := consultest.Start(t)
	storetest.Run(t, func(t *testing.T) (state.Store, state.Store) {
		t.Helper()
		prefix := freshPrefix()
		return open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	})
}

func TestKeysAndVersions(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	s := open(t, agent.Addr, "fleet/a", consul.Options{})
	v, err := s.Put(ctx, "switches/main", []byte(`{"mode":"split"}`))
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := s.Client().KV().Get("fleet/a/switches/main", nil)
	if err != nil || p == nil {
		t.Fatalf("raw Get: %v, %v", p, err)
	}
	if p.ModifyIndex != v || string(p.Value) != `{"mode":"split"}` {
		t.Fatalf("Consul has %q at %d; Put returned version %d", p.Value, p.ModifyIndex, v)
	}
	// A key that is not ours under the folder is not listed.
	if _, err := s.Client().KV().Put(&api.KVPair{Key: "fleet/a/switches/deep/x", Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx, state.NSSwitches)
	if err != nil || len(list) != 1 || list[0].Key != "switches/main" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := s.Put(ctx, "locks/restore", []byte("x")); err == nil {
		t.Fatal("Put into locks/ succeeded; locks are taken with Lock")
	}
	if err := s.Delete(ctx, "locks/restore"); err == nil {
		t.Fatal("Delete in locks/ succeeded; locks are released with Unlock")
	}
}

func TestWatchWakesOnDelete(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	a, b := open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	for _, name := range []string{"one", "two"} {
		if _, err := a.Put(ctx, "switches/"+name, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	_, idx, err := b.Watch(ctx, state.NSSwitches, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		a.Delete(ctx, "switches/two")
	}()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	entries, next, err := b.Watch(wctx, state.NSSwitches, idx)
	if err != nil {
		t.Fatal(err)
	}
	if next <= idx || len(entries) != 1 || entries[0].Key != "switches/one" {
		t.Fatalf("Watch after a delete = %+v at index %d (was %d), want only switches/one", entries, next, idx)
	}
}

func TestLargeValues(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	a := open(t, agent.Addr, freshPrefix(), consul.Options{})
	tests := []struct {
		name string
		size int
	}{
		{"small", 2 << 10},
		{"largest in a transaction", 380 << 10},
		{"through the kv endpoint", 450 << 10},
		{"max value size", state.MaxValueSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "points/" + strings.ReplaceAll(tt.name, " ", "-")
			value := []byte(strings.Repeat("x", tt.size))
			v1, err := a.CAS(ctx, key, value, 0)
			if err != nil {
				t.Fatalf("CAS create %d bytes: %v", tt.size, err)
			}
			e, err := a.Get(ctx, key)
			if err != nil || e.Version != v1 || len(e.Value) != tt.size {
				t.Fatalf("Get = version %d, %d bytes, %v; want version %d, %d bytes", e.Version, len(e.Value), err, v1, tt.size)
			}
			if _, err := a.CAS(ctx, key, value, 0); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("CAS create over existing: %v, want ErrConflict", err)
			}
			// Consul skips a write that changes nothing, and the version
			// stays.
			same, err := a.CAS(ctx, key, value, v1)
			if err != nil || same != v1 {
				t.Fatalf("CAS of the same value at version %d: got %d, %v", v1, same, err)
			}
			value[0] = 'y'
			v2, err := a.CAS(ctx, key, value, v1)
			if err != nil || v2 <= v1 {
				t.Fatalf("CAS at current version %d: got %d, %v", v1, v2, err)
			}
			if _, err := a.CAS(ctx, key, value, v1); !errors.Is(err, state.ErrConflict) {
				t.Fatalf("CAS at stale version: %v, want ErrConflict", err)
			}
		})
	}
}

func TestCASRace(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	clients := []*consul.Store{open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})}
	const perWorker, workers = 20, 8
	var conflicts atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		st := clients[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				for {
					var n int
					var version uint64
					e, err := st.Get(ctx, "switches/counter")
					switch {
					case errors.Is(err, state.ErrNotFound):
					case err != nil:
						t.Error(err)
						return
					default:
						fmt.Sscan(string(e.Value), &n)
						version = e.Version
					}
					_, err = st.CAS(ctx, "switches/counter", []byte(fmt.Sprint(n+1)), version)
					if err == nil {
						break
					}
					if !errors.Is(err, state.ErrConflict) {
						t.Error(err)
						return
					}
					conflicts.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	e, err := clients[0].Get(ctx, "switches/counter")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint(workers * perWorker); string(e.Value) != want {
		t.Fatalf("counter = %s after %s CAS increments; an update was lost", e.Value, want)
	}
	t.Logf("%d increments from 2 clients, %d CAS conflicts retried", workers*perWorker, conflicts.Load())
	if conflicts.Load() == 0 {
		t.Log("no conflicts happened; the race was not exercised this run")
	}
}

func TestWatchWakeLatency(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	writer, watcher := open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	_, idx, err := watcher.Watch(ctx, state.NSSwitches, 0)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 30
	var lat []time.Duration
	for i := range rounds {
		type result struct {
			at  time.Time
			idx uint64
			err error
		}
		got := make(chan result, 1)
		go func() {
			_, next, err := watcher.Watch(ctx, state.NSSwitches, idx)
			got <- result{time.Now(), next, err}
		}()
		time.Sleep(20 * time.Millisecond) // let the blocking query reach the agent
		wrote := time.Now()
		if _, err := writer.Put(ctx, "switches/main", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.idx <= idx {
				t.Fatalf("Watch returned index %d after %d", r.idx, idx)
			}
			idx = r.idx
			lat = append(lat, r.at.Sub(wrote))
		case <-time.After(5 * time.Second):
			t.Fatal("Watch did not wake within 5s of a write")
		}
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("watch wake after a write (from the start of the Put), %d rounds: p50 %s, p99 %s, max %s", rounds, p50, p99, lat[len(lat)-1])
	if p50 > 50*time.Millisecond {
		t.Errorf("p50 wake latency %s, want under 50ms", p50)
	}
}

func TestWatchIndexReset(t *testing.T) {
	tests := []struct {
		name string
		// inFlight restarts the agent while a Watch is blocked (the usual
		// case); otherwise between two Watch calls, so only the server's
		// wait time can reveal the reset.
		inFlight bool
	}{
		{"restart during a watch", true},
		{"restart between watches", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := consultest.Start(t)
			ctx := context.Background()
			s := open(t, agent.Addr, "reset", consul.Options{WatchWaitTime: 2 * time.Second})
			for i := range 50 { // push the index well past a fresh agent's
				if _, err := s.Put(ctx, fmt.Sprintf("switches/s%d", i), []byte("{}")); err != nil {
					t.Fatal(err)
				}
			}
			_, idx, err := s.Watch(ctx, state.NSSwitches, 0)
			if err != nil {
				t.Fatal(err)
			}
			if tt.inFlight {
				errc := make(chan error, 1)
				go func() {
					_, _, err := s.Watch(ctx, state.NSSwitches, idx)
					errc <- err
				}()
				time.Sleep(100 * time.Millisecond)
				agent.Restart()
				select {
				case err := <-errc:
					t.Logf("blocked Watch returned: %v", err)
				case <-time.After(10 * time.Second):
					t.Fatal("blocked Watch did not return after the agent restarted")
				}
			} else {
				agent.Restart()
			}

			start := time.Now()
			deadline := start.Add(15 * time.Second)
			for {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				entries, next, err := s.Watch(wctx, state.NSSwitches, idx)
				cancel()
				if err == nil {
					if next >= idx {
						t.Fatalf("Watch after reset returned index %d, want below %d", next, idx)
					}
					t.Logf("reset noticed after %s: index %d -> %d, %d entries", time.Since(start).Round(time.Millisecond), idx, next, len(entries))
					break
				}
				if !errors.Is(err, state.ErrUnavailable) || time.Now().After(deadline) {
					t.Fatalf("Watch after restart: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

func TestLockHeld(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	a, b := open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	l, err := a.Lock(ctx, state.RestoreLock, []byte(`{"host":"gw-1","op":"op-7"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	start := time.Now()
	_, err = b.Lock(ctx, state.RestoreLock, []byte(`{"host":"gw-2","op":"op-8"}`))
	took := time.Since(start)
	var held *state.LockHeldError
	if !errors.As(err, &held) {
		t.Fatalf("second Lock: %v, want *state.LockHeldError", err)
	}
	if want := `lock restore held by {"host":"gw-1","op":"op-7"}`; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if took > 2*time.Second {
		t.Fatalf("Lock on a held lock took %s; it must not wait", took)
	}
	t.Logf("a held lock was reported in %s", took.Round(time.Millisecond))
	// The loser's session is gone; only the holder's remains.
	sessions, _, err := a.Client().Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 1 {
		t.Fatalf("%d sessions exist, want only the holder's", len(sessions))
	}
}

func TestLockLost(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	a, b := open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	l, err := a.Lock(ctx, state.RestoreLock, []byte("gw-1"))
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := a.Client().KV().Get(prefix+"/locks/restore", nil)
	if err != nil || p == nil || p.Session == "" {
		t.Fatalf("lock key = %+v, %v; want it held by a session", p, err)
	}
	destroyed := time.Now()
	if _, err := a.Client().Session().Destroy(p.Session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		t.Logf("Lost closed %s after the session was destroyed", time.Since(destroyed).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("Lost did not close after the session was destroyed")
	}
	// The lock-delay keeps others out for a moment, then it is free.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l2, err := b.Lock(ctx, state.RestoreLock, []byte("gw-2"))
		if err == nil {
			t.Logf("taken by another client %s after the session was destroyed", time.Since(destroyed).Round(time.Millisecond))
			l2.Unlock()
			break
		}
		if !errors.Is(err, state.ErrLockHeld) || time.Now().After(deadline) {
			t.Fatalf("Lock after the holder's session was destroyed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Unlock(); err != nil {
		t.Fatalf("Unlock of a lost lock: %v", err)
	}
}

func TestUnlockFreesAtOnce(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	a, b := open(t, agent.Addr, prefix, consul.Options{}), open(t, agent.Addr, prefix, consul.Options{})
	l, err := a.Lock(ctx, "restore", []byte("gw-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
	case <-time.After(2 * time.Second):
		t.Fatal("Lost did not close after Unlock")
	}
	l2, err := b.Lock(ctx, "restore", []byte("gw-2"))
	if err != nil {
		t.Fatalf("Lock right after Unlock: %v (Unlock must not leave a lock-delay)", err)
	}
	l2.Unlock()
	sessions, _, err := a.Client().Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 0 {
		t.Fatalf("%d sessions left after Unlock, want 0", len(sessions))
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentAddr is a loopback address that accepts connections and never
// answers.
func silentAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// failingAddr is an HTTP server that answers every request with status,
// echoing the request's headers in the body, as a misbehaving proxy might.
func failingAddr(t *testing.T, status int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		fmt.Fprintf(w, "rejected request with headers %v", r.Header)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// storeOps calls every Store method that talks to Consul.
var storeOps = []struct {
	name string
	call func(ctx context.Context, s *consul.Store) error
}{
	{"get", func(ctx context.Context, s *consul.Store) error { _, err := s.Get(ctx, "switches/main"); return err }},
	{"list", func(ctx context.Context, s *consul.Store) error { _, err := s.List(ctx, state.NSPoints); return err }},
	{"put", func(ctx context.Context, s *consul.Store) error {
		_, err := s.Put(ctx, "points/p1", []byte("{}"))
		return err
	}},
	{"cas", func(ctx context.Context, s *consul.Store) error {
		_, err := s.CAS(ctx, "switches/main", []byte("{}"), 7)
		return err
	}},
	{"delete", func(ctx context.Context, s *consul.Store) error { return s.Delete(ctx, "points/p1") }},
	{"watch", func(ctx context.Context, s *consul.Store) error {
		_, _, err := s.Watch(ctx, state.NSSwitches, 0)
		return err
	}},
	{"watch blocking", func(ctx context.Context, s *consul.Store) error {
		_, _, err := s.Watch(ctx, state.NSSwitches, 42)
		return err
	}},
	{"lock", func(ctx context.Context, s *consul.Store) error {
		_, err := s.Lock(ctx, "restore", []byte("me"))
		return err
	}},
}

func TestUnavailable(t *testing.T) {
	servers := []struct {
		name string
		addr func(t *testing.T) string
		// within bounds each call: the dial error is immediate, the
		// silent server is cut off by RequestTimeout.
		within time.Duration
	}{
		{"nothing listening", closedAddr, 500 * time.Millisecond},
		{"accepts but never answers", silentAddr, 1500 * time.Millisecond},
		{"no cluster leader", func(t *testing.T) string { return failingAddr(t, http.StatusInternalServerError) }, 500 * time.Millisecond},
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			s := open(t, srv.addr(t), "", consul.Options{RequestTimeout: 300 * time.Millisecond, DialTimeout: 300 * time.Millisecond})
			for _, op := range storeOps {
				t.Run(op.name, func(t *testing.T) {
					start := time.Now()
					err := op.call(context.Background(), s)
					took := time.Since(start)
					if !errors.Is(err, state.ErrUnavailable) {
						t.Fatalf("err = %v, want ErrUnavailable", err)
					}
					if took > srv.within {
						t.Fatalf("took %s, want under %s", took, srv.within)
					}
				})
			}
		})
	}
}

func TestCancelPassesThrough(t *testing.T) {
	s := open(t, silentAddr(t), "", consul.Options{RequestTimeout: 10 * time.Second})
	for _, op := range storeOps {
		t.Run(op.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := op.call(ctx, s); err != context.DeadlineExceeded {
				t.Fatalf("err = %v, want context.DeadlineExceeded as is", err)
			}
		})
	}
}

func TestTokenNeverShown(t *testing.T) {
	const token = "d5e0c1f4-5b8e-4c1a-9f64-secret-token"
	servers := []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"unreachable", closedAddr},
		{"server error echoing headers", func(t *testing.T) string { return failingAddr(t, http.StatusInternalServerError) }},
		{"forbidden echoing headers", func(t *testing.T) string { return failingAddr(t, http.StatusForbidden) }},
	}
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			s, err := consul.Open(consul.Config{Address: srv.addr(t), Token: token}, consul.Options{RequestTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if strings.Contains(s.Describe(), token) {
				t.Fatalf("Describe() = %q shows the token", s.Describe())
			}
			for _, op := range storeOps {
				err := op.call(context.Background(), s)
				if err == nil {
					t.Fatalf("%s succeeded against a broken server", op.name)
				}
				if strings.Contains(err.Error(), token) || strings.Contains(fmt.Sprintf("%+v", err), token) {
					t.Fatalf("%s error shows the token: %v", op.name, err)
				}
			}
		})
	}
}

func TestValueTooLargeNotSent(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	s := open(t, strings.TrimPrefix(srv.URL, "http://"), "", consul.Options{})
	big := make([]byte, state.MaxValueSize+1)
	if _, err := s.Put(context.Background(), "points/big", big); err == nil || errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Put of %d bytes: %v, want a size error", len(big), err)
	}
	if _, err := s.CAS(context.Background(), "points/big", big, 0); err == nil || errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("CAS of %d bytes: %v, want a size error", len(big), err)
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("%d requests reached the server", n)
	}
}

func TestOpen(t *testing.T) {
	tests := []struct {
		name     string
		cfg      consul.Config
		env      string // CONSUL_HTTP_ADDR
		describe string
		wantErr  bool
	}{
		{"defaults from the environment", consul.Config{}, "10.0.0.9:8500", "consul http://10.0.0.9:8500 prefix switchback", false},
		{"address wins over the environment", consul.Config{Address: "127.0.0.1:9500"}, "10.0.0.9:8500", "consul http://127.0.0.1:9500 prefix switchback", false},
		{"tls switches to https", consul.Config{Address: "c.example:8501", TLS: consul.TLSConfig{CAFile: "testdata/none.pem"}}, "", "", true},
		{"prefix and datacenter", consul.Config{Address: "127.0.0.1:8500", Prefix: "/fleet/eu/", Datacenter: "dc2"}, "", "consul http://127.0.0.1:8500 prefix fleet/eu datacenter dc2", false},
		{"url with user info", consul.Config{Address: "https://u:p@c.example:8501"}, "", "consul https://c.example:8501 prefix switchback", false},
		{"bad prefix", consul.Config{Prefix: "a/../b"}, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CONSUL_HTTP_ADDR", tt.env)
			s, err := consul.Open(tt.cfg, consul.Options{})
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Open succeeded: %s", s.Describe())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Describe(); got != tt.describe {
				t.Fatalf("Describe() = %q, want %q", got, tt.describe)
			}
		})
	}
}

func TestLeaderLoss(t *testing.T) {
	cluster := consultest.StartCluster(t, 3)
	ctx := context.Background()
	leader := cluster.WaitLeader(t)
	follower := (leader + 1) % 3
	prefix := freshPrefix()
	s := open(t, cluster.Agents[follower].Addr, prefix, consul.Options{})
	v1, err := s.Put(ctx, "switches/main", []byte(`{"mode":"split"}`))
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Lock(ctx, state.RestoreLock, []byte("gw-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()

	killed := time.Now()
	cluster.Kill(leader)
	t.Logf("killed leader %s", cluster.Agents[leader].Name)

	// Writes through the surviving follower fail as unavailable until a
	// new leader is elected, then succeed; nothing written is lost.
	var unavailable int
	for {
		_, err := s.CAS(ctx, "switches/main", []byte(`{"mode":"legacy"}`), v1)
		if err == nil {
			break
		}
		if !errors.Is(err, state.ErrUnavailable) || time.Since(killed) > 30*time.Second {
			t.Fatalf("CAS after leader loss: %v", err)
		}
		unavailable++
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("writes resumed %s after the leader was killed (%d unavailable answers before)", time.Since(killed).Round(time.Millisecond), unavailable)
	if i := cluster.WaitLeader(t); i == leader {
		t.Fatalf("leader is still %d", i)
	}
	e, err := s.Get(ctx, "switches/main")
	if err != nil || string(e.Value) != `{"mode":"legacy"}` {
		t.Fatalf("Get = %q, %v", e.Value, err)
	}
	select {
	case <-l.Lost():
		t.Logf("the lock was reported lost during the election")
	default:
		t.Logf("the lock survived the election (its session lives in raft)")
	}
}

func TestLockLostWhenConsulGoes(t *testing.T) {
	agent := consultest.Start(t)
	s := open(t, agent.Addr, freshPrefix(), consul.Options{})
	l, err := s.Lock(context.Background(), state.RestoreLock, []byte("gw-1"))
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	agent.Stop()
	select {
	case <-l.Lost():
		t.Logf("Lost closed %s after the agent stopped", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(time.Duration(consul.DefaultLockMonitorRetries+5) * time.Second):
		t.Fatal("Lost did not close while Consul was unreachable")
	}
	if err := l.Unlock(); !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("Unlock with Consul down: %v, want ErrUnavailable", err)
	}
}

func TestLockDoesNotWait(t *testing.T) {
	agent := consultest.Start(t)
	prefix := freshPrefix()
	a := open(t, agent.Addr, prefix, consul.Options{})
	b := open(t, agent.Addr, prefix, consul.Options{LockWaitTime: 10 * time.Second})
	l, err := a.Lock(context.Background(), state.RestoreLock, []byte("gw-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	start := time.Now()
	if _, err := b.Lock(context.Background(), state.RestoreLock, []byte("gw-2")); !errors.Is(err, state.ErrLockHeld) {
		t.Fatalf("Lock of a held lock: %v, want ErrLockHeld", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Lock of a held lock took %s; it must not wait out LockWaitTime", took)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Lock(ctx, state.RestoreLock, []byte("gw-2")); err != context.Canceled {
		t.Fatalf("Lock with a canceled context: %v, want context.Canceled", err)
	}
}
