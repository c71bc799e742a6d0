package restore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// hostIDFile is the name of the host id file when Options.HostIDFile is
// not set: it sits in the backups directory, next to the objects it
// vouches for.
const hostIDFile = "host-id"

// loadHostID returns the host id stored at path, creating the file with a
// fresh random id the first time. The id names this host in point and
// operation records, so a hostname change does not make its own points
// and unfinished restores look foreign (and another host's look ours).
func loadHostID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if err := checkHostID(id); err != nil {
			return "", fmt.Errorf("host id file %s: %w", path, err)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading host id file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return "", fmt.Errorf("creating host id file: %w", err)
	}
	var rnd [16]byte
	rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	// Link a complete temp file into place: two processes starting at
	// once agree on the first id written, and a crash leaves no empty file.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("creating host id file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(id + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return loadHostID(path)
	}
	if err != nil {
		return "", fmt.Errorf("creating host id file: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("creating host id file: %w", err)
	}
	return id, nil
}

// checkHostID accepts 8 to 64 lowercase hex digits (an operator may also
// copy the file from a host being replaced, on purpose).
func checkHostID(id string) error {
	if len(id) < 8 || len(id) > 64 {
		return fmt.Errorf("host id %.70q: want 8 to 64 hex digits", id)
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("host id %.70q: want 8 to 64 hex digits", id)
		}
	}
	return nil
}

// HostID returns this host's id (see Options.HostIDFile).
func (m *Manager) HostID() string { return m.hostID }

// ownOp reports whether op was started on this host. Records written
// before host ids were recorded fall back to the host name.
func (m *Manager) ownOp(op Operation) bool {
	if op.HostID != "" {
		return op.HostID == m.hostID
	}
	return op.Host == m.opts.Host
}

// ownPoint reports whether p's objects are on this host: it was created
// here. Points recorded before host ids fall back to the host name; one
// with neither is taken as ours (the object checks still run).
func (m *Manager) ownPoint(p Point) bool {
	if p.HostID != "" {
		return p.HostID == m.hostID
	}
	if p.Host == "" || p.Host == m.opts.Host {
		return true
	}
	// A manifest here means the point was made here under an older name.
	_, err := os.Lstat(m.manifestPath(p.ID))
	return err == nil
}

// foreignPointErr is the pre-check error for a point created elsewhere.
func foreignPointErr(p Point) error {
	host := p.Host
	if host == "" {
		host = "host " + p.HostID
	}
	return userErr(ErrForeignPoint, "point %s was created on %s; its objects are not here", p.ID, host)
}
