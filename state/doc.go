// Package state holds what switchback must keep across processes and hosts:
// switch state, the rollback-point catalog, operation records and the
// restore lock.
//
// Store is a small versioned key-value interface with compare-and-swap,
// blocking watches and a non-waiting lock. Two backends implement it:
// state/local (an embedded bbolt file, the default for one host) and
// state/consul (Consul KV, for a fleet). The typed records on top of it
// (Switch here, points and operations in package restore) are plain JSON,
// so the backends never need to know what they store.
//
// This package never imports caddy: the CLI uses it when the gateway is down.
package state
