package shadow

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// maxSampleBody bounds each body kept in a sample.
const maxSampleBody = 4 << 10

// SampleAnswer is one side of a kept sample, redacted.
type SampleAnswer struct {
	Status  int                 `json:"status"`
	Headers map[string][]string `json:"headers,omitempty"`
	Body    string              `json:"body,omitempty"`
	// Truncated says the body was cut to 4 KiB.
	Truncated bool `json:"truncated,omitempty"`
}

// redact makes the sample of an answer: the headers that differ (diffs
// names them) and Content-Type, and the decoded body, with the redacted
// headers and JSON values replaced by "[redacted]". Nothing else of the
// answer is kept, so a value the rules redact is never stored.
func (r *Rules) redact(a Answer, diffs []string) SampleAnswer {
	s := SampleAnswer{Status: a.Status}
	want := map[string]bool{"Content-Type": true}
	for _, d := range diffs {
		if name, ok := strings.CutPrefix(d, "header "); ok {
			want[name] = true
		}
	}
	for k, v := range a.Header {
		ck := http.CanonicalHeaderKey(k)
		if !want[ck] {
			continue
		}
		if s.Headers == nil {
			s.Headers = map[string][]string{}
		}
		if r.redactHeaders[ck] {
			s.Headers[ck] = []string{Redacted}
			continue
		}
		s.Headers[ck] = append([]string(nil), v...)
	}
	body, err := r.decode(a)
	if err != nil {
		s.Body = "(not kept: " + err.Error() + ")"
		return s
	}
	if v, ok := parseJSON(body); ok {
		if len(r.redactJSON) > 0 {
			v = r.redactValue(v, nil)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if enc.Encode(v) == nil {
			body = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		}
	} else if len(r.redactJSON) > 0 && len(body) > 0 {
		// The rules name JSON values, and this body is not JSON: it
		// might hold them all the same, so it is not kept.
		s.Body = "(not kept: not JSON, and redact json is set)"
		return s
	}
	if len(body) > maxSampleBody {
		body, s.Truncated = body[:maxSampleBody], true
	}
	s.Body = strings.ToValidUTF8(string(body), "\uFFFD")
	return s
}

// redactValue replaces the values the redact json rules name.
func (r *Rules) redactValue(v any, path []string) any {
	if len(path) > 0 && r.redactJSON.match(path) {
		return Redacted
	}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = r.redactValue(e, append(path, k))
		}
	case []any:
		for i, e := range x {
			x[i] = r.redactValue(e, append(path, strconv.Itoa(i)))
		}
	}
	return v
}
