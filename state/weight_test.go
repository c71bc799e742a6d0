package state

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseWeight(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Weight
		err  string
	}{
		{"0", 0, ""},
		{"25", 2500, ""},
		{"25%", 2500, ""},
		{"0.5", 50, ""},
		{"0.5%", 50, ""},
		{"0.01%", 1, ""},
		{"12.25", 1225, ""},
		{"12.250", 1225, ""},
		{"100", 10000, ""},
		{"100.00%", 10000, ""},
		{"007", 700, ""},
		{"0.125", 0, "more than 2 decimals"},
		{"100.01", 0, "between 0 and 100"},
		{"101", 0, "between 0 and 100"},
		{"1000000", 0, "between 0 and 100"},
		{"-1", 0, "between 0 and 100"},
		{"", 0, "number of percent"},
		{"%", 0, "number of percent"},
		{".5", 0, "number of percent"},
		{"5.", 0, "number of percent"},
		{"1e1", 0, "number of percent"},
		{"abc", 0, "number of percent"},
		{" 5", 0, "number of percent"},
		{"5%%", 0, "number of percent"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWeight(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseWeight(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseWeight(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

// TestWeightJSON checks the JSON form: a percent number, old integer
// records read unchanged, and bad numbers refused.
func TestWeightJSON(t *testing.T) {
	for _, tc := range []struct {
		w    Weight
		json string
	}{{0, "0"}, {2500, "25"}, {1250, "12.5"}, {1, "0.01"}, {10, "0.1"}, {1005, "10.05"}, {10000, "100"}} {
		b, err := json.Marshal(tc.w)
		if err != nil || string(b) != tc.json {
			t.Errorf("Marshal(%d) = %s, %v; want %s", tc.w, b, err, tc.json)
		}
		var back Weight
		if err := json.Unmarshal(b, &back); err != nil || back != tc.w {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", b, back, err, tc.w)
		}
	}
	var sw Switch
	if err := json.Unmarshal([]byte(`{"mode":"split","weight":25,"config_weight":10,"recover_weight":3}`), &sw); err != nil ||
		sw.Weight != 2500 || sw.ConfigWeight != 1000 || sw.RecoverWeight != 300 {
		t.Fatalf("old integer record read as %+v, %v", sw, err)
	}
	var w Weight
	if err := json.Unmarshal([]byte(`2.5e-1`), &w); err != nil || w != 25 {
		t.Fatalf("exponent form read as %d, %v", w, err)
	}
	for _, bad := range []string{`12.345`, `101`, `-1`, `"12"`, `1e-9`, `true`} {
		if err := json.Unmarshal([]byte(bad), &w); err == nil {
			t.Errorf("Unmarshal(%s) accepted %d", bad, w)
		}
	}
}

// FuzzParseWeight checks that any accepted weight is in range and that its
// String parses back to it, through the text form and through JSON.
func FuzzParseWeight(f *testing.F) {
	for _, s := range []string{"0", "25", "0.5%", "12.25", "100", "100.01", "0.125", "-1", "1e1", "abc", "99.99%", "00000000000000000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWeight(s)
		if err != nil {
			return
		}
		if w.Check() != nil {
			t.Fatalf("ParseWeight(%q) = %d, out of range", s, w)
		}
		back, err := ParseWeight(w.String())
		if err != nil || back != w {
			t.Fatalf("ParseWeight(%q) = %d, but its String %q parses to %d, %v", s, w, w.String(), back, err)
		}
		b, _ := json.Marshal(w)
		var j Weight
		if err := json.Unmarshal(b, &j); err != nil || j != w {
			t.Fatalf("JSON %s of %d reads back as %d, %v", b, w, j, err)
		}
	})
}
