package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state"
)

// Rollback configuration types, as package restore defines them.
type (
	Retention   = restore.Retention
	Hooks       = restore.Hooks
	ValidateURL = restore.ValidateURL
)

// rollbackConfig turns the app's rollback fields into a restore.Config,
// with Caddy's data directory as the default home of backups and logs.
func (a *App) rollbackConfig() restore.Config {
	cfg := restore.Config{
		Backups:      a.Backups,
		Logs:         a.Logs,
		Types:        a.Points,
		Components:   a.Components,
		ValidateURLs: a.Validate,
	}
	if cfg.Backups == "" {
		cfg.Backups = filepath.Join(caddy.AppDataDir(), "switchback", "backups")
	}
	if cfg.Logs == "" {
		cfg.Logs = filepath.Join(caddy.AppDataDir(), "switchback", "logs")
	}
	if a.Retention != nil {
		cfg.Retention = *a.Retention
	}
	if a.Hooks != nil {
		cfg.Hooks = *a.Hooks
	}
	return cfg
}

// DefaultLockWait is how long an automatic restore waits for the restore
// lock when lock_wait is not set.
const DefaultLockWait = 10 * time.Minute

// lockWait returns the configured lock_wait or its default.
func (a *App) lockWait() time.Duration {
	if a.LockWait > 0 {
		return time.Duration(a.LockWait)
	}
	return DefaultLockWait
}

// hostIDFile is this host's id file, in Caddy's data directory (see
// restore.Options.HostIDFile).
func hostIDFile() string {
	return filepath.Join(caddy.AppDataDir(), "switchback", "host-id")
}

// newManager builds the rollback manager on the app's store.
func (a *App) newManager(logger *zap.Logger, opts restore.Options) (*restore.Manager, error) {
	opts.Host = a.gateway
	opts.HostIDFile = hostIDFile()
	if opts.Logger == nil && logger != nil {
		opts.Logger = slog.New(zapslog.NewHandler(logger.Core()))
	}
	return restore.New(a.store, a.rollbackConfig(), opts)
}

// provisionRollback sets up the rollback manager.
func (a *App) provisionRollback() error {
	m, err := a.newManager(a.logger.Named("restore"), restore.Options{})
	if err != nil {
		return fmt.Errorf("rollback config: %w", err)
	}
	a.restore = m
	return nil
}

// recoverRetry bounds the pause between two tries of the startup
// recovery while the restore lock is held.
const recoverRetry = 5 * time.Second

// startRollback finishes this host's restores that a crash left half
// done, in the background, so a gateway start never serves a mixed tree
// for long and never blocks on it. While another restore holds the lock
// it tries again until it gets it (or the app stops); other hosts'
// unfinished operations are logged, never touched.
func (a *App) startRollback(ctx context.Context) {
	goTask(a.logger, taskRecovery, func() {
		if un, err := a.restore.Unfinished(ctx); err == nil {
			for _, op := range un {
				a.logger.Warn("another host's operation is unfinished; it is that host's to recover", zap.String("op", op.ID), zap.String("kind", op.Kind), zap.String("host", op.Host))
			}
		}
		pause := 250 * time.Millisecond
		for {
			ops, err := a.restore.Recover(ctx)
			for _, op := range ops {
				a.logger.Warn("finished a restore interrupted by a crash", zap.String("op", op.ID), zap.String("status", string(op.Status)))
			}
			held := errors.Is(err, restore.ErrRestoreInProgress) || errors.Is(err, state.ErrLockHeld)
			if err != nil && !held {
				a.logger.Error("recovering unfinished restores", zap.Error(err))
			}
			if !held || ctx.Err() != nil {
				return
			}
			a.logger.Info("restore lock held; recovery of this host's unfinished restores will try again", zap.Error(err), zap.Duration("in", pause))
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, recoverRetry)
		}
	})
}

// runRestoreAction runs an on_trip "restore" action.
func (a *App) runRestoreAction(ctx context.Context, act Action, event map[string]any, log *zap.Logger) error {
	reason, _ := event["reason"].(string)
	trigger := "on_trip " + fmt.Sprint(event["switch"])
	var (
		op  restore.Operation
		err error
	)
	switch act.Restore {
	case "emergency":
		op, err = a.restore.Emergency(ctx, restore.EmergencyOptions{
			Reason:   reason,
			Trigger:  trigger,
			LockWait: a.lockWait(),
			ForceLegacy: func(ctx context.Context) (string, error) {
				n, err := a.forceAllLegacy(ctx, "emergency: "+reason, "on_trip restore")
				return fmt.Sprintf("%d switches on legacy", n), err
			},
		})
	case "point":
		op, err = a.restore.Rollback(ctx, act.Point, restore.RollbackOptions{Trigger: trigger, Reason: reason, LockWait: a.lockWait()})
	}
	if err != nil {
		return fmt.Errorf("restore %s (op %s): %w", act.Restore, op.ID, err)
	}
	log.Info("restore action done", zap.String("op", op.ID), zap.String("status", string(op.Status)))
	return nil
}

// forceAllLegacy moves every switch of this config to legacy. It returns
// how many switches changed.
func (a *App) forceAllLegacy(ctx context.Context, reason, by string) (int, error) {
	var errs []error
	n := 0
	now := time.Now().UTC()
	for _, sw := range a.registry {
		_, err := sw.change(ctx, a, func(cur *state.Switch) bool {
			if cur.Mode == state.ModeLegacy {
				return false
			}
			setMode(cur, state.ModeLegacy, reason, by, a.gateway, now)
			return true
		})
		if err != nil && !errors.Is(err, state.ErrUnavailable) {
			errs = append(errs, fmt.Errorf("switch %s: %w", sw.name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// setMode records a manual mode change in a switch record.
func setMode(cur *state.Switch, mode state.Mode, reason, by, gateway string, now time.Time) {
	cur.Mode, cur.Reason, cur.By, cur.Gateway, cur.Since = mode, reason, by, gateway, now
	if mode != state.ModeLegacy {
		cur.Tripped, cur.Rule = false, ""
		cur.LegacyUnhealthy, cur.LegacyUnhealthyReason = false, ""
	}
	cur.Record(state.Event{Kind: "mode", Mode: mode, Weight: cur.Weight, Reason: reason, By: by, Gateway: gateway, At: now})
}

// runExec runs an exec action through restore.RunCommand, the runner the
// restore hooks use, with the event in the environment.
func (h *Handler) runExec(ctx context.Context, a Action, event map[string]any, log *zap.Logger) error {
	timeout := time.Duration(a.Timeout)
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	env := []string{"SWITCHBACK_EVENT=" + fmt.Sprint(event["event"])}
	for _, k := range []string{"switch", "reason", "rule", "gateway"} {
		if v, ok := event[k]; ok {
			env = append(env, "SWITCHBACK_"+strings.ToUpper(k)+"="+fmt.Sprint(v))
		}
	}
	quoted := make([]string, len(a.Exec))
	for i, arg := range a.Exec {
		quoted[i] = shellQuote(arg)
	}
	out, err := restore.RunCommand(ctx, restore.CommandOptions{Command: strings.Join(quoted, " "), Timeout: timeout, Env: env})
	log.Info("exec action ran", zap.Strings("command", a.Exec), zap.String("output", out), zap.Error(err))
	return err
}

// shellQuote quotes s for sh so it is passed as one literal argument.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// pointsExample is the snippet a user without a points block is shown.
const pointsExample = `
	{
		switchback {
			points {
				full_system /etc/myapp /var/lib/myapp
				configuration_only /etc/myapp
				data /var/lib/myapp
				component orchestrator /opt/orchestrator
			}
		}
	}`

// checkPointType refuses a point the config has no paths for, telling a
// first-time user what to add to the Caddyfile. Other mistakes are left
// to restore.
func (a *App) checkPointType(typ string) error {
	switch {
	case typ == restore.TypePartialComponent && len(a.Components) == 0:
		return apiErr(http.StatusBadRequest, "no components are configured for partial_component points: add a component line to the points block of the switchback global option, for example:\n%s\nthen reload the gateway (switchback reload --config Caddyfile)", pointsExample)
	case typ != restore.TypePartialComponent && slices.Contains(restore.Types, typ) && len(a.Points[typ]) == 0:
		what := "no points block"
		if len(a.Points) > 0 || len(a.Components) > 0 {
			what = "no " + typ + " line in the points block"
		}
		return apiErr(http.StatusBadRequest, "no paths are configured for point type %s (%s in the switchback global option): add one, for example:\n%s\nthen reload the gateway (switchback reload --config Caddyfile)", typ, what, pointsExample)
	}
	return nil
}
