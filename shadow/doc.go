// Package shadow compares the answers of two arms to the same request and
// keeps the results per route, with noise cancelled. It knows nothing of
// Caddy: caddymodule sends the copies and hands the answers to it.
//
// # Comparison
//
// Rules.Diff compares two answers and names each difference by a path:
// "status"; "header Name" for a header not ignored whose values differ or
// that only one answer has; and for the body, after its Content-Encoding
// (gzip, deflate, br, zstd) is undone, JSON Pointers (RFC 6901) when both
// bodies are one JSON document each (objects by key, arrays by position,
// numbers by exact value: 1, 1.0 and 10e-1 are equal, and large integers
// are not rounded), or "body" when they differ otherwise. "ignore json"
// pointers may use "*" for one segment, and leave out the whole subtree
// they name. A body over max_body once decoded is not compared.
//
// github.com/wI2L/jsondiff was tried first and not used: its Ignores
// option matches exact pointers only (no "*", and a patch that replaces a
// parent hides the child an ignore names), it compares json.Number values
// as text ("1.0" differs from "1") or else as float64 (integers beyond
// 2^53 round), and it builds a full RFC 6902 patch with copies of the
// values, which the comparison throws away. The walk here is a page of
// code that yields the paths directly.
//
// # Noise
//
// Some fields differ on every answer of one and the same arm (a
// timestamp, a request id). As Diffy does with a second copy of the old
// system, but without a second deployment, a share of the sampled
// requests ("noise") is sent to the serving arm a second time; each
// route's first 10 pairs always are, so noise is known before mismatches
// are judged. For each route and path let n_x be the pairs of the two arms
// and d_x those differing at the path, n_a the pairs of the serving arm
// with itself and d_a those differing there, r_x = d_x/n_x and
// r_a = d_a/n_a. The path is noise when d_a >= 1 and either r_x <= r_a or
//
//	z = (r_x - r_a) / sqrt(p(1-p)(1/n_x + 1/n_a)),  p = (d_x+d_a)/(n_x+n_a)
//
// is below 3: the rate between the arms is not significantly (one-sided,
// p ~ 0.001) above the rate within the serving arm. A pair of the arms is
// a mismatch when it differs at a path that is not noise, noise only when
// every path it differs at is noise, and a match otherwise. Pairs are kept
// as counts per set of differing paths, so the report judges every pair
// again with all that is known of noise at that time; the outcome returned
// by Record (and counted in metrics) is the judgement at that moment.
//
// # Bounds
//
// Routes are the method and the path with numeric, UUID and long hex
// segments written ":id" (see Route); at most 500 are kept, the rest count
// as "other". Each route keeps at most 64 paths, 64 sets of paths and 5
// samples of 4 KiB bodies, so memory is bounded whatever the traffic.
//
// # Redaction
//
// A sample keeps the status, the differing headers and Content-Type, and
// the decoded body. Headers named by "redact header" (and Authorization,
// Cookie, Set-Cookie, Proxy-Authorization always) and JSON values named by
// "redact json" are replaced by "[redacted]" before the sample is stored;
// a body that is not JSON is not kept at all while "redact json" is set.
// Nothing else of an answer outlives Record.
package shadow
