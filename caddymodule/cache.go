package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
	"go.uber.org/zap"
)

// switchCache keeps, on the gateway's own disk, the last record of each
// switch it serves and whether the store has taken it. With a remote
// store (Consul) that is what a gateway that restarts during an outage
// serves: it keeps following the fleet's last state rather than falling
// back to its config, and a change it could not write (a trip during the
// outage) survives the restart and is written when the store returns.
//
// One goroutine writes it, coalescing changes, off the request path.
type switchCache struct {
	st     *local.Store
	logger *zap.Logger
	dirty  chan struct{}
	done   chan struct{}
	last   map[string][]byte // what was last written, by switch
}

type cachedSwitch struct {
	Record  json.RawMessage `json:"record"`
	Pending bool            `json:"pending"`
}

// DefaultCachePath is where a gateway on a remote store keeps its cache.
func DefaultCachePath() string {
	return filepath.Join(caddy.AppDataDir(), "switchback", "switch-cache.db")
}

func openSwitchCache(path string, logger *zap.Logger) (*switchCache, error) {
	st, err := local.Open(path, local.Options{})
	if err != nil {
		return nil, fmt.Errorf("opening switch cache: %w", err)
	}
	return &switchCache{st: st, logger: logger, dirty: make(chan struct{}, 1), done: make(chan struct{}), last: map[string][]byte{}}, nil
}

// load returns the cached record of switch name and whether it was
// pending. A cache that cannot be read is logged and treated as empty:
// it only ever stands in for the store.
func (c *switchCache) load(ctx context.Context, name string) (rec state.Switch, pending, ok bool) {
	if c == nil {
		return rec, false, false
	}
	e, err := c.st.Get(ctx, state.Key(state.NSSwitches, name))
	if err != nil {
		if !errors.Is(err, state.ErrNotFound) {
			c.logger.Warn("switch cache unreadable; ignoring it", zap.String("switch", name), zap.Error(err))
		}
		return rec, false, false
	}
	var cs cachedSwitch
	if err = json.Unmarshal(e.Value, &cs); err == nil {
		if rec, err = state.DecodeSwitch(cs.Record); err == nil {
			return rec, cs.Pending, true
		}
	}
	c.logger.Warn("switch cache record corrupt; ignoring it", zap.String("switch", name), zap.Error(err))
	return state.Switch{}, false, false
}

// touch asks for the cache to be brought up to date. It never blocks.
func (c *switchCache) touch() {
	if c == nil {
		return
	}
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// run writes snapshot() whenever touched, and once more when ctx ends. A
// write that panics is recovered, logged and counted, and the loop goes
// on.
func (c *switchCache) run(ctx context.Context, snapshot func() map[string]cachedSwitch) {
	defer close(c.done)
	write := func() { c.write(snapshot()) }
	for {
		select {
		case <-c.dirty:
			runTask(c.logger, taskCacheWriter, write)
		case <-ctx.Done():
			runTask(c.logger, taskCacheWriter, write)
			return
		}
	}
}

// wait waits for run to finish its last write, at most d.
func (c *switchCache) wait(d time.Duration) {
	if c == nil {
		return
	}
	select {
	case <-c.done:
	case <-time.After(d):
	}
}

func (c *switchCache) write(snap map[string]cachedSwitch) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, cs := range snap {
		b, err := json.Marshal(cs)
		if err != nil || bytes.Equal(b, c.last[name]) {
			continue
		}
		if _, err := c.st.Put(ctx, state.Key(state.NSSwitches, name), b); err != nil {
			c.logger.Warn("writing switch cache", zap.String("switch", name), zap.Error(err))
			continue
		}
		c.last[name] = b
	}
}

// snapshotSwitches returns the cache's view of this config's switches.
func (a *App) snapshotSwitches() map[string]cachedSwitch {
	snap := make(map[string]cachedSwitch, len(a.registry))
	for name, sw := range a.registry {
		rec, pending := sw.Record()
		if rec.Mode == "" {
			continue // not configured yet
		}
		b, err := json.Marshal(rec)
		if err != nil {
			continue
		}
		snap[name] = cachedSwitch{Record: b, Pending: pending}
	}
	return snap
}
