package consultest

import "syscall"

// sysProcAttr makes an agent die with the test process, even if it crashes.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
