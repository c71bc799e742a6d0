package consul_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/consul"
	"github.com/leanvibe/switchback/state/consul/consultest"
)

// pointRecord is a catalog record of about 2 KB, as restore writes one.
func pointRecord(b testing.TB, i int) []byte {
	b.Helper()
	rec := map[string]any{
		"id":              fmt.Sprintf("pt-%06d", i),
		"type":            "full_system",
		"created":         time.Unix(1_800_000_000+int64(i), 0).UTC(),
		"size":            123456789,
		"files":           4242,
		"manifest_digest": strings.Repeat("ab", 32),
		"tags":            []string{"nightly"},
		"metadata":        map[string]string{"note": strings.Repeat("n", 1700)},
	}
	v, err := json.Marshal(rec)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkCatalog measures the rollback-point catalog on a local dev
// agent: creating point records (CAS create of ~2 KB JSON) and listing a
// catalog of 1,000 points.
func BenchmarkCatalog(b *testing.B) {
	agent := consultest.Start(b)
	ctx := context.Background()

	b.Run("create-point", func(b *testing.B) {
		s := open(b, agent.Addr, freshPrefix(), consul.Options{})
		recs := make([][]byte, b.N)
		for i := range recs {
			recs[i] = pointRecord(b, i)
		}
		b.SetBytes(int64(len(recs[0])))
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			if _, err := s.CAS(ctx, state.Key(state.NSPoints, fmt.Sprintf("pt-%06d", i)), recs[i], 0); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
	})

	b.Run("list-1000", func(b *testing.B) {
		s := open(b, agent.Addr, freshPrefix(), consul.Options{})
		for i := range 1000 {
			if _, err := s.Put(ctx, state.Key(state.NSPoints, fmt.Sprintf("pt-%06d", i)), pointRecord(b, i)); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			list, err := s.List(ctx, state.NSPoints)
			if err != nil {
				b.Fatal(err)
			}
			if len(list) != 1000 {
				b.Fatalf("List returned %d points, want 1000", len(list))
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lists/s")
	})
}
