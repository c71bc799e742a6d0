package caddymodule

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// recorder wraps the client's ResponseWriter for one arm. It notes the
// status and the time of the first byte. When it holds, the arm's headers
// stay apart until its status is known, and, if replace is set, a 5xx
// answer is kept back from the client so the request can be replayed on
// legacy. A kept-back answer is never read: its first Write fails, so
// reverse_proxy stops copying and closes the upstream body at once.
// Answers under 500 pass through as they are written, with no buffering.
// Recorders are pooled, so the request path allocates none.
type recorder struct {
	w          http.ResponseWriter
	hold       bool
	replace    bool     // keep a 5xx back for a replay
	body       *teeBody // the request body's copy, if any: a 5xx is kept back only while it can be replayed
	status     int
	firstByte  time.Time
	sent       bool // some byte (or a 1xx) reached the client
	held       bool // a 5xx answer is being kept back
	clientGone bool // a write to the client failed
	hdr        http.Header
}

// errHeldBack is what an arm's write of a kept-back 5xx body returns.
var errHeldBack = errors.New("switchback: consolidated's 5xx answer is replaced by a replay on legacy")

var recorders = sync.Pool{New: func() any { return &recorder{hdr: make(http.Header)} }}

func getRecorder(w http.ResponseWriter, hold bool) *recorder {
	r := recorders.Get().(*recorder)
	r.w, r.hold = w, hold
	if hold {
		for k, v := range w.Header() {
			// Shared values, capped: an append copies. They are the
			// client's, so passHeaders can hand them back without a copy.
			r.hdr[k] = v[:len(v):len(v)]
		}
	}
	return r
}

func putRecorder(r *recorder) {
	clear(r.hdr)
	*r = recorder{hdr: r.hdr}
	recorders.Put(r)
}

// Header returns the header map the arm writes into. When holding, that is
// the recorder's own copy, so a discarded answer leaves no trace on the
// client's headers.
func (r *recorder) Header() http.Header {
	if r.hold {
		return r.hdr
	}
	return r.w.Header()
}

// passHeaders makes the client's headers those the arm set. From then on
// the arm writes the client's header map directly, so what it sets after
// WriteHeader, such as trailers, reaches the client.
func (r *recorder) passHeaders() {
	if !r.hold {
		return
	}
	h := r.w.Header()
	clear(h)
	for k, v := range r.hdr {
		h[k] = v
	}
	r.hold = false
}

func (r *recorder) WriteHeader(code int) {
	if r.status != 0 {
		return
	}
	if code < 200 {
		r.passHeaders()
		r.sent = true
		r.w.WriteHeader(code)
		return
	}
	r.status = code
	r.firstByte = time.Now()
	if r.replace && code >= 500 && (r.body == nil || r.body.replayable()) {
		r.held = true
		if r.body != nil {
			r.body.stop() // consolidated reads no more of it
		}
		return
	}
	r.passHeaders()
	r.sent = true
	r.w.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if r.held {
		return 0, errHeldBack
	}
	r.sent = true
	n, err := r.w.Write(b)
	if err != nil {
		r.clientGone = true
	}
	return n, err
}

// FlushError implements the interface http.ResponseController looks for.
// A held answer is not flushed: nothing of it may reach the client yet.
func (r *recorder) FlushError() error {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if r.held {
		return nil
	}
	return http.NewResponseController(r.w).Flush()
}

// Flush implements http.Flusher.
func (r *recorder) Flush() { _ = r.FlushError() }

// Hijack hands the connection to the arm (WebSocket and other upgrades).
// The client's writer is usually one of Caddy's wrappers, which hijack
// only through http.ResponseController, so that is how the call goes on.
// A hijacked connection is never replayed.
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	r.passHeaders()
	r.sent = true
	if r.status == 0 {
		r.status = http.StatusSwitchingProtocols
		r.firstByte = time.Now()
	}
	return http.NewResponseController(r.w).Hijack()
}

// Unwrap lets http.ResponseController reach the writer for what the
// recorder does not implement itself.
func (r *recorder) Unwrap() http.ResponseWriter { return r.w }
