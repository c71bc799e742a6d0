package health

import "time"

// processStart anchors the package's monotonic clock. It is set once, at
// package init, and carries Go's monotonic clock reading.
var processStart = time.Now()

// Now returns the current time on the clock windows and monitors run on:
// nanoseconds since the process started, read from the monotonic clock.
// A step of the wall clock (NTP, an operator's date -s) does not move it,
// so a window neither hides failures after a backwards step nor ages
// them out early after a forwards one.
func Now() int64 { return int64(time.Since(processStart)) }

// Mono returns t on the clock of Now. It reads t's monotonic clock
// reading, which every time.Now() carries; a time without one (parsed,
// decoded from JSON or rounded) falls back to its wall clock.
func Mono(t time.Time) int64 { return int64(t.Sub(processStart)) }

// Time returns the time.Time of instant ns of Now's clock: the process's
// start plus ns, with a monotonic reading, so time.Since works on it.
func Time(ns int64) time.Time { return processStart.Add(time.Duration(ns)) }
