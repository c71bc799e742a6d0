package restore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// sampleManifest is a manifest with every field and some awkward names.
func sampleManifest() *Manifest {
	return &Manifest{Version: ManifestVersion, Roots: []RootManifest{
		{Path: "/srv/app", Entries: []Entry{
			{Path: ".", Type: EntryDir, Mode: 0o755, MTime: 1},
			{Path: "a <&> \"q\" \\ é 日本 😀\t", Type: EntryFile, Mode: 0o4755, MTime: -5, Size: 12, Digest: dg, Ino: 1<<64 - 1},
			{Path: "l", Type: EntrySymlink, Mode: 0o777, MTime: 1<<63 - 1, Target: "../x\u2028y"},
		}},
		{Path: "/srv/gone", Absent: true},
	}}
}

func TestParseManifest(t *testing.T) {
	enc, _, err := sampleManifest().encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseManifest(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sampleManifest()) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, sampleManifest())
	}
	tests := []struct {
		name, in, wantErr string
	}{
		{"pretty", "{\n  \"version\" : 1 ,\r\n\t\"roots\":[ ] }\n", ""},
		{"null roots", `{"version":1,"roots":null}`, ""},
		{"escaped key", `{"vers\u0069on":1}`, ""},
		{"empty", ``, "offset 0: unexpected end"},
		{"not object", `[]`, `offset 0: found '[', want '{'`},
		{"trailing", `{"version":1} x`, "offset 14: trailing data"},
		{"unknown", `{"version":1,"colour":2}`, `unknown field "colour"`},
		{"case", `{"Version":1}`, `unknown field "Version"`},
		{"repeated", `{"version":1,"version":1}`, `offset 13: field "version" repeated`},
		{"float", `{"version":1.0}`, "want an integer"},
		{"exponent", `{"version":1e0}`, "want an integer"},
		{"leading zero", `{"version":01}`, "leading zero"},
		{"string number", `{"version":"1"}`, "want a number"},
		{"mode range", `{"roots":[{"entries":[{"mode":4294967296}]}]}`, "out of range"},
		{"negative ino", `{"roots":[{"entries":[{"ino":-1}]}]}`, "out of range"},
		{"mtime range", `{"roots":[{"entries":[{"mtime":9223372036854775808}]}]}`, "out of range"},
		{"bad bool", `{"roots":[{"absent":1}]}`, "want true or false"},
		{"unterminated", `{"roots":[{"path":"/a`, "unterminated string"},
		{"control", "{\"roots\":[{\"path\":\"/a\x01\"}]}", "control character"},
		{"bad escape", `{"roots":[{"path":"\x"}]}`, `invalid escape \x`},
		{"lone surrogate", `{"roots":[{"path":"\ud800"}]}`, "surrogate"},
		{"invalid utf8", "{\"roots\":[{\"path\":\"\xff\"}]}", "invalid UTF-8"},
		{"missing comma", `{"version":1 "roots":[]}`, `want ',' or '}' after field "version"`},
		{"array end", `{"roots":[{} {}]}`, `want ',' or ']'`},
		{"no key", `{1:2}`, "want a field name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseManifest([]byte(tt.in))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzParseManifestMatchesJSON holds parseManifest to encoding/json: what
// it accepts, encoding/json (with unknown fields refused) decodes to the
// same value.
func FuzzParseManifestMatchesJSON(f *testing.F) {
	enc, _, _ := sampleManifest().encode()
	f.Add(enc)
	f.Add([]byte(`{"version":1,"roots":[{"path":"/a","absent":true,"entries":null}]}`))
	f.Add([]byte(`{"version":-0,"roots":[{"entries":[{"path":"\ud83d\ude00\/","mode":0}]}]} `))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseManifest(b)
		if err != nil {
			return
		}
		var want Manifest
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("parseManifest accepted what encoding/json refuses (%v): %q", err, b)
		}
		if dec.More() {
			t.Fatalf("parseManifest accepted trailing data: %q", b)
		}
		// An empty array decodes to an empty slice there and to nil
		// here; nothing tells the two apart but reflect.
		if len(want.Roots) == 0 {
			want.Roots = nil
		}
		for i := range want.Roots {
			if len(want.Roots[i].Entries) == 0 {
				want.Roots[i].Entries = nil
			}
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("parseManifest = %+v, encoding/json = %+v for %q", *got, want, b)
		}
	})
}

// BenchmarkDecodeManifest decodes an 11k-entry manifest, the size of a
// point of GOROOT/src, with parseManifest and with encoding/json.
func BenchmarkDecodeManifest(b *testing.B) {
	mf := &Manifest{Version: ManifestVersion, Roots: []RootManifest{{Path: "/srv/app", Entries: []Entry{{Path: ".", Type: EntryDir, Mode: 0o755, MTime: 1}, {Path: "pkg", Type: EntryDir, Mode: 0o755, MTime: 1}}}}}
	for i := range 11000 {
		mf.Roots[0].Entries = append(mf.Roots[0].Entries, Entry{Path: fmt.Sprintf("pkg/file_%05d.go", i), Type: EntryFile, Mode: 0o644, MTime: 1787934006000000000 + int64(i), Size: int64(i * 37), Digest: dg, Ino: uint64(9995507 + i)})
	}
	enc, _, err := mf.encode()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("parseManifest", func(b *testing.B) {
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := parseManifest(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decodeManifest", func(b *testing.B) { // parse and check every path
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			if _, err := decodeManifest(enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(enc)))
		for b.Loop() {
			var m Manifest
			dec := json.NewDecoder(bytes.NewReader(enc))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
