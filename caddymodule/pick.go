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
)

// buckets is the resolution of the split: a weight w sends keys whose
// bucket is below w*buckets/100 to consolidated. With 10,000 buckets a
// weight of 1% is 100 buckets, so small weights are still smooth.
const buckets = 10000

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

// threshold converts a weight (percent) to a bucket bound.
func threshold(weight int) uint32 { return uint32(weight) * (buckets / 100) }

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
type cookieSigner struct {
	ipad, opad [hmacBlock]byte
	verified   [verifiedSlots]atomic.Pointer[string]
}

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
	return s
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
	var b [cookieValLen]byte
	hex.Encode(b[:cookieKeyLen], raw[:])
	b[cookieKeyLen] = '.'
	var m [cookieMACLen]byte
	s.mac(string(b[:cookieKeyLen]), &m)
	copy(b[cookieKeyLen+1:], m[:])
	value = string(b[:])
	return value[:cookieKeyLen], value
}

// findCookie returns the value of the named cookie in the request's Cookie
// headers without parsing the others. It allocates nothing, unlike
// http.Request.Cookie, because it runs on every request.
func findCookie(h http.Header, name string) (string, bool) {
	for _, line := range h["Cookie"] {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = strings.TrimLeft(part, " \t")
			if len(part) > len(name) && part[len(name)] == '=' && part[:len(name)] == name {
				v := strings.TrimRight(part[len(name)+1:], " \t")
				if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				return v, true
			}
		}
	}
	return "", false
}
