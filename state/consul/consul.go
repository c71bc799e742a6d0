package consul

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	"github.com/leanvibe/switchback/state"
)

const (
	// DefaultPrefix is the KV folder the store keeps its keys under.
	DefaultPrefix = "switchback"

	// DefaultDialTimeout bounds connecting to the Consul agent.
	DefaultDialTimeout = 2 * time.Second

	// DefaultRequestTimeout bounds every request that is not a blocking
	// query.
	DefaultRequestTimeout = 5 * time.Second

	// DefaultWatchWaitTime is how long one blocking query may wait on the
	// server. Consul adds up to 1/16 of it as jitter.
	DefaultWatchWaitTime = 30 * time.Second

	// DefaultLockSessionTTL is the TTL of a lock's session. A holder that
	// dies frees the lock after this (Consul may wait up to twice as long)
	// plus DefaultLockDelay.
	DefaultLockSessionTTL = 15 * time.Second

	// DefaultLockDelay is the session lock-delay: after a session holding
	// the lock is invalidated, nobody may take the lock for this long, so
	// the old holder has time to see Lost close and stop.
	DefaultLockDelay = 1 * time.Second

	// DefaultLockWaitTime is how long Lock looks at a held lock before it
	// gives up with a *state.LockHeldError.
	DefaultLockWaitTime = 250 * time.Millisecond

	// DefaultLockMonitorRetries is how many failed reads of the lock key,
	// one second apart, a held lock rides out before Lost closes. It keeps
	// a brief Consul blip from aborting a restore, and gives up well within
	// DefaultLockSessionTTL, before anyone else could take the lock.
	DefaultLockMonitorRetries = 3

	// txnMaxRequestSize is Consul's default txn_max_req_len. Values whose
	// base64 form does not fit in a transaction request of this size are
	// written through the KV endpoint instead.
	txnMaxRequestSize = 512 * 1024
)

// Config says which Consul to use and where in its KV to keep the state.
// The `state consul` Caddyfile block fills it, and it is the JSON of the
// gateway's "consul" state config.
type Config struct {
	// Address is the agent's HTTP address, "host:port" or a URL with an
	// http, https or unix scheme. Optional, defaults to CONSUL_HTTP_ADDR,
	// then "127.0.0.1:8500", as api.DefaultConfig reads them.
	Address string `json:"address,omitempty"`

	// Token is the ACL token. Optional, defaults to CONSUL_HTTP_TOKEN (or
	// the file named by CONSUL_HTTP_TOKEN_FILE), as api.DefaultConfig reads
	// them. It is never logged, put in an error or shown by Describe.
	Token string `json:"token,omitempty"`

	// Prefix is the KV folder the keys live under. Optional, defaults to
	// DefaultPrefix ("switchback"). Several fleets can share one Consul
	// with different prefixes.
	Prefix string `json:"prefix,omitempty"`

	// Datacenter is the datacenter to use. Optional, defaults to the
	// agent's own.
	Datacenter string `json:"datacenter,omitempty"`

	// TLS configures HTTPS to the agent. Setting any file switches the
	// scheme to https. Optional, defaults to CONSUL_CACERT, CONSUL_CLIENT_CERT
	// and CONSUL_CLIENT_KEY as api.DefaultConfig reads them.
	TLS TLSConfig `json:"tls,omitzero"`
}

// TLSConfig names the PEM files for HTTPS to the agent.
type TLSConfig struct {
	// CAFile verifies the agent's certificate. Optional, defaults to the
	// system roots.
	CAFile string `json:"ca_file,omitempty"`

	// CertFile and KeyFile are this client's certificate and key, for
	// agents that verify incoming HTTPS. Optional; set both or neither.
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

func (t TLSConfig) enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Options tune how the Store talks to Consul. The zero value is usable.
type Options struct {
	// DialTimeout bounds connecting to the agent. Optional, defaults to
	// DefaultDialTimeout.
	DialTimeout time.Duration

	// RequestTimeout bounds each request other than a blocking query, so
	// an agent that accepts connections but does not answer is reported
	// as unavailable instead of hanging the caller. It is a per-request
	// context deadline, not http.Client.Timeout, which would cut blocking
	// queries short. Optional, defaults to DefaultRequestTimeout.
	RequestTimeout time.Duration

	// WatchWaitTime is the longest one blocking query in Watch waits on
	// the server before Watch asks again. Optional, defaults to
	// DefaultWatchWaitTime.
	WatchWaitTime time.Duration

	// LockSessionTTL is the TTL of lock sessions (Consul accepts 10s to
	// 24h). Optional, defaults to DefaultLockSessionTTL.
	LockSessionTTL time.Duration

	// LockDelay is the lock-delay of lock sessions. Optional, defaults to
	// DefaultLockDelay.
	LockDelay time.Duration

	// LockWaitTime is how long Lock waits on a held lock before it returns
	// *state.LockHeldError. Optional, defaults to DefaultLockWaitTime.
	LockWaitTime time.Duration

	// Compress asks the agent for gzipped answers, for an agent across a
	// slow link. Optional, defaults to false.
	Compress bool

	// LockMonitorRetries is how many failed reads a held lock rides out
	// before Lost closes. Optional, defaults to DefaultLockMonitorRetries;
	// a negative value means none.
	LockMonitorRetries int
}

func (o *Options) setDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.WatchWaitTime <= 0 {
		o.WatchWaitTime = DefaultWatchWaitTime
	}
	if o.LockSessionTTL <= 0 {
		o.LockSessionTTL = DefaultLockSessionTTL
	}
	if o.LockDelay <= 0 {
		o.LockDelay = DefaultLockDelay
	}
	if o.LockWaitTime <= 0 {
		o.LockWaitTime = DefaultLockWaitTime
	}
	switch {
	case o.LockMonitorRetries == 0:
		o.LockMonitorRetries = DefaultLockMonitorRetries
	case o.LockMonitorRetries < 0:
		o.LockMonitorRetries = 0
	}
}

// Store is a state.Store on Consul KV. It is safe for concurrent use.
type Store struct {
	client    *api.Client
	kv        *api.KV
	transport *http.Transport
	prefix    string // without a trailing slash
	describe  string
	token     string // only to scrub it from errors
	opts      Options

	// unavailableAt is when a request last found Consul unreachable (unix
	// nanoseconds). For a while after it, Watch checks for an index reset
	// before it blocks.
	unavailableAt atomic.Int64

	mu    sync.Mutex // guards locks
	locks map[*lock]struct{}

	stats statsSession // holds the stats keys (stats.go)
}

// Open returns a Store for cfg. It does not contact Consul: an agent that
// is down at start is reported by the first call, as state.ErrUnavailable.
func Open(cfg Config, opts Options) (*Store, error) {
	opts.setDefaults()

	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	for _, part := range strings.Split(prefix, "/") {
		if part == "" || part == "." || part == ".." {
			return nil, fmt.Errorf("consul state: invalid prefix %q", cfg.Prefix)
		}
	}

	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
		ac.TokenFile = ""
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	if cfg.TLS.enabled() {
		ac.Scheme = "https"
		ac.TLSConfig.CAFile = cfg.TLS.CAFile
		ac.TLSConfig.CertFile = cfg.TLS.CertFile
		ac.TLSConfig.KeyFile = cfg.TLS.KeyFile
	}
	token := ac.Token
	if token == "" && ac.TokenFile != "" {
		if b, err := os.ReadFile(ac.TokenFile); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}

	tr := cleanhttp.DefaultPooledTransport()
	tr.DialContext = (&net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = opts.DialTimeout
	// Consul gzips answers a client accepts gzipped. With the agent on
	// this host or the LAN that costs more CPU than it saves: listing
	// 1,000 catalog records is 2-3 times faster without it.
	tr.DisableCompression = !opts.Compress
	// A last resort for requests that take no context (inside api.Lock):
	// longer than Consul's longest blocking query (10 minutes), so it
	// never cuts one short, but nothing hangs forever.
	tr.ResponseHeaderTimeout = 11 * time.Minute
	ac.Transport = tr
	hc, err := api.NewHttpClient(tr, ac.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul state: %w", err)
	}
	hc.Transport = serverErrorTransport{hc.Transport}
	ac.HttpClient = hc // replaced by api.NewClient for unix:// addresses

	s := &Store{
		transport: tr,
		prefix:    prefix,
		token:     token,
		opts:      opts,
		locks:     make(map[*lock]struct{}),
	}
	s.describe = "consul " + displayAddress(ac) + " prefix " + prefix
	if ac.Datacenter != "" {
		s.describe += " datacenter " + ac.Datacenter
	}

	client, err := api.NewClient(ac)
	if err != nil {
		return nil, s.scrub(fmt.Errorf("consul state: %w", err))
	}
	s.client = client
	s.kv = client.KV()
	return s, nil
}

// displayAddress is the agent address for Describe, without any user
// information an address might carry.
func displayAddress(ac *api.Config) string {
	addr := ac.Address
	if i := strings.Index(addr, "://"); i >= 0 {
		scheme, rest := addr[:i], addr[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			rest = rest[at+1:]
		}
		return scheme + "://" + rest
	}
	if at := strings.LastIndex(addr, "@"); at >= 0 {
		addr = addr[at+1:]
	}
	return ac.Scheme + "://" + addr
}

// Client is the Consul API client the Store uses, for tests and for
// callers that need Consul beyond the state.Store interface.
func (s *Store) Client() *api.Client { return s.client }

// Prefix is the KV folder the Store's keys live under, without a trailing
// slash.
func (s *Store) Prefix() string { return s.prefix }

// Describe implements state.Store. It names the agent and the prefix, never
// the token.
func (s *Store) Describe() string { return s.describe }

// Close implements state.Store: it unlocks every lock taken through this
// Store and destroys their sessions. The Store must not be used after.
func (s *Store) Close() error {
	s.mu.Lock()
	held := make([]*lock, 0, len(s.locks))
	for l := range s.locks {
		held = append(held, l)
	}
	s.mu.Unlock()
	var errs []error
	for _, l := range held {
		errs = append(errs, l.Unlock())
	}
	errs = append(errs, s.closeStats())
	s.transport.CloseIdleConnections()
	return errors.Join(errs...)
}

// kvKey is the Consul key of a state key's parts.
func (s *Store) kvKey(ns, name string) string { return s.prefix + "/" + ns + "/" + name }

// nsPrefix is the Consul folder of a namespace, with a trailing slash.
func (s *Store) nsPrefix(ns string) string { return s.prefix + "/" + ns + "/" }

// entry converts a Consul pair in namespace ns to a state.Entry. ok is
// false for keys that are not ours (deeper folders, invalid names).
func (s *Store) entry(ns string, p *api.KVPair) (state.Entry, bool) {
	name, found := strings.CutPrefix(p.Key, s.nsPrefix(ns))
	if !found || state.CheckName(name) != nil {
		return state.Entry{}, false
	}
	return state.Entry{Key: state.Key(ns, name), Value: p.Value, Version: p.ModifyIndex}, true
}

// request returns query options bound to ctx and to the request timeout.
func (s *Store) request(ctx context.Context) (*api.QueryOptions, context.CancelFunc) {
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	return (&api.QueryOptions{}).WithContext(rctx), cancel
}

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, key string) (state.Entry, error) {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return state.Entry{}, err
	}
	q, cancel := s.request(ctx)
	defer cancel()
	p, _, err := s.kv.Get(s.kvKey(ns, name), q)
	if err != nil {
		return state.Entry{}, s.fail(ctx, "get", key, err)
	}
	if p == nil {
		return state.Entry{}, fmt.Errorf("%s: %w", key, state.ErrNotFound)
	}
	e, _ := s.entry(ns, p)
	return e, nil
}

// List implements state.Store.
func (s *Store) List(ctx context.Context, ns string) ([]state.Entry, error) {
	if err := state.CheckNamespace(ns); err != nil {
		return nil, err
	}
	q, cancel := s.request(ctx)
	defer cancel()
	pairs, _, err := s.kv.List(s.nsPrefix(ns), q)
	if err != nil {
		return nil, s.fail(ctx, "list", ns, err)
	}
	return s.entries(ns, pairs), nil
}

func (s *Store) entries(ns string, pairs api.KVPairs) []state.Entry {
	out := make([]state.Entry, 0, len(pairs))
	for _, p := range pairs {
		if e, ok := s.entry(ns, p); ok {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Put implements state.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return s.write(ctx, "put", key, value, false, 0)
}

// CAS implements state.Store on the key's ModifyIndex. Version 0 means
// "only if the key does not exist".
func (s *Store) CAS(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	return s.write(ctx, "cas", key, value, true, version)
}

func (s *Store) write(ctx context.Context, op, key string, value []byte, cas bool, version uint64) (uint64, error) {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return 0, err
	}
	if ns == state.NSLocks {
		return 0, fmt.Errorf("consul state: locks are taken with Lock, not written")
	}
	if err := state.CheckValue(key, value); err != nil {
		return 0, err
	}
	kvKey := s.kvKey(ns, name)
	q, cancel := s.request(ctx)
	defer cancel()

	// 200 bytes covers the JSON around the operation.
	if base64.StdEncoding.EncodedLen(len(value))+len(kvKey)+200 > txnMaxRequestSize {
		return s.writeLarge(ctx, q, op, key, kvKey, value, cas, version)
	}
	txnOp := &api.KVTxnOp{Verb: api.KVSet, Key: kvKey, Value: value}
	if cas {
		txnOp.Verb, txnOp.Index = api.KVCAS, version
	}
	ok, resp, _, err := s.client.Txn().Txn(api.TxnOps{{KV: txnOp}}, q)
	if err != nil {
		return 0, s.fail(ctx, op, key, err)
	}
	if !ok {
		var what []string
		for _, e := range resp.Errors {
			if cas && strings.Contains(e.What, "index is stale") {
				return 0, fmt.Errorf("%s: %w", key, state.ErrConflict)
			}
			what = append(what, e.What)
		}
		return 0, s.scrub(fmt.Errorf("consul %s %s: transaction failed: %s", op, key, strings.Join(what, "; ")))
	}
	if len(resp.Results) != 1 || resp.Results[0].KV == nil {
		return 0, fmt.Errorf("consul %s %s: transaction returned no result", op, key)
	}
	return resp.Results[0].KV.ModifyIndex, nil
}

// writeLarge writes a value too large for a transaction through the KV
// endpoint, then reads the key back for its version. If the key changed in
// between, it returns a version that no CAS can match: the caller did not
// see that write and must re-read before a CAS.
func (s *Store) writeLarge(ctx context.Context, q *api.QueryOptions, op, key, kvKey string, value []byte, cas bool, version uint64) (uint64, error) {
	p := &api.KVPair{Key: kvKey, Value: value, ModifyIndex: version}
	w := (&api.WriteOptions{}).WithContext(q.Context())
	if cas {
		ok, _, err := s.kv.CAS(p, w)
		if err != nil {
			return 0, s.fail(ctx, op, key, err)
		}
		if !ok {
			return 0, fmt.Errorf("%s: %w", key, state.ErrConflict)
		}
	} else if _, err := s.kv.Put(p, w); err != nil {
		return 0, s.fail(ctx, op, key, err)
	}
	rq := *q
	rq.RequireConsistent = true
	got, _, err := s.kv.Get(kvKey, &rq)
	if err != nil {
		return 0, s.fail(ctx, op, key, err)
	}
	switch {
	case got == nil:
		return 1, nil // deleted since; CAS at 1 fails on a missing key
	case bytes.Equal(got.Value, value):
		return got.ModifyIndex, nil
	default:
		return got.ModifyIndex - 1, nil
	}
}

// Delete implements state.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	ns, name, err := state.SplitKey(key)
	if err != nil {
		return err
	}
	if ns == state.NSLocks {
		return fmt.Errorf("consul state: locks are released with Unlock, not deleted")
	}
	q, cancel := s.request(ctx)
	defer cancel()
	if _, err := s.kv.Delete(s.kvKey(ns, name), (&api.WriteOptions{}).WithContext(q.Context())); err != nil {
		return s.fail(ctx, "delete", key, err)
	}
	return nil
}

// fail turns an error from the Consul client into the Store's error: the
// caller's own cancellation as is, unreachability wrapping
// state.ErrUnavailable, and never with the token in it.
func (s *Store) fail(ctx context.Context, op, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if isUnavailable(err) {
		s.unavailableAt.Store(time.Now().UnixNano())
		return s.scrub(fmt.Errorf("consul %s %s: %w: %v", op, what, state.ErrUnavailable, err))
	}
	return s.scrub(fmt.Errorf("consul %s %s: %w", op, what, err))
}

// isUnavailable reports whether err means Consul could not be reached or
// could not serve the request, as opposed to refusing it.
func isUnavailable(err error) bool {
	var netErr net.Error
	var status api.StatusError
	switch {
	case errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return true
	case errors.As(err, &status):
		return status.Code >= 500
	}
	var srvErr *serverError
	if errors.As(err, &srvErr) {
		return true
	}
	// Some api calls flatten the response into a string.
	msg := err.Error()
	for _, s := range []string{"No cluster leader", "Unexpected response code: 5", "rpc error", "connection refused", "i/o timeout", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// serverErrorTransport turns 5xx answers into transport errors, so that
// every api call reports an agent that cannot serve (no cluster leader, a
// proxy in front of a dead agent) the same way: some api calls keep the
// status code, others flatten the answer into a string.
type serverErrorTransport struct{ base http.RoundTripper }

func (t serverErrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode < 500 {
		return resp, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	return nil, &serverError{status: resp.Status, body: strings.TrimSpace(string(body))}
}

// serverError is a 5xx answer from the agent or a proxy in front of it.
type serverError struct{ status, body string }

func (e *serverError) Error() string { return "agent answered " + e.status + ": " + e.body }

// scrub removes the ACL token from err's text, keeping err in the chain.
func (s *Store) scrub(err error) error {
	if err == nil || s.token == "" || !strings.Contains(err.Error(), s.token) {
		return err
	}
	return &scrubbedError{msg: strings.ReplaceAll(err.Error(), s.token, "[token]"), err: err}
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// Interface guard.
var _ state.Store = (*Store)(nil)
