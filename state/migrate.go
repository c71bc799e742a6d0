package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// MigrateNamespaces are the namespaces Migrate copies, in order. Secrets
// hold the key that signs sticky cookies: copied, a host that joins a
// fleet keeps its users on their arm. Locks are not state to copy: a lock
// belongs to the process holding it.
var MigrateNamespaces = []string{NSSwitches, NSPoints, NSOperations, NSSecrets}

// MigrateOptions configure Migrate. The zero value copies.
type MigrateOptions struct {
	// DryRun reports what would be done and writes nothing.
	DryRun bool
}

// MigrateReport says what Migrate did, or with DryRun would do.
type MigrateReport struct {
	DryRun bool

	// Namespaces has one count per namespace in MigrateNamespaces, in
	// that order.
	Namespaces []MigrateCounts

	// Conflicts lists the entries whose destination copy differs from the
	// source and was kept.
	Conflicts []MigrateConflict
}

// MigrateCounts counts one namespace's entries by outcome. Every source
// entry is counted once.
type MigrateCounts struct {
	Namespace string

	// Copied entries were written to the destination: missing there, or a
	// switch whose source copy supersedes the destination's.
	Copied int

	// Unchanged entries were already in the destination with equal
	// content (the same bytes or the same JSON).
	Unchanged int

	// Kept entries differ and the destination's copy was kept: a switch
	// whose destination copy supersedes (or ties with) the source's, or a
	// point record, operation record or secret, where the destination
	// always wins. Each is listed in MigrateReport.Conflicts.
	Kept int
}

// MigrateConflict is one differing entry whose destination copy was kept.
type MigrateConflict struct {
	Key    string
	Reason string
}

// Total adds up the namespaces' counts.
func (r MigrateReport) Total() MigrateCounts {
	var t MigrateCounts
	for _, c := range r.Namespaces {
		t.Copied += c.Copied
		t.Unchanged += c.Unchanged
		t.Kept += c.Kept
	}
	return t
}

// String summarizes the report on one line per namespace.
func (r MigrateReport) String() string {
	var b strings.Builder
	if r.DryRun {
		b.WriteString("dry run, nothing written\n")
	}
	for _, c := range r.Namespaces {
		fmt.Fprintf(&b, "%s: %d copied, %d unchanged, %d kept\n", c.Namespace, c.Copied, c.Unchanged, c.Kept)
	}
	for _, c := range r.Conflicts {
		fmt.Fprintf(&b, "kept %s: %s\n", c.Key, c.Reason)
	}
	return b.String()
}

// Migrate copies every switch, point record, operation record and secret
// from one store to another, such as from a single host's local store to
// the fleet's Consul.
//
// It is idempotent and safe to re-run, also while gateways use the
// destination: an entry equal in both is skipped; a missing one is created
// with CAS (version 0), so a concurrent writer is never overwritten; a
// switch in both keeps whichever copy Supersedes the other (the newer
// Since, and on a tie legacy), with the destination winning full ties; a
// point record, operation record or secret in both keeps the destination's
// copy, and the difference is reported as a conflict. A fleet's cookie
// secret is thus never replaced: users of a host that joins a fleet whose
// secret differs get their sticky cookies re-issued with the fleet's key.
// A CAS that loses a race re-reads the destination and decides again.
//
// An entry that cannot be migrated (a switch record that does not decode)
// is skipped; its error is joined into the returned error, after the other
// entries are done. Errors reading or writing a store stop the migration;
// the report says what was done until then. Re-running resumes.
func Migrate(ctx context.Context, from, to Store, opts MigrateOptions) (MigrateReport, error) {
	r := MigrateReport{DryRun: opts.DryRun}
	var skipped []error
	for _, ns := range MigrateNamespaces {
		counts := MigrateCounts{Namespace: ns}
		entries, err := from.List(ctx, ns)
		if err != nil {
			r.Namespaces = append(r.Namespaces, counts)
			return r, fmt.Errorf("reading %s from %s: %w", ns, from.Describe(), err)
		}
		existing, err := to.List(ctx, ns)
		if err != nil {
			r.Namespaces = append(r.Namespaces, counts)
			return r, fmt.Errorf("reading %s from %s: %w", ns, to.Describe(), err)
		}
		dst := make(map[string]Entry, len(existing))
		for _, e := range existing {
			dst[e.Key] = e
		}
		for _, e := range entries {
			d, ok := dst[e.Key]
			out, reason, err := migrateEntry(ctx, to, ns, e, d, ok, opts.DryRun)
			if err != nil {
				if errors.Is(err, errSkip) {
					skipped = append(skipped, err)
					continue
				}
				r.Namespaces = append(r.Namespaces, counts)
				return r, err
			}
			switch out {
			case outcomeCopied:
				counts.Copied++
			case outcomeUnchanged:
				counts.Unchanged++
			case outcomeKept:
				counts.Kept++
				r.Conflicts = append(r.Conflicts, MigrateConflict{Key: e.Key, Reason: reason})
			}
		}
		r.Namespaces = append(r.Namespaces, counts)
	}
	return r, errors.Join(skipped...)
}

type outcome int

const (
	outcomeCopied outcome = iota
	outcomeUnchanged
	outcomeKept
)

// errSkip marks an entry Migrate could not decide on; it goes on with the
// others.
var errSkip = errors.New("skipped")

// migrateAttempts bounds the re-reads after losing a CAS race.
const migrateAttempts = 10

// migrateEntry brings one source entry into to and says what it did. dst
// is the destination's entry as listed, if exists; after a lost CAS race it
// is read again.
func migrateEntry(ctx context.Context, to Store, ns string, src, dst Entry, exists, dryRun bool) (outcome, string, error) {
	if ns == NSSwitches {
		if _, err := DecodeSwitch(src.Value); err != nil {
			return 0, "", fmt.Errorf("source %s: %w: %w", src.Key, err, errSkip)
		}
	}
	for attempt := range migrateAttempts {
		if attempt > 0 {
			var err error
			dst, err = to.Get(ctx, src.Key)
			exists = err == nil
			if err != nil && !errors.Is(err, ErrNotFound) {
				return 0, "", fmt.Errorf("reading %s from %s: %w", src.Key, to.Describe(), err)
			}
		}
		var version uint64
		switch {
		case !exists:
		case sameContent(src.Value, dst.Value):
			return outcomeUnchanged, "", nil
		case ns == NSSwitches:
			if win, reason := switchWins(src, dst); !win {
				return outcomeKept, reason, nil
			}
			version = dst.Version
		case ns == NSSecrets:
			// Never the values: they are secrets.
			return outcomeKept, "destination has a different secret; the destination's is kept (sticky cookies signed with the source's key are re-issued)", nil
		default:
			return outcomeKept, "destination has a different record; the destination's is kept", nil
		}
		if dryRun {
			return outcomeCopied, "", nil
		}
		_, err := to.CAS(ctx, src.Key, src.Value, version)
		if err == nil {
			return outcomeCopied, "", nil
		}
		if !errors.Is(err, ErrConflict) {
			return 0, "", fmt.Errorf("writing %s to %s: %w", src.Key, to.Describe(), err)
		}
	}
	return 0, "", fmt.Errorf("writing %s to %s: still changing after %d attempts: %w", src.Key, to.Describe(), migrateAttempts, ErrConflict)
}

// switchWins reports whether the source switch should replace the
// destination's, and if not, why.
func switchWins(src, dst Entry) (bool, string) {
	s, _ := DecodeSwitch(src.Value) // checked by migrateEntry
	d, err := DecodeSwitch(dst.Value)
	if err != nil {
		// A destination record nobody can read is replaced.
		return true, ""
	}
	switch {
	case s.Supersedes(d):
		return true, ""
	case d.Supersedes(s):
		return false, fmt.Sprintf("destination is newer (%s since %s) than the source (%s since %s); the destination's is kept",
			d.Mode, d.Since.Format("2006-01-02T15:04:05.000Z07:00"), s.Mode, s.Since.Format("2006-01-02T15:04:05.000Z07:00"))
	default:
		return false, "source and destination differ but neither supersedes the other; the destination's is kept"
	}
}

// sameContent reports whether two stored values are equal: the same bytes,
// or the same JSON value.
func sameContent(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}
