//go:build !linux

package workerpool

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"go.uber.org/zap"
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

// supervisorEnv marks the workers a process started.
const supervisorEnv = "OXIAN_HV_SUPERVISOR"

// supervisorMark identifies this process.
var supervisorMark = strconv.Itoa(os.Getpid())

// SweepLeftovers does nothing on this system.
func SweepLeftovers(*zap.Logger) int { return 0 }
