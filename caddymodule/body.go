package caddymodule

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// errDetached is what the consolidated arm reads from a request body once
// the switch has taken the body back for a replay.
var errDetached = errors.New("switchback: request body taken back for a replay on legacy")

// teeBody is the consolidated arm's reader of the client's request body.
// The body streams through as the arm reads it, never read ahead, so a
// streaming upload, a gRPC stream or Expect: 100-continue behave as they
// would with no switch in front; what passes is copied up to max bytes.
// A body that outgrows the copy only makes the request non-replayable.
//
// A replay needs the body to itself: Go's Transport may go on reading it
// in its write loop after RoundTrip has returned. detach makes every later
// Read by the arm fail and waits for a Read in flight to end; legacy then
// reads its own reader, the copy followed by the unread rest.
type teeBody struct {
	mu       sync.Mutex // held across a Read of src
	src      io.ReadCloser
	buf      []byte
	max      int64
	srcErr   error       // src's sticky error (io.EOF at the end)
	over     atomic.Bool // the arm read more than the copy holds
	detached atomic.Bool
	closed   atomic.Bool // the arm's transport let go of the body
	replay   replayReader
}

func newTeeBody(src io.ReadCloser, max int64) *teeBody {
	b := &teeBody{src: src, max: max}
	b.replay.b = b
	return b
}

func (b *teeBody) Read(p []byte) (int, error) {
	if b.detached.Load() {
		return 0, errDetached
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.detached.Load() {
		return 0, errDetached
	}
	if b.srcErr != nil {
		return 0, b.srcErr
	}
	n, err := b.src.Read(p)
	if !b.over.Load() {
		if int64(len(b.buf)+n) > b.max {
			b.over.Store(true)
			b.buf = nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	if err != nil {
		b.srcErr = err
	}
	if b.detached.Load() {
		// Taken back while this Read waited on the client: the bytes
		// are in the copy, where legacy will find them.
		return 0, errDetached
	}
	return n, err
}

// Close only notes that the arm let go: the client's body belongs to the
// server, and legacy may still need it.
func (b *teeBody) Close() error {
	b.closed.Store(true)
	return nil
}

// replayable says whether the copy still holds all the arm has read.
func (b *teeBody) replayable() bool { return !b.over.Load() }

// detach takes the body back from the arm. It waits for a Read in flight,
// which ends when the client sends more, ends its body or goes away.
func (b *teeBody) detach() {
	b.detached.Store(true)
	b.mu.Lock()
	//lint:ignore SA2001 the lock only waits for a Read in flight
	b.mu.Unlock()
}

// replayReader is legacy's reader of a replayed body: the copy of what
// consolidated read, then the rest from the client.
type replayReader struct {
	b   *teeBody
	off int
}

func (r *replayReader) Read(p []byte) (int, error) {
	if r.off < len(r.b.buf) {
		n := copy(p, r.b.buf[r.off:])
		r.off += n
		return n, nil
	}
	if r.b.srcErr != nil {
		return 0, r.b.srcErr
	}
	n, err := r.b.src.Read(p)
	if err != nil {
		r.b.srcErr = err
	}
	return n, err
}

func (r *replayReader) Close() error { return nil }

// hasBody says whether a request may carry a body. Caddy's server wraps
// every request's body (its read-idle deadline), so a body-less GET has a
// Body that is not http.NoBody; ContentLength 0 is what says there is
// none (net/http sets -1 for a chunked or unknown-length body, over
// HTTP/1 and HTTP/2 alike).
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}
