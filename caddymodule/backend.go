package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/restore"
	"github.com/leanvibe/switchback/state"
)

// backend is what the CLI works through: the running gateway's admin API
// (adminBackend) or, with --config when the gateway does not answer, the
// state store and backups directly (offlineBackend). Both do the same
// thing for each method, so a command never cares which it has.
type backend interface {
	Switches(ctx context.Context) (SwitchesStatus, error)
	ChangeSwitch(ctx context.Context, name, action string, req changeRequest) (SwitchStatus, error)
	Rollout(ctx context.Context, name string, req rolloutRequest) (SwitchStatus, error)
	CreatePoint(ctx context.Context, req CreatePointRequest) (restore.Point, error)
	ListPoints(ctx context.Context, limit int, typ string) ([]restore.Point, error)
	VerifyPoint(ctx context.Context, id string, req VerifyRequest) (restore.VerifyReport, error)
	VerifyAll(ctx context.Context, req VerifyRequest) ([]restore.VerifyReport, error)
	Rollback(ctx context.Context, id string, req RollbackRequest) (restore.Operation, error)
	Emergency(ctx context.Context, reason, by string) (restore.Operation, error)
	Cleanup(ctx context.Context, opts restore.CleanupOptions) (restore.CleanupReport, error)
	Operations(ctx context.Context, limit int) ([]restore.Operation, error)
	Operation(ctx context.Context, id string) (restore.Operation, error)
	Report(ctx context.Context, id string) (string, error)
	Validate(ctx context.Context, level string) (restore.ValidationReport, error)
	Where() string
	Close() error
}

// SwitchesStatus is the body of GET /switchback/switches.
type SwitchesStatus struct {
	Gateway  string         `json:"gateway"`
	Store    StoreStatus    `json:"store"`
	Switches []SwitchStatus `json:"switches"`
}

// apiError is an error answer from the admin API, with its status.
type apiError struct {
	Status int
	Msg    string
}

func (e *apiError) Error() string { return e.Msg }

// errUnreachable says the gateway did not answer at all.
var errUnreachable = errors.New("gateway unreachable")

// adminBackend talks to a running gateway.
type adminBackend struct {
	addr   string
	client *http.Client
	base   string
}

func newAdminBackend(addr string) (*adminBackend, error) {
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %q: want host:port or unix/path", addr)
	}
	base := "http://" + na.JoinHostPort(0)
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		base = "http://127.0.0.1"
	}
	return &adminBackend{
		addr: addr,
		base: base,
		client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, na.Network, na.JoinHostPort(0))
			},
		}},
	}, nil
}

func (b *adminBackend) Where() string { return "gateway at " + b.addr }
func (b *adminBackend) Close() error  { return nil }

// do calls the admin API. On an error answer that carries a result (a
// failed restore still has its record), out is filled too.
func (b *adminBackend) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, b.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Origin", b.base)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errUnreachable, b.addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading answer from %s: %w", b.addr, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error  string          `json:"error"`
			Result json.RawMessage `json:"result"`
		}
		_ = json.Unmarshal(raw, &e)
		if e.Error == "" {
			e.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
		}
		if out != nil && len(e.Result) > 0 {
			_ = json.Unmarshal(e.Result, out)
		}
		return &apiError{Status: resp.StatusCode, Msg: e.Error}
	}
	if s, ok := out.(*string); ok {
		*s = string(raw)
		return nil
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("decoding answer from %s: %w", b.addr, err)
		}
	}
	return nil
}

func (b *adminBackend) Switches(ctx context.Context) (out SwitchesStatus, err error) {
	err = b.do(ctx, http.MethodGet, "/switchback/switches", nil, &out)
	return
}

func (b *adminBackend) ChangeSwitch(ctx context.Context, name, action string, req changeRequest) (out SwitchStatus, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/switches/"+url.PathEscape(name)+"/"+action, req, &out)
	return
}

func (b *adminBackend) CreatePoint(ctx context.Context, req CreatePointRequest) (out restore.Point, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/points", req, &out)
	return
}

func (b *adminBackend) ListPoints(ctx context.Context, limit int, typ string) (out []restore.Point, err error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if typ != "" {
		q.Set("type", typ)
	}
	err = b.do(ctx, http.MethodGet, "/switchback/points?"+q.Encode(), nil, &out)
	return
}

func (b *adminBackend) VerifyPoint(ctx context.Context, id string, req VerifyRequest) (out restore.VerifyReport, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/points/"+url.PathEscape(id)+"/verify", req, &out)
	return
}

func (b *adminBackend) VerifyAll(ctx context.Context, req VerifyRequest) (out []restore.VerifyReport, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/points/verify", req, &out)
	return
}

func (b *adminBackend) Rollback(ctx context.Context, id string, req RollbackRequest) (out restore.Operation, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/points/"+url.PathEscape(id)+"/rollback", req, &out)
	return
}

func (b *adminBackend) Emergency(ctx context.Context, reason, by string) (out restore.Operation, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/emergency", map[string]string{"reason": reason, "by": by}, &out)
	return
}

func (b *adminBackend) Cleanup(ctx context.Context, opts restore.CleanupOptions) (out restore.CleanupReport, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/cleanup", opts, &out)
	return
}

func (b *adminBackend) Operations(ctx context.Context, limit int) (out []restore.Operation, err error) {
	err = b.do(ctx, http.MethodGet, "/switchback/operations?limit="+strconv.Itoa(limit), nil, &out)
	return
}

func (b *adminBackend) Operation(ctx context.Context, id string) (out restore.Operation, err error) {
	err = b.do(ctx, http.MethodGet, "/switchback/operations/"+url.PathEscape(id), nil, &out)
	return
}

func (b *adminBackend) Report(ctx context.Context, id string) (out string, err error) {
	err = b.do(ctx, http.MethodGet, "/switchback/operations/"+url.PathEscape(id)+"/report", nil, &out)
	return
}

func (b *adminBackend) Validate(ctx context.Context, level string) (out restore.ValidationReport, err error) {
	err = b.do(ctx, http.MethodPost, "/switchback/validate", map[string]string{"level": level}, &out)
	return
}

// offlineBackend works on the state store and backups named by a config
// file, for when the gateway is down. Switch changes go to the store; a
// running gateway would pick them up within a second.
type offlineBackend struct {
	app    *App
	config string
}

// loadOffline reads a config file (Caddyfile or JSON) and sets up its
// switchback app without starting a server. It also returns the config's
// admin address. Caddy's log lines about loading the file go to errOut
// only when verbose (see loadConfig).
func loadOffline(configFile string, verbose bool, errOut io.Writer, progress func(restore.Progress)) (*offlineBackend, string, error) {
	cfgJSON, err := loadConfig(configFile, verbose, errOut)
	if err != nil {
		return nil, "", fmt.Errorf("loading %s: %w", configFile, err)
	}
	var cfg struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", configFile, err)
	}
	app := new(App)
	if raw, ok := cfg.Apps["switchback"]; ok {
		if err := json.Unmarshal(raw, app); err != nil {
			return nil, "", fmt.Errorf("%s: switchback app: %w", configFile, err)
		}
	}
	if err := app.setUp(zap.NewNop()); err != nil {
		return nil, "", err
	}
	if app.restore, err = app.newManager(nil, restore.Options{Progress: progress}); err != nil {
		app.store.Close()
		return nil, "", fmt.Errorf("%s: rollback config: %w", configFile, err)
	}
	return &offlineBackend{app: app, config: configFile}, cfg.Admin.Listen, nil
}

func (b *offlineBackend) Where() string {
	return "offline on " + b.app.store.Describe() + " (from " + b.config + ")"
}

func (b *offlineBackend) Close() error { return b.app.store.Close() }

func (b *offlineBackend) Switches(ctx context.Context) (SwitchesStatus, error) {
	out := SwitchesStatus{Gateway: b.app.gateway + " (offline)", Store: b.app.storeStatus(), Switches: []SwitchStatus{}}
	sws, err := state.ListSwitches(ctx, b.app.store)
	for _, sw := range sws {
		sw.History = nil
		out.Switches = append(out.Switches, SwitchStatus{Switch: sw})
	}
	return out, err
}

func (b *offlineBackend) ChangeSwitch(ctx context.Context, name, action string, req changeRequest) (SwitchStatus, error) {
	fn, err := switchChange(action, req, req.By, b.app.gateway, time.Now().UTC())
	if err != nil {
		return SwitchStatus{}, err
	}
	if _, _, err := state.GetSwitch(ctx, b.app.store, name); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return SwitchStatus{}, &apiError{Status: http.StatusNotFound, Msg: fmt.Sprintf("unknown switch %q in %s", name, b.app.store.Describe())}
		}
		return SwitchStatus{}, err
	}
	rec, err := state.UpdateSwitch(ctx, b.app.store, name, func(cur state.Switch, _ bool) (state.Switch, bool) {
		cur = cur.Copy()
		return cur, fn(&cur)
	})
	rec.History = nil
	return SwitchStatus{Switch: rec}, err
}

func (b *offlineBackend) CreatePoint(ctx context.Context, req CreatePointRequest) (restore.Point, error) {
	if err := b.app.checkPointType(req.Type); err != nil {
		return restore.Point{}, err
	}
	return b.app.restore.CreatePoint(ctx, req.options())
}

func (b *offlineBackend) ListPoints(ctx context.Context, limit int, typ string) ([]restore.Point, error) {
	return b.app.restore.ListPoints(ctx, restore.ListOptions{Limit: limit, Type: typ})
}

func (b *offlineBackend) VerifyPoint(ctx context.Context, id string, req VerifyRequest) (restore.VerifyReport, error) {
	if req.Repair {
		return b.app.restore.RepairPoint(ctx, id)
	}
	return b.app.restore.VerifyPoint(ctx, id)
}

func (b *offlineBackend) VerifyAll(ctx context.Context, req VerifyRequest) ([]restore.VerifyReport, error) {
	if req.Repair {
		return b.app.restore.RepairAll(ctx)
	}
	return b.app.restore.VerifyAll(ctx)
}

func (b *offlineBackend) Rollback(ctx context.Context, id string, req RollbackRequest) (restore.Operation, error) {
	return b.app.restore.Rollback(ctx, id, req.options())
}

func (b *offlineBackend) Emergency(ctx context.Context, reason, by string) (restore.Operation, error) {
	return b.app.restore.Emergency(ctx, restore.EmergencyOptions{
		Reason: reason,
		ForceLegacy: func(ctx context.Context) (string, error) {
			n, err := forceLegacyInStore(ctx, b.app.store, "emergency: "+reason, by, b.app.gateway)
			return fmt.Sprintf("%d switches moved to legacy in the state store (gateway unreachable)", n), err
		},
	})
}

func (b *offlineBackend) Cleanup(ctx context.Context, opts restore.CleanupOptions) (restore.CleanupReport, error) {
	return b.app.restore.Cleanup(ctx, opts)
}

func (b *offlineBackend) Operations(ctx context.Context, limit int) ([]restore.Operation, error) {
	return b.app.restore.ListOperations(ctx, limit)
}

func (b *offlineBackend) Operation(ctx context.Context, id string) (restore.Operation, error) {
	return b.app.restore.GetOperation(ctx, id)
}

func (b *offlineBackend) Report(ctx context.Context, id string) (string, error) {
	op, err := b.app.restore.GetOperation(ctx, id)
	if err != nil {
		return "", err
	}
	return b.app.restore.Report(op), nil
}

func (b *offlineBackend) Validate(ctx context.Context, level string) (restore.ValidationReport, error) {
	return b.app.restore.ValidateSystem(ctx, level)
}

// recover finishes restores a crash left half done; the CLI runs it before
// every offline command. A failure here is reported by the command itself.
func (b *offlineBackend) recover(ctx context.Context) {
	ops, err := b.app.restore.Recover(ctx)
	for _, op := range ops {
		fmt.Fprintf(os.Stderr, "switchback: finished interrupted operation %s: %s\n", op.ID, op.Status)
	}
	if err != nil && !errors.Is(err, state.ErrLockHeld) && !errors.Is(err, restore.ErrRestoreInProgress) {
		fmt.Fprintf(os.Stderr, "switchback: recovering interrupted operations: %v\n", err)
	}
}

// forceLegacyInStore moves every switch in the store to legacy. A running
// gateway follows within a second.
func forceLegacyInStore(ctx context.Context, st state.Store, reason, by, gateway string) (int, error) {
	sws, err := state.ListSwitches(ctx, st)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	now := time.Now().UTC()
	for _, sw := range sws {
		_, err := state.UpdateSwitch(ctx, st, sw.Name, func(cur state.Switch, _ bool) (state.Switch, bool) {
			if cur.Mode == state.ModeLegacy {
				return cur, false
			}
			cur = cur.Copy()
			setMode(&cur, state.ModeLegacy, reason, by, gateway, now)
			return cur, true
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("switch %s: %w", sw.Name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func (r CreatePointRequest) options() restore.CreateOptions {
	return restore.CreateOptions{Type: r.Type, Component: r.Component, Metadata: r.Metadata, Tags: r.Tags, Trigger: r.Trigger}
}

// cliUser names who runs the CLI, for the records.
func cliUser() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return "cli " + name + "@" + host
}
