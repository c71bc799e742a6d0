// Package health measures the two arms of a switch and decides when the
// consolidated arm is unhealthy enough to send all traffic back to
// legacy. It is pure Go and never imports Caddy, so the CLI can use it
// when the gateway is down.
//
// # Windows
//
// A Window counts requests, failures and latencies over a sliding window
// of time: a ring of Buckets buckets (default 10) of Width each (default
// 1s). Time is split into epochs of Width, numbered now/Width. The caller
// passes now to every method, which makes the clock injectable and spares
// the request path a second clock read. Stats at now sums the buckets
// whose epoch is one of the last Buckets epochs up to now's, so an
// observation leaves the window between (Buckets-1)×Width and
// Buckets×Width after it was made: with 10×1s, one 9s old is still in,
// one 10.5s old is gone.
//
// The ring holds one bucket more than the window, and epoch e lives in
// bucket e mod (Buckets+1). The spare bucket holds an epoch already out of
// the window, so Advance (which Monitor.Run calls every 100ms) can zero it
// ahead of time for the next epoch, and the request path seldom has to.
//
// Observe is lock-free and does not allocate. Each bucket holds an atomic
// epoch next to its counters. An observer that finds its bucket holding an
// older epoch rotates it: it swaps the epoch for a "rotating" marker with
// compare-and-swap, zeroes the counters, and stores the new epoch. Only
// the winner of the CAS zeroes; the others see the marker or the new
// epoch. These races are accepted:
//
//   - An observation that arrives while its bucket is being rotated is
//     left out of the window. It still counts in the lifetime totals.
//   - An observer that read its bucket's epoch just before a rotation and
//     adds just after it counts its observation in the new epoch. It must
//     have stalled for most of the window for that to happen.
//   - A reader summing the window while a bucket rotates or while
//     observers add may see a bucket half zeroed, or a failure counted
//     before its request.
//   - An observation racing with Reset may or may not survive it.
//
// Counters are only ever added to or zeroed, so they never go negative,
// and readers clamp failures to requests, so an error rate is always in
// [0,1].
//
// # Histogram
//
// Latencies are counted in a fixed log-linear histogram: each power of two
// from 2^10ns (1.024µs) to 2^40ns (about 18.3 minutes) is split into 64
// equal slots, 1920 slots in all. Shorter latencies count in the first
// slot and longer ones in the last. A quantile is the midpoint of the
// slot that holds the sample of nearest rank, so within the covered range
// it is off by at most half a slot, 1/128 (0.79%) of the true sample.
// Every bucket carries its own histogram of 32-bit counters, about 7.5
// KiB, which the rotating observer zeroes about once per Width; summing
// the window for a quantile reads Buckets×1920 counters, some 10µs.
//
// A Window also keeps lifetime totals that are never reset: failures, the
// latency sum, and a coarse histogram over the usual Prometheus bounds
// (5ms to 10s), for export with Cumulative and WritePrometheus.
//
// # Rules and the Monitor
//
// Rules hold the trip rules of one switch: an error rate, a latency
// quantile over a limit, and a count of consecutive failures, the first
// two gated by a minimum number of requests. A Monitor applies them to the
// consolidated arm's Window. The request path calls Monitor.Observed after
// Window.Observe: failures evaluate the error rate and consecutive failure
// rules at once, which costs a sum over the buckets' counters, and a
// latency over the limit evaluates the latency rule, at most once per
// 10ms. Monitor.Run evaluates every rule every 100ms besides, so a
// breach that no single request reveals is still caught. The Monitor
// calls OnTrip at most once, guarded by a CAS on its armed flag, until
// Rearm.
//
// # Probes
//
// A Probe checks an HTTP endpoint on an interval. Monitor.LegacyUnhealthy
// uses it, with the legacy arm's own Window, to tell when falling back to
// legacy would not help.
package health
