package storetest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd's process when the OS thread that started it exits,
// as it does when the test binary dies without its cleanups.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
