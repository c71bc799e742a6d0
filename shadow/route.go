package shadow

import "strings"

// Route limits.
const (
	// DefaultMaxRoutes bounds the routes kept; the rest are "other".
	DefaultMaxRoutes = 500
	// OtherRoute gathers the requests of routes beyond the bound.
	OtherRoute = "other"
	// maxRouteLen bounds a route's text.
	maxRouteLen = 200
)

// Route names a request's route: its method and its path, without the
// query, with each segment that is a number, a UUID or a long hex string
// (16 digits or more) written ":id". GET /items/42?x=1 is GET /items/:id.
func Route(method, path string) string {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	var b strings.Builder
	b.Grow(len(method) + 1 + len(path))
	b.WriteString(method)
	b.WriteByte(' ')
	if path == "" {
		path = "/"
	}
	first := true
	for seg := range strings.SplitSeq(path, "/") {
		if !first {
			b.WriteByte('/')
		}
		first = false
		if isID(seg) {
			b.WriteString(":id")
		} else {
			b.WriteString(seg)
		}
		if b.Len() > maxRouteLen {
			return b.String()[:maxRouteLen] + "..."
		}
	}
	return b.String()
}

// isID says whether a path segment is an identifier: all digits, a UUID,
// or 16 hex digits or more.
func isID(s string) bool {
	if s == "" {
		return false
	}
	digits, hex := true, true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			digits = false
		}
		if !isHex(c) {
			hex = false
		}
	}
	return digits || (hex && len(s) >= 16) || isUUID(s)
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// isUUID matches 8-4-4-4-12 hex digits.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}
