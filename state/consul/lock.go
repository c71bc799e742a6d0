package consul

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leanvibe/switchback/state"
)

// Lock implements state.Store with api.Lock on "<prefix>/locks/<name>".
//
// If the key is held, Lock returns a *state.LockHeldError at once, whose
// Holder is the key's value: the holder's description. Otherwise it creates
// a session (TTL Options.LockSessionTTL, lock-delay Options.LockDelay,
// behavior "release"), renews it in the background, and tries the lock
// once. If another client took it in the meantime, or a lock-delay is in
// effect after a holder's session was invalidated, the try gives up after
// Options.LockWaitTime with a *state.LockHeldError naming whoever holds or
// last held the lock. ctx bounds the requests Lock makes itself; the try
// inside api.Lock takes no context and is bounded by LockWaitTime.
//
// It is NOT safe to assume the lock is held until Unlock; see the package
// documentation and watch Lost.
func (s *Store) Lock(ctx context.Context, name string, holder []byte) (state.Lock, error) {
	if err := state.CheckName(name); err != nil {
		return nil, err
	}
	if len(holder) > state.MaxValueSize {
		return nil, fmt.Errorf("lock %s: holder description is %d bytes, over the %d byte limit", name, len(holder), state.MaxValueSize)
	}
	key := s.kvKey(state.NSLocks, name)
	held, err := s.lockHolder(ctx, name, key, true)
	if err != nil {
		return nil, err
	}
	if held != nil {
		return nil, held
	}

	q, cancel := s.request(ctx)
	w := (&api.WriteOptions{}).WithContext(q.Context())
	session, _, err := s.client.Session().Create(&api.SessionEntry{
		Name:      "switchback lock " + name,
		TTL:       s.opts.LockSessionTTL.String(),
		LockDelay: s.opts.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}, w)
	cancel()
	if err != nil {
		return nil, s.fail(ctx, "lock", name, fmt.Errorf("creating session: %w", err))
	}
	renewDone := make(chan struct{})
	go s.client.Session().RenewPeriodic(s.opts.LockSessionTTL.String(), session, nil, renewDone)

	l := &lock{s: s, name: name, session: session, renewDone: renewDone}
	l.api, err = s.client.LockOpts(&api.LockOptions{
		Key:              key,
		Value:            holder,
		Session:          session,
		LockTryOnce:      true,
		LockWaitTime:     s.opts.LockWaitTime,
		MonitorRetries:   s.opts.LockMonitorRetries,
		MonitorRetryTime: time.Second,
	})
	if err != nil {
		l.destroySession()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}

	// api.Lock waits out a lock-delay for 5s regardless of LockTryOnce;
	// stop it after LockWaitTime, or when ctx is done.
	stop := make(chan struct{})
	tried := make(chan struct{})
	go func() {
		defer close(stop)
		t := time.NewTimer(s.opts.LockWaitTime)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-tried:
		}
	}()
	lost, err := l.api.Lock(stop)
	close(tried)
	if err != nil {
		l.destroySession()
		if errors.Is(err, api.ErrLockConflict) {
			return nil, fmt.Errorf("lock %s: key %s exists and is not a lock", name, key)
		}
		return nil, s.fail(ctx, "lock", name, err)
	}
	if lost == nil {
		l.destroySession()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		held, err := s.lockHolder(ctx, name, key, false)
		if err != nil {
			return nil, err
		}
		return nil, held
	}
	l.lost = lost
	s.mu.Lock()
	s.locks[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

// lockHolder reads the lock key and returns who holds it. With onlyHeld,
// a key no session holds returns nil; otherwise the key's last holder is
// named.
func (s *Store) lockHolder(ctx context.Context, name, key string, onlyHeld bool) (*state.LockHeldError, error) {
	q, cancel := s.request(ctx)
	defer cancel()
	p, _, err := s.kv.Get(key, q)
	if err != nil {
		return nil, s.fail(ctx, "lock", name, fmt.Errorf("reading holder: %w", err))
	}
	if onlyHeld && (p == nil || p.Session == "") {
		return nil, nil
	}
	held := &state.LockHeldError{Name: name}
	if p != nil {
		held.Holder = p.Value
	}
	return held, nil
}

// lock is a held Consul lock.
type lock struct {
	s         *Store
	name      string
	session   string
	api       *api.Lock
	lost      <-chan struct{}
	renewDone chan struct{}

	once sync.Once
	err  error
}

// Lost implements state.Lock. It is the channel api.Lock returns: it closes
// when the session is invalidated, the key is taken away, Consul cannot be
// reached for LockMonitorRetries seconds, or after Unlock.
func (l *lock) Lost() <-chan struct{} { return l.lost }

// Unlock implements state.Lock: it releases the key and destroys the
// session. Calling it again returns the first call's result.
func (l *lock) Unlock() error {
	l.once.Do(func() {
		l.s.mu.Lock()
		delete(l.s.locks, l)
		l.s.mu.Unlock()
		err := l.api.Unlock()
		if errors.Is(err, api.ErrLockNotHeld) {
			err = nil
		}
		if err != nil {
			err = l.s.fail(context.Background(), "unlock", l.name, err)
		}
		l.err = errors.Join(err, l.destroySession())
	})
	return l.err
}

// destroySession stops renewing the session and destroys it. Unlock
// releases the key first: destroying a session that still holds the key
// would start the lock-delay.
func (l *lock) destroySession() error {
	close(l.renewDone)
	q, cancel := l.s.request(context.Background())
	defer cancel()
	if _, err := l.s.client.Session().Destroy(l.session, (&api.WriteOptions{}).WithContext(q.Context())); err != nil {
		return l.s.fail(context.Background(), "unlock", l.name, fmt.Errorf("destroying session: %w", err))
	}
	return nil
}
