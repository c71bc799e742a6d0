package caddymodule

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/leanvibe/switchback/state"
)

func TestKeyBucketStable(t *testing.T) {
	salt := saltFor("main")
	for i := 0; i < 1000; i++ {
		key := fmt.Sprintf("user-%d", i)
		if a, b := keyBucket(salt, key), keyBucket(salt, key); a != b || a >= buckets {
			t.Fatalf("bucket of %q: %d then %d", key, a, b)
		}
	}
	// Known values pin the hash: changing it would move every user.
	for _, tc := range []struct {
		key  string
		want uint32
	}{{"alice", 9860}, {"", 4472}} {
		if got := keyBucket(salt, tc.key); got != tc.want {
			t.Errorf("keyBucket(%q) = %d, want %d", tc.key, got, tc.want)
		}
	}
	if keyBucket(saltFor("a"), "alice") == keyBucket(saltFor("b"), "alice") &&
		keyBucket(saltFor("a"), "bob") == keyBucket(saltFor("b"), "bob") {
		t.Error("two switches split users identically; the salt has no effect")
	}
}

// TestPickMonotonic is the property behind stickiness: for any key, if it
// goes to consolidated at weight w it does so at every weight above w, so
// raising the weight never sends a user back to legacy. It walks every
// weight, in the 0.01% steps a weight has.
func TestPickMonotonic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	salt := saltFor("main")
	for i := 0; i < 2000; i++ {
		key := fmt.Sprintf("%x", rng.Uint64())
		first := state.Weight(-1)
		for w := state.WeightMin; w <= state.WeightMax; w++ {
			in := pickConsolidated(salt, key, threshold(w))
			if in && first < 0 {
				first = w
			}
			if !in && first >= 0 {
				t.Fatalf("key %q: consolidated at weight %d but legacy at %d", key, first, w)
			}
		}
		if first < 0 {
			t.Fatalf("key %q never reaches consolidated, not even at 100%%", key)
		}
	}
}

func TestPickProportionsAndMoves(t *testing.T) {
	salt := saltFor("main")
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 100000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%x%x", rng.Uint64(), rng.Uint64())
	}
	count := func(w state.Weight) (in map[int]bool) {
		in = map[int]bool{}
		for i, k := range keys {
			if pickConsolidated(salt, k, threshold(w)) {
				in[i] = true
			}
		}
		return in
	}
	for _, p := range []int{0, 1, 20, 50, 99, 100} {
		got := float64(len(count(state.WeightPercent(p)))) / n * 100
		if d := got - float64(p); d > 1 || d < -1 {
			t.Errorf("weight %d%%: %.2f%% of keys went to consolidated", p, got)
		}
	}
	// Below 1%, in 0.01% steps: 0.1% of 100,000 keys is 100 (a binomial
	// sd of 10), 0.5% is 500 (sd 22).
	for _, tc := range []struct {
		w      state.Weight
		lo, hi int
	}{{0, 0, 0}, {10, 60, 140}, {50, 420, 580}} {
		if got := len(count(tc.w)); got < tc.lo || got > tc.hi {
			t.Errorf("weight %s%%: %d of %d keys went to consolidated, want %d to %d", tc.w, got, n, tc.lo, tc.hi)
		}
	}
	at20, at30 := count(state.WeightPercent(20)), count(state.WeightPercent(30))
	moved := 0
	for i := range at30 {
		if !at20[i] {
			moved++
		}
	}
	for i := range at20 {
		if !at30[i] {
			t.Fatalf("key %d left consolidated when the weight rose", i)
		}
	}
	if pct := float64(moved) / n * 100; pct < 9 || pct > 11 {
		t.Errorf("20%% -> 30%% moved %.2f%% of keys, want about 10%%", pct)
	}
}

func TestPickRandom(t *testing.T) {
	hits := 0
	for i := 0; i < 100000; i++ {
		if pickRandom(threshold(state.WeightPercent(30))) {
			hits++
		}
	}
	if pct := float64(hits) / 1000; pct < 29 || pct > 31 {
		t.Errorf("random pick at 30%%: %.2f%%", pct)
	}
}

func TestCookieSigner(t *testing.T) {
	s := newCookieSigner([]byte("secret-one"))
	key, val := s.issue()
	if len(key) != cookieKeyLen || len(val) != cookieValLen {
		t.Fatalf("issue() = %q, %q", key, val)
	}
	if got, ok := s.verify(val); !ok || got != key {
		t.Fatalf("verify(own cookie) = %q, %v", got, ok)
	}
	other := newCookieSigner([]byte("secret-two"))
	if _, ok := other.verify(val); ok {
		t.Fatal("a cookie signed with another secret verified")
	}
	// Flip each character of the key and the MAC: every edit is refused.
	for i := 0; i < len(val); i++ {
		b := []byte(val)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		if _, ok := s.verify(string(b)); ok {
			t.Fatalf("edited cookie %q verified", b)
		}
	}
	for _, bad := range []string{"", "x", strings.Repeat("a", cookieValLen), key, key + ".", val + "x", strings.ToUpper(val)} {
		if _, ok := s.verify(bad); ok {
			t.Errorf("verify(%q) accepted a malformed cookie", bad)
		}
	}
	long := newCookieSigner([]byte(strings.Repeat("k", 200)))
	_, v := long.issue()
	if _, ok := long.verify(v); !ok {
		t.Error("a secret longer than a block does not round-trip")
	}
}

func TestFindCookie(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header []string
		want   string
		ok     bool
	}{
		{"only", []string{"sb_user=abc"}, "abc", true},
		{"among others", []string{"a=1; sb_user=abc; b=2"}, "abc", true},
		{"quoted", []string{`sb_user="abc"`}, "abc", true},
		{"second header", []string{"a=1", "sb_user=xyz"}, "xyz", true},
		{"prefix name", []string{"sb_user2=abc"}, "", false},
		{"suffix name", []string{"xsb_user=abc"}, "", false},
		{"missing", []string{"a=1"}, "", false},
		{"none", nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.header {
				h.Add("Cookie", v)
			}
			got, ok := findCookie(h, "sb_user")
			if got != tc.want || ok != tc.ok {
				t.Errorf("findCookie = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzCookieVerify(f *testing.F) {
	s := newCookieSigner([]byte("fuzz"))
	_, val := s.issue()
	f.Add(val)
	f.Add("")
	f.Add(strings.Repeat("0", 32) + "." + strings.Repeat("A", 22))
	f.Fuzz(func(t *testing.T, v string) {
		key, ok := s.verify(v)
		if ok && (v != val || key != val[:cookieKeyLen]) {
			t.Fatalf("forged cookie %q verified", v)
		}
	})
}

func FuzzFindCookie(f *testing.F) {
	f.Add("a=1; sb_user=abc; b=2")
	f.Add(`sb_user="`)
	f.Fuzz(func(t *testing.T, line string) {
		h := http.Header{"Cookie": {line}}
		v, ok := findCookie(h, "sb_user")
		if ok && !strings.Contains(line, v) {
			t.Fatalf("findCookie(%q) = %q, not in the header", line, v)
		}
	})
}

// pickBench sets up a cookie-sticky handler at weight 50 and a request
// carrying a valid cookie among others.
func pickBench() (*Handler, *view, *http.Request, string) {
	h := &Handler{stickyMode: "cookie", cookieName: "sb_user", sw: newSwitch("main")}
	h.signer = new(atomic.Pointer[cookieSigner])
	h.signer.Store(newCookieSigner([]byte("bench")))
	_, val := h.signer.Load().issue()
	r, _ := http.NewRequest("GET", "http://x/", nil)
	r.Header.Set("Cookie", "other=1; sb_user="+val)
	w := state.WeightPercent(50)
	return h, &view{mode: "split", weight: w, threshold: threshold(w)}, r, val
}

// BenchmarkPick is the per-request pick with a sticky cookie: find the
// cookie, check its HMAC, hash the key against the weight.
func BenchmarkPick(b *testing.B) {
	h, v, r, _ := pickBench()
	b.ReportAllocs()
	for b.Loop() {
		h.pick(v, nil, r)
	}
}

// BenchmarkPickColdCookie is the pick for a cookie not yet in the cache of
// verified cookies: a full HMAC-SHA256 check.
func BenchmarkPickColdCookie(b *testing.B) {
	h, v, r, val := pickBench()
	b.ReportAllocs()
	for b.Loop() {
		h.signer.Load().verified[h.signer.Load().slot(val)].Store(nil)
		h.pick(v, nil, r)
	}
}

// BenchmarkPickHash is the hash and weight comparison alone, as for a
// header key.
func BenchmarkPickHash(b *testing.B) {
	salt := saltFor("main")
	b.ReportAllocs()
	for b.Loop() {
		pickConsolidated(salt, "3f9a6c2d1e8b7a4f3f9a6c2d1e8b7a4f", threshold(state.WeightPercent(50)))
	}
}

// findCookie returns the value of the first cookie of that name, through
// nextCookie, for the parsing tests.
func findCookie(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var v string
			var match bool
			if v, line, match = nextCookie(line, name); match {
				return v, true
			}
		}
	}
	return "", false
}
