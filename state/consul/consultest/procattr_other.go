//go:build !linux

package consultest

import "syscall"

// sysProcAttr is empty where there is no parent-death signal; t.Cleanup
// still stops agents when a test ends normally.
func sysProcAttr() *syscall.SysProcAttr { return nil }
