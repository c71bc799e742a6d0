package restore

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// parseManifest decodes a manifest's JSON. It reads what encode writes
// and what encoding/json would decode into a Manifest, with unknown
// fields refused, but is stricter in three ways: keys match exactly (not
// case-insensitively), a key may appear once, and strings must be valid
// UTF-8 without lone surrogates. Whatever it accepts, encoding/json
// decodes to the same value; FuzzParseManifestMatchesJSON holds it to
// that.
//
// It exists for speed: encoding/json took 40 ms of a 180 ms verify of an
// 11k-file point, and every verify, restore and create reads a manifest.
// Errors give the byte offset.
func parseManifest(b []byte) (*Manifest, error) {
	// One copy of the input: the strings of the manifest are slices of
	// it, which saves an allocation for each.
	p := manifestParser{s: string(b)}
	// Every entry has a path, and so does every root: sizing a root's
	// entries from the count saves growing them (and the garbage).
	p.paths = strings.Count(p.s, `"path":`)
	var mf Manifest
	err := p.object(func(key string) (err error) {
		switch key {
		case "version":
			var n int64
			n, err = p.int(strconv.IntSize)
			mf.Version = int(n)
		case "roots":
			err = p.array(func() error {
				mf.Roots = append(mf.Roots, RootManifest{})
				return p.root(&mf.Roots[len(mf.Roots)-1])
			})
		}
		return err
	}, "version", "roots")
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.s) {
		return nil, p.errorf("trailing data")
	}
	return &mf, nil
}

type manifestParser struct {
	s     string
	i     int
	paths int // "path" keys not yet parsed, at most
}

func (p *manifestParser) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *manifestParser) root(r *RootManifest) error {
	return p.object(func(key string) (err error) {
		switch key {
		case "path":
			r.Path, err = p.string()
			p.paths--
		case "absent":
			r.Absent, err = p.bool()
		case "scanned":
			r.Scanned, err = p.int(64)
		case "entries":
			err = p.array(func() error {
				if r.Entries == nil {
					r.Entries = make([]Entry, 0, max(p.paths, 1))
				}
				r.Entries = append(r.Entries, Entry{})
				return p.entry(&r.Entries[len(r.Entries)-1])
			})
		}
		return err
	}, "path", "absent", "scanned", "entries")
}

var entryFields = []string{"path", "path_b64", "type", "mode", "uid", "gid", "mtime", "ctime", "size", "digest", "target", "target_b64", "ino", "link", "xattrs", "changed"}

// Bits of entryFields in a seen mask.
const (
	seenPath, seenPathB64     = 1 << 0, 1 << 1
	seenTarget, seenTargetB64 = 1 << 10, 1 << 11
)

// entry is the hot loop (a point of a source tree has 11k entries), so it
// iterates over the fields itself rather than through object's callback.
func (p *manifestParser) entry(e *Entry) error {
	at := p.i
	more, err := p.open('{', '}')
	var seen uint32
	for more && err == nil {
		var key string
		if key, err = p.key(&seen, entryFields); err != nil {
			return err
		}
		var u uint64
		switch key {
		case "path":
			e.Path, err = p.string()
			p.paths--
		case "path_b64":
			var b []byte
			if b, err = p.base64(); b != nil {
				e.Path = string(b)
			}
		case "type":
			e.Type, err = p.string()
		case "mode":
			u, err = p.uint(32)
			e.Mode = uint32(u)
		case "uid":
			u, err = p.uint(32)
			e.UID = uint32(u)
		case "gid":
			u, err = p.uint(32)
			e.GID = uint32(u)
		case "mtime":
			e.MTime, err = p.int(64)
		case "ctime":
			e.CTime, err = p.int(64)
		case "size":
			e.Size, err = p.int(64)
		case "digest":
			e.Digest, err = p.string()
		case "target":
			e.Target, err = p.string()
		case "target_b64":
			var b []byte
			if b, err = p.base64(); b != nil {
				e.Target = string(b)
			}
		case "ino":
			e.Ino, err = p.uint(64)
		case "link":
			e.Link, err = p.uint(64)
		case "xattrs":
			err = p.array(func() error {
				e.Xattrs = append(e.Xattrs, Xattr{})
				return p.xattr(&e.Xattrs[len(e.Xattrs)-1])
			})
		case "changed":
			e.Changed, err = p.bool()
		}
		if err == nil {
			more, err = p.next('}', key)
		}
	}
	if err == nil && (seen&(seenPath|seenPathB64) == seenPath|seenPathB64 || seen&(seenTarget|seenTargetB64) == seenTarget|seenTargetB64) {
		p.i = at
		return p.errorf("entry has both a name and its base64 form")
	}
	return err
}

// xattr parses {"name": ..., "value": base64}.
func (p *manifestParser) xattr(x *Xattr) error {
	at := p.i
	var both int
	err := p.object(func(key string) (err error) {
		var b []byte
		switch key {
		case "name":
			x.Name, err = p.string()
			both++
		case "name_b64":
			if b, err = p.base64(); b != nil {
				x.Name = string(b)
			}
			both++
		case "value":
			b, err = p.base64()
			x.Value = string(b)
		}
		return err
	}, "name", "name_b64", "value")
	if err == nil && both > 1 {
		p.i = at
		return p.errorf("xattr has both a name and its base64 form")
	}
	return err
}

// base64 parses a JSON string holding standard base64, as encoding/json
// decodes a []byte: nil for null, else the decoded bytes.
func (p *manifestParser) base64() ([]byte, error) {
	if p.null() {
		return nil, nil
	}
	at := p.i
	s, err := p.string()
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		p.i = at
		return nil, p.errorf("invalid base64: %v", err)
	}
	return b, nil
}

// object parses {"key": value, ...}, calling field to parse each value.
// Every key must be one of known, and appear once.
func (p *manifestParser) object(field func(key string) error, known ...string) error {
	more, err := p.open('{', '}')
	var seen uint32
	for more && err == nil {
		var key string
		if key, err = p.key(&seen, known); err != nil {
			return err
		}
		if err = field(key); err == nil {
			more, err = p.next('}', key)
		}
	}
	return err
}

// array parses [elem, ...], calling elem for each element.
func (p *manifestParser) array(elem func() error) error {
	more, err := p.open('[', ']')
	for more && err == nil {
		if err = elem(); err == nil {
			more, err = p.next(']', "")
		}
	}
	return err
}

// open consumes the start of an object or array and reports whether an
// element follows. A null stands for an empty one: like encoding/json, it
// leaves the value as it is.
func (p *manifestParser) open(start, end byte) (bool, error) {
	if p.null() {
		return false, nil
	}
	if err := p.expect(start); err != nil {
		return false, err
	}
	if p.peek() == end {
		p.i++
		return false, nil
	}
	return true, nil
}

// next consumes what follows an element (a field's value when key is
// set) and reports whether another follows.
func (p *manifestParser) next(end byte, key string) (bool, error) {
	switch p.peek() {
	case ',':
		p.i++
		return true, nil
	case end:
		p.i++
		return false, nil
	}
	if key != "" {
		return false, p.errorf("want ',' or '%c' after field %q", end, key)
	}
	return false, p.errorf("want ',' or '%c'", end)
}

// key reads a field name and its colon. The name must be one of known,
// and not one already in seen (a bit for each of known).
func (p *manifestParser) key(seen *uint32, known []string) (string, error) {
	if p.peek() != '"' {
		return "", p.errorf("want a field name")
	}
	at := p.i
	key, err := p.string()
	if err != nil {
		return "", err
	}
	for k, name := range known {
		if key != name {
			continue
		}
		if *seen&(1<<k) != 0 {
			p.i = at
			return "", p.errorf("field %q repeated", key)
		}
		*seen |= 1 << k
		return key, p.expect(':')
	}
	p.i = at
	return "", p.errorf("unknown field %q", key)
}

func (p *manifestParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// expect consumes c after optional white space.
func (p *manifestParser) expect(c byte) error {
	p.space()
	if p.i >= len(p.s) {
		return p.errorf("unexpected end, want %q", c)
	}
	if p.s[p.i] != c {
		return p.errorf("found %q, want %q", p.s[p.i], c)
	}
	p.i++
	return nil
}

// peek returns the next byte after white space, or 0 at the end.
func (p *manifestParser) peek() byte {
	p.space()
	if p.i >= len(p.s) {
		return 0
	}
	return p.s[p.i]
}

// null consumes a JSON null if one is next. Like encoding/json, a null
// leaves the field as it is.
func (p *manifestParser) null() bool {
	if p.peek() == 'n' && len(p.s)-p.i >= 4 && p.s[p.i:p.i+4] == "null" {
		p.i += 4
		return true
	}
	return false
}

func (p *manifestParser) bool() (bool, error) {
	if p.null() {
		return false, nil
	}
	rest := p.s[p.i:]
	switch {
	case len(rest) >= 4 && rest[:4] == "true":
		p.i += 4
		return true, nil
	case len(rest) >= 5 && rest[:5] == "false":
		p.i += 5
		return false, nil
	}
	return false, p.errorf("want true or false")
}

// integer returns the digits of a JSON integer (optionally negative).
// A fraction or exponent is refused: every number in a manifest is an
// integer.
func (p *manifestParser) integer() (string, error) {
	start := p.i
	if p.i < len(p.s) && p.s[p.i] == '-' {
		p.i++
	}
	digits := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	switch {
	case p.i == digits:
		p.i = start
		return "", p.errorf("want a number")
	case p.s[digits] == '0' && p.i-digits > 1:
		p.i = start
		return "", p.errorf("number with a leading zero")
	case p.i < len(p.s) && (p.s[p.i] == '.' || p.s[p.i] == 'e' || p.s[p.i] == 'E'):
		p.i = start
		return "", p.errorf("want an integer")
	}
	return p.s[start:p.i], nil
}

func (p *manifestParser) int(bits int) (int64, error) {
	return number(p, func(s string) (int64, error) { return strconv.ParseInt(s, 10, bits) })
}

func (p *manifestParser) uint(bits int) (uint64, error) {
	return number(p, func(s string) (uint64, error) { return strconv.ParseUint(s, 10, bits) })
}

// number parses an integer with parse, which range-checks it.
func number[T int64 | uint64](p *manifestParser, parse func(string) (T, error)) (T, error) {
	if p.null() {
		return 0, nil
	}
	start := p.i
	s, err := p.integer()
	if err != nil {
		return 0, err
	}
	n, err := parse(s)
	if err != nil {
		p.i = start
		return 0, p.errorf("number %s out of range", s)
	}
	return n, nil
}

// string parses a JSON string. Most manifest strings are plain ASCII
// and are sliced out directly.
func (p *manifestParser) string() (string, error) {
	if p.null() {
		return "", nil
	}
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return "", p.errorf("want a string")
	}
	p.i++
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			s := p.s[start:p.i]
			p.i++
			return s, nil
		case c == '\\' || c >= utf8.RuneSelf:
			return p.slowString(start)
		case c < 0x20:
			return "", p.errorf("control character in string")
		}
		p.i++
	}
	return "", p.errorf("unterminated string")
}

// slowString finishes a string with escapes or non-ASCII text, which
// began at start.
func (p *manifestParser) slowString(start int) (string, error) {
	buf := []byte(p.s[start:p.i])
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(buf), nil
		case c < 0x20:
			return "", p.errorf("control character in string")
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRuneInString(p.s[p.i:])
			if r == utf8.RuneError && size == 1 {
				return "", p.errorf("invalid UTF-8 in string")
			}
			buf = append(buf, p.s[p.i:p.i+size]...)
			p.i += size
		case c != '\\':
			buf = append(buf, c)
			p.i++
		default:
			if p.i+1 >= len(p.s) {
				return "", p.errorf("unterminated string")
			}
			esc := p.s[p.i+1]
			p.i += 2
			switch esc {
			case '"', '\\', '/':
				buf = append(buf, esc)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				r, err := p.hex4()
				if err != nil {
					return "", err
				}
				if utf16.IsSurrogate(r) {
					// Only a high surrogate followed by an escaped low one
					// makes a rune.
					var r2 rune = -1
					if p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
						p.i += 2
						if r2, err = p.hex4(); err != nil {
							return "", err
						}
					}
					if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
						return "", p.errorf("invalid surrogate pair in string")
					}
				}
				buf = utf8.AppendRune(buf, r)
			default:
				p.i -= 2
				return "", p.errorf("invalid escape \\%c in string", esc)
			}
		}
	}
	return "", p.errorf("unterminated string")
}

func (p *manifestParser) hex4() (rune, error) {
	if len(p.s)-p.i < 4 {
		return 0, p.errorf("short \\u escape")
	}
	var r rune
	for _, c := range []byte(p.s[p.i : p.i+4]) {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, p.errorf("invalid \\u escape")
		}
		r = r<<4 | rune(c)
	}
	p.i += 4
	return r, nil
}
