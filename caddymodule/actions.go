package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Action is one on_trip or on_recover step. Exactly one of Exec, Webhook
// and Restore is set.
type Action struct {
	// Exec runs a command (no shell) with the event in its environment:
	// SWITCHBACK_EVENT, SWITCHBACK_SWITCH, SWITCHBACK_REASON,
	// SWITCHBACK_RULE, SWITCHBACK_GATEWAY. Its output is logged.
	Exec []string `json:"exec,omitempty"`

	// Webhook POSTs the event as JSON to this URL, retrying with backoff
	// (up to 5 attempts) on errors and 5xx answers.
	Webhook string `json:"webhook,omitempty"`

	// Restore is "emergency" (an emergency rollback) or "point" (a
	// rollback to Point).
	Restore string `json:"restore,omitempty"`
	Point   string `json:"point,omitempty"`

	// Timeout bounds an exec or one webhook attempt (default 30s for exec,
	// 5s for a webhook attempt).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

func (a Action) check() error {
	n := 0
	for _, set := range []bool{len(a.Exec) > 0, a.Webhook != "", a.Restore != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("an action needs exactly one of exec, webhook or restore")
	}
	if a.Webhook != "" {
		u, err := url.Parse(a.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("webhook %q: want an http or https URL", a.Webhook)
		}
	}
	switch a.Restore {
	case "", "emergency":
	case "point":
		if a.Point == "" {
			return fmt.Errorf("restore point needs a point id")
		}
	default:
		return fmt.Errorf("unknown restore action %q: want emergency or point ID", a.Restore)
	}
	if a.Timeout < 0 {
		return fmt.Errorf("action timeout must be positive")
	}
	return nil
}

// runActions runs a list of actions in order. A failing action is logged
// and the next one still runs: a broken webhook must not stop a restore.
//
// The actions belong to the event, not to the config that saw it: they run
// to their end (each is bounded by its own timeout) though a reload cancels
// ctx meanwhile. Only ctx's values are kept.
func (h *Handler) runActions(ctx context.Context, list string, actions []Action, event map[string]any) {
	ctx = context.WithoutCancel(ctx)
	for i, a := range actions {
		log := h.logger.With(zap.String("actions", list), zap.Int("action", i))
		var err error
		switch {
		case len(a.Exec) > 0:
			err = h.runExec(ctx, a, event, log)
		case a.Webhook != "":
			err = runWebhook(ctx, a, event, log)
		case a.Restore != "":
			err = h.app.runRestoreAction(ctx, a, event, log)
		}
		if err != nil {
			log.Error("action failed", zap.Error(err))
		}
	}
}

// runWebhook POSTs the event, retrying with exponential backoff.
func runWebhook(ctx context.Context, a Action, event map[string]any, log *zap.Logger) error {
	body, err := json.Marshal(event)
	if err != nil {
		return err
	}
	timeout := time.Duration(a.Timeout)
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	client := &http.Client{Timeout: timeout}
	wait := 500 * time.Millisecond
	var last error
	for attempt := 1; attempt <= 5; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.Webhook, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "switchback")
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				if resp.StatusCode >= 300 {
					return fmt.Errorf("webhook answered %s", resp.Status)
				}
				log.Info("webhook delivered", zap.Int("attempt", attempt))
				return nil
			}
			err = fmt.Errorf("webhook answered %s", resp.Status)
		}
		last = err
		log.Warn("webhook attempt failed", zap.Int("attempt", attempt), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
	return fmt.Errorf("webhook gave up after 5 attempts: %w", last)
}
