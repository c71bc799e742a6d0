package caddymodule

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// recorder wraps the client's ResponseWriter for one arm. It notes the
// status and the time of the first byte, and, when it holds, keeps a 5xx
// answer back from the client so the request can be replayed on legacy.
// Answers under 500 pass through as they are written, with no buffering.
// Recorders are pooled, so the request path allocates none.
type recorder struct {
	w         http.ResponseWriter
	hold      bool
	status    int
	firstByte time.Time
	sent      bool // some byte (or a 1xx) reached the client
	held      bool // a 5xx answer is being kept back
	hdr       http.Header
}

var recorders = sync.Pool{New: func() any { return &recorder{hdr: make(http.Header)} }}

func getRecorder(w http.ResponseWriter, hold bool) *recorder {
	r := recorders.Get().(*recorder)
	r.w, r.hold = w, hold
	if hold {
		for k, v := range w.Header() {
			r.hdr[k] = v[:len(v):len(v)] // an append copies, never writes the client's array
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
	if r.hold && code >= 500 {
		r.held = true
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
		return len(b), nil
	}
	r.sent = true
	return r.w.Write(b)
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
