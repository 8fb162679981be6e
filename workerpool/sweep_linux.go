package workerpool

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// Every worker carries supervisorEnv=<pid>:<start time> of the process that
// started it. A worker whose supervisor is gone (killed so hard that it
// could not stop its workers, and whose workers' own children outlived the
// parent-death signal) is a leftover: it may hold a port and a pool would
// meet "address already in use". SweepLeftovers finds and kills them.
const supervisorEnv = "OXIAN_HV_SUPERVISOR"

// supervisorMark identifies this process among all that ever ran.
var supervisorMark = fmt.Sprintf("%d:%s", os.Getpid(), processStart(os.Getpid()))

// SweepLeftovers kills the processes whose supervisor mark names a process
// that no longer runs, and returns how many it killed.
func SweepLeftovers(logger *zap.Logger) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		mark := environValue(pid, supervisorEnv)
		if mark == "" || mark == supervisorMark || supervisorAlive(mark) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed++
			logger.Warn("killed leftover worker process of an earlier run",
				zap.Int("pid", pid),
				zap.String("supervisor", mark))
		}
	}
	return killed
}

// supervisorAlive reports whether the process a mark names still runs.
func supervisorAlive(mark string) bool {
	pidText, start, ok := strings.Cut(mark, ":")
	if !ok {
		return true // not ours to judge
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil {
		return true
	}
	return processStart(pid) == start
}

// environValue returns the value of key in the environment of pid, or "".
func environValue(pid int, key string) string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	if err != nil {
		return ""
	}
	prefix := []byte(key + "=")
	for _, kv := range bytes.Split(data, []byte{0}) {
		if bytes.HasPrefix(kv, prefix) {
			return string(kv[len(prefix):])
		}
	}
	return ""
}

// processStart returns the start time of pid in clock ticks since boot, as
// text, or "" if there is no such process.
func processStart(pid int) string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}

	// fields after the command, which is in parentheses and may hold spaces
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(data[i+1:]))

	// starttime is field 22 of the whole line, the 20th after the command
	if len(fields) < 20 {
		return ""
	}
	return fields[19]
}
