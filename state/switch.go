package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Mode says where a switch sends traffic.
type Mode string

// The modes a switch can be in.
const (
	ModeSplit        Mode = "split"
	ModeLegacy       Mode = "legacy"
	ModeConsolidated Mode = "consolidated"
)

// ParseMode checks a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeSplit, ModeLegacy, ModeConsolidated:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q: want split, legacy or consolidated", s)
}

// Event is one entry of a switch's history: a trip, a recovery or a manual
// change.
type Event struct {
	Kind    string    `json:"kind"` // "trip", "recover", "mode", "weight", "reset"
	Mode    Mode      `json:"mode"`
	Weight  Weight    `json:"weight"`
	Rule    string    `json:"rule,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	By      string    `json:"by,omitempty"`
	Gateway string    `json:"gateway,omitempty"`
	At      time.Time `json:"at"`
}

// HistoryLimit is how many events a switch record keeps.
const HistoryLimit = 100

// Switch is the durable state of one switch, stored as JSON at
// "switches/<name>".
type Switch struct {
	Name   string `json:"name"`
	Mode   Mode   `json:"mode"`
	Weight Weight `json:"weight"`

	// Reason, By, Gateway and Since describe the last change: why, who
	// (e.g. "admin 127.0.0.1", "trip error_rate", "config"), on which host,
	// and when.
	Reason  string    `json:"reason,omitempty"`
	By      string    `json:"by,omitempty"`
	Gateway string    `json:"gateway,omitempty"`
	Since   time.Time `json:"since"`

	// ConfigMode and ConfigWeight are the config's values when this record
	// was written. A config that changes either one wins over the stored
	// value for that field; otherwise the stored value wins.
	ConfigMode   Mode   `json:"config_mode"`
	ConfigWeight Weight `json:"config_weight"`

	// Tripped is set while the switch is on legacy because a trip rule
	// fired; Rule names it. RecoverWeight is the weight to return to.
	Tripped       bool   `json:"tripped,omitempty"`
	Rule          string `json:"rule,omitempty"`
	RecoverWeight Weight `json:"recover_weight,omitempty"`

	// LegacyUnhealthy is set when, at the last trip or since, legacy broke
	// its rules too. The gateway is then on legacy but not healthy.
	LegacyUnhealthy       bool   `json:"legacy_unhealthy,omitempty"`
	LegacyUnhealthyReason string `json:"legacy_unhealthy_reason,omitempty"`

	// History holds the last HistoryLimit events, oldest first.
	History []Event `json:"history,omitempty"`

	// Rollout is the switch's progressive rollout, nil without one.
	Rollout *Rollout `json:"rollout,omitempty"`
}

// Record appends e to the history, dropping the oldest past HistoryLimit.
func (s *Switch) Record(e Event) {
	s.History = append(s.History, e)
	if n := len(s.History) - HistoryLimit; n > 0 {
		s.History = append([]Event(nil), s.History[n:]...)
	}
}

// Supersedes reports whether s should win over o when two copies of one
// switch disagree, as after a store outage: the newer Since wins, and on a
// tie legacy wins.
func (s Switch) Supersedes(o Switch) bool {
	if !s.Since.Equal(o.Since) {
		return s.Since.After(o.Since)
	}
	return s.Mode == ModeLegacy && o.Mode != ModeLegacy
}

// GetSwitch reads one switch and its version.
func GetSwitch(ctx context.Context, st Store, name string) (Switch, uint64, error) {
	e, err := st.Get(ctx, Key(NSSwitches, name))
	if err != nil {
		return Switch{}, 0, err
	}
	sw, err := DecodeSwitch(e.Value)
	if err != nil {
		return Switch{}, 0, fmt.Errorf("switch %s: %w", name, err)
	}
	return sw, e.Version, nil
}

// DecodeSwitch decodes a stored switch and checks it.
func DecodeSwitch(b []byte) (Switch, error) {
	var sw Switch
	if err := json.Unmarshal(b, &sw); err != nil {
		return Switch{}, fmt.Errorf("decoding switch record: %w", err)
	}
	if _, err := ParseMode(string(sw.Mode)); err != nil {
		return Switch{}, fmt.Errorf("switch record: %w", err)
	}
	if err := CheckWeight(sw.Weight); err != nil {
		return Switch{}, fmt.Errorf("switch record: %w", err)
	}
	if err := sw.Rollout.Check(); err != nil {
		return Switch{}, fmt.Errorf("switch record: %w", err)
	}
	return sw, nil
}

// ListSwitches reads every switch in the store. Records that do not decode
// are returned as errors joined together, after the good ones.
func ListSwitches(ctx context.Context, st Store) ([]Switch, error) {
	entries, err := st.List(ctx, NSSwitches)
	if err != nil {
		return nil, err
	}
	return DecodeSwitches(entries)
}

// DecodeSwitches decodes the entries of the switches namespace.
func DecodeSwitches(entries []Entry) ([]Switch, error) {
	out := make([]Switch, 0, len(entries))
	var errs []error
	for _, e := range entries {
		sw, err := DecodeSwitch(e.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.Key, err))
			continue
		}
		out = append(out, sw)
	}
	return out, errors.Join(errs...)
}

// UpdateSwitch applies fn to the stored switch with CAS, re-reading and
// re-applying fn when another writer got there first. fn receives the
// current record (zero with only Name set, and exists false, when there is
// none) and returns the record to write, or ok=false to write nothing.
func UpdateSwitch(ctx context.Context, st Store, name string, fn func(cur Switch, exists bool) (next Switch, ok bool)) (Switch, error) {
	for attempt := 0; ; attempt++ {
		cur, version, err := GetSwitch(ctx, st, name)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return Switch{}, err
		}
		if !exists {
			cur = Switch{Name: name}
		}
		next, ok := fn(cur, exists)
		if !ok {
			return cur, nil
		}
		next.Name = name
		b, err := json.Marshal(next)
		if err != nil {
			return Switch{}, err
		}
		_, err = st.CAS(ctx, Key(NSSwitches, name), b, version)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, ErrConflict) || attempt >= 20 {
			return Switch{}, fmt.Errorf("writing switch %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return Switch{}, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 5 * time.Millisecond):
		}
	}
}
