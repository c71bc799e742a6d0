package health

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Tally counts one arm's requests, failures and latencies since it was
// made, with no window: a rollout counts each step in a Tally of its own.
// Observe is lock-free and does not allocate. A Tally must not be copied.
type Tally struct {
	requests, failures atomic.Uint64
	hist               [numSlots]atomic.Uint32
}

// Observe records one request and whether it failed.
func (t *Tally) Observe(latency time.Duration, failed bool) {
	t.requests.Add(1)
	if failed {
		t.failures.Add(1)
	}
	t.hist[slotOf(latency)].Add(1)
}

// Counts returns what the Tally has counted so far.
func (t *Tally) Counts() Counts {
	c := Counts{Requests: t.requests.Load(), Failures: t.failures.Load()}
	for i := range t.hist {
		if n := t.hist[i].Load(); n > 0 {
			c.Latency = append(c.Latency, [2]uint64{uint64(i), uint64(n)})
		}
	}
	c.Failures = min(c.Failures, c.Requests)
	return c
}

// Counts returns the window's counts at now, as a Tally's Counts: what a
// gateway publishes for the fleet.
func (w *Window) Counts(now int64) Counts {
	var h [numSlots]uint64
	w.merge(now, &h)
	c := Counts{}
	c.Requests, c.Failures = w.counts(now)
	for i, n := range h {
		if n > 0 {
			c.Latency = append(c.Latency, [2]uint64{uint64(i), n})
		}
	}
	return c
}

// Counts are requests, failures and a latency histogram that can be
// summed across gateways. Latency holds the histogram's non-empty slots
// as [slot, count] pairs, in slot order; it is the JSON a gateway
// publishes, so the slot layout is part of the fleet's wire format.
type Counts struct {
	Requests uint64      `json:"requests"`
	Failures uint64      `json:"failures"`
	Latency  [][2]uint64 `json:"latency,omitempty"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Requests += o.Requests
	c.Failures += o.Failures
	if len(o.Latency) == 0 {
		return
	}
	var h [numSlots]uint64
	for _, p := range c.Latency {
		h[p[0]] += p[1]
	}
	for _, p := range o.Latency {
		if p[0] < numSlots {
			h[p[0]] += p[1]
		}
	}
	c.Latency = c.Latency[:0]
	for i, n := range h {
		if n > 0 {
			c.Latency = append(c.Latency, [2]uint64{uint64(i), n})
		}
	}
}

// Check reports counts that could not have been counted: more failures
// than requests, a slot out of range, or slots out of order.
func (c Counts) Check() error {
	if c.Failures > c.Requests {
		return fmt.Errorf("%d failures of %d requests", c.Failures, c.Requests)
	}
	last := -1
	for _, p := range c.Latency {
		if p[0] >= numSlots || int(p[0]) <= last {
			return fmt.Errorf("latency slot %d out of range or order", p[0])
		}
		last = int(p[0])
	}
	return nil
}

// ErrorRate is Failures/Requests in [0,1]; 0 without requests.
func (c Counts) ErrorRate() float64 { return errorRate(c.Requests, c.Failures) }

// Quantile returns the latency at quantile q of the histogram, within
// 0.8%, or 0 when it is empty.
func (c Counts) Quantile(q float64) time.Duration {
	var h [numSlots]uint64
	var total uint64
	for _, p := range c.Latency {
		if p[0] < numSlots {
			h[p[0]] += p[1]
			total += p[1]
		}
	}
	return quantileOf(&h, total, q)
}
