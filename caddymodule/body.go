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

// errBodyOutgrewCopy is what GetBody returns once the body has outgrown
// its copy, so it cannot be sent again from the start.
var errBodyOutgrewCopy = errors.New("switchback: request body outgrew its replay copy and cannot be sent again")

// teeBody is the client's request body as the arms read it. The body
// streams through as an arm reads it, never read ahead, so a streaming
// upload, a gRPC stream or Expect: 100-continue behave as they would with
// no switch in front; what passes is copied up to max bytes. A body that
// outgrows the copy only makes the request non-replayable.
//
// One reader at a time may read it: each has a generation, and only the
// current one's Reads succeed. Go's Transport may go on reading a body in
// its write loop after RoundTrip has returned, so taking the body back
// (rewind, stop) makes the old reader's later Reads fail and waits for a
// Read in flight. A new reader reads the copy from the start, then the
// rest from the client. Two users need one:
//   - consolidated's own Transport, through the arm request's GetBody,
//     when it retries a request it never managed to write (a reused
//     connection the upstream had closed, an HTTP/2 REFUSED_STREAM);
//   - legacy, for a replay.
type teeBody struct {
	mu     sync.Mutex // held across a Read, of the copy or of src
	src    io.ReadCloser
	buf    []byte
	max    int64
	srcErr error         // src's sticky error (io.EOF at the end)
	over   atomic.Bool   // more was read than the copy holds
	gen    atomic.Uint32 // the generation of the reader that may read
	first  bodyReader    // generation 0, consolidated's first reader

	// getBody is the arm request's GetBody, made once per body.
	getBody func() (io.ReadCloser, error)
}

func newTeeBody(src io.ReadCloser, max int64) *teeBody {
	b := &teeBody{src: src, max: max}
	b.first.b = b
	b.getBody = b.rewindForArm
	return b
}

// replayable says whether the copy still holds all that was read.
func (b *teeBody) replayable() bool { return !b.over.Load() }

// stop makes the current reader's Reads fail from now on, without waiting
// for one in flight: the arm's answer is settled and the body is not
// needed again.
func (b *teeBody) stop() { b.gen.Add(1) }

// rewind takes the body back from its current reader, waiting for a Read
// in flight (it ends when the client sends more, ends its body or goes
// away), and returns a reader of the whole body from its start.
func (b *teeBody) rewind() *bodyReader {
	g := b.gen.Add(1)
	b.mu.Lock()
	//lint:ignore SA2001 the lock only waits for a Read in flight
	b.mu.Unlock()
	return &bodyReader{b: b, gen: g}
}

// rewindForArm is GetBody: a Transport that must send the request again
// gets the whole body, while the copy still holds it.
func (b *teeBody) rewindForArm() (io.ReadCloser, error) {
	if b.over.Load() {
		return nil, errBodyOutgrewCopy
	}
	return b.rewind(), nil
}

// bodyReader is one reader of a teeBody: the copy from off, then src.
type bodyReader struct {
	b   *teeBody
	gen uint32
	off int
}

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.b
	if b.gen.Load() != r.gen {
		return 0, errDetached
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gen.Load() != r.gen {
		return 0, errDetached
	}
	if r.off < len(b.buf) {
		n := copy(p, b.buf[r.off:])
		r.off += n
		return n, nil
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
	r.off += n
	if err != nil {
		b.srcErr = err
	}
	if b.gen.Load() != r.gen {
		// Taken back while this Read waited on the client: the bytes
		// are in the copy, where the next reader will find them.
		return 0, errDetached
	}
	return n, err
}

// Close only notes nothing: the client's body belongs to the server, and
// another reader may still need it.
func (r *bodyReader) Close() error { return nil }

// hasBody says whether a request may carry a body. Caddy's server wraps
// every request's body (its read-idle deadline), so a body-less GET has a
// Body that is not http.NoBody; ContentLength 0 is what says there is
// none (net/http sets -1 for a chunked or unknown-length body, over
// HTTP/1 and HTTP/2 alike).
func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}
