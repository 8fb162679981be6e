package workerpool

import (
	"errors"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// On Linux each worker gets its own process group, so that stopping it
// reaches whatever it started too, and a parent-death signal, so that it
// does not outlive Caddy. The kernel sends that signal when the thread
// that started the child exits, not the process; so every worker is
// started from one goroutine locked to its thread for the life of the
// process.

type startRequest struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	starterOnce sync.Once
	starts      = make(chan startRequest)
)

// startProcess starts cmd in its own process group, from the locked
// starter thread.
func startProcess(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	starterOnce.Do(func() {
		go func() {
			// never unlocked: the thread must live as long as the process
			runtime.LockOSThread()
			for req := range starts {
				req.done <- req.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	starts <- startRequest{cmd: cmd, done: done}
	return <-done
}

// signalGroup sends sig to the process group led by pid.
func signalGroup(pid int, sig syscall.Signal) error {
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}
