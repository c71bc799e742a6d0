package health

import (
	"fmt"
	"strconv"
	"strings"
)

// ParsePercent parses a percentage such as "5%" or "0.5%" into a fraction
// (0.05, 0.005). It accepts decimal numbers from 0% to 100% with a
// trailing percent sign; "150%", "-1%", "5" and "1e1%" are errors. Note
// that 0 turns a trip rule off.
func ParsePercent(s string) (float64, error) {
	num, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
	if !ok {
		return 0, fmt.Errorf("invalid percentage %q: must end with %%, like 5%%", s)
	}
	neg := strings.HasPrefix(num, "-")
	if !isDecimal(strings.TrimPrefix(num, "-")) {
		return 0, fmt.Errorf("invalid percentage %q: must be a decimal number followed by %%, like 5%% or 0.5%%", s)
	}
	f, err := strconv.ParseFloat(num+"e-2", 64)
	if err != nil || neg || f < 0 || f > 1 {
		return 0, fmt.Errorf("invalid percentage %q: must be between 0%% and 100%%", s)
	}
	return f, nil
}

// ParseQuantile parses a quantile written as a percentile, such as "p99",
// "p99.9" or "p50", into a fraction (0.99, 0.999, 0.5). The percentile
// must lie strictly between 0 and 100: "p0", "p100" and "p101" are errors,
// as is "99" without the p.
func ParseQuantile(s string) (float64, error) {
	num, ok := strings.CutPrefix(strings.TrimSpace(s), "p")
	if !ok || !isDecimal(num) {
		return 0, fmt.Errorf("invalid quantile %q: must be p followed by a number, like p99 or p99.9", s)
	}
	q, err := strconv.ParseFloat(num+"e-2", 64)
	if err != nil || q <= 0 || q >= 1 {
		return 0, fmt.Errorf("invalid quantile %q: must be between p0 and p100, exclusive", s)
	}
	return q, nil
}

// isDecimal reports whether s is digits with at most one decimal point and
// at least one digit: "5", "0.5", "5.", ".5".
func isDecimal(s string) bool {
	digits, dots := 0, 0
	for _, c := range []byte(s) {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}
