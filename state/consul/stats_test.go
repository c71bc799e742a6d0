package consul_test

import (
	"context"
	"testing"

	"github.com/leanvibe/switchback/state/consul"
	"github.com/leanvibe/switchback/state/consul/consultest"
)

// TestStatsLiveness checks the fleet's view of stats: one gateway's record
// is seen by another, Close drops it at once, and a gateway restarted under
// the same name takes its key over from its earlier session.
func TestStatsLiveness(t *testing.T) {
	agent := consultest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	a := open(t, agent.Addr, prefix, consul.Options{})
	b := open(t, agent.Addr, prefix, consul.Options{})
	if err := a.PublishStats(ctx, "main", "gw-a", []byte("a1")); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishStats(ctx, "main", "gw-b", []byte("b1")); err != nil {
		t.Fatal(err)
	}
	got, err := b.ListStats(ctx, "main")
	if err != nil || len(got) != 2 || string(got["gw-a"]) != "a1" {
		t.Fatalf("b sees %q, %v; want gw-a and gw-b", got, err)
	}

	// A restart: a new Store under gw-a's name while the old session lives.
	a2 := open(t, agent.Addr, prefix, consul.Options{})
	var perr error
	for range 3 {
		if perr = a2.PublishStats(ctx, "main", "gw-a", []byte("a2")); perr == nil {
			break
		}
	}
	if perr != nil {
		t.Fatalf("restarted gw-a could not take its key: %v", perr)
	}
	if got, _ := b.ListStats(ctx, "main"); string(got["gw-a"]) != "a2" {
		t.Fatalf("after the restart b sees gw-a = %q, want a2", got["gw-a"])
	}

	// Close (a gateway stopping) drops the key at once.
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	got, err = b.ListStats(ctx, "main")
	if err != nil || len(got) != 1 || got["gw-b"] == nil {
		t.Fatalf("after gw-a closed, b sees %q, %v; want only gw-b", got, err)
	}
}
