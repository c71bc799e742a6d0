package caddymodule

import (
	"context"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/local"
)

// flakyStore is a real local store that can be made unreachable.
type flakyStore struct {
	*local.Store
	down atomic.Bool
}

func (f *flakyStore) Get(ctx context.Context, key string) (state.Entry, error) {
	if f.down.Load() {
		return state.Entry{}, state.ErrUnavailable
	}
	return f.Store.Get(ctx, key)
}

// TestCookieSecretAfterOutage: a gateway that starts while the store is
// down signs cookies with a key of its own, and takes the fleet's key from
// the store once it returns, so users keep one arm across gateways.
func TestCookieSecretAfterOutage(t *testing.T) {
	st, err := local.Open(filepath.Join(t.TempDir(), "state.db"), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Another gateway made the fleet's key earlier.
	other := &App{store: st, logger: zap.NewNop(), rt: new(appRuntime)}
	want, err := other.cookieSecret(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fleet := newCookieSigner(want)
	cookieKeys.Delete(st.Describe()) // that gateway is another process

	flaky := &flakyStore{Store: st}
	flaky.down.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &App{store: flaky, logger: zap.NewNop(), rt: new(appRuntime), registry: map[string]*Switch{}, ctx: caddy.Context{Context: ctx}}
	a.rt.committed.Store(true) // a running config
	secret, err := a.cookieSecret(ctx)
	if err != nil {
		t.Fatalf("cookieSecret with the store down: %v", err)
	}
	if string(secret) == string(want) || !a.rt.secretEphemeral.Load() || !a.rt.degraded.Load() {
		t.Fatal("with the store down the gateway should sign with a key of its own and say the store is degraded")
	}
	h := &Handler{stickyMode: "cookie", signer: new(atomic.Pointer[cookieSigner])}
	h.signer.Store(newCookieSigner(secret))
	sw := newSwitch("main")
	sw.handler.Store(h)
	a.registry["main"] = sw

	_, fleetCookie := fleet.issue()
	if _, ok := h.signer.Load().verify(fleetCookie); ok {
		t.Fatal("the process-only key verified a fleet cookie")
	}
	flaky.down.Store(false)
	a.storeOK()
	ownKey, ownCookie := newCookieSigner(secret).issue()
	eventually(t, "the handler to take the fleet's key after the store returned", func() bool {
		_, ok := h.signer.Load().verify(fleetCookie)
		return ok
	})
	// A cookie signed with the process-only key keeps its key.
	if key, resign, ok := h.signer.Load().find(http.Header{"Cookie": {"sb_user=" + ownCookie}}, "sb_user"); !ok || !resign || key != ownKey {
		t.Errorf("a cookie signed with the process-only key: key %q resign %v ok %v; want its key kept and signed again", key, resign, ok)
	}
	if a.rt.secretEphemeral.Load() {
		t.Error("still marked as a process-only key")
	}
}
