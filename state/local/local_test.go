package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leanvibe/switchback/state"
	"github.com/leanvibe/switchback/state/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (state.Store, state.Store) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "state.db")
		a, err := Open(path, Options{PollInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		b, err := Open(path, Options{PollInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	})
}

func TestOpenNotBbolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("this is not a database\n", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	_, err := Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), "not a valid bbolt database") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open(garbage) err = %v, want one naming the file and saying it is not bbolt", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("Open changed a file that is not a database")
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if _, err := Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
	// Hold the same flock bbolt takes, through another open file.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		t.Fatal("Open of a locked file succeeded")
	}
	if !errors.Is(err, state.ErrUnavailable) || !strings.Contains(err.Error(), "locked by") {
		t.Fatalf("err = %v, want ErrUnavailable saying who holds it", err)
	}
	_ = s
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	s, err = Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after unlock: %v", err)
	}
	if _, err := s.Put(context.Background(), "switches/x", []byte("{}")); err != nil {
		t.Fatal(err)
	}
}

func TestLockReleasedWhenProcessDies(t *testing.T) {
	// An flock dies with its file description; closing the file stands in
	// for the process exiting.
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Lock(context.Background(), "restore", []byte("me"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*flock).f.Close()
	if _, err := s.Lock(context.Background(), "restore", []byte("you")); err != nil {
		t.Fatalf("Lock after holder's file closed: %v", err)
	}
}
