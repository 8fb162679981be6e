package workerpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// State is where a worker is in its life.
type State string

// The states of a worker.
const (
	// StateStarting: the process runs but has not passed a probe yet.
	StateStarting State = "starting"
	// StateReady: the worker passed its last probe and gets traffic.
	StateReady State = "ready"
	// StateUnhealthy: the worker failed its last probe and gets no traffic.
	StateUnhealthy State = "unhealthy"
	// StateBackoff: the process ended and waits to be started again.
	StateBackoff State = "backoff"
	// StateFailed: the process failed quickly too often in a row; it is
	// retried on a slow schedule.
	StateFailed State = "failed"
	// StateStopping: the worker drains and its process is being stopped.
	StateStopping State = "stopping"
	// StateStopped: the worker was stopped for good.
	StateStopped State = "stopped"
)

// restarts: a process that was not ready for minUptime failed quickly;
// after maxQuickFailures quick failures in a row a worker is marked failed
// and retried every failedRetry; before that it waits from backoffBase,
// doubling up to backoffMax
const (
	backoffBase      = 100 * time.Millisecond
	backoffMax       = 10 * time.Second
	minUptime        = time.Second
	maxQuickFailures = 5
	failedRetry      = 30 * time.Second
)

// probe pacing while a worker starts: every startProbeEager for the first
// startProbeEagerFor, so that a fast app gets traffic within a millisecond
// of listening; then every startProbeFirst until startProbeFast; then
// slowing down to startProbeMax
const (
	startProbeEager    = time.Millisecond
	startProbeEagerFor = 100 * time.Millisecond
	startProbeFirst    = 10 * time.Millisecond
	startProbeFast     = 2 * time.Second
	startProbeMax      = 250 * time.Millisecond
)

// Worker is one slot of a pool: a process that is restarted whenever it
// ends, until the slot is stopped.
type Worker struct {
	// Index numbers the worker within its pool, from 0.
	Index int
	id    string

	pool   *Pool
	logger *zap.Logger
	gen    int

	inflight atomic.Int64

	mu        sync.Mutex
	state     State
	pid       int
	port      int
	addr      string
	restarts  int
	lastError string
	lastExit  string
	readyAt   time.Time
	startup   time.Duration

	stopOnce   sync.Once
	stopCh     chan struct{}
	stopReason string
	drain      time.Duration
	done       chan struct{}
}

// Addr returns the worker's dial address, host:port on 127.0.0.1, or ""
// while it has no process.
func (w *Worker) Addr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.addr
}

// Begin counts a request in flight on the worker.
func (w *Worker) Begin() { w.inflight.Add(1) }

// End counts a request in flight on the worker as finished.
func (w *Worker) End() { w.inflight.Add(-1) }

// Inflight returns the number of requests in flight on the worker.
func (w *Worker) Inflight() int64 { return w.inflight.Load() }

// Status returns a snapshot of the worker.
func (w *Worker) Status() WorkerStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return WorkerStatus{
		Index:     w.Index,
		PID:       w.pid,
		Port:      w.port,
		State:     w.state,
		Inflight:  w.inflight.Load(),
		Restarts:  w.restarts,
		LastError: w.lastError,
	}
}

// WorkerStatus is a snapshot of a worker, for health output.
type WorkerStatus struct {
	Index     int    `json:"index"`
	PID       int    `json:"pid"`
	Port      int    `json:"port"`
	State     State  `json:"state"`
	Inflight  int64  `json:"inflight"`
	Restarts  int    `json:"restarts"`
	LastError string `json:"last_error,omitempty"`
}

// stop asks the worker to drain for at most drain and stop, for reason.
func (w *Worker) stop(reason string, drain time.Duration) {
	w.stopOnce.Do(func() {
		w.stopReason = reason
		w.drain = drain
		close(w.stopCh)
	})
}

// setState moves the worker to state and refreshes the pool's ready set
// when readiness changed.
func (w *Worker) setState(s State) {
	w.mu.Lock()
	changed := (w.state == StateReady) != (s == StateReady)
	w.state = s
	w.mu.Unlock()
	if changed {
		w.pool.refreshReady()
	}
}

func (w *Worker) currentState() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

func (w *Worker) isReady() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == StateReady
}

func (w *Worker) setError(err error) {
	w.mu.Lock()
	w.lastError = err.Error()
	w.mu.Unlock()
}

// run keeps a process going in this slot until the slot is stopped.
func (w *Worker) run() {
	defer close(w.done)

	quickFailures := 0
	for {
		err := w.runOnce()
		if w.stopping() {
			w.setState(StateStopped)
			w.logger.Info("worker stopped", zap.String("reason", w.stopReason))
			return
		}

		// a process that never got ready, or died soon after, failed
		// quickly; enough of those in a row mark the worker failed
		w.mu.Lock()
		stable := !w.readyAt.IsZero() && time.Since(w.readyAt) >= minUptime
		w.readyAt = time.Time{}
		w.restarts++
		w.mu.Unlock()
		if stable {
			quickFailures = 0
		}
		quickFailures++
		backoff := backoffFor(quickFailures)
		w.setError(err)
		w.mu.Lock()
		w.lastExit = err.Error()
		w.mu.Unlock()
		if quickFailures >= maxQuickFailures {
			backoff = failedRetry
			w.setState(StateFailed)
			w.logger.Error("worker failed",
				zap.Int("quick_failures", quickFailures),
				zap.Duration("retry_in", backoff),
				zap.String("reason", err.Error()))
			w.pool.hooks.failed(w.Index)
		} else {
			w.setState(StateBackoff)
			w.logger.Warn("restarting worker",
				zap.Int("attempt", quickFailures),
				zap.Duration("backoff", backoff),
				zap.String("reason", err.Error()))
		}
		w.pool.hooks.restarting(w.Index)

		timer := time.NewTimer(backoff)
		select {
		case <-timer.C:
		case <-w.stopCh:
			timer.Stop()
			w.setState(StateStopped)
			w.logger.Info("worker stopped", zap.String("reason", w.stopReason))
			return
		}
	}
}

// backoffFor returns the wait before restart number attempt: doubling
// from backoffBase up to backoffMax, with up to 20% jitter either way.
func backoffFor(attempt int) time.Duration {
	d := backoffBase
	for i := 1; i < attempt && d < backoffMax; i++ {
		d *= 2
	}
	d = min(d, backoffMax)
	jitter := time.Duration((rand.Float64()*0.4 - 0.2) * float64(d))
	return d + jitter
}

func (w *Worker) stopping() bool {
	select {
	case <-w.stopCh:
		return true
	default:
		return false
	}
}

// runOnce starts one process, watches it until it exits or the slot is
// stopped, and says why it ended.
func (w *Worker) runOnce() error {
	spec := w.pool.currentSpec()

	// take a port
	port, err := ports.allocate(spec.BasePort)
	if err != nil {
		return err
	}
	defer ports.release(port)

	// start the process
	cmd := w.command(spec, port)
	logger := w.logger.With(zap.Int("port", port))
	stdout := newLineLogger(logger, "stdout")
	stderr := newLineLogger(logger, "stderr")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	w.setState(StateStarting)
	if err := startProcess(cmd); err != nil {
		logger.Error("spawning worker", zap.Strings("command", cmd.Args), zap.Error(err))
		return fmt.Errorf("spawning %q: %v", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	logger = logger.With(zap.Int("pid", pid))
	stdout.setLogger(logger)
	stderr.setLogger(logger)
	w.mu.Lock()
	w.pid, w.port, w.addr = pid, port, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	w.mu.Unlock()
	logger.Info("worker spawned", zap.Strings("command", cmd.Args))

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// watch it; whatever happens, leave nothing of its process group behind
	err = w.watch(spec, logger, pid, exited)
	_ = signalGroup(pid, syscall.SIGKILL)
	stdout.flush()
	stderr.flush()
	w.mu.Lock()
	w.pid, w.addr = 0, ""
	w.mu.Unlock()
	return err
}

// command builds the worker's command for port.
func (w *Worker) command(spec Spec, port int) *exec.Cmd {
	p := strconv.Itoa(port)
	args := make([]string, len(spec.Command))
	for i, a := range spec.Command {
		args[i] = strings.ReplaceAll(a, PortPlaceholder, p)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = spec.Dir
	env := os.Environ()
	for _, k := range sortedKeys(spec.Env) {
		env = append(env, k+"="+strings.ReplaceAll(spec.Env[k], PortPlaceholder, p))
	}
	env = append(env,
		supervisorEnv+"="+supervisorMark,
		"PORT="+p,
		"OXIAN_HV_WORKER="+strconv.Itoa(w.Index),
		"OXIAN_HV_PROJECT="+spec.Project,
	)
	cmd.Env = env

	// a worker whose children keep its output open must not block us
	cmd.WaitDelay = time.Second
	return cmd
}

// watch probes the process until it exits or the slot is stopped.
func (w *Worker) watch(spec Spec, logger *zap.Logger, pid int, exited <-chan error) error {
	spawned := time.Now()
	everReady := false
	fails := 0
	delay := startProbeEager
	timer := time.NewTimer(delay)
	defer timer.Stop()

	for {
		select {
		case err := <-exited:
			w.setState(StateBackoff)
			reason := exitReason(err)
			logger.Warn("worker exited", zap.String("reason", reason))
			return fmt.Errorf("process %s", reason)

		case <-w.stopCh:
			w.shutdown(logger, pid, exited)
			return nil

		case <-timer.C:
		}

		// probe, and move the worker as the answer says
		spec = w.pool.currentSpec()
		status, err := w.pool.probe(w.Addr(), spec.Health)
		switch {
		case err == nil && status >= 200 && status < 300:
			fails = 0
			if !w.isReady() {
				if !everReady {
					startup := time.Since(spawned)
					logger.Info("worker ready", zap.Duration("startup", startup))
					w.mu.Lock()
					w.readyAt = time.Now()
					w.startup = startup
					w.lastError = w.lastExit // probes while starting are not news
					w.mu.Unlock()
					w.pool.hooks.ready(w.Index, startup)
				} else {
					logger.Info("worker back in rotation")
				}
				everReady = true
				w.setState(StateReady)
			}

		case !everReady:
			// still starting: give up only after the start timeout
			w.setError(fmt.Errorf("health probe: %s", probeOutcome(status, err)))
			if time.Since(spawned) > spec.Health.StartTimeout {
				reason := fmt.Sprintf("not ready within %s (last probe: %s)",
					spec.Health.StartTimeout, probeOutcome(status, err))
				logger.Warn("worker unhealthy", zap.String("reason", reason))
				w.setError(errors.New(reason))
				w.terminate(logger, pid, exited, spec.StopGrace)
				return errors.New(reason)
			}

		case err == nil && status == http.StatusServiceUnavailable:
			// the app stepped aside; it stays until it answers otherwise
			if w.isReady() {
				logger.Info("worker out of rotation", zap.String("reason", "health probe answered 503"))
			}
			fails = 0
			w.setState(StateUnhealthy)

		default:
			fails++
			reason := probeOutcome(status, err)
			w.setError(fmt.Errorf("health probe: %s", reason))
			w.setState(StateUnhealthy)
			logger.Warn("worker unhealthy",
				zap.String("reason", reason),
				zap.Int("failed_probes", fails))
			if fails >= spec.Health.Fails {
				reason = fmt.Sprintf("failed %d health probes in a row (last: %s)", fails, reason)
				w.terminate(logger, pid, exited, spec.StopGrace)
				return errors.New(reason)
			}
		}

		// next probe: quick while starting, then at the interval
		switch {
		case everReady:
			delay = spec.Health.Interval
		case time.Since(spawned) > startProbeFast:
			delay = min(delay*2, startProbeMax)
		case time.Since(spawned) > startProbeEagerFor:
			delay = startProbeFirst
		}
		timer.Reset(delay)
	}
}

// shutdown takes the worker out of rotation, lets its requests finish for
// at most the drain time, and stops the process.
func (w *Worker) shutdown(logger *zap.Logger, pid int, exited <-chan error) {
	w.setState(StateStopping)
	deadline := time.Now().Add(w.drain)
	for w.inflight.Load() > 0 && time.Now().Before(deadline) {
		select {
		case err := <-exited:
			logger.Info("worker exited while draining", zap.String("reason", exitReason(err)))
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	w.terminate(logger, pid, exited, w.pool.currentSpec().StopGrace)
}

// terminate sends SIGTERM to the worker's process group and SIGKILL when
// grace runs out, and waits for the process to exit.
func (w *Worker) terminate(logger *zap.Logger, pid int, exited <-chan error, grace time.Duration) {
	w.setState(StateStopping)
	if err := signalGroup(pid, syscall.SIGTERM); err != nil {
		logger.Warn("signalling worker", zap.String("signal", "SIGTERM"), zap.Error(err))
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err := <-exited:
		logger.Debug("worker exited", zap.String("reason", exitReason(err)))
		return
	case <-timer.C:
	}
	logger.Warn("worker did not exit in time; killing it", zap.Duration("grace", grace))
	_ = signalGroup(pid, syscall.SIGKILL)
	<-exited
}

// exitReason describes how a process ended.
func exitReason(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	return err.Error()
}

// probeOutcome describes a failed probe.
func probeOutcome(status int, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("status %d", status)
}

// probe asks addr for its health and returns the response status.
func (p *Pool) probe(addr string, hs HealthSpec) (int, error) {
	if addr == "" {
		return 0, errors.New("no address")
	}
	ctx, cancel := context.WithTimeout(p.ctx, hs.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, hs.Method, "http://"+addr+hs.Path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", "oxian-hv health probe")
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// ReadySince returns when the worker's current process first passed its
// health probe, or the zero time.
func (w *Worker) ReadySince() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.readyAt
}

// Startup returns how long the worker's current process took from spawn
// to its first passed health probe, or 0 before that.
func (w *Worker) Startup() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.readyAt.IsZero() {
		return 0
	}
	return w.startup
}

// ID returns the worker's index as text, as logs and placeholders show it.
func (w *Worker) ID() string { return w.id }
