package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestRefreshSecretWaitsForCommit: a store that comes back while the
// config is still provisioning must not start refreshSecret, which walks
// the registry that provisioning is filling ("concurrent map iteration
// and map write", or a race under -race). Commit refreshes the key.
func TestRefreshSecretWaitsForCommit(t *testing.T) {
	a := testApp(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.ctx = caddy.Context{Context: ctx}
	a.rt.secretEphemeral.Store(true) // the store was down at the first cookie key
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 300 {
			a.storeFailed(errors.New("store down"))
			a.storeOK()
		}
	}()
	for i := range 300 {
		name := fmt.Sprintf("refresh-%d", i)
		if _, err := a.register(&Handler{Name: name}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { switches.Delete(name) })
	}
	<-done
	if !a.rt.secretEphemeral.Load() {
		t.Fatal("the key was refreshed before the config was committed")
	}
	a.handlers = nil // their arms are not wired; only the refresh is under test
	a.commit()
	eventually(t, "commit to take the fleet's key", func() bool { return !a.rt.secretEphemeral.Load() })
}
