package state

import (
	"encoding/json"
	"testing"
	"time"
)

func TestSupersedes(t *testing.T) {
	t0 := time.Unix(100, 0)
	for _, tc := range []struct {
		name string
		a, b Switch
		want bool
	}{
		{"newer wins", Switch{Mode: ModeSplit, Since: t0.Add(time.Second)}, Switch{Mode: ModeLegacy, Since: t0}, true},
		{"older loses", Switch{Mode: ModeLegacy, Since: t0}, Switch{Mode: ModeSplit, Since: t0.Add(time.Second)}, false},
		{"tie: legacy wins", Switch{Mode: ModeLegacy, Since: t0}, Switch{Mode: ModeSplit, Since: t0}, true},
		{"tie: split loses to legacy", Switch{Mode: ModeSplit, Since: t0}, Switch{Mode: ModeLegacy, Since: t0}, false},
		{"tie: same mode", Switch{Mode: ModeLegacy, Since: t0}, Switch{Mode: ModeLegacy, Since: t0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.a.Supersedes(tc.b); got != tc.want {
				t.Fatalf("Supersedes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHistoryLimit(t *testing.T) {
	var s Switch
	for i := 0; i < HistoryLimit+25; i++ {
		s.Record(Event{Kind: "trip", Weight: Weight(i)})
	}
	if len(s.History) != HistoryLimit || s.History[0].Weight != 25 || s.History[HistoryLimit-1].Weight != HistoryLimit+24 {
		t.Fatalf("history holds %d events from %d", len(s.History), s.History[0].Weight)
	}
}

// FuzzDecodeSwitch feeds arbitrary stored records to the decoder: a record
// either decodes to a valid switch or is refused.
func FuzzDecodeSwitch(f *testing.F) {
	good, _ := json.Marshal(Switch{Name: "main", Mode: ModeSplit, Weight: 20})
	f.Add(good)
	f.Add([]byte(`{"mode":"sideways"}`))
	f.Add([]byte(`{"mode":"legacy","weight":101}`))
	f.Add([]byte(`nonsense`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sw, err := DecodeSwitch(b)
		if err != nil {
			return
		}
		if _, err := ParseMode(string(sw.Mode)); err != nil || CheckWeight(sw.Weight) != nil {
			t.Fatalf("decoded an invalid switch %+v from %q", sw, b)
		}
	})
}

func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"main", "../x", "a/b", ".hidden", "rollback-20250818-143022"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckName(name) != nil {
			return
		}
		for _, c := range name {
			if c == '/' || c == '\\' || c == 0 {
				t.Fatalf("name %q with a separator was accepted", name)
			}
		}
		if name == "." || name == ".." || name[0] == '.' {
			t.Fatalf("name %q was accepted", name)
		}
	})
}
