package consul

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/leanvibe/switchback/state"
)

// statsSession is the session that holds this Store's stats keys.
type statsSession struct {
	mu   sync.Mutex
	id   string        // "" until made, and again once lost
	done chan struct{} // closed to stop renewing id
}

// PublishStats implements state.Store. Each key is acquired by one session
// of this Store (TTL state.StatsTTL, behavior "delete", lock-delay 1ms),
// renewed in the background. When the process dies, Consul deletes the
// keys once the session's TTL runs out (Consul may wait up to twice the
// TTL); Close destroys the session and so deletes them at once.
//
// A key still held by another session is taken over: Consul has no other
// owner for "stats/<switch>/<gateway>" than a gateway of that name, so
// the other session is a previous life of this gateway (a restart within
// the TTL), and it is destroyed. Two live gateways configured with one
// name would take the key from each other; gateway names must be unique.
func (s *Store) PublishStats(ctx context.Context, sw, gateway string, value []byte) error {
	if err := state.CheckName(sw); err != nil {
		return fmt.Errorf("stats: switch: %w", err)
	}
	if err := state.CheckName(gateway); err != nil {
		return fmt.Errorf("stats: gateway: %w", err)
	}
	key := state.Key(state.NSStats, sw+"/"+gateway)
	if err := state.CheckValue(key, value); err != nil {
		return err
	}
	id, err := s.statsSessionID(ctx)
	if err != nil {
		return err
	}
	kvKey := s.prefix + "/" + key
	q, cancel := s.request(ctx)
	defer cancel()
	w := (&api.WriteOptions{}).WithContext(q.Context())
	ok, _, err := s.kv.Acquire(&api.KVPair{Key: kvKey, Value: value, Session: id}, w)
	if err != nil {
		if strings.Contains(err.Error(), "invalid session") {
			s.dropStatsSession(id)
		}
		return s.fail(ctx, "publish stats", key, err)
	}
	if ok {
		return nil
	}
	// Held by another session, or our session is gone.
	p, _, err := s.kv.Get(kvKey, q)
	if err != nil {
		return s.fail(ctx, "publish stats", key, err)
	}
	if p != nil && p.Session != "" && p.Session != id {
		if _, err := s.client.Session().Destroy(p.Session, w); err != nil {
			return s.fail(ctx, "publish stats", key, fmt.Errorf("taking over from an earlier session: %w", err))
		}
	} else {
		s.dropStatsSession(id)
	}
	return fmt.Errorf("stats %s: key held by an earlier session, released; the next publish takes it", key)
}

// ListStats implements state.Store.
func (s *Store) ListStats(ctx context.Context, sw string) (map[string][]byte, error) {
	if err := state.CheckName(sw); err != nil {
		return nil, err
	}
	q, cancel := s.request(ctx)
	defer cancel()
	folder := s.prefix + "/" + state.NSStats + "/" + sw + "/"
	pairs, _, err := s.kv.List(folder, q)
	if err != nil {
		return nil, s.fail(ctx, "list stats", sw, err)
	}
	out := make(map[string][]byte, len(pairs))
	for _, p := range pairs {
		gw, _ := strings.CutPrefix(p.Key, folder)
		if state.CheckName(gw) != nil || p.Session == "" {
			continue // not ours, or a key its session no longer holds
		}
		out[gw] = p.Value
	}
	return out, nil
}

// statsSessionID returns the stats session, making it if needed.
func (s *Store) statsSessionID(ctx context.Context) (string, error) {
	st := &s.stats
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.id != "" {
		return st.id, nil
	}
	q, cancel := s.request(ctx)
	defer cancel()
	w := (&api.WriteOptions{}).WithContext(q.Context())
	id, _, err := s.client.Session().Create(&api.SessionEntry{
		Name:      "switchback stats",
		TTL:       state.StatsTTL.String(),
		LockDelay: 1e6, // 1ms: a restarted gateway publishes again at once
		Behavior:  api.SessionBehaviorDelete,
	}, w)
	if err != nil {
		return "", s.fail(ctx, "publish stats", "session", fmt.Errorf("creating session: %w", err))
	}
	done := make(chan struct{})
	st.id, st.done = id, done
	go func() {
		// RenewPeriodic returns when the session is gone or done closes;
		// the next publish then makes a new one.
		s.client.Session().RenewPeriodic(state.StatsTTL.String(), id, nil, done)
		s.dropStatsSession(id)
	}()
	return id, nil
}

// dropStatsSession forgets session id, if it is still the current one.
func (s *Store) dropStatsSession(id string) {
	st := &s.stats
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.id == id {
		close(st.done)
		st.id, st.done = "", nil
	}
}

// closeStats destroys the stats session, deleting this Store's stats keys.
func (s *Store) closeStats() error {
	st := &s.stats
	st.mu.Lock()
	id, done := st.id, st.done
	st.id, st.done = "", nil
	st.mu.Unlock()
	if id == "" {
		return nil
	}
	close(done)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.RequestTimeout)
	defer cancel()
	_, err := s.client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
	return err
}
