package tests

// The upstream of the hostile-traffic test (hostile_test.go): one server
// that speaks HTTP/1.1 and h2c, counts every request it receives by its
// X-Request-Id, and serves the kinds of traffic a real app behind
// switchback does: uploads it hashes, large downloads, SSE streams,
// websockets and full-duplex HTTP/2 streams. Every body it sends or
// expects is derived from the request id (hostilePattern), so a client
// can check a stream byte for byte without trusting the gateway.

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Paths the hostile upstream serves.
const (
	hostileGet    = "/get"    // a short answer
	hostileUpload = "/upload" // hashes the body, answers "<sha256> <length>"
	hostileBig    = "/big"    // hostilePattern(id, X-Size bytes)
	hostileSSE    = "/sse"    // hostileSSEEvents events, hostileSSEGap apart
	hostileWS     = "/ws"     // a websocket echo
	hostileBidi   = "/bidi"   // echoes each body line as "echo <line>" at once (h2c)
)

const (
	hostileSSEEvents = 20
	hostileSSEGap    = 40 * time.Millisecond
)

// hostileUpstream is legacy or consolidated for TestHostileTraffic. Its
// fault makes it answer 503 at once to every new request, without reading
// the body (the case where a replay races the first arm's transport).
// Requests already being served when the fault starts go on.
type hostileUpstream struct {
	*httptest.Server
	name  string
	fault atomic.Bool

	mu    sync.Mutex
	execs map[string]*hostileExec // by X-Request-Id
}

// hostileExec is what an upstream saw of one request id.
type hostileExec struct {
	arrivals int // times a handler ran for it, fault answers included
	faulted  int // of those, answered with the injected 503
	expect   bool
}

func newHostileUpstream(t testing.TB, name string) *hostileUpstream {
	t.Helper()
	u := &hostileUpstream{name: name, execs: map[string]*hostileExec{}}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.Server.Config.Protocols = new(http.Protocols)
	u.Server.Config.Protocols.SetHTTP1(true)
	u.Server.Config.Protocols.SetUnencryptedHTTP2(true)
	u.Server.Start()
	t.Cleanup(u.Server.Close)
	return u
}

// Addr is the upstream's host:port.
func (u *hostileUpstream) Addr() string { return u.Listener.Addr().String() }

// exec returns what the upstream saw of request id (the zero value if it
// never reached it).
func (u *hostileUpstream) exec(id string) hostileExec {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.execs[id]; e != nil {
		return *e
	}
	return hostileExec{}
}

func (u *hostileUpstream) serve(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Request-Id")
	faulted := u.fault.Load()
	if id != "" {
		u.mu.Lock()
		e := u.execs[id]
		if e == nil {
			e = &hostileExec{}
			u.execs[id] = e
		}
		e.arrivals++
		if faulted {
			e.faulted++
		}
		if r.Header.Get("Expect") != "" {
			e.expect = true
		}
		u.mu.Unlock()
	}
	w.Header().Set("X-Upstream", u.name)
	if faulted {
		http.Error(w, u.name+" failing with 503", http.StatusServiceUnavailable)
		return
	}
	switch r.URL.Path {
	case hostileGet:
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok "+u.name)
	case hostileUpload:
		if r.Header.Get("X-Refuse") != "" {
			// Refuse before reading: with Expect: 100-continue the
			// client must then never send the body.
			http.Error(w, "refused", http.StatusRequestEntityTooLarge)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, fmt.Sprintf("reading body after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d", h.Sum(nil), n)
	case hostileBig:
		size, _ := strconv.Atoi(r.Header.Get("X-Size"))
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.Write(hostilePattern(id, size))
	case hostileSSE:
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for i := range hostileSSEEvents {
			if _, err := io.WriteString(w, hostileSSEEvent(id, i)); err != nil {
				return
			}
			rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(hostileSSEGap):
			}
		}
	case hostileWS:
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	case hostileBidi:
		// A gRPC-style bidi call: answer the headers at once, then echo
		// each line of the body as it arrives, while the body still
		// streams in.
		w.Header().Set("Content-Type", "application/grpc+test")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		rc.Flush()
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			if _, err := fmt.Fprintf(w, "echo %s\n", sc.Text()); err != nil {
				return
			}
			rc.Flush()
		}
	default:
		http.NotFound(w, r)
	}
}

// hostilePattern is n bytes determined by id: what the upstream sends for
// a download, and what a client sends as an upload.
func hostilePattern(id string, n int) []byte {
	seed := sha256.Sum256([]byte(id))
	rng := mrand.NewChaCha8(seed)
	b := make([]byte, n)
	rng.Read(b)
	return b
}

// hostileSSEEvent is event i of the SSE stream for id.
func hostileSSEEvent(id string, i int) string {
	sum := sha256.Sum256(binary.BigEndian.AppendUint32([]byte(id), uint32(i)))
	return fmt.Sprintf("id: %d\ndata: %s %d %s\n\n", i, id, i, hex.EncodeToString(sum[:8]))
}
