package state

import (
	"fmt"
	"strconv"
	"strings"
)

// Weight is the share of sticky keys a split switch sends to
// consolidated, in hundredths of a percent: 0 is none, 50 is 0.5%, 10000
// is all. Its JSON is the percent as a number (12.5 for 1250), so a
// record written when weights were whole percents (25) reads unchanged.
// The zero Weight is 0%.
type Weight int32

// The bounds of a Weight.
const (
	WeightMin Weight = 0
	WeightMax Weight = 10000 // 100%
)

// Percent returns the weight in percent (12.5 for 1250).
func (w Weight) Percent() float64 { return float64(w) / 100 }

// String formats the weight as a percent number without the sign: "25",
// "12.5", "0.01".
func (w Weight) String() string {
	s := strconv.Itoa(int(w / 100))
	if w < 0 {
		s = "-" + strconv.Itoa(int(-w/100))
	}
	frac := int(w % 100)
	if frac < 0 {
		frac = -frac
	}
	if frac == 0 {
		return s
	}
	if frac%10 == 0 {
		return s + "." + strconv.Itoa(frac/10)
	}
	return fmt.Sprintf("%s.%02d", s, frac)
}

// Check reports whether w is between 0% and 100%.
func (w Weight) Check() error {
	if w < WeightMin || w > WeightMax {
		return fmt.Errorf("invalid weight %s: must be between 0 and 100 (percent)", w)
	}
	return nil
}

// CheckWeight reports whether w is a valid weight.
func CheckWeight(w Weight) error { return w.Check() }

// WeightPercent returns the weight of a whole percent, as a literal
// weight in code reads: WeightPercent(25) is 25%.
func WeightPercent(p int) Weight { return Weight(p * 100) }

// ParseWeight reads a weight written as a percent, with or without the
// sign and with at most two decimals: "25", "0.5", "0.5%", "12.25%".
// Anything else (an exponent, a third decimal that is not 0, a sign,
// more than 100) is an error saying so.
func ParseWeight(s string) (Weight, error) {
	num, _ := strings.CutSuffix(s, "%")
	w, err := parseHundredths(num)
	if err != nil {
		return 0, fmt.Errorf("invalid weight %q: %v", s, err)
	}
	return w, nil
}

// parseHundredths parses a plain decimal number of percent ("12", "0.25")
// into hundredths of a percent.
func parseHundredths(num string) (Weight, error) {
	if strings.HasPrefix(num, "-") {
		return 0, fmt.Errorf("must be between 0 and 100 (percent)")
	}
	whole, frac, dot := strings.Cut(num, ".")
	if whole == "" || (dot && frac == "") {
		return 0, fmt.Errorf("must be a number of percent from 0 to 100, like 25 or 0.5")
	}
	for _, part := range []string{whole, frac} {
		for i := 0; i < len(part); i++ {
			if part[i] < '0' || part[i] > '9' {
				return 0, fmt.Errorf("must be a number of percent from 0 to 100, like 25 or 0.5")
			}
		}
	}
	frac = strings.TrimRight(frac, "0")
	if len(frac) > 2 {
		return 0, fmt.Errorf("has more than 2 decimals: the resolution is 0.01%%")
	}
	whole = strings.TrimLeft(whole, "0")
	if len(whole) > 3 {
		return 0, fmt.Errorf("must be between 0 and 100 (percent)")
	}
	n := 0
	for i := 0; i < len(whole); i++ {
		n = n*10 + int(whole[i]-'0')
	}
	f := 0
	for i := 0; i < 2; i++ {
		f *= 10
		if i < len(frac) {
			f += int(frac[i] - '0')
		}
	}
	w := Weight(n*100 + f)
	if w > WeightMax {
		return 0, fmt.Errorf("must be between 0 and 100 (percent)")
	}
	return w, nil
}

// MarshalJSON writes the weight as a percent number.
func (w Weight) MarshalJSON() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalJSON reads a percent number (12.5), as written by MarshalJSON
// or by a client, with at most two decimals. A number in exponent form is
// read too (a client's float formatting may choose it), if it is a whole
// number of hundredths.
func (w *Weight) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		return nil // as for any JSON value of Go: null leaves it be
	}
	if strings.ContainsAny(s, "eE") {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("invalid weight %s: must be a number of percent from 0 to 100", s)
		}
		s = strconv.FormatFloat(f, 'f', -1, 64)
	}
	v, err := parseHundredths(s)
	if err != nil {
		return fmt.Errorf("invalid weight %s: %v", b, err)
	}
	*w = v
	return nil
}
