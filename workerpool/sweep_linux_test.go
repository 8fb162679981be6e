package workerpool

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// marked is a `sleep 60` carrying a supervisor mark.
type marked struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
	err  error         // how it exited, once done is closed
}

// startMarked starts `sleep 60` carrying the supervisor mark; the test
// kills it at the end if it still runs.
func startMarked(t *testing.T, mark string) *marked {
	t.Helper()
	m := &marked{cmd: exec.Command("sleep", "60"), done: make(chan struct{})}
	m.cmd.Env = append(os.Environ(), supervisorEnv+"="+mark)
	if err := m.cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	go func() {
		m.err = m.cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(func() {
		_ = m.cmd.Process.Kill()
		<-m.done
	})
	// the mark must be visible before sweeping
	eventually(t, 5*time.Second, func() bool { return environValue(m.cmd.Process.Pid, supervisorEnv) == mark },
		"mark of pid %d not visible", m.cmd.Process.Pid)
	return m
}

// deadPid returns the pid of a process that ran and exited.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	return cmd.Process.Pid
}

func TestSweepLeftovers(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	if !strings.HasPrefix(supervisorMark, self+":") || processStart(os.Getpid()) == "" {
		t.Fatalf("supervisorMark %q does not name this process %s", supervisorMark, self)
	}

	deadSupervisor := startMarked(t, strconv.Itoa(deadPid(t))+":1")
	// a live pid with another start time names an earlier process
	reusedPid := startMarked(t, self+":1")
	ours := startMarked(t, supervisorMark)
	malformed := startMarked(t, "not a mark")

	if n := SweepLeftovers(testLogger(t)); n < 2 {
		t.Errorf("SweepLeftovers killed %d processes, want at least 2", n)
	}

	for name, m := range map[string]*marked{"dead supervisor": deadSupervisor, "reused pid": reusedPid} {
		select {
		case <-m.done:
			ee, ok := m.err.(*exec.ExitError)
			if !ok {
				t.Errorf("%s: exit %v", name, m.err)
				break
			}
			if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Errorf("%s: not killed by SIGKILL: %v", name, m.err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: process %d not killed", name, m.cmd.Process.Pid)
		}
	}

	for name, m := range map[string]*marked{"ours": ours, "malformed": malformed} {
		select {
		case <-m.done:
			t.Errorf("%s: process %d was killed: %v", name, m.cmd.Process.Pid, m.err)
		default:
			if err := syscall.Kill(m.cmd.Process.Pid, 0); err != nil {
				t.Errorf("%s: process %d gone: %v", name, m.cmd.Process.Pid, err)
			}
		}
	}
}

func TestSupervisorAlive(t *testing.T) {
	if !supervisorAlive(supervisorMark) {
		t.Errorf("this process is not alive by its own mark %q", supervisorMark)
	}
	if supervisorAlive(strconv.Itoa(deadPid(t)) + ":1") {
		t.Errorf("a dead pid is alive")
	}
	if supervisorAlive(strconv.Itoa(os.Getpid()) + ":1") {
		t.Errorf("a pid with another start time is alive")
	}
	for _, mark := range []string{"", "garbage", "x:1"} {
		if !supervisorAlive(mark) {
			t.Errorf("malformed mark %q judged dead", mark)
		}
	}
	if environValue(os.Getpid(), "NO_SUCH_VARIABLE_HERE") != "" {
		t.Errorf("environValue of a missing variable")
	}
	if processStart(deadPid(t)) != "" {
		t.Errorf("processStart of a dead pid is not empty")
	}
}
