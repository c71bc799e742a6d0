package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/leanvibe/switchback/state"
)

var loadCaddy sync.Once

// proxyArm is a real reverse_proxy to addr, provisioned in the context of
// a running (empty) Caddy config.
func proxyArm(t *testing.T, addr string) caddyhttp.MiddlewareHandler {
	t.Helper()
	loadCaddy.Do(func() {
		if err := caddy.Load([]byte(`{"admin":{"disabled":true}}`), true); err != nil {
			t.Fatal(err)
		}
	})
	ctx := caddy.ActiveContext()
	rp := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: addr}}}
	if err := rp.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rp.Cleanup() })
	return rp
}

func upstream(t *testing.T, f http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// gateway serves h over real HTTP, as Caddy's server would call it.
func gateway(t *testing.T, h *Handler) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex() // as Caddy's enable_full_duplex
		repl := caddy.NewReplacer()
		r = caddyhttp.PrepareRequest(r, repl, w, &caddyhttp.Server{})
		if err := h.ServeHTTP(&caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, r, nil); err != nil {
			if he, ok := err.(caddyhttp.HandlerError); ok {
				w.WriteHeader(he.StatusCode)
			} else {
				w.WriteHeader(500)
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// bodyDigest answers the length and SHA-256 of the request body.
func bodyDigest(w http.ResponseWriter, r *http.Request) {
	hash := sha256.New()
	n, err := io.Copy(hash, r.Body)
	if err != nil {
		w.WriteHeader(400)
		return
	}
	fmt.Fprintf(w, "%d %x", n, hash.Sum(nil))
}

// TestReplayedBodyIsWhole: consolidated answers 503 without reading a
// 4 MiB body, so Go's Transport may still be writing it when the answer
// is in. The replay on legacy must get the whole body, with a length and
// chunked, every time (run with -race: the old code shared one reader).
func TestReplayedBodyIsWhole(t *testing.T) {
	cons := proxyArm(t, upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	legacy := proxyArm(t, upstream(t, bodyDigest))
	h := testHandler(t, state.ModeConsolidated, 100, legacy, cons)
	h.maxBody = 8 << 20
	url := gateway(t, h)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	want := fmt.Sprintf("%d %x", len(payload), sha256.Sum256(payload))
	for _, chunked := range []bool{false, true} {
		for i := 0; i < 20; i++ {
			var body io.Reader = bytes.NewReader(payload)
			if chunked {
				body = io.MultiReader(body) // hides the length
			}
			req, _ := http.NewRequest("PUT", url, body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(got) != want {
				t.Fatalf("chunked=%v request %d: got %d %q, want 200 %q", chunked, i, resp.StatusCode, got, want)
			}
		}
	}
	if n := h.sw.metrics.decision(replaySafeMethod, true).Get(); n != 40 {
		t.Errorf("safe_method replays = %d, want 40", n)
	}
}

// TestStreamingBodyIsNotPreRead: an upload that waits for the answer
// before it ends (a gRPC bidi stream, a chunked upload) gets its answer:
// the gateway does not read the body ahead of the arm.
func TestStreamingBodyIsNotPreRead(t *testing.T) {
	echo := func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}
	arm := proxyArm(t, upstream(t, echo))
	h := testHandler(t, state.ModeConsolidated, 100, arm, arm)
	url := gateway(t, h)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", url, pr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req = req.WithContext(ctx)
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	pw.Write([]byte("ping\n"))
	var resp *http.Response
	select {
	case resp = <-done:
	case <-ctx.Done():
		t.Fatal("no answer while the body was still open: the gateway read the body ahead of the arm")
	}
	if resp == nil {
		return
	}
	defer resp.Body.Close()
	line := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, line); err != nil || string(line) != "ping\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
}

// TestClientAbortIsNotAFailure: clients that go away mid-answer, and a
// handler's 4xx, never count against the arm nor trip it.
func TestClientAbortIsNotAFailure(t *testing.T) {
	abort := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(200)
		panic(http.ErrAbortHandler) // what reverse_proxy does when the client's write fails
	})
	h := testHandler(t, state.ModeConsolidated, 100, answer(200, "legacy"), abort)
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		func() {
			defer func() {
				if v := recover(); v != http.ErrAbortHandler {
					t.Fatalf("panic %v, want http.ErrAbortHandler passed on", v)
				}
			}()
			h.ServeHTTP(httptest.NewRecorder(), request("GET", "").WithContext(ctx), nil)
		}()
	}
	h.consolidated = armFunc(func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusUnauthorized, nil)
	})
	h.ServeHTTP(httptest.NewRecorder(), request("GET", ""), nil)
	m := h.sw.metrics
	if f, g, e := m.failures[1].Get(), m.clientGone[1].Get(), m.clientErrors[1].Get(); f != 0 || g != 10 || e != 1 {
		t.Fatalf("failures=%d client aborts=%d client errors=%d, want 0 10 1", f, g, e)
	}
	if st := h.sw.win.Load().consolidated.Stats(time.Now().UnixNano()); st.Failures != 0 {
		t.Fatalf("the window holds %d failures", st.Failures)
	}
	if n := m.replays.Get(); n != 0 {
		t.Fatalf("%d replays of aborted or refused requests", n)
	}
}

// TestHeldFiveHundredIsNotRead: a 5xx that a replay replaces is not
// read. Its body breaking mid-copy or never ending must not reach the
// client, who gets legacy's answer.
func TestHeldFiveHundredIsNotRead(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	broken := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(503)
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		c, _, _ := http.NewResponseController(w).Hijack()
		mu.Lock()
		conns = append(conns, c) // kept open: the body stalls
		mu.Unlock()
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	cons := proxyArm(t, upstream(t, broken))
	legacy := proxyArm(t, upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "legacy") }))
	h := testHandler(t, state.ModeConsolidated, 100, legacy, cons)
	url := gateway(t, h)
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("the client got %v instead of legacy's answer", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "legacy" {
		t.Fatalf("got %d %q, want legacy's 200", resp.StatusCode, b)
	}
}

// TestArmHeaderEditStaysInArm: a handler of the consolidated arm that
// edits a header value in place does not change what legacy gets.
func TestArmHeaderEditStaysInArm(t *testing.T) {
	cons := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		r.Header["X-Tenant"][0] = "edited"
		w.WriteHeader(503)
		return nil
	})
	var got string
	legacy := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		got = r.Header.Get("X-Tenant")
		return nil
	})
	h := testHandler(t, state.ModeConsolidated, 100, legacy, cons)
	r := request("GET", "")
	r.Header.Set("X-Tenant", "acme")
	h.ServeHTTP(httptest.NewRecorder(), r, nil)
	if got != "acme" || r.Header.Get("X-Tenant") != "acme" {
		t.Fatalf("legacy got X-Tenant %q (client's request now %q), want acme", got, r.Header.Get("X-Tenant"))
	}
}

// TestReplayUnsafeMatcher: a POST that the operator's replay_unsafe
// matcher names is replayed after a 5xx; one it does not name is not.
func TestReplayUnsafeMatcher(t *testing.T) {
	legacy := answer(200, "legacy")
	h := testHandler(t, state.ModeConsolidated, 100, legacy, answer(500, "boom"))
	h.replayUnsafe = caddyhttp.MatcherSets{{caddyhttp.MatchPath{"/carts/*"}}}
	for path, want := range map[string]int{"/carts/7": 200, "/orders/7": 500} {
		r := request("POST", "x")
		r.URL.Path = path
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r, nil)
		if w.Code != want {
			t.Errorf("POST %s: %d, want %d", path, w.Code, want)
		}
	}
	if n := h.sw.metrics.decision(replayUnsafeMatched, true).Get(); n != 1 {
		t.Errorf("replay_unsafe replays = %d, want 1", n)
	}
	if n := h.sw.metrics.decision(skipUnsafeMethod, false).Get(); n != 1 {
		t.Errorf("unsafe_method skips = %d, want 1", n)
	}
}

// TestArmCanResendBody: a Transport that must send a request again (one it
// never managed to write on a reused connection, an HTTP/2 stream the
// upstream refused) asks the arm request's GetBody for the body from the
// start. It gets the whole body, the old reader reads no more, and a body
// that outgrew its copy says so instead of sending a short one.
func TestArmCanResendBody(t *testing.T) {
	resend := armFunc(func(w http.ResponseWriter, r *http.Request) error {
		first, _ := strconv.Atoi(r.Header.Get("X-Read-First"))
		head := make([]byte, first)
		if _, err := io.ReadFull(r.Body, head); err != nil {
			return err
		}
		if r.GetBody == nil {
			w.WriteHeader(500)
			io.WriteString(w, "no GetBody")
			return nil
		}
		again, err := r.GetBody()
		if err != nil {
			w.WriteHeader(409)
			io.WriteString(w, err.Error())
			return nil
		}
		if n, err := r.Body.Read(head[:1]); n != 0 || err != errDetached {
			w.WriteHeader(500)
			fmt.Fprintf(w, "old reader read %d, %v after GetBody", n, err)
			return nil
		}
		r.Body = again
		bodyDigest(w, r)
		return nil
	})
	legacy := armFunc(func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(418); return nil })
	h := testHandler(t, state.ModeConsolidated, 100, legacy, resend)
	h.maxBody = 1 << 20
	url := gateway(t, h)
	for _, tc := range []struct {
		name   string
		size   int
		first  int // read before GetBody
		status int
	}{{"in copy", 256 << 10, 10, 200}, {"outgrew copy", 2 << 20, 1<<20 + 1, 409}} {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte("z"), tc.size)
			// A POST: Go's Transport resends one only when it wrote nothing.
			req, _ := http.NewRequest("POST", url, io.MultiReader(bytes.NewReader(payload)))
			req.Header.Set("X-Read-First", strconv.Itoa(tc.first))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := fmt.Sprintf("%d %x", len(payload), sha256.Sum256(payload))
			if tc.status != 200 {
				want = errBodyOutgrewCopy.Error()
			}
			if resp.StatusCode != tc.status || string(got) != want {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, got, tc.status, want)
			}
		})
	}
}
