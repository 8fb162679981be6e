//go:build !linux

package workerpool

import (
	"os"
	"os/exec"
	"syscall"
)

// TODO: process groups and a parent-death signal are set up on Linux only;
// elsewhere a worker's own children are not stopped with it.

// startProcess starts cmd.
func startProcess(cmd *exec.Cmd) error {
	return cmd.Start()
}

// signalGroup sends sig to the process pid.
func signalGroup(pid int, sig syscall.Signal) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	if sig == syscall.SIGKILL {
		return p.Kill()
	}
	return p.Signal(sig)
}
