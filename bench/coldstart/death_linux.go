package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal has the kernel kill cmd if this program dies first.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
