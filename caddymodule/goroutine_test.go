package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// panicCount reads a task's switchback_goroutine_panics_total.
func panicCount(task string) uint64 {
	return goroutinePanics.GetOrCreateCounter(panicSeries(task)).Get()
}

// TestGoLoopSurvivesPanic: a loop that panics is recovered, logged with
// its stack, counted, and started again; it ends for good with its
// context.
func TestGoLoopSurvivesPanic(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	before := panicCount(taskMonitor)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runs atomic.Int64
	done := goLoop(ctx, zap.New(core), taskMonitor, func(ctx context.Context) {
		if runs.Add(1) <= 2 {
			var m map[string]int
			m["boom"] = 1 // a real runtime panic, not a hand-made one
		}
		<-ctx.Done()
	})
	eventually(t, "the loop to run a third time", func() bool { return runs.Load() == 3 })
	if got := panicCount(taskMonitor) - before; got != 2 {
		t.Errorf("panics counted = %d, want 2", got)
	}
	entries := logs.FilterField(zap.String("task", taskMonitor)).All()
	if len(entries) != 2 {
		t.Fatalf("logged %d panics, want 2", len(entries))
	}
	if stack := entries[0].ContextMap()["stack"]; !strings.Contains(stack.(string), "goroutine_test.go") {
		t.Errorf("the logged stack does not show where it panicked:\n%s", stack)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not end with its context")
	}
	if runs.Load() != 3 {
		t.Errorf("runs = %d after the end, want 3", runs.Load())
	}
}

// TestGoTaskSurvivesPanic: a one-shot task that panics is recovered and
// counted, and not run again.
func TestGoTaskSurvivesPanic(t *testing.T) {
	before := panicCount(taskTrip)
	var runs atomic.Int64
	goTask(zap.NewNop(), taskTrip, func() {
		runs.Add(1)
		panic(errors.New("boom"))
	})
	eventually(t, "the panic to be counted", func() bool { return panicCount(taskTrip) == before+1 })
	time.Sleep(50 * time.Millisecond)
	if runs.Load() != 1 {
		t.Errorf("runs = %d, want 1", runs.Load())
	}
}

// TestPanicMetricExposed: every task's series is in the metrics from the
// start, so an alert on its increase works before the first panic.
func TestPanicMetricExposed(t *testing.T) {
	var buf bytes.Buffer
	goroutinePanics.WritePrometheus(&buf)
	for _, task := range []string{taskProbe, taskMonitor, taskStoreSync, taskCacheWriter, taskSecret, taskActions} {
		if !strings.Contains(buf.String(), `switchback_goroutine_panics_total{task="`+task+`"}`) {
			t.Errorf("no series for task %s in:\n%s", task, buf.String())
		}
	}
}

// TestArmTransportPanicFailsProbe: an arm that panics fails the probe
// with an error and is counted; reverse_proxy's http.ErrAbortHandler
// fails it without being counted as our fault.
func TestArmTransportPanicFailsProbe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		value  any
		counts uint64
	}{
		{"bug", "nil map", 1},
		{"abort", http.ErrAbortHandler, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := panicCount(taskProbe)
			tr := armTransport{
				arm:    armFunc(func(http.ResponseWriter, *http.Request) error { panic(tc.value) }),
				server: new(caddyhttp.Server),
				logger: zap.NewNop(),
				task:   taskProbe,
			}
			req, _ := http.NewRequest(http.MethodGet, "http://switchback-probe/health", nil)
			if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "panicked") {
				t.Errorf("RoundTrip error = %v, want the panic", err)
			}
			if got := panicCount(taskProbe) - before; got != tc.counts {
				t.Errorf("panics counted = %d, want %d", got, tc.counts)
			}
		})
	}
}

// TestArmTransportContext: the probe's request carries what Caddy's
// server gives a request: the server itself, a replacer, the vars with a
// client IP, and the original request.
func TestArmTransportContext(t *testing.T) {
	srv := new(caddyhttp.Server)
	var got *http.Request
	tr := armTransport{
		arm: armFunc(func(w http.ResponseWriter, r *http.Request) error {
			got = r
			w.WriteHeader(http.StatusNoContent)
			return nil
		}),
		server: srv,
		logger: zap.NewNop(),
	}
	req, _ := http.NewRequest(http.MethodGet, "http://switchback-probe/health?x=1", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("RoundTrip = %v, %v", resp, err)
	}
	ctx := got.Context()
	if s, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); s != srv {
		t.Errorf("server in context = %p, want %p", s, srv)
	}
	if ip, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string); ip != "127.0.0.1" {
		t.Errorf("client IP var = %q, want 127.0.0.1", ip)
	}
	if or, ok := ctx.Value(caddyhttp.OriginalRequestCtxKey).(http.Request); !ok || or.RequestURI != "/health?x=1" {
		t.Errorf("original request = %+v, %v", or, ok)
	}
}
