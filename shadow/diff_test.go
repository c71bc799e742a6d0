package shadow

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
)

func ans(status int, ct, body string, kv ...string) Answer {
	h := http.Header{}
	if ct != "" {
		h.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return Answer{Status: status, Header: h, Body: []byte(body)}
}

func mustRules(t testing.TB, o Options) *Rules {
	t.Helper()
	r, err := NewRules(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDiff(t *testing.T) {
	const js = "application/json"
	for _, tc := range []struct {
		name string
		opts Options
		a, b Answer
		want []string
	}{
		{"same", Options{}, ans(200, js, `{"a":1}`), ans(200, js, `{"a":1}`), nil},
		{"status", Options{}, ans(200, js, `{}`), ans(404, js, `{}`), []string{"status"}},
		{"header", Options{}, ans(200, js, `{}`), ans(200, "text/plain", `{}`), []string{"header Content-Type"}},
		{"header only one side", Options{}, ans(200, "", `x`, "X-A", "1"), ans(200, "", `x`), []string{"header X-A"}},
		{"date ignored by default", Options{}, ans(200, "", `x`, "Date", "1"), ans(200, "", `x`, "Date", "2"), nil},
		{"ignore header", Options{IgnoreHeaders: []string{"x-request-id"}}, ans(200, "", `x`, "X-Request-Id", "1"), ans(200, "", `x`, "X-Request-Id", "2"), nil},
		{"numbers by value", Options{}, ans(200, js, `{"a":1,"b":-0,"c":12345678901234567890}`), ans(200, js, `{"a":1.0,"b":0,"c":1.2345678901234567890e19}`), nil},
		{"big ints keep digits", Options{}, ans(200, js, `{"c":12345678901234567890}`), ans(200, js, `{"c":12345678901234567891}`), []string{"/c"}},
		{"keys order", Options{}, ans(200, js, `{"a":1,"b":2}`), ans(200, js, "{\"b\":2,\n\"a\":1}"), nil},
		{"nested", Options{}, ans(200, js, `{"items":[{"price":1},{"price":2},{"price":3},{"price":4}]}`), ans(200, js, `{"items":[{"price":1},{"price":2},{"price":3},{"price":5}]}`), []string{"/items/3/price"}},
		{"array length", Options{}, ans(200, js, `[1,2]`), ans(200, js, `[1,2,3]`), []string{"/2"}},
		{"missing key", Options{}, ans(200, js, `{"a":1}`), ans(200, js, `{"a":1,"b/c~":2}`), []string{"/b~1c~0"}},
		{"type change", Options{}, ans(200, js, `{"a":"1"}`), ans(200, js, `{"a":1}`), []string{"/a"}},
		{"root scalar", Options{}, ans(200, js, `1`), ans(200, js, `2`), []string{"body"}},
		{"bytes", Options{}, ans(200, "text/html", `<p>a`), ans(200, "text/html", `<p>b`), []string{"body"}},
		{"one side not json", Options{}, ans(200, js, `{}`), ans(200, js, `{`), []string{"body"}},
		{"ignore json star", Options{IgnoreJSON: []string{"/items/*/etag", "/meta"}},
			ans(200, js, `{"meta":{"t":1},"items":[{"etag":"a","p":1},{"etag":"b"}]}`),
			ans(200, js, `{"meta":{"t":2},"items":[{"etag":"c","p":1},{"etag":"d"}]}`), nil},
		{"ignore json missing key", Options{IgnoreJSON: []string{"/x"}}, ans(200, js, `{}`), ans(200, js, `{"x":1}`), nil},
		{"star does not reach deeper", Options{IgnoreJSON: []string{"/*/a"}}, ans(200, js, `{"k":{"b":{"a":1}}}`), ans(200, js, `{"k":{"b":{"a":2}}}`), []string{"/k/b/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mustRules(t, tc.opts).Diff(tc.a, tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("diff = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDiffEncodings(t *testing.T) {
	body := `{"a":1,"b":[1,2,3]}`
	var gz, zl, br bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write([]byte(body))
	gw.Close()
	zw := zlib.NewWriter(&zl)
	zw.Write([]byte(body))
	zw.Close()
	bw := brotli.NewWriter(&br)
	bw.Write([]byte(body))
	bw.Close()
	plain := ans(200, "application/json", body)
	rules := mustRules(t, Options{IgnoreHeaders: []string{"Content-Encoding"}})
	for enc, raw := range map[string][]byte{"gzip": gz.Bytes(), "deflate": zl.Bytes(), "br": br.Bytes()} {
		a := Answer{Status: 200, Header: http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {enc}}, Body: raw}
		got, err := rules.Diff(plain, a)
		if err != nil || len(got) != 0 {
			t.Errorf("%s: diff %q, %v", enc, got, err)
		}
	}
	small := mustRules(t, Options{MaxBody: 8})
	a := Answer{Status: 200, Header: http.Header{"Content-Encoding": {"gzip"}}, Body: gz.Bytes()}
	if _, err := small.Diff(a, a); err != ErrTooLarge {
		t.Errorf("over max_body once decoded: err %v", err)
	}
	bad := Answer{Status: 200, Header: http.Header{"Content-Encoding": {"gzip"}}, Body: []byte("not gzip")}
	if _, err := rules.Diff(bad, bad); err == nil {
		t.Error("an undecodable body was compared")
	}
}

func TestRulesErrors(t *testing.T) {
	for _, o := range []Options{
		{IgnoreJSON: []string{"a/b"}},
		{IgnoreJSON: []string{"/a~2"}},
		{RedactJSON: []string{""}},
		{IgnoreHeaders: []string{"Bad Header"}},
		{RedactHeaders: []string{"x:y"}},
	} {
		if _, err := NewRules(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestRedact(t *testing.T) {
	rules := mustRules(t, Options{RedactJSON: []string{"/user/email", "/list/*/token"}, RedactHeaders: []string{"X-Secret"}})
	a := ans(200, "application/json", `{"user":{"email":"a@example.com","name":"n"},"list":[{"token":"t1"},{"token":"t2"}]}`,
		"X-Secret", "s3cr3t", "Set-Cookie", "sid=abc")
	s := rules.redact(a, []string{"header X-Secret", "header Set-Cookie", "/user/name"})
	raw, _ := json.Marshal(s)
	for _, secret := range []string{"a@example.com", "t1", "t2", "s3cr3t", "sid=abc"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("sample holds %q: %s", secret, raw)
		}
	}
	if !strings.Contains(s.Body, `"name":"n"`) {
		t.Errorf("sample lost what is not redacted: %s", raw)
	}
	s = rules.redact(ans(200, "text/plain", "email a@example.com"), []string{"body"})
	if strings.Contains(s.Body, "a@example.com") {
		t.Errorf("non-JSON body kept while redact json is set: %q", s.Body)
	}
}

func TestRoute(t *testing.T) {
	for in, want := range map[string]string{
		"/items/42?x=1": "GET /items/:id",
		"/u/123e4567-e89b-12d3-a456-426614174000/x": "GET /u/:id/x",
		"/blob/0123456789abcdef0123":                "GET /blob/:id",
		"/blob/cafe":                                "GET /blob/cafe",
		"/static":                                   "GET /static",
		"":                                          "GET /",
	} {
		if got := Route("GET", in); got != want {
			t.Errorf("Route(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Route("GET", "/"+strings.Repeat("a", 1000)); len(got) > maxRouteLen+3 {
		t.Errorf("long route kept whole: %d bytes", len(got))
	}
}

// TestNoise feeds pairs as the e2e test's upstreams would answer them:
// generated_at differs on every answer, /price on a fifth of the ids.
func TestNoise(t *testing.T) {
	rules := mustRules(t, Options{})
	res := NewResults(0)
	outcomes := map[Outcome]int{}
	n := 0
	answer := func(id int, arm string) Answer {
		n++
		price := id
		if arm == "c" && id%5 == 0 {
			price++
		}
		return ans(200, "application/json", fmt.Sprintf(`{"id":%d,"price":%d,"generated_at":%d}`, id, price, n))
	}
	for i := 0; i < 1000; i++ {
		p := Pair{Method: "GET", Path: fmt.Sprintf("/items/%d", i), At: time.Now(), Serving: answer(i, "l"), Shadow: answer(i, "c")}
		if res.WantRepeat("GET", p.Path, 0.1, float64(i%10)/10) {
			r := answer(i, "l")
			p.Repeat = &r
		}
		outcomes[res.Record(rules, p)]++
	}
	rep := res.Report()
	if len(rep.Routes) != 1 || rep.Routes[0].Route != "GET /items/:id" {
		t.Fatalf("routes: %+v", rep.Routes)
	}
	rt := rep.Routes[0]
	if rt.Mismatched != 200 || rt.Compared != 1000 {
		t.Errorf("mismatched %d of %d, want 200 of 1000", rt.Mismatched, rt.Compared)
	}
	for _, p := range rt.Paths {
		if (p.Path == "/generated_at") != p.Noise {
			t.Errorf("path %s: noise %v", p.Path, p.Noise)
		}
	}
	if outcomes[Mismatch] != 200 || outcomes[NoiseOnly] != 800 {
		t.Errorf("outcomes as recorded: %v", outcomes)
	}
	if len(rt.Samples) != DefaultMaxSamples {
		t.Errorf("%d samples", len(rt.Samples))
	}
	for _, s := range rt.Samples {
		if !slices.Contains(s.Diffs, "/price") {
			t.Errorf("a noise-only sample kept over mismatches: %v", s.Diffs)
		}
	}
	sc := res.Step()
	if sc.Compared != 1000 || sc.Mismatched != 200 || sc.WorstRoute != "GET /items/:id" {
		t.Errorf("step counts %+v", sc)
	}
	res.ResetStep()
	if sc := res.Step(); sc.Compared != 0 || res.Report().Compared != 1000 {
		t.Errorf("ResetStep: step %+v, report %d", sc, res.Report().Compared)
	}
	if sc := res.StepAt("step-1"); sc.Compared != 0 {
		t.Errorf("a new step starts at %+v", sc)
	}
	res.Record(rules, Pair{Method: "GET", Path: "/items/1", Serving: answer(5, "l"), Shadow: answer(5, "c")})
	if sc := res.StepAt("step-1"); sc.Compared != 1 || sc.Mismatched != 1 {
		t.Errorf("step-1 counts %+v", sc)
	}
	if sc := res.StepAt("step-2"); sc.Compared != 0 {
		t.Errorf("step-2 starts at %+v", sc)
	}
	res.Reset()
	if rep := res.Report(); rep.Compared != 0 || len(rep.Routes) != 0 {
		t.Errorf("Reset left %+v", rep)
	}
}

// TestBounds checks that routes, paths and sets of paths stay bounded.
func TestBounds(t *testing.T) {
	rules := mustRules(t, Options{})
	res := NewResults(0)
	for i := 0; i < 2000; i++ {
		body := fmt.Sprintf(`{"k%d":1}`, i)
		res.Record(rules, Pair{Method: "GET", Path: fmt.Sprintf("/r%d", i%700), Serving: ans(200, "", `{}`), Shadow: ans(200, "", body)})
	}
	rep := res.Report()
	if len(rep.Routes) != DefaultMaxRoutes+1 {
		t.Fatalf("%d routes", len(rep.Routes))
	}
	for _, rt := range rep.Routes {
		if rt.Route == OtherRoute && (len(rt.Paths) > maxPaths+1 || len(rt.Samples) > DefaultMaxSamples) {
			t.Errorf("other: %d paths, %d samples", len(rt.Paths), len(rt.Samples))
		}
	}
	res.mu.Lock()
	other := res.all.routes[OtherRoute]
	if len(other.sigs) > maxSignatures+1 || len(other.cross) > maxPaths+1 {
		t.Errorf("other: %d sets, %d paths", len(other.sigs), len(other.cross))
	}
	res.mu.Unlock()
	if rep.Mismatched != 2000 {
		t.Errorf("mismatched %d, want 2000", rep.Mismatched)
	}
}

// FuzzDiff: the comparison never panics, and an answer never differs from
// itself.
func FuzzDiff(f *testing.F) {
	f.Add([]byte(`{"a":[1,2,{"b":null}],"c":"x"}`), []byte(`{"a":[1,2.0,{"b":false}]}`))
	f.Add([]byte(`1e400`), []byte(`-0.0e-5`))
	f.Add([]byte(`[[[[[]]]]]`), []byte(`{"":{"~/":1}}`))
	f.Add([]byte("\xff\xfe"), []byte(`"\ud800"`))
	rules := mustRules(f, Options{IgnoreJSON: []string{"/a/*/b", "/*"}})
	plain := mustRules(f, Options{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		for _, r := range []*Rules{rules, plain} {
			x := ans(200, "application/json", string(a))
			if d, err := r.Diff(x, x); err != nil || len(d) != 0 {
				t.Fatalf("diff(a, a) = %q, %v", d, err)
			}
			d1, _ := r.Diff(x, ans(200, "application/json", string(b)))
			d2, _ := r.Diff(ans(200, "application/json", string(b)), x)
			if !slices.Equal(d1, d2) {
				t.Fatalf("not symmetric: %q vs %q", d1, d2)
			}
			r.redact(x, d1)
		}
	})
}

// FuzzPattern: pointers parse or are refused, never panic, and a parsed
// one matches its own unescaped path.
func FuzzPattern(f *testing.F) {
	f.Add("/a/*/b")
	f.Add("/~0~1")
	f.Add("/~")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePattern(s)
		if err != nil {
			return
		}
		if !p.matches([]string(p)) {
			t.Fatalf("%q does not match itself", s)
		}
		if q, err := parsePattern(pointer(p)); err != nil || !slices.Equal(p, q) {
			t.Fatalf("%q round trip: %q, %v", s, q, err)
		}
	})
}
