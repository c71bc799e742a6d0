package caddymodule

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leanvibe/switchback/state"
)

// buckets is the resolution of the split: a weight w sends keys whose
// bucket is below w*buckets/100 to consolidated. With 10,000 buckets a
// weight of 1% is 100 buckets and the finest weight, 0.01%, is one.
const buckets = 10000

// One bucket is one step of a state.Weight: these fail to compile if the
// two ever differ.
var (
	_ [buckets - int(state.WeightMax)]struct{}
	_ [int(state.WeightMax) - buckets]struct{}
)

// keyBucket maps a sticky key to a bucket in [0, buckets), salted with the
// switch name so two switches split the same users differently. It mixes
// the key eight bytes at a time and ends with the SplitMix64 finalizer, so
// keys that differ in one character land far apart. It allocates nothing.
func keyBucket(salt uint64, key string) uint32 {
	return uint32(mix64(salt, key) % buckets)
}

// mix64 hashes key with seed: a multiply-xorshift over 8-byte words, then
// the SplitMix64 finalizer.
func mix64(seed uint64, key string) uint64 {
	h := seed ^ uint64(len(key))*0x9e3779b97f4a7c15
	for len(key) >= 8 {
		v := uint64(key[0]) | uint64(key[1])<<8 | uint64(key[2])<<16 | uint64(key[3])<<24 |
			uint64(key[4])<<32 | uint64(key[5])<<40 | uint64(key[6])<<48 | uint64(key[7])<<56
		h = (h ^ v) * 0x9e3779b97f4a7c15
		h ^= h >> 32
		key = key[8:]
	}
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * 0x100000001b3
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// saltFor is the hash seed of a switch.
func saltFor(name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return h
}

// threshold converts a weight to a bucket bound: one bucket per 0.01%.
func threshold(weight state.Weight) uint32 { return uint32(weight) }

// pickConsolidated says whether a key goes to consolidated at threshold t.
// Because the bucket of a key never changes, raising the weight only moves
// keys from legacy to consolidated, and lowering it only the other way: a
// user never flips back and forth while the weight moves one way.
func pickConsolidated(salt uint64, key string, t uint32) bool {
	return keyBucket(salt, key) < t
}

// pickRandom splits a request with no usable key at random by threshold.
func pickRandom(t uint32) bool {
	return uint32(rand.IntN(buckets)) < t
}

// Sticky cookies carry "<key>.<mac>": a random 128-bit key in hex and the
// first 128 bits of HMAC-SHA256(secret, key) in unpadded base64url. A client
// cannot choose its arm by editing the cookie, since it cannot sign a key.
const (
	cookieKeyLen = 32                                         // hex of 16 random bytes
	cookieMACLen = 22                                         // base64url of 16 bytes
	cookieValLen = cookieKeyLen + 1 + cookieMACLen            // key "." mac
	hmacBlock    = 64                                         // SHA-256 block size
	hmacInputMax = hmacBlock + cookieKeyLen + sha256.Size + 8 // room for both passes
)

// verifiedSlots is the size of a signer's cache of verified cookies.
const verifiedSlots = 1 << 16

// cookieSigner signs and checks sticky keys with HMAC-SHA256 (RFC 2104),
// computed over fixed stack buffers so a check allocates nothing. A
// returning user sends the same cookie on every request, so values that
// verified are remembered in a lock-free, direct-mapped cache: a hit costs
// a hash and a string compare instead of two SHA-256 passes. Only values
// that verified are ever stored, so the cache cannot be poisoned; a
// collision merely evicts.
//
// A signer may also hold the previous key, accepted until prevUntil after
// the key changed (a new secret in the config, or a process-only key
// giving way to the fleet's): a cookie signed with it keeps its key and is
// signed again with the current one, so the user keeps their arm.
type cookieSigner struct {
	ipad, opad [hmacBlock]byte
	id         [sha256.Size]byte // names the key without revealing it
	verified   [verifiedSlots]atomic.Pointer[string]

	prev      *cookieSigner // nil, or the previous key, itself with no prev
	prevUntil time.Time
}

// RotationGrace is how long a cookie signed with the previous key is still
// accepted, and signed again, after the key changes.
const RotationGrace = 24 * time.Hour

func newCookieSigner(secret []byte) *cookieSigner {
	var key [hmacBlock]byte
	if len(secret) > hmacBlock {
		sum := sha256.Sum256(secret)
		copy(key[:], sum[:])
	} else {
		copy(key[:], secret)
	}
	s := &cookieSigner{}
	for i := range key {
		s.ipad[i] = key[i] ^ 0x36
		s.opad[i] = key[i] ^ 0x5c
	}
	s.id = sha256.Sum256(append([]byte("switchback cookie key id\x00"), key[:]...))
	return s
}

// after returns the signer to use in place of s when it takes over from
// old: s itself when old signs with the same key and holds no previous
// key; else a copy of s that also accepts old's key (or, when the key is
// the same, old's previous key) until its grace ends.
func (s *cookieSigner) after(old *cookieSigner, now time.Time) *cookieSigner {
	if old == nil {
		return s
	}
	prev, until := old, now.Add(RotationGrace)
	if old.id == s.id {
		if old.prev == nil || !now.Before(old.prevUntil) {
			return s
		}
		prev, until = old.prev, old.prevUntil
	}
	n := &cookieSigner{ipad: s.ipad, opad: s.opad, id: s.id, prevUntil: until}
	n.prev = &cookieSigner{ipad: prev.ipad, opad: prev.opad, id: prev.id}
	return n
}

// find returns the key of a valid cookie of that name in the request's
// Cookie headers. A browser can send several of one name (a stale one
// with another Domain or Path first): any one that verifies will do, one
// signed with the current key first. resign says the key came from a
// cookie signed with the previous key, to be signed again. It allocates
// nothing, unlike http.Request.Cookies.
func (s *cookieSigner) find(h http.Header, name string) (key string, resign, ok bool) {
	var old string
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var v string
			var match bool
			v, line, match = nextCookie(line, name)
			if !match {
				continue
			}
			if key, ok := s.verify(v); ok {
				return key, false, true
			}
			if s.prev != nil && old == "" && time.Now().Before(s.prevUntil) {
				old, _ = s.prev.verify(v)
			}
		}
	}
	return old, old != "", old != ""
}

// nextCookie takes the next "name=value" pair off a Cookie header line
// and returns its value if it has the given name.
func nextCookie(line, name string) (val, rest string, match bool) {
	part, rest, _ := strings.Cut(line, ";")
	part = strings.TrimLeft(part, " \t")
	if len(part) <= len(name) || part[len(name)] != '=' || part[:len(name)] != name {
		return "", rest, false
	}
	v := strings.TrimRight(part[len(name)+1:], " \t")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v, rest, true
}

// mac computes the truncated HMAC of key into out.
func (s *cookieSigner) mac(key string, out *[cookieMACLen]byte) {
	var buf [hmacInputMax]byte
	n := copy(buf[:], s.ipad[:])
	n += copy(buf[n:], key)
	inner := sha256.Sum256(buf[:n])
	n = copy(buf[:], s.opad[:])
	n += copy(buf[n:], inner[:])
	outer := sha256.Sum256(buf[:n])
	base64.RawURLEncoding.Encode(out[:], outer[:16])
}

// verify returns the key of a well-formed, correctly signed cookie value.
func (s *cookieSigner) verify(val string) (string, bool) {
	if len(val) != cookieValLen || val[cookieKeyLen] != '.' {
		return "", false
	}
	slot := &s.verified[s.slot(val)]
	if p := slot.Load(); p != nil && *p == val {
		return val[:cookieKeyLen], true
	}
	key := val[:cookieKeyLen]
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	var want [cookieMACLen]byte
	s.mac(key, &want)
	if subtle.ConstantTimeCompare(want[:], []byte(val[cookieKeyLen+1:])) != 1 {
		return "", false
	}
	owned := strings.Clone(val) // the header's memory is the request's
	slot.Store(&owned)
	return key, true
}

// slot picks a cache slot from the cookie's MAC. The MAC is HMAC output,
// so its characters are already uniform; a forged value only ever misses.
func (s *cookieSigner) slot(val string) uint32 {
	m := val[cookieKeyLen+1:]
	v := uint32(m[0]) | uint32(m[1])<<8 | uint32(m[2])<<16 | uint32(m[3])<<24
	return (v * 0x9e3779b1) >> (32 - 16) & (verifiedSlots - 1)
}

// issue makes a new random key and its signed cookie value.
func (s *cookieSigner) issue() (key, value string) {
	var raw [16]byte
	for i := 0; i < len(raw); i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8; j++ {
			raw[i+j] = byte(v >> (8 * j))
		}
	}
	var k [cookieKeyLen]byte
	hex.Encode(k[:], raw[:])
	value = s.sign(string(k[:]))
	return value[:cookieKeyLen], value
}

// sign returns the cookie value of a key: the key, ".", its MAC.
func (s *cookieSigner) sign(key string) string {
	var b [cookieValLen]byte
	copy(b[:cookieKeyLen], key)
	b[cookieKeyLen] = '.'
	var m [cookieMACLen]byte
	s.mac(key, &m)
	copy(b[cookieKeyLen+1:], m[:])
	return string(b[:])
}
