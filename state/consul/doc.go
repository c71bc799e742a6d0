// Package consul is the fleet state.Store: Consul KV, through
// github.com/hashicorp/consul/api.
//
// # Keys
//
// A state key "<ns>/<name>" lives at "<prefix>/<ns>/<name>" in Consul KV
// (prefix defaults to "switchback"). An entry's version is its ModifyIndex.
//
// # Writes
//
// Put and CAS go through /v1/txn with one "set" or "cas" operation, because
// a transaction answers with the ModifyIndex it wrote and the plain KV
// endpoint does not. CAS with version 0 creates the key only if it does not
// exist, as Consul's "cas=0" does. A write of the value a key already has
// changes nothing in Consul, so its version stays as it was and the version
// returned is that one. A value too large for one transaction
// request (Consul's txn_max_req_len counts the base64 text, so values over
// about 384 KiB) goes through the KV endpoint instead, and its version is
// read back after the write; if another writer changed the key in between,
// the version returned is one that no CAS can match, so a caller that CASes
// with it re-reads rather than overwriting a write it has not seen.
//
// # Watches
//
// Watch is one Consul blocking query on "<prefix>/<ns>/". It is NOT safe to
// assume that an index only grows: Consul's index for a prefix goes back
// when tombstones are reaped, when a snapshot is restored and when a dev
// agent restarts. Watch hands such a smaller index to the caller, who starts
// again from 0. Consul itself answers a blocking query whose index is ahead
// of its own only when the wait time runs out, so for one
// Options.WatchWaitTime after the Store has seen Consul unreachable, Watch
// first asks without blocking, and a reset is noticed at once rather than
// when the wait runs out.
//
// # Locks
//
// Lock is Consul's leader-election recipe (api.Lock) on
// "<prefix>/locks/<name>", with a session this package creates and destroys.
// The session has a TTL (Options.LockSessionTTL) and is renewed in the
// background while the lock is held, so a crashed holder frees the lock
// after the TTL (Consul may wait up to twice the TTL) plus the lock-delay.
// The lock's value is the holder description, and a loser reads it to say
// who holds the lock.
//
// It is NOT safe to assume that a lock is held until Unlock: Consul sessions
// prefer liveness over safety. Lost closes when the session is invalidated
// (destroyed by an operator, TTL expired, the node failed its serf check),
// when the key is taken away, or when Consul cannot be reached for about
// Options.LockMonitorRetries × one second. A holder must stop what the lock
// protects when Lost closes.
//
// # Deployment
//
// A Store talks to one agent address. Run a Consul client agent on every
// gateway host and point the Store at it (the default, 127.0.0.1:8500):
// the client agent forwards to whichever server leads, so losing a server,
// the leader included, costs the fleet only an election, a few seconds in
// which writes and blocking queries fail with "No cluster leader" and the
// gateways serve on what they know. Pointing a gateway straight at a
// server works too (the fleet tests do, one server per gateway), but then
// that server's death cuts the gateway off until it returns: the gateway
// keeps serving on its last known state, still trips locally, reports the
// store degraded, and reconciles when the server is back.
//
// # Unavailability
//
// Errors that mean Consul could not be reached or could not answer
// (connection refused, timeouts, no cluster leader, any 5xx) wrap
// state.ErrUnavailable. A caller's own cancellation (context.Canceled,
// context.DeadlineExceeded from ctx) is returned unwrapped.
//
// The ACL token is sent in a header, never in a URL, and never appears in an
// error, a log line or Describe.
package consul
