package shadow

import (
	"fmt"
	"strings"
)

// pattern is a compiled JSON Pointer (RFC 6901) whose segment "*" matches
// any one segment: an object key or an array index.
type pattern []string

// parsePattern compiles a pointer such as /items/*/etag. The empty
// pointer, the whole document, is refused: ignoring or redacting the whole
// body is what ignoring the comparison altogether would be.
func parsePattern(s string) (pattern, error) {
	if s == "" || s[0] != '/' {
		return nil, fmt.Errorf("JSON pointer %q must start with /", s)
	}
	if s == "/" {
		return nil, fmt.Errorf("JSON pointer %q names the empty key; to leave the whole body out, compare another route", s)
	}
	segs := strings.Split(s[1:], "/")
	for i, seg := range segs {
		u, err := unescapeSegment(seg)
		if err != nil {
			return nil, fmt.Errorf("JSON pointer %q: %w", s, err)
		}
		segs[i] = u
	}
	return pattern(segs), nil
}

// unescapeSegment undoes RFC 6901's escapes: ~1 is /, ~0 is ~; any other
// ~ is an error.
func unescapeSegment(s string) (string, error) {
	if !strings.Contains(s, "~") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '~' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) || (s[i+1] != '0' && s[i+1] != '1') {
			return "", fmt.Errorf("'~' must be followed by 0 or 1 (~0 is ~, ~1 is /)")
		}
		if s[i+1] == '0' {
			b.WriteByte('~')
		} else {
			b.WriteByte('/')
		}
		i++
	}
	return b.String(), nil
}

// escapeSegment applies RFC 6901's escapes.
func escapeSegment(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

// matches says whether the pattern names exactly the node at path.
func (p pattern) matches(path []string) bool {
	if len(p) != len(path) {
		return false
	}
	for i, seg := range p {
		if seg != "*" && seg != path[i] {
			return false
		}
	}
	return true
}

// patterns is a set of compiled pointers.
type patterns []pattern

func compilePatterns(what string, list []string) (patterns, error) {
	var out patterns
	for _, s := range list {
		p, err := parsePattern(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// match says whether any pattern names the node at path.
func (ps patterns) match(path []string) bool {
	for _, p := range ps {
		if p.matches(path) {
			return true
		}
	}
	return false
}

// pointer renders a path as a JSON Pointer.
func pointer(path []string) string {
	var b strings.Builder
	for _, seg := range path {
		b.WriteByte('/')
		b.WriteString(escapeSegment(seg))
	}
	return b.String()
}
