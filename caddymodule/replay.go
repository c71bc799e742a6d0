package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// outcome is how an arm's attempt at a request ended, as the trip windows
// see it. Only upstream failures count against an arm.
type outcome uint8

const (
	outcomeOK          outcome = iota // an answer under 500 (a 4xx from the upstream included)
	outcomeFailed                     // a 5xx answer, a transport error, a timeout
	outcomeClientGone                 // the client went away: never counted, never replayed
	outcomeClientError                // a handler refused the request with a 4xx (basic_auth, request_body)
)

// classify says how an attempt ended from its recorder, the error the arm
// returned and whether it panicked with http.ErrAbortHandler.
func classify(r *http.Request, rec *recorder, err error, aborted bool) outcome {
	if rec.clientGone || r.Context().Err() != nil || rec.status == 499 {
		return outcomeClientGone
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return outcomeClientGone
		}
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode >= 400 && he.StatusCode < 500 {
			if he.StatusCode == 499 {
				return outcomeClientGone
			}
			return outcomeClientError
		}
		return outcomeFailed
	}
	if aborted || rec.status >= 500 {
		// An abort with the client still there is a stream that broke
		// upstream.
		return outcomeFailed
	}
	return outcomeOK
}

// Why a request failed on consolidated was replayed on legacy or not:
// the reason label of switchback_replay_decisions_total.
const (
	replaySafeMethod     = "safe_method"     // GET, HEAD, OPTIONS, TRACE, PUT, DELETE
	replayIdempotencyKey = "idempotency_key" // an Idempotency-Key header
	replayUnsafeMatched  = "replay_unsafe"   // the operator's replay_unsafe matcher
	replayNeverReceived  = "never_received"  // consolidated provably never got it
	skipUnsafeMethod     = "unsafe_method"   // may have executed on consolidated
	skipBodyTooLarge     = "body_too_large"  // consolidated read past the body's copy
	skipResponseStarted  = "response_started"
	skipReplayOff        = "replay_off"
)

var (
	replayReasons = []string{replaySafeMethod, replayIdempotencyKey, replayUnsafeMatched, replayNeverReceived}
	skipReasons   = []string{skipUnsafeMethod, skipBodyTooLarge, skipResponseStarted, skipReplayOff}
)

// replayClass says why a request may be replayed after any failure of
// consolidated, or "" if only one it provably never received may be.
func (h *Handler) replayClass(r *http.Request) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return replaySafeMethod
	}
	if _, ok := r.Header["Idempotency-Key"]; ok {
		return replayIdempotencyKey
	}
	if len(h.replayUnsafe) > 0 && h.replayUnsafe.AnyMatch(r) {
		return replayUnsafeMatched
	}
	return ""
}

// neverReceived says whether an arm's error proves its upstream never got
// the request: the dial failed (reverse_proxy's DialError, the type it
// bases its own retries on), the connection was refused, or HTTP/2
// refused the stream or went away before processing it. Go's HTTP/2
// errors are unexported (net/http bundles its own copy), so those two are
// known by their text.
func neverReceived(err error) bool {
	if err == nil {
		return false
	}
	var de reverseproxy.DialError
	if errors.As(err, &de) || errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "REFUSED_STREAM") || strings.Contains(msg, "graceful shutdown GOAWAY")
}
