package restore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// sampleManifest is a manifest with every field and some awkward names.
func sampleManifest() *Manifest {
	return &Manifest{Version: ManifestVersion, Roots: []RootManifest{
		{Path: "/srv/app", Scanned: 1787934006000000000, Entries: []Entry{
			{Path: ".", Type: EntryDir, Mode: 0o755, MTime: 1},
			{Path: "a <&> \"q\" \\ é 日本 😀\t", Type: EntryFile, Mode: 0o4755, UID: 1<<32 - 1, GID: 7, MTime: -5, CTime: 9, Size: 12, Digest: dg, Ino: 1<<64 - 1, Link: 3,
				Xattrs: []Xattr{{Name: "security.capability", Value: "\x01\x00\x00\x02\xff"}, {Name: "user.\xfe", Value: ""}}},
			{Path: "l", Type: EntrySymlink, Mode: 0o777, MTime: 1<<63 - 1, Target: "../x\u2028y"},
			{Path: "caf\xe9", Type: EntryFile, Digest: dg, Changed: true},
			{Path: "\xff\xfe/\x80", Type: EntrySymlink, Target: "\xc3\x28"},
			{Path: "p", Type: EntryFIFO, Mode: 0o600, UID: 1000, GID: 1000},
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
	f.Add([]byte(`{"version":2,"roots":[{"path":"/a","scanned":5,"entries":[{"path_b64":"/w==","type":"symlink","target_b64":"gA==","uid":1,"gid":2,"ctime":3,"link":4,"changed":true,"xattrs":[{"name":"user.a","value":"AAE="},{"name_b64":"dXNlci7/","value":null}]}]}]}`))
	f.Add([]byte(`{"roots":[{"entries":[{"path":"a","path_b64":"YQ=="}]}]}`))
	f.Add([]byte(`{"roots":[{"entries":[{"xattrs":[{"value":"A\nA=="}]}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseManifest(b)
		if err != nil {
			return
		}
		var w wireManifest
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&w); err != nil {
			t.Fatalf("parseManifest accepted what encoding/json refuses (%v): %q", err, b)
		}
		if dec.More() {
			t.Fatalf("parseManifest accepted trailing data: %q", b)
		}
		want := fromWire(w)
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("parseManifest = %+v, encoding/json = %+v for %q", *got, want, b)
		}
	})
}

// fromWire is what encoding/json's decoding of a manifest means: the
// reference FuzzParseManifestMatchesJSON holds parseManifest to.
func fromWire(w wireManifest) Manifest {
	mf := Manifest{Version: w.Version}
	for _, wr := range w.Roots {
		r := RootManifest{Path: wr.Path, Absent: wr.Absent, Scanned: wr.Scanned}
		for _, we := range wr.Entries {
			e := Entry{
				Path: we.Path, Type: we.Type, Mode: we.Mode, UID: we.UID, GID: we.GID, MTime: we.MTime, CTime: we.CTime,
				Size: we.Size, Digest: we.Digest, Target: we.Target, Ino: we.Ino, Link: we.Link, Changed: we.Changed,
			}
			if we.PathB64 != nil {
				e.Path = string(we.PathB64)
			}
			if we.TargetB64 != nil {
				e.Target = string(we.TargetB64)
			}
			for _, wx := range we.Xattrs {
				x := Xattr{Name: wx.Name, Value: string(wx.Value)}
				if wx.NameB64 != nil {
					x.Name = string(wx.NameB64)
				}
				e.Xattrs = append(e.Xattrs, x)
			}
			r.Entries = append(r.Entries, e)
		}
		mf.Roots = append(mf.Roots, r)
	}
	return mf
}

// FuzzManifestRoundTrip: whatever bytes a name, link target or xattr
// holds, and whatever the numbers, encode then parse gives the manifest
// back exactly.
func FuzzManifestRoundTrip(f *testing.F) {
	f.Add("caf\xe9", "\xff", "user.\x80", "\x00\x01", uint32(0o4755), uint32(1000), int64(-1), uint64(7), true)
	f.Add("a", "b", "security.capability", "", uint32(0), uint32(0), int64(0), uint64(0), false)
	f.Add("\u2028\\\"<&>", "../x", "trusted.x", "\xff\xfe", uint32(0o7777), uint32(1<<32-1), int64(1<<63-1), uint64(1<<64-1), false)
	f.Fuzz(func(t *testing.T, name, target, xname, xvalue string, mode, id uint32, tm int64, n uint64, changed bool) {
		mf := &Manifest{Version: ManifestVersion, Roots: []RootManifest{{Path: "/srv/" + name, Scanned: tm, Entries: []Entry{
			{Path: ".", Type: EntryDir, Mode: mode, UID: id, GID: id, MTime: tm, CTime: tm, Xattrs: []Xattr{{Name: xname, Value: xvalue}}},
			{Path: name, Type: EntryFile, Mode: mode, MTime: tm, Size: tm, Digest: dg, Ino: n, Link: n, Changed: changed},
			{Path: name + "/" + target, Type: EntrySymlink, Target: target, Xattrs: []Xattr{{Name: xname}, {Name: xname + xname, Value: xvalue}}},
		}}}}
		if !utf8.ValidString(mf.Roots[0].Path) {
			mf.Roots[0].Path = "/srv/x" // roots come from the JSON config
		}
		b, _, err := mf.encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseManifest(b)
		if err != nil {
			t.Fatalf("parseManifest(encode(m)): %v\n%s", err, b)
		}
		if !reflect.DeepEqual(got, mf) {
			t.Fatalf("round trip:\n got %+v\nwant %+v\n%s", got, mf, b)
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
			var m wireManifest
			dec := json.NewDecoder(bytes.NewReader(enc))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
