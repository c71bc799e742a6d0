package consul

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leanvibe/switchback/state"
)

// Watch implements state.Store with Consul blocking queries on the
// namespace's folder.
//
// It returns when Consul reports an index for the folder other than index:
// greater after a write or a delete in it, smaller after a reset. Consul
// may also report a greater index with nothing changed in the folder (a
// write elsewhere in KV when the folder is empty); callers compare what
// they get. Index 0 returns at once.
//
// Each Watch is a single call: it does not retry on errors. The caller's
// loop backs off when Watch fails (state.ErrUnavailable) and when it
// returns faster than it should, and restarts from 0 when the index it
// gets back is smaller than the one it passed.
func (s *Store) Watch(ctx context.Context, ns string, index uint64) ([]state.Entry, uint64, error) {
	if err := state.CheckNamespace(ns); err != nil {
		return nil, 0, err
	}
	prefix := s.nsPrefix(ns)

	// After Consul was unreachable it may have come back with a lower
	// index (a dev agent restarted, a snapshot restored). A blocking query
	// would then wait out WatchWaitTime before saying so. So for one
	// WatchWaitTime after an outage, ask without blocking first.
	if index > 0 && time.Since(time.Unix(0, s.unavailableAt.Load())) < s.opts.WatchWaitTime {
		entries, idx, err := s.list(ctx, prefix, ns, &api.QueryOptions{})
		if err != nil {
			return nil, index, err
		}
		if idx != index {
			return entries, idx, nil
		}
	}

	backoff := 10 * time.Millisecond
	for {
		q := &api.QueryOptions{}
		if index > 0 {
			q.WaitIndex = index
			q.WaitTime = s.opts.WatchWaitTime
		}
		start := time.Now()
		entries, idx, err := s.list(ctx, prefix, ns, q)
		if err != nil {
			return nil, index, err
		}
		if index == 0 || idx != index {
			return entries, idx, nil
		}
		// Same index: the wait ran out, or the query woke for nothing.
		// Ask again, but never in a hot loop.
		if time.Since(start) < s.opts.WatchWaitTime/2 {
			select {
			case <-ctx.Done():
				return nil, index, ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

// list runs one (possibly blocking) list of a namespace's folder and
// returns its entries and index. The index is at least 1, as Consul's
// guidance for blocking queries asks.
func (s *Store) list(ctx context.Context, prefix, ns string, q *api.QueryOptions) ([]state.Entry, uint64, error) {
	// A blocking query may take WaitTime plus up to 1/16 of jitter before
	// the server answers; the request timeout comes on top.
	rctx, cancel := context.WithTimeout(ctx, q.WaitTime+q.WaitTime/16+s.opts.RequestTimeout)
	defer cancel()
	pairs, meta, err := s.kv.List(prefix, q.WithContext(rctx))
	if err != nil {
		return nil, 0, s.fail(ctx, "watch", ns, err)
	}
	return s.entries(ns, pairs), max(meta.LastIndex, 1), nil
}
