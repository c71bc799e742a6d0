package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestProbeCheck(t *testing.T) {
	var status atomic.Int64
	status.Store(http.StatusOK)
	var method atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method.Store(r.Method)
		if s := int(status.Load()); s >= 300 && s < 400 {
			http.Redirect(w, r, "/elsewhere", s)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()

	p := &Probe{Method: http.MethodHead, URL: srv.URL + "/health", Timeout: time.Second}
	if !p.Healthy() || p.LastError() != "" || !p.LastCheck().IsZero() {
		t.Fatal("a new probe is not healthy with no error and no check")
	}
	steps := []struct {
		name        string
		status      int
		wantHealthy bool
		wantErr     string
	}{
		{"200 is healthy", 200, true, ""},
		{"500 is not", 500, false, "status 500 Internal Server Error"},
		{"204 is healthy again", 204, true, ""},
		{"302 is healthy and not followed", 302, true, ""},
		{"404 is not", 404, false, "status 404"},
		{"back to 200", 200, true, ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			status.Store(int64(st.status))
			before := time.Now()
			err := p.Check(context.Background())
			if (err == nil) != st.wantHealthy || p.Healthy() != st.wantHealthy {
				t.Fatalf("err %v healthy %v, want healthy %v", err, p.Healthy(), st.wantHealthy)
			}
			if !strings.Contains(p.LastError(), st.wantErr) || (st.wantErr == "") != (p.LastError() == "") {
				t.Errorf("LastError %q, want %q", p.LastError(), st.wantErr)
			}
			if p.LastCheck().Before(before) {
				t.Errorf("LastCheck %v not updated", p.LastCheck())
			}
		})
	}
	if m, _ := method.Load().(string); m != http.MethodHead {
		t.Errorf("method %q, want HEAD", m)
	}
}

func TestProbeRunToggles(t *testing.T) {
	var status atomic.Int64
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()

	p := &Probe{URL: srv.URL, Interval: 5 * time.Millisecond, Timeout: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	waitFor(t, "first check", func() bool { return !p.LastCheck().IsZero() && p.Healthy() })
	status.Store(http.StatusInternalServerError)
	waitFor(t, "unhealthy", func() bool { return !p.Healthy() })
	status.Store(http.StatusOK)
	waitFor(t, "healthy again", func() bool { return p.Healthy() && p.LastError() == "" })
}

func TestProbeTransportError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	p := &Probe{URL: url, Timeout: time.Second}
	if err := p.Check(context.Background()); err == nil || p.Healthy() || p.LastError() == "" {
		t.Errorf("probe of a closed server: err %v healthy %v", err, p.Healthy())
	}
}

func TestProbeTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	p := &Probe{URL: srv.URL, Timeout: 20 * time.Millisecond}
	if err := p.Check(context.Background()); err == nil || p.Healthy() {
		t.Errorf("slow probe: err %v healthy %v", err, p.Healthy())
	}
}

func TestProbeCanceledRecordsNothing(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := &Probe{URL: srv.URL}
	if err := p.Check(ctx); err != context.Canceled {
		t.Errorf("err %v, want context.Canceled", err)
	}
	if !p.Healthy() || !p.LastCheck().IsZero() {
		t.Error("a canceled probe was recorded")
	}
}

// waitFor polls cond until it holds or a few seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestProbeValidate(t *testing.T) {
	tests := []struct {
		name    string
		probe   *Probe
		wantErr string
	}{
		{"valid", &Probe{URL: "http://127.0.0.1:8080/health"}, ""},
		{"https", &Probe{URL: "https://legacy.internal/health", Interval: time.Second, Timeout: time.Second}, ""},
		{"empty url", &Probe{}, "must be an absolute http or https URL"},
		{"relative url", &Probe{URL: "/health"}, "must be an absolute http or https URL"},
		{"other scheme", &Probe{URL: "ftp://host/x"}, "must be an absolute http or https URL"},
		{"bad url", &Probe{URL: "http://[::1"}, "invalid probe url"},
		{"negative interval", &Probe{URL: "http://h/", Interval: -time.Second}, "probe interval -1s is out of range"},
		{"negative timeout", &Probe{URL: "http://h/", Timeout: -time.Second}, "probe timeout -1s is out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.probe.Validate()
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
