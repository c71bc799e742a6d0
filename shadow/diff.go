package shadow

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Answer is one arm's answer to a request, as far as it was kept: the
// status, the header and the body as sent (still encoded).
type Answer struct {
	Status int
	Header http.Header
	Body   []byte
}

// Options are the comparison's rules, as the shadow block gives them.
type Options struct {
	// IgnoreHeaders are header names left out of the comparison, on top
	// of DefaultIgnoreHeaders.
	IgnoreHeaders []string
	// IgnoreJSON are JSON Pointers (RFC 6901, "*" one segment) left out
	// of the comparison with their whole subtree.
	IgnoreJSON []string
	// RedactHeaders and RedactJSON name values replaced by "[redacted]"
	// before an answer is kept as a sample (DefaultRedactHeaders always
	// are). A redacted value is still compared.
	RedactHeaders []string
	RedactJSON    []string
	// MaxBody is the largest body, after decoding, that is compared
	// (default DefaultMaxBody).
	MaxBody int64
}

// Defaults.
const (
	DefaultMaxBody = 256 << 10
	// maxDiffs bounds the differences named for one pair of answers.
	maxDiffs = 32
	// Redacted replaces a redacted value.
	Redacted = "[redacted]"
)

// DefaultIgnoreHeaders are never compared: they describe the connection
// or the encoding, not the answer, or differ on every answer.
var DefaultIgnoreHeaders = []string{"Date", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Age"}

// DefaultRedactHeaders are always redacted in samples.
var DefaultRedactHeaders = []string{"Authorization", "Cookie", "Set-Cookie", "Proxy-Authorization"}

// ErrTooLarge is the error of a body over MaxBody once decoded.
var ErrTooLarge = errors.New("body over max_body")

// Rules are compiled Options.
type Rules struct {
	ignoreHeaders map[string]bool
	redactHeaders map[string]bool
	ignoreJSON    patterns
	redactJSON    patterns
	maxBody       int64
}

// NewRules compiles o. Each error names the rule at fault.
func NewRules(o Options) (*Rules, error) {
	r := &Rules{ignoreHeaders: map[string]bool{}, redactHeaders: map[string]bool{}, maxBody: o.MaxBody}
	if r.maxBody <= 0 {
		r.maxBody = DefaultMaxBody
	}
	for _, h := range append(slices.Clone(DefaultIgnoreHeaders), o.IgnoreHeaders...) {
		if err := checkHeaderName(h); err != nil {
			return nil, fmt.Errorf("ignore header: %w", err)
		}
		r.ignoreHeaders[http.CanonicalHeaderKey(h)] = true
	}
	for _, h := range append(slices.Clone(DefaultRedactHeaders), o.RedactHeaders...) {
		if err := checkHeaderName(h); err != nil {
			return nil, fmt.Errorf("redact header: %w", err)
		}
		r.redactHeaders[http.CanonicalHeaderKey(h)] = true
	}
	var err error
	if r.ignoreJSON, err = compilePatterns("ignore json", o.IgnoreJSON); err != nil {
		return nil, err
	}
	if r.redactJSON, err = compilePatterns("redact json", o.RedactJSON); err != nil {
		return nil, err
	}
	return r, nil
}

// checkHeaderName refuses what cannot be a header name (RFC 9110 token).
func checkHeaderName(h string) error {
	if h == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return fmt.Errorf("%q is not a header name", h)
		}
	}
	return nil
}

// Diff names the differences between two answers: "status", "header
// Name" and, for the body, JSON Pointers into it ("/items/3/price") when
// both bodies are JSON, or "body" when they differ otherwise. A body over
// MaxBody once decoded gives ErrTooLarge, and one that cannot be decoded
// an error: such a pair is not compared. The paths are sorted; at most 32
// are named, the last being "..." when there were more.
func (r *Rules) Diff(a, b Answer) ([]string, error) {
	ab, err := r.decode(a)
	if err != nil {
		return nil, err
	}
	bb, err := r.decode(b)
	if err != nil {
		return nil, err
	}
	d := differ{rules: r}
	if a.Status != b.Status {
		d.add("status")
	}
	r.diffHeaders(&d, a.Header, b.Header)
	d.body(ab, bb)
	slices.Sort(d.out)
	if d.more {
		d.out = append(d.out, "...")
	}
	return d.out, nil
}

func (r *Rules) diffHeaders(d *differ, a, b http.Header) {
	for k, av := range a {
		if r.ignoreHeaders[http.CanonicalHeaderKey(k)] {
			continue
		}
		if bv, ok := b[k]; !ok || !slices.Equal(av, bv) {
			d.add("header " + http.CanonicalHeaderKey(k))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok && !r.ignoreHeaders[http.CanonicalHeaderKey(k)] {
			d.add("header " + http.CanonicalHeaderKey(k))
		}
	}
}

// decode undoes the answer's Content-Encoding (gzip, deflate, br, zstd,
// in the order applied), reading at most MaxBody bytes.
func (r *Rules) decode(a Answer) ([]byte, error) {
	body := a.Body
	if int64(len(body)) > r.maxBody {
		return nil, ErrTooLarge
	}
	codings := a.Header.Values("Content-Encoding")
	var list []string
	for _, c := range codings {
		for _, part := range strings.Split(c, ",") {
			if p := strings.ToLower(strings.TrimSpace(part)); p != "" && p != "identity" {
				list = append(list, p)
			}
		}
	}
	for i := len(list) - 1; i >= 0; i-- {
		var rd io.Reader
		var err error
		src := bytes.NewReader(body)
		switch list[i] {
		case "gzip", "x-gzip":
			rd, err = gzip.NewReader(src)
		case "deflate":
			// HTTP's deflate is zlib; some servers send raw deflate.
			if rd, err = zlib.NewReader(src); err != nil {
				rd, err = flate.NewReader(bytes.NewReader(body)), nil
			}
		case "br":
			rd = brotli.NewReader(src)
		case "zstd":
			var z *zstd.Decoder
			if z, err = zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(r.maxBody)*2+1<<20)); err == nil {
				defer z.Close()
				rd = z
			}
		default:
			return nil, fmt.Errorf("unknown Content-Encoding %q", list[i])
		}
		if err != nil {
			return nil, fmt.Errorf("decoding %s: %w", list[i], err)
		}
		out, err := io.ReadAll(io.LimitReader(rd, r.maxBody+1))
		if err != nil {
			return nil, fmt.Errorf("decoding %s: %w", list[i], err)
		}
		if int64(len(out)) > r.maxBody {
			return nil, ErrTooLarge
		}
		body = out
	}
	return body, nil
}

// differ collects the differences of one pair.
type differ struct {
	rules *Rules
	out   []string
	more  bool
	path  []string
}

func (d *differ) add(p string) {
	if len(d.out) >= maxDiffs-1 {
		d.more = true
		return
	}
	d.out = append(d.out, p)
}

func (d *differ) full() bool { return d.more }

// body compares two decoded bodies: structurally when both are JSON,
// byte for byte otherwise.
func (d *differ) body(a, b []byte) {
	if bytes.Equal(a, b) {
		return
	}
	av, aok := parseJSON(a)
	bv, bok := parseJSON(b)
	if !aok || !bok {
		d.add("body")
		return
	}
	d.value(av, bv)
}

// parseJSON decodes one JSON document with numbers kept as written.
func parseJSON(b []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // trailing data: not one JSON document
	}
	return v, true
}

// here names the current node: its pointer, or "body" at the root.
func (d *differ) here() string {
	if len(d.path) == 0 {
		return "body"
	}
	return pointer(d.path)
}

// value compares two JSON values at d.path: objects by key, arrays by
// position, numbers by value, anything else by equality.
func (d *differ) value(a, b any) {
	if d.full() || (len(d.path) > 0 && d.rules.ignoreJSON.match(d.path)) {
		return
	}
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			d.add(d.here())
			return
		}
		keys := make([]string, 0, len(av)+len(bv))
		for k := range av {
			keys = append(keys, k)
		}
		for k := range bv {
			if _, ok := av[k]; !ok {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			x, xok := av[k]
			y, yok := bv[k]
			d.path = append(d.path, k)
			switch {
			case xok && yok:
				d.value(x, y)
			case !d.rules.ignoreJSON.match(d.path):
				d.add(pointer(d.path))
			}
			d.path = d.path[:len(d.path)-1]
		}
	case []any:
		bv, ok := b.([]any)
		if !ok {
			d.add(d.here())
			return
		}
		for i := 0; i < max(len(av), len(bv)) && !d.full(); i++ {
			d.path = append(d.path, strconv.Itoa(i))
			switch {
			case i < len(av) && i < len(bv):
				d.value(av[i], bv[i])
			case !d.rules.ignoreJSON.match(d.path):
				d.add(pointer(d.path))
			}
			d.path = d.path[:len(d.path)-1]
		}
	case json.Number:
		bv, ok := b.(json.Number)
		if !ok || !sameNumber(string(av), string(bv)) {
			d.add(d.here())
		}
	default: // string, bool, nil
		if a != b {
			d.add(d.here())
		}
	}
}

// sameNumber compares two JSON numbers by value, exactly: 1, 1.0, 10e-1
// and 0.1e1 are equal, and so are -0 and 0; large integers keep all their
// digits (no float64 rounding).
func sameNumber(a, b string) bool {
	if a == b {
		return true
	}
	ca, ok1 := canonicalNumber(a)
	cb, ok2 := canonicalNumber(b)
	return ok1 && ok2 && ca == cb
}

// canonicalNumber writes a JSON number as sign, significant digits and
// exponent, so equal values read alike.
func canonicalNumber(s string) (string, bool) {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, expPart, hasExp := strings.Cut(strings.ToLower(s), "e")
	var exp int64
	if hasExp {
		e, err := strconv.ParseInt(strings.TrimPrefix(expPart, "+"), 10, 32)
		if err != nil {
			return "", false
		}
		exp = e
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := intPart + frac
	exp -= int64(len(frac))
	digits = strings.TrimLeft(digits, "0")
	if digits == "" {
		return "0", true
	}
	trimmed := strings.TrimRight(digits, "0")
	exp += int64(len(digits) - len(trimmed))
	sign := ""
	if neg {
		sign = "-"
	}
	return sign + trimmed + "e" + strconv.FormatInt(exp, 10), true
}
