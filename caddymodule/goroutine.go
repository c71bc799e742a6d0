package caddymodule

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"go.uber.org/zap"
)

// Tasks are the names of switchback's own goroutines, as logs and the
// switchback_goroutine_panics_total metric call them.
const (
	taskProbe        = "probe"
	taskMonitor      = "monitor"
	taskLegacyWatch  = "legacy_watch"
	taskAutoRecover  = "auto_recover"
	taskTrip         = "trip"
	taskActions      = "actions"
	taskStoreSync    = "store_sync"
	taskPendingWrite = "pending_write_back"
	taskCacheWriter  = "cache_writer"
	taskSecret       = "cookie_secret_refresh"
	taskRecovery     = "restore_recovery"
	taskShadow       = "shadow"
	taskRollout      = "rollout"
	taskStats        = "stats"
	taskOverrideKey  = "override_key"
)

// goroutinePanics counts, by task, the panics recovered in switchback's
// own goroutines. It is the process's, not a config's: a Prometheus
// counter must not go back to zero on a reload, and a panic is a fault of
// the process. Every task's series exists from the start at 0, so an alert
// on its increase works before the first panic.
var goroutinePanics = func() *metrics.Set {
	s := metrics.NewSet()
	for _, task := range []string{taskProbe, taskMonitor, taskLegacyWatch, taskAutoRecover, taskTrip, taskActions,
		taskStoreSync, taskPendingWrite, taskCacheWriter, taskSecret, taskRecovery, taskRollout, taskShadow,
		taskStats, taskOverrideKey} {
		s.GetOrCreateCounter(panicSeries(task))
	}
	return s
}()

func panicSeries(task string) string {
	return fmt.Sprintf(`switchback_goroutine_panics_total{task=%q}`, task)
}

// testPanic, when not nil, is called at the start of every run of a task;
// tests set it to make a task panic. Production builds leave it nil (see
// goroutine_testhook.go, built only with the switchback_testhooks tag).
var testPanic func(task string)

// runTask runs fn and returns the value of its panic, or nil. A panic is
// recovered, logged with its stack and counted in
// switchback_goroutine_panics_total.
func runTask(log *zap.Logger, task string, fn func()) (panicked any) {
	defer func() {
		if panicked = recover(); panicked != nil {
			notePanic(log, task, panicked)
		}
	}()
	if testPanic != nil {
		testPanic(task)
	}
	fn()
	return nil
}

// notePanic logs and counts a recovered panic. Call it from the deferred
// function that recovered, so the stack still shows where it happened.
func notePanic(log *zap.Logger, task string, v any) {
	goroutinePanics.GetOrCreateCounter(panicSeries(task)).Inc()
	log.Error("recovered a panic in a switchback goroutine; the gateway keeps serving",
		zap.String("task", task), zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
}

// goTask runs fn once on a goroutine of its own. A panic in fn does not
// take the process down: it is recovered, logged and counted, and fn is
// not run again.
func goTask(log *zap.Logger, task string, fn func()) {
	go runTask(log, task, fn)
}

// goLoop runs the loop fn on a goroutine of its own until ctx is done. A
// panic in fn is recovered, logged and counted, and fn is started again
// after a pause that grows, with jitter, from about 100ms to about 5s
// while it keeps panicking (a loop that ran for a minute starts over at
// the shortest pause). The returned channel is closed once fn has
// returned for good.
func goLoop(ctx context.Context, log *zap.Logger, task string, fn func(context.Context)) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var pause time.Duration
		for ctx.Err() == nil {
			began := time.Now()
			if runTask(log, task, func() { fn(ctx) }) == nil {
				return
			}
			if time.Since(began) > time.Minute {
				pause = 0
			}
			pause = nextBackoff(pause)
			sleep(ctx, pause)
		}
	}()
	return done
}
