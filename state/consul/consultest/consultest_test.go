package consultest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB that records Fatalf and Skipf instead of
// ending the test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls fn with a recorder in its own goroutine, as t.Run would.
func run(t *testing.T, fn func(tb testing.TB)) *recorder {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

func TestBinary(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "consul")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		path, env string
		ci        string
		want      string // path returned; empty if the test must stop
		wantFatal bool
	}{
		{name: "on PATH", path: filepath.Dir(fake), want: fake},
		{name: "from the environment", path: t.TempDir(), env: fake, want: fake},
		{name: "missing, locally", path: t.TempDir(), env: "/nonexistent/consul", ci: ""},
		{name: "missing, on CI", path: t.TempDir(), env: "/nonexistent/consul", ci: "true", wantFatal: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", tt.path)
			t.Setenv(EnvBinary, tt.env)
			t.Setenv("CI", tt.ci)
			var got string
			r := run(t, func(tb testing.TB) { got = Binary(tb) })
			switch {
			case tt.want != "":
				if got != tt.want || r.fatal != "" || r.skip != "" {
					t.Fatalf("Binary = %q (fatal %q, skip %q), want %q", got, r.fatal, r.skip, tt.want)
				}
			case tt.wantFatal:
				if r.fatal == "" || !strings.Contains(r.fatal, "CI=true") {
					t.Fatalf("fatal = %q, skip = %q; want a failure on CI", r.fatal, r.skip)
				}
			default:
				if r.skip == "" || !strings.Contains(r.skip, "go build") || !strings.Contains(r.skip, EnvBinary) {
					t.Fatalf("skip = %q, fatal = %q; want a skip saying how to get consul", r.skip, r.fatal)
				}
			}
		})
	}
}

func TestToolsDir(t *testing.T) {
	dir, err := toolsDir()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil || !strings.Contains(string(b), "github.com/hashicorp/consul v"+Version) {
		t.Fatalf("%s/go.mod does not pin consul %s (%v)", dir, Version, err)
	}
}

func TestStartAndRestart(t *testing.T) {
	a := Start(t)
	leader, err := get(a.Addr, "/v1/status/leader")
	if err != nil || leader == `""` {
		t.Fatalf("leader = %s, %v", leader, err)
	}
	a.Stop()
	if _, err := get(a.Addr, "/v1/status/leader"); err == nil {
		t.Fatal("agent still answers after Stop")
	}
	a.Start()
	if _, err := get(a.Addr, "/v1/status/leader"); err != nil {
		t.Fatalf("agent does not answer after Start: %v", err)
	}
}

func TestSingleServerKeepsDataAcrossRestart(t *testing.T) {
	c := StartCluster(t, 1)
	a := c.Agents[0]
	req, err := http.NewRequest(http.MethodPut, "http://"+a.Addr+"/v1/kv/k", strings.NewReader("v"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	a.Restart()
	if got, err := get(a.Addr, "/v1/kv/k?raw"); err != nil || got != "v" {
		t.Fatalf("after restart, k = %q, %v; want v", got, err)
	}
	if i := c.WaitLeader(t); i != 0 {
		t.Fatalf("leader = %d", i)
	}
}
