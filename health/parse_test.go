package health

import (
	"strings"
	"testing"
)

func TestParsePercent(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    float64
		wantErr string
	}{
		{"five", "5%", 0.05, ""},
		{"half", "0.5%", 0.005, ""},
		{"zero", "0%", 0, ""},
		{"hundred", "100%", 1, ""},
		{"spaces", " 12.5% ", 0.125, ""},
		{"leading dot", ".5%", 0.005, ""},
		{"over", "150%", 0, "must be between 0% and 100%"},
		{"negative", "-1%", 0, "must be between 0% and 100%"},
		{"no sign", "5", 0, "must end with %"},
		{"empty", "", 0, "must end with %"},
		{"only sign", "%", 0, "must be a decimal number"},
		{"exponent", "1e1%", 0, "must be a decimal number"},
		{"hex", "0x1p-2%", 0, "must be a decimal number"},
		{"plus", "+5%", 0, "must be a decimal number"},
		{"nan", "NaN%", 0, "must be a decimal number"},
		{"two dots", "1.2.3%", 0, "must be a decimal number"},
		{"space inside", "5 %", 0, "must be a decimal number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePercent(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePercent(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePercent(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseQuantile(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    float64
		wantErr string
	}{
		{"p99", "p99", 0.99, ""},
		{"p99.9", "p99.9", 0.999, ""},
		{"p50", "p50", 0.5, ""},
		{"p99.99", "p99.99", 0.9999, ""},
		{"p0.1", "p0.1", 0.001, ""},
		{"p0", "p0", 0, "must be between p0 and p100, exclusive"},
		{"p100", "p100", 0, "must be between p0 and p100, exclusive"},
		{"p101", "p101", 0, "must be between p0 and p100, exclusive"},
		{"rounds to one", "p99.99999999999999999999", 0, "must be between p0 and p100, exclusive"},
		{"no p", "99", 0, "like p99 or p99.9"},
		{"fraction", "0.99", 0, "like p99 or p99.9"},
		{"negative", "p-1", 0, "like p99 or p99.9"},
		{"empty", "", 0, "like p99 or p99.9"},
		{"only p", "p", 0, "like p99 or p99.9"},
		{"upper case", "P99", 0, "like p99 or p99.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQuantile(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseQuantile(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseQuantile(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParsePercent(f *testing.F) {
	for _, s := range []string{"5%", "0.5%", "100%", "150%", "-1%", "5", "", "%", ".%", "1e1%", "100.0000000000000001%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParsePercent(s)
		if err != nil {
			if v != 0 {
				t.Errorf("ParsePercent(%q) returned %v with error %v", s, v, err)
			}
			return
		}
		if !(v >= 0 && v <= 1) {
			t.Errorf("ParsePercent(%q) = %v, outside [0,1]", s, v)
		}
	})
}

func FuzzParseQuantile(f *testing.F) {
	for _, s := range []string{"p99", "p99.9", "p50", "p0", "p100", "p101", "99", "", "p", "p.", "p0.0000000000000000000000000000000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuantile(s)
		if err != nil {
			if q != 0 {
				t.Errorf("ParseQuantile(%q) returned %v with error %v", s, q, err)
			}
			return
		}
		if !(q > 0 && q < 1) {
			t.Errorf("ParseQuantile(%q) = %v, outside (0,1)", s, q)
		}
		if err := (Rules{LatencyQuantile: q, LatencyLimit: 1, Window: 1}).Validate(); err != nil {
			t.Errorf("ParseQuantile(%q) = %v, which Validate rejects: %v", s, q, err)
		}
	})
}
