// Package workerpool runs and supervises pools of worker processes: each
// worker is a command that serves HTTP on 127.0.0.1 at a port it is given.
// A pool spawns its workers, probes their health, keeps the set of ready
// workers current, restarts workers that exit or stop answering, and stops
// them gracefully. It knows nothing of Caddy; the Caddy module builds on it.
package workerpool

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/oxian-hv/oxian-hv/autoscale"
)

// PortPlaceholder in a command argument or environment value is replaced by
// the worker's port.
const PortPlaceholder = "{port}"

// Spec describes what a pool runs and how it watches its workers.
type Spec struct {
	// Project names the pool in logs and in the workers' environment.
	Project string

	// Command is the program and its arguments that start one worker.
	Command []string

	// Dir is the working directory of the workers; empty means the
	// current one.
	Dir string

	// Env holds environment variables added to the parent's environment.
	Env map[string]string

	// Workers is how many workers the pool keeps running.
	Workers int

	// BasePort is the lowest port a worker may get.
	BasePort int

	// Health says how workers are probed.
	Health HealthSpec

	// StopGrace is how long a worker may take to exit after SIGTERM
	// before its process group is killed.
	StopGrace time.Duration

	// Drain is how long a worker that is being stopped (scaled down,
	// replaced, shut down) may finish its requests in flight before it
	// gets SIGTERM.
	Drain time.Duration

	// Scaling, when set, lets a policy move the worker count between its
	// Min and Max with the load, and stop idle pools; Workers is then only
	// the starting count.
	Scaling *autoscale.Config

	// WarmUp is how long a newly ready worker gets a reduced share of the
	// traffic; see WarmShare.
	WarmUp time.Duration
}

// Hooks are called on events in the life of a pool's workers, with the
// worker's index. Any of them may be nil. They must not block.
type Hooks struct {
	// Ready is called when a new process first passes its health probe,
	// with the time it took from spawn.
	Ready func(worker int, startup time.Duration)

	// Restarting is called when a worker's process ended and will be
	// started again.
	Restarting func(worker int)

	// Failed is called when a worker is marked failed.
	Failed func(worker int)

	// Scaled is called when the scaling policy changes the worker count.
	Scaled func(from, to int, reason string)
}

func (h Hooks) ready(worker int, startup time.Duration) {
	if h.Ready != nil {
		h.Ready(worker, startup)
	}
}

func (h Hooks) restarting(worker int) {
	if h.Restarting != nil {
		h.Restarting(worker)
	}
}

func (h Hooks) scaled(from, to int, reason string) {
	if h.Scaled != nil {
		h.Scaled(from, to, reason)
	}
}

func (h Hooks) failed(worker int) {
	if h.Failed != nil {
		h.Failed(worker)
	}
}

// HealthSpec says how workers are probed for readiness.
type HealthSpec struct {
	// Path is the path probed on each worker.
	Path string

	// Method is GET or HEAD.
	Method string

	// Interval is the time between probes of a started worker.
	Interval time.Duration

	// Timeout bounds one probe.
	Timeout time.Duration

	// StartTimeout bounds how long a new worker may take to become ready.
	StartTimeout time.Duration

	// Fails is how many failed probes in a row make a worker be replaced;
	// 503 answers do not count.
	Fails int
}

// Identity returns a string that differs between two specs exactly when
// their workers must be started anew to apply the change: the command,
// its directory or its environment.
func (s Spec) Identity() string {
	var b strings.Builder
	b.WriteString(s.Project)
	b.WriteByte(0)
	for _, a := range s.Command {
		b.WriteString(strconv.Quote(a))
		b.WriteByte(' ')
	}
	b.WriteByte(0)
	b.WriteString(s.Dir)
	b.WriteByte(0)
	for _, k := range sortedKeys(s.Env) {
		fmt.Fprintf(&b, "%q=%q;", k, s.Env[k])
	}
	return b.String()
}

// withDefaults fills the fields a pool cannot do without.
func (s Spec) withDefaults() Spec {
	if s.Workers < 0 {
		s.Workers = 0
	}
	if s.BasePort <= 0 {
		s.BasePort = 9101
	}
	if s.Health.Path == "" {
		s.Health.Path = "/_health"
	}
	if s.Health.Method == "" {
		s.Health.Method = "GET"
	}
	if s.Health.Interval <= 0 {
		s.Health.Interval = 5 * time.Second
	}
	if s.Health.Timeout <= 0 {
		s.Health.Timeout = 2 * time.Second
	}
	if s.Health.StartTimeout <= 0 {
		s.Health.StartTimeout = time.Minute
	}
	if s.Health.Fails <= 0 {
		s.Health.Fails = 3
	}
	if s.StopGrace <= 0 {
		s.StopGrace = 10 * time.Second
	}
	if s.Drain <= 0 {
		s.Drain = 30 * time.Second
	}
	return s
}
