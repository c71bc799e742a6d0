package caddymodule

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestShadowParseErrors: each bad shadow block is refused with an error
// that says what is wrong and names its line.
func TestShadowParseErrors(t *testing.T) {
	lineRE := regexp.MustCompile(`Caddyfile:(\d+)`)
	site := func(body string) string {
		return ":8080 {\n\tswitchback main {\n\t\tshadow {\n" + body + "\t\t}\n\t\tlegacy {\n\t\t\treverse_proxy 127.0.0.1:9001\n\t\t}\n\t\tconsolidated {\n\t\t\treverse_proxy 127.0.0.1:9002\n\t\t}\n\t}\n}\n"
	}
	for _, tc := range []struct {
		name, body string
		line       int
		msg        string
	}{
		{"unknown option", "\t\t\tmirror all\n", 4, "unknown shadow option 'mirror'"},
		{"duplicate", "\t\t\tsample 1%\n\t\t\tsample 2%\n", 5, "duplicate shadow option 'sample'"},
		{"sample 0", "\t\t\tsample 0%\n", 4, "above 0%"},
		{"sample 150", "\t\t\tsample 150%\n", 4, "between 0% and 100%"},
		{"sample no percent", "\t\t\tsample 10\n", 4, "invalid sample"},
		{"noise bad", "\t\t\tnoise some\n", 4, "invalid noise"},
		{"methods empty", "\t\t\tmethods\n", 4, "at least one method"},
		{"methods bad", "\t\t\tmethods G3T\n", 4, "invalid method"},
		{"methods twice", "\t\t\tmethods GET get\n", 4, "listed twice"},
		{"methods connect", "\t\t\tmethods CONNECT\n", 4, "CONNECT"},
		{"max_body bad", "\t\t\tmax_body lots\n", 4, "invalid max_body"},
		{"max_inflight 0", "\t\t\tmax_inflight 0\n", 4, "max_inflight"},
		{"timeout bad", "\t\t\ttimeout soon\n", 4, "timeout"},
		{"ignore what", "\t\t\tignore cookie a\n", 4, "'header <name...>' or 'json <pointer...>'"},
		{"ignore json no slash", "\t\t\tignore json meta/x\n", 4, "must start with /"},
		{"ignore json bad escape", "\t\t\tignore json /a~2\n", 4, "~"},
		{"redact header bad", "\t\t\tredact header Bad:Name\n", 4, "not a header name"},
		{"max_mismatch bad", "\t\t\tmax_mismatch 1\n", 4, "invalid max_mismatch"},
		{"extra arg", "\t\t\ttimeout 5s 6s\n", 4, "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adapt(t, site(tc.body))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.body)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q does not say %q", msg, tc.msg)
			}
			if m := lineRE.FindStringSubmatch(msg); m == nil || m[1] != strconv.Itoa(tc.line) {
				t.Errorf("error %q does not name line %d", msg, tc.line)
			}
		})
	}
	if _, err := adapt(t, ":8080 {\n\tswitchback main {\n\t\tshadow on\n\t}\n}\n"); err == nil || !strings.Contains(err.Error(), "shadow takes a block") {
		t.Errorf("shadow with an argument: %v", err)
	}
}

// FuzzShadowParse feeds arbitrary shadow blocks to the parser: it may
// refuse them, never panic, and what it accepts passes Validate's check.
func FuzzShadowParse(f *testing.F) {
	f.Add("sample 10%\nmethods GET HEAD\nmax_body 256KiB\nmax_inflight 64\ntimeout 5s\nnoise 5%\n")
	f.Add("ignore header Date Set-Cookie\nignore json /meta/generated_at /items/*/etag\n")
	f.Add("redact header Authorization\nredact json /user/email\nmax_mismatch 1%\n")
	f.Add("noise off\nignore json /~0~1/*\n")
	f.Add("ignore json\n")
	f.Fuzz(func(t *testing.T, body string) {
		d := caddyfile.NewTestDispenser("shadow {\n" + body + "\n}\n")
		d.Next()
		var h Handler
		if err := h.unmarshalShadow(d); err != nil {
			return
		}
		if err := h.Shadow.check(); err != nil {
			t.Fatalf("parsed block fails its check: %v\n%s", err, body)
		}
	})
}
