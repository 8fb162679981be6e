package workerpool

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestPoolStartsWorkersThatGetReady(t *testing.T) {
	t.Parallel()
	ready := newCounter()
	spec := testSpec("demo", 3)
	p := startPool(t, spec, testLogger(t), Hooks{Ready: ready.addStartup})
	if p.Project() != "demo" || p.Workers() != 3 {
		t.Fatalf("Project() = %q, Workers() = %d", p.Project(), p.Workers())
	}
	waitReadyN(t, p, 3, 10*time.Second)

	workers, addrs := p.Ready(), p.ReadyAddrs()
	if len(workers) != 3 || len(addrs) != 3 {
		t.Fatalf("Ready() has %d workers, ReadyAddrs() %d addresses", len(workers), len(addrs))
	}
	seenPorts := make(map[int]bool)
	for i, w := range workers {
		if w.Index != i {
			t.Errorf("Ready()[%d].Index = %d, want index order", i, w.Index)
		}
		if w.ID() != strconv.Itoa(i) {
			t.Errorf("ID() = %q, want %q", w.ID(), strconv.Itoa(i))
		}
		if addrs[i] != w.Addr() {
			t.Errorf("ReadyAddrs()[%d] = %q, worker's Addr() = %q", i, addrs[i], w.Addr())
		}
		if p.Lookup(addrs[i]) != w {
			t.Errorf("Lookup(%q) is not worker %d", addrs[i], i)
		}
		host, portText, err := net.SplitHostPort(addrs[i])
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("address %q: host %q, err %v", addrs[i], host, err)
		}
		port, _ := strconv.Atoi(portText)
		if port < spec.BasePort {
			t.Errorf("port %d below base %d", port, spec.BasePort)
		}
		seenPorts[port] = true

		st := w.Status()
		if st.State != StateReady || st.Port != port || st.PID == 0 || st.Restarts != 0 || st.Index != i {
			t.Errorf("worker %d status %+v", i, st)
		}
		who := whoami(t, addrs[i])
		if who.Worker != strconv.Itoa(i) || who.Project != "demo" || who.Port != port || who.PID != st.PID {
			t.Errorf("worker %d (port %d, pid %d) says %+v", i, port, st.PID, who)
		}
	}
	if len(seenPorts) != 3 {
		t.Errorf("workers share ports: %v", addrs)
	}
	if p.Lookup("127.0.0.1:1") != nil {
		t.Errorf("Lookup of an unknown address is not nil")
	}

	st := p.Status()
	if st.Project != "demo" || st.Ready != 3 || len(st.Workers) != 3 {
		t.Errorf("Status() = %+v", st)
	}
	if !p.Live() {
		t.Errorf("Live() = false with ready workers")
	}

	// Ready is called once per worker, with the time it took
	eventually(t, 5*time.Second, func() bool { return ready.total() == 3 }, "ready hook called %d times", ready.total())
	for i := range 3 {
		if ready.get(i) != 1 {
			t.Errorf("ready hook for worker %d called %d times", i, ready.get(i))
		}
	}
	for _, d := range ready.durations() {
		if d <= 0 {
			t.Errorf("ready hook startup %s, want > 0", d)
		}
	}
}

func TestPoolWorkerEnvironmentAndPlaceholders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	spec := testSpec("envproj", 2)
	spec.Command = []string{testworkerBin, "-port", "{port}"}
	spec.Dir = dir
	spec.Env = map[string]string{
		"MY_ADDR":  "127.0.0.1:{port}",
		"MY_TWICE": "{port}-{port}",
		"MY_PLAIN": "plain",
	}
	p := startPool(t, spec, testLogger(t), Hooks{})
	waitReadyN(t, p, 2, 10*time.Second)

	for _, w := range p.Ready() {
		st := w.Status()
		port := strconv.Itoa(st.Port)
		who := whoami(t, w.Addr())
		if strconv.Itoa(who.Port) != port {
			t.Errorf("worker %d listens on %d, status says %s", w.Index, who.Port, port)
		}
		want := map[string]string{
			"PORT":             port,
			"OXIAN_HV_WORKER":  strconv.Itoa(w.Index),
			"OXIAN_HV_PROJECT": "envproj",
			supervisorEnv:      supervisorMark,
			"MY_ADDR":          "127.0.0.1:" + port,
			"MY_TWICE":         port + "-" + port,
			"MY_PLAIN":         "plain",
		}
		for k, v := range want {
			if got := environValue(st.PID, k); got != v {
				t.Errorf("worker %d: %s=%q, want %q", w.Index, k, got, v)
			}
		}

		// the placeholder is replaced in the arguments
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(st.PID), "cmdline"))
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if want := []string{testworkerBin, "-port", port}; !slices.Equal(args, want) {
			t.Errorf("worker %d args %q, want %q", w.Index, args, want)
		}

		// and the directory is the spec's
		cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(st.PID), "cwd"))
		if err != nil {
			t.Fatal(err)
		}
		if wantDir, _ := filepath.EvalSymlinks(dir); cwd != wantDir {
			t.Errorf("worker %d runs in %q, want %q", w.Index, cwd, wantDir)
		}
	}
}

func TestPoolsWithSameBasePortNeverSharePorts(t *testing.T) {
	t.Parallel()
	// something else holds the base port
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	base := ln.Addr().(*net.TCPAddr).Port
	if base > 65000 {
		t.Skipf("ephemeral port %d too close to the top", base)
	}

	specA, specB := testSpec("a", 2), testSpec("b", 2)
	specA.BasePort, specB.BasePort = base, base
	a := startPool(t, specA, testLogger(t), Hooks{})
	b := startPool(t, specB, testLogger(t), Hooks{})
	waitReadyN(t, a, 2, 10*time.Second)
	waitReadyN(t, b, 2, 10*time.Second)

	seen := make(map[string]string)
	for name, p := range map[string]*Pool{"a": a, "b": b} {
		for _, addr := range p.ReadyAddrs() {
			if other, dup := seen[addr]; dup {
				t.Errorf("pools %s and %s share %s", other, name, addr)
			}
			seen[addr] = name
			if addr == ln.Addr().String() {
				t.Errorf("pool %s got the port held by a listener: %s", name, addr)
			}
			if who := whoami(t, addr); who.Project != name {
				t.Errorf("%s answered by project %q, want %q", addr, who.Project, name)
			}
		}
	}
}

func TestPoolRestartsKilledWorker(t *testing.T) {
	t.Parallel()
	ready, restarting := newCounter(), newCounter()
	spec := testSpec("kill", 2)
	p := startPool(t, spec, testLogger(t), Hooks{Ready: ready.addStartup, Restarting: restarting.add})
	waitReadyN(t, p, 2, 10*time.Second)
	before := pids(p)

	if err := syscall.Kill(before[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// the reason shows while the worker waits to restart (probes of the
	// new process overwrite it later)
	seen := &seenError{sub: "killed by signal"}
	eventually(t, 10*time.Second, func() bool {
		st := workerStatus(t, p, 1)
		seen.check(st)
		return st.State == StateReady && st.PID != 0 && st.PID != before[1] && len(p.Ready()) == 2
	}, "worker 1 not back with a new process: %+v", p.Status())
	if !seen.seen {
		t.Errorf("LastError never said the process was killed")
	}

	st := workerStatus(t, p, 1)
	if st.Restarts != 1 {
		t.Errorf("Restarts = %d, want 1", st.Restarts)
	}
	if got := workerStatus(t, p, 0); got.PID != before[0] || got.Restarts != 0 {
		t.Errorf("worker 0 affected: %+v (pid before %d)", got, before[0])
	}
	if restarting.get(1) != 1 || restarting.get(0) != 0 {
		t.Errorf("restarting hook calls: %v", restarting.calls)
	}
	eventually(t, 5*time.Second, func() bool { return ready.get(1) == 2 },
		"ready hook for worker 1 called %d times", ready.get(1))
	if who := whoami(t, p.Ready()[1].Addr()); who.PID != st.PID || who.Worker != "1" {
		t.Errorf("restarted worker says %+v, status %+v", who, st)
	}
	if !processGone(before[1]) {
		t.Errorf("killed process %d still there", before[1])
	}
}

// waitFailed waits until n workers are failed.
func waitFailed(t *testing.T, p *Pool, n int) {
	t.Helper()
	eventually(t, 15*time.Second, func() bool {
		st := p.Status()
		failed := 0
		for _, ws := range st.Workers {
			if ws.State == StateFailed {
				failed++
			}
		}
		return failed == n
	}, "want %d failed workers: %+v", n, p.Status())
}

func TestPoolMarksQuicklyExitingWorkerFailed(t *testing.T) {
	t.Parallel()
	failed, restarting := newCounter(), newCounter()
	spec := testSpec("crashy", 1)
	spec.Env = map[string]string{"TESTWORKER_EXIT_AFTER": "1ms"}
	p := startPool(t, spec, testLogger(t), Hooks{Failed: failed.add, Restarting: restarting.add})

	start := time.Now()
	waitFailed(t, p, 1)
	elapsed := time.Since(start)

	st := workerStatus(t, p, 0)
	// four quick failures each wait a backoff; the fifth marks it failed
	if st.Restarts != maxQuickFailures {
		t.Errorf("Restarts = %d, want %d", st.Restarts, maxQuickFailures)
	}
	if !strings.Contains(st.LastError, "exited with status 1") {
		t.Errorf("LastError = %q", st.LastError)
	}
	if failed.get(0) != 1 {
		t.Errorf("failed hook called %d times, want 1", failed.get(0))
	}
	if restarting.get(0) != maxQuickFailures {
		t.Errorf("restarting hook called %d times, want %d", restarting.get(0), maxQuickFailures)
	}
	// 100+200+400+800 ms, less 20% jitter
	if atLeast := 1500 * time.Millisecond * 8 / 10; elapsed < atLeast {
		t.Errorf("failed after %s, before the backoffs (at least %s) passed", elapsed, atLeast)
	}
	if len(p.Ready()) != 0 {
		t.Errorf("failed worker is ready")
	}
	if p.Live() {
		t.Errorf("Live() = true with every worker failed")
	}
}

func TestPoolLiveness(t *testing.T) {
	t.Parallel()

	t.Run("not started", func(t *testing.T) {
		t.Parallel()
		p := New(testSpec("idle", 1), zap.NewNop(), Hooks{})
		defer p.Close("test done", 0, true)
		if !p.Live() {
			t.Errorf("Live() = false before Start")
		}
	})

	t.Run("starting", func(t *testing.T) {
		t.Parallel()
		spec := testSpec("slow", 1)
		spec.Env = map[string]string{"TESTWORKER_START_DELAY": "30s"}
		p := startPool(t, spec, testLogger(t), Hooks{})
		eventually(t, 5*time.Second, func() bool { return workerStatus(t, p, 0).PID != 0 }, "no process: %+v", p.Status())
		if st := workerStatus(t, p, 0); st.State != StateStarting {
			t.Errorf("state %s, want starting", st.State)
		}
		if !p.Live() {
			t.Errorf("Live() = false while starting")
		}
		if len(p.Ready()) != 0 {
			t.Errorf("starting worker is ready")
		}
		// a worker still starting stops quickly too
		start := time.Now()
		p.Close("test", time.Second, true)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("closing a starting worker took %s", d)
		}
		if p.Live() {
			t.Errorf("Live() = true after Close")
		}
	})

	t.Run("all failed", func(t *testing.T) {
		t.Parallel()
		falseBin, err := exec.LookPath("false")
		if err != nil {
			t.Skip("no false command")
		}
		failed := newCounter()
		spec := testSpec("false", 2)
		spec.Command = []string{falseBin}
		p := startPool(t, spec, testLogger(t), Hooks{Failed: failed.add})
		if !p.Live() {
			t.Errorf("Live() = false right after Start")
		}
		waitFailed(t, p, 2)
		if p.Live() {
			t.Errorf("Live() = true with every worker failed: %+v", p.Status())
		}
		if failed.get(0) != 1 || failed.get(1) != 1 {
			t.Errorf("failed hook calls %v", failed.calls)
		}
	})
}

func TestPoolServiceUnavailableKeepsWorkerOutWithoutRestart(t *testing.T) {
	t.Parallel()
	flag := filepath.Join(t.TempDir(), "unhealthy")
	logger, logs := observedLogger(t)
	restarting := newCounter()
	spec := testSpec("maint", 1)
	spec.Health.Interval = 10 * time.Millisecond
	spec.Health.Fails = 2
	spec.Env = map[string]string{"TESTWORKER_UNHEALTHY_FILE": flag}
	p := startPool(t, spec, logger, Hooks{Restarting: restarting.add})
	waitReadyN(t, p, 1, 10*time.Second)
	pid := workerStatus(t, p, 0).PID
	addr := p.ReadyAddrs()[0]

	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		return len(p.Ready()) == 0 && workerStatus(t, p, 0).State == StateUnhealthy
	}, "worker not out of rotation: %+v", p.Status())
	if p.Lookup(addr) != nil {
		t.Errorf("Lookup finds the unhealthy worker")
	}
	if !p.Live() {
		t.Errorf("Live() = false with an unhealthy worker")
	}

	// many more probes than Fails answer 503; the worker stays
	probes := countMessages(logs, "worker output", "line", "GET /_health")
	eventually(t, 10*time.Second, func() bool {
		return countMessages(logs, "worker output", "line", "GET /_health") >= probes+5*spec.Health.Fails
	}, "not probed further")
	st := workerStatus(t, p, 0)
	if st.PID != pid || st.Restarts != 0 || st.State != StateUnhealthy || restarting.total() != 0 {
		t.Errorf("503 worker was replaced or moved: %+v (pid before %d), restarting hook %d", st, pid, restarting.total())
	}

	// and comes back once it answers 200 again
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	waitReadyN(t, p, 1, 5*time.Second)
	if st := workerStatus(t, p, 0); st.PID != pid || st.Restarts != 0 {
		t.Errorf("worker back in rotation with another process: %+v (pid before %d)", st, pid)
	}
}

// seenError polls the worker's status and remembers whether its last
// error ever contained sub.
type seenError struct {
	sub  string
	seen bool
}

func (s *seenError) check(st WorkerStatus) bool {
	if strings.Contains(st.LastError, s.sub) {
		s.seen = true
	}
	return s.seen
}

func TestPoolReplacesWorkerNotReadyWithinStartTimeout(t *testing.T) {
	t.Parallel()
	restarting := newCounter()
	spec := testSpec("never", 1)
	spec.Health.StartTimeout = 300 * time.Millisecond
	spec.Env = map[string]string{"TESTWORKER_HEALTH_STATUS": "500"}
	p := startPool(t, spec, testLogger(t), Hooks{Restarting: restarting.add})

	eventually(t, 5*time.Second, func() bool { return workerStatus(t, p, 0).PID != 0 }, "no process")
	first := workerStatus(t, p, 0).PID
	seen := &seenError{sub: "not ready within 300ms"}
	eventually(t, 10*time.Second, func() bool {
		st := workerStatus(t, p, 0)
		return seen.check(st) && st.Restarts >= 2 && st.PID != 0 && st.PID != first
	}, "worker not replaced after the start timeout: %+v (first pid %d, saw error: %v)", p.Status(), first, seen.seen)
	if len(p.Ready()) != 0 {
		t.Errorf("worker answering 500 is ready")
	}
	if restarting.get(0) < 2 {
		t.Errorf("restarting hook called %d times", restarting.get(0))
	}
	eventually(t, 5*time.Second, func() bool { return processGone(first) }, "first process %d still there", first)
}

func TestPoolReplacesWorkerFailingProbes(t *testing.T) {
	t.Parallel()
	spec := testSpec("probefail", 1)
	spec.Health.Interval = 20 * time.Millisecond
	spec.Health.Fails = 3
	p := startPool(t, spec, testLogger(t), Hooks{})
	waitReadyN(t, p, 1, 10*time.Second)
	pid := workerStatus(t, p, 0).PID

	// health settings apply at once: probes now time out
	bad := spec
	bad.Health.Path = "/slow?ms=5000"
	bad.Health.Timeout = 50 * time.Millisecond
	p.Reconfigure(bad)
	seen := &seenError{sub: "failed 3 health probes in a row"}
	eventually(t, 10*time.Second, func() bool {
		st := workerStatus(t, p, 0)
		return seen.check(st) && st.Restarts >= 1
	}, "worker failing probes not replaced: %+v", p.Status())
	if len(p.Ready()) != 0 {
		t.Errorf("worker failing probes is ready")
	}

	p.Reconfigure(spec)
	waitReadyN(t, p, 1, 10*time.Second)
	if st := workerStatus(t, p, 0); st.PID == pid {
		t.Errorf("worker failing probes kept its process %d", pid)
	}
	eventually(t, 5*time.Second, func() bool { return processGone(pid) }, "old process %d still there", pid)
}

func TestPoolReconfigureScalesInPlace(t *testing.T) {
	t.Parallel()
	spec := testSpec("scale", 2)
	spec.Drain = 100 * time.Millisecond
	p := startPool(t, spec, testLogger(t), Hooks{})
	waitReadyN(t, p, 2, 10*time.Second)
	before := pids(p)

	up := spec
	up.Workers = 4
	up.Health.Interval = 30 * time.Millisecond // not part of the identity
	p.Reconfigure(up)
	if p.Workers() != 4 || p.Spec().Health.Interval != up.Health.Interval {
		t.Errorf("spec not applied: %+v", p.Spec())
	}
	waitReadyN(t, p, 4, 10*time.Second)
	after := pids(p)
	for i := range 2 {
		if after[i] != before[i] {
			t.Errorf("worker %d replaced when scaling up: pid %d -> %d", i, before[i], after[i])
		}
	}

	down := up
	down.Workers = 1
	p.Reconfigure(down)
	eventually(t, 10*time.Second, func() bool {
		return len(p.Status().Workers) == 1 && len(p.Ready()) == 1
	}, "not scaled down: %+v", p.Status())
	if got := workerStatus(t, p, 0).PID; got != before[0] {
		t.Errorf("worker 0 replaced when scaling down: pid %d -> %d", before[0], got)
	}
	for i := 1; i < 4; i++ {
		eventually(t, 5*time.Second, func() bool { return processGone(after[i]) },
			"scaled-down worker %d (pid %d) still runs", i, after[i])
	}

	// Scale does the same
	p.Scale(2)
	waitReadyN(t, p, 2, 10*time.Second)
	if got := workerStatus(t, p, 0).PID; got != before[0] {
		t.Errorf("worker 0 replaced by Scale: pid %d -> %d", before[0], got)
	}
	if p.Workers() != 2 {
		t.Errorf("Workers() = %d after Scale(2)", p.Workers())
	}
}

// rollWatch samples the pool's ready count until stopped and remembers
// the lowest.
func rollWatch(p *Pool) (stop func() int) {
	var lowest atomic.Int64
	lowest.Store(int64(len(p.Ready())))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if n := int64(len(p.Ready())); n < lowest.Load() {
				lowest.Store(n)
			}
			select {
			case <-done:
				return
			default:
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	return func() int {
		close(done)
		wg.Wait()
		return int(lowest.Load())
	}
}

// waitReplaced waits until every worker runs a process other than those
// in old and n are ready with nothing else in the pool.
func waitReplaced(t *testing.T, p *Pool, old map[int]int, n int) map[int]int {
	t.Helper()
	eventually(t, 20*time.Second, func() bool {
		st := p.Status()
		if len(st.Workers) != n || st.Ready != n {
			return false
		}
		for _, ws := range st.Workers {
			if ws.State != StateReady || ws.PID == 0 || ws.PID == old[ws.Index] {
				return false
			}
		}
		return true
	}, "workers not all replaced (old pids %v): %+v", old, p.Status())
	return pids(p)
}

func TestPoolReconfigureEnvRollsWorkers(t *testing.T) {
	t.Parallel()
	spec := testSpec("roll", 3)
	spec.Env = map[string]string{"VERSION": "1"}
	p := startPool(t, spec, testLogger(t), Hooks{})
	waitReadyN(t, p, 3, 10*time.Second)
	before := pids(p)

	stop := rollWatch(p)
	next := spec
	next.Env = map[string]string{"VERSION": "2"}
	p.Reconfigure(next)
	after := waitReplaced(t, p, before, 3)
	if lowest := stop(); lowest < 2 {
		t.Errorf("ready workers dropped to %d during the roll, want at least 2 of 3", lowest)
	}

	for i, pid := range after {
		if got := environValue(pid, "VERSION"); got != "2" {
			t.Errorf("worker %d (pid %d) has VERSION=%q", i, pid, got)
		}
	}
	for i, pid := range before {
		eventually(t, 10*time.Second, func() bool { return processGone(pid) }, "old worker %d (pid %d) still runs", i, pid)
	}
	for i, w := range p.Ready() {
		if w.Index != i || p.Lookup(w.Addr()) != w {
			t.Errorf("ready set inconsistent after roll at %d: index %d", i, w.Index)
		}
	}
}

func TestPoolRestartReplacesEveryWorker(t *testing.T) {
	t.Parallel()
	p := startPool(t, testSpec("restart", 2), testLogger(t), Hooks{})
	waitReadyN(t, p, 2, 10*time.Second)
	before := pids(p)

	stop := rollWatch(p)
	p.Restart("test restart")
	waitReplaced(t, p, before, 2)
	if lowest := stop(); lowest < 1 {
		t.Errorf("no ready worker during the restart")
	}
	for i, pid := range before {
		eventually(t, 10*time.Second, func() bool { return processGone(pid) }, "old worker %d (pid %d) still runs", i, pid)
	}
}

func TestPoolRestartBeforeStartDoesNothing(t *testing.T) {
	t.Parallel()
	p := New(testSpec("unstarted", 1), zap.NewNop(), Hooks{})
	defer p.Close("test done", 0, true)
	p.Restart("nothing to restart")
	if st := p.Status(); len(st.Workers) != 0 {
		t.Errorf("Restart before Start started workers: %+v", st)
	}
}

func TestPoolCloseStopsEverything(t *testing.T) {
	t.Parallel()
	p := startPool(t, testSpec("close", 3), testLogger(t), Hooks{})
	waitReadyN(t, p, 3, 10*time.Second)
	before := pids(p)

	p.Close("test", time.Second, true)
	for i, pid := range before {
		if !processGone(pid) {
			t.Errorf("worker %d (pid %d) runs after Close", i, pid)
		}
	}
	if st := p.Status(); len(st.Workers) != 0 || st.Ready != 0 {
		t.Errorf("Status after Close: %+v", st)
	}
	if len(p.Ready()) != 0 || len(p.ReadyAddrs()) != 0 {
		t.Errorf("ready workers after Close")
	}
	if p.Live() {
		t.Errorf("Live() = true after Close")
	}

	// a closed pool ignores everything
	p.Start()
	p.Scale(2)
	p.Restart("closed")
	p.Reconfigure(testSpec("close", 1))
	p.Close("again", 0, true)
	if st := p.Status(); len(st.Workers) != 0 {
		t.Errorf("closed pool started workers: %+v", st)
	}
}

func TestPoolCloseWithoutWait(t *testing.T) {
	t.Parallel()
	p := startPool(t, testSpec("nowait", 1), testLogger(t), Hooks{})
	waitReadyN(t, p, 1, 10*time.Second)
	pid := workerStatus(t, p, 0).PID
	w := p.Ready()[0]
	w.Begin() // keeps it draining for the drain time

	start := time.Now()
	p.Close("test", 5*time.Second, false)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close without wait took %s", d)
	}
	if len(p.Ready()) != 0 {
		t.Errorf("ready workers right after Close")
	}
	w.End()
	// a second Close with wait waits for the first
	p.Close("test", 0, true)
	if !processGone(pid) {
		t.Errorf("worker runs after Close with wait")
	}
}

func TestPoolCloseDrainsRequestsInFlight(t *testing.T) {
	t.Parallel()
	const drain = 300 * time.Millisecond

	t.Run("until drain passes", func(t *testing.T) {
		p := startPool(t, testSpec("drain", 1), testLogger(t), Hooks{})
		waitReadyN(t, p, 1, 10*time.Second)
		w := p.Ready()[0]
		pid := w.Status().PID
		w.Begin()
		defer w.End()

		start := time.Now()
		p.Close("test", drain, true)
		elapsed := time.Since(start)
		if elapsed < drain {
			t.Errorf("Close took %s, less than the drain %s with a request in flight", elapsed, drain)
		}
		if elapsed > drain+1500*time.Millisecond {
			t.Errorf("Close took %s, much more than the drain %s", elapsed, drain)
		}
		if !processGone(pid) {
			t.Errorf("worker runs after Close")
		}
		if got := w.Status().State; got != StateStopped {
			t.Errorf("state %s after Close, want stopped", got)
		}
	})

	t.Run("until the request ends", func(t *testing.T) {
		const long = 3 * time.Second
		p := startPool(t, testSpec("drain-end", 1), testLogger(t), Hooks{})
		waitReadyN(t, p, 1, 10*time.Second)
		w := p.Ready()[0]
		pid := w.Status().PID
		w.Begin()
		if w.Inflight() != 1 || w.Status().Inflight != 1 {
			t.Fatalf("Inflight() = %d", w.Inflight())
		}

		// end the request once the worker drains
		ended := make(chan time.Time, 1)
		go func() {
			deadline := time.Now().Add(10 * time.Second)
			for w.Status().State != StateStopping && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			ended <- time.Now()
			w.End()
		}()

		start := time.Now()
		p.Close("test", long, true)
		elapsed := time.Since(start)
		endedAt := <-ended
		if elapsed >= long {
			t.Errorf("Close took %s, the whole drain, though the request ended after %s", elapsed, endedAt.Sub(start))
		}
		if endedAt.Sub(start) > time.Second {
			t.Errorf("worker took %s to start draining", endedAt.Sub(start))
		}
		if !processGone(pid) {
			t.Errorf("worker runs after Close")
		}
	})
}

func TestPoolWaitReady(t *testing.T) {
	t.Parallel()

	t.Run("ready", func(t *testing.T) {
		t.Parallel()
		p := startPool(t, testSpec("wait", 1), testLogger(t), Hooks{})
		if !p.WaitReady(context.Background(), 10*time.Second) {
			t.Fatalf("WaitReady = false: %+v", p.Status())
		}
		if len(p.Ready()) == 0 {
			t.Errorf("WaitReady returned true without a ready worker")
		}
		// and at once when one is ready already
		if !p.WaitReady(context.Background(), time.Nanosecond) {
			t.Errorf("WaitReady = false with a ready worker")
		}
	})

	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		p := startPool(t, testSpec("empty", 0), testLogger(t), Hooks{})
		start := time.Now()
		if p.WaitReady(context.Background(), 150*time.Millisecond) {
			t.Fatalf("WaitReady = true for a pool of no workers")
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("WaitReady gave up after %s", d)
		}
	})

	t.Run("context", func(t *testing.T) {
		t.Parallel()
		p := startPool(t, testSpec("empty-ctx", 0), testLogger(t), Hooks{})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if p.WaitReady(ctx, time.Minute) {
			t.Fatalf("WaitReady = true for a pool of no workers")
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("WaitReady ignored its context for %s", d)
		}
	})
}
