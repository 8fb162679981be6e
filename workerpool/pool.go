package workerpool

import (
	"context"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Pool keeps a number of workers of one command running.
type Pool struct {
	logger *zap.Logger
	client *http.Client
	ctx    context.Context
	cancel context.CancelFunc

	ready atomic.Pointer[readySet]

	hooks  Hooks
	load   load
	warmUp atomic.Int64

	mu       sync.Mutex
	spec     Spec
	identity string
	workers  []*Worker
	incoming map[*Worker]bool
	gen      int
	rolling  bool
	rollWhy  string
	since    time.Time

	stopScaling context.CancelFunc
	started     bool
	closed      bool
	changed     chan struct{}
	stopping    sync.WaitGroup
}

// readySet is an immutable snapshot of the workers that take traffic.
type readySet struct {
	workers []*Worker
	addrs   []string
	byAddr  map[string]*Worker
}

// New returns a pool for spec that starts nothing until Start. Logs go to
// logger, with the project's name added; hooks hear of worker events.
func New(spec Spec, logger *zap.Logger, hooks Hooks) *Pool {
	spec = spec.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		logger: logger.With(zap.String("project", spec.Project)),
		client: &http.Client{
			Transport: &http.Transport{
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     time.Minute,
				DisableCompression:  true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		hooks:    hooks,
		ctx:      ctx,
		cancel:   cancel,
		spec:     spec,
		identity: spec.Identity(),
		incoming: make(map[*Worker]bool),
		changed:  make(chan struct{}),
	}
	p.ready.Store(&readySet{})
	p.warmUp.Store(int64(spec.WarmUp))
	return p
}

// Project returns the name of the pool's project.
func (p *Pool) Project() string { return p.currentSpec().Project }

// Spec returns the pool's current spec.
func (p *Pool) Spec() Spec { return p.currentSpec() }

func (p *Pool) currentSpec() Spec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spec
}

// Start spawns the pool's workers. Starting a started pool does nothing.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.since = time.Now()
	p.logger.Info("starting worker pool",
		zap.Int("workers", p.spec.Workers),
		zap.Strings("command", p.spec.Command))
	p.scaleLocked(p.spec.Workers, "start")
	p.startScalingLocked()
}

// Reconfigure applies spec to the running pool. Health settings, ports,
// grace periods and the worker count take effect at once: the pool grows
// or shrinks, keeping the workers it has. If the command, its directory or
// its environment changed, the workers are replaced one at a time: a new
// worker starts, and once it is ready it takes the old one's place, which
// drains and stops.
func (p *Pool) Reconfigure(spec Spec) {
	spec = spec.withDefaults()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	old := p.spec
	p.spec = spec
	p.warmUp.Store(int64(spec.WarmUp))
	id := spec.Identity()
	changed := id != p.identity
	p.identity = id
	if !p.started {
		return
	}

	// a scaled pool keeps the count it has, within the new bounds
	if spec.Scaling != nil {
		n := len(p.workers)
		if n > 0 {
			n = min(max(n, spec.Scaling.Min, 1), spec.Scaling.Max)
		}
		spec.Workers = n
		p.spec.Workers = n
	}
	if !reflect.DeepEqual(old.Scaling, spec.Scaling) {
		p.startScalingLocked()
	}

	// a new generation first, so that workers added below start as part
	// of it and are not replaced again
	if changed {
		p.rollLocked("command, directory or environment changed")
	}
	if len(p.workers) != spec.Workers {
		p.scaleLocked(spec.Workers, "config change")
	}
}

// Restart replaces every worker, one at a time, as Reconfigure does when
// the command changed.
func (p *Pool) Restart(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !p.started {
		return
	}
	p.rollLocked(reason)
}

// Scale sets the number of workers to n.
func (p *Pool) Scale(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || n < 0 {
		return
	}
	p.spec.Workers = n
	if p.started {
		p.scaleLocked(n, "scale")
	}
}

// Since returns when the pool's current generation of workers was begun:
// when it started, or when its last replacement of all workers began.
func (p *Pool) Since() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.since
}

// Workers returns the number of workers the pool keeps running.
func (p *Pool) Workers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spec.Workers
}

// newWorkerLocked makes a worker of the current generation for slot index;
// the caller starts it.
func (p *Pool) newWorkerLocked(index int) *Worker {
	w := &Worker{
		Index:  index,
		id:     strconv.Itoa(index),
		pool:   p,
		gen:    p.gen,
		state:  StateStarting,
		stopCh: make(chan struct{}),
		done:   make(chan struct{}),
	}
	w.logger = p.logger.With(zap.Int("worker", index))
	return w
}

// scaleLocked starts or stops slots until n run. The newest slots stop
// first, after draining.
func (p *Pool) scaleLocked(n int, reason string) {
	if n != len(p.workers) {
		p.logger.Info("scaling worker pool",
			zap.Int("from", len(p.workers)),
			zap.Int("to", n),
			zap.String("reason", reason))
	}
	for len(p.workers) < n {
		w := p.newWorkerLocked(len(p.workers))
		p.workers = append(p.workers, w)
		go w.run()
	}
	for len(p.workers) > n {
		last := len(p.workers) - 1
		w := p.workers[last]
		p.workers = p.workers[:last]
		p.retire(w, "scaled down", p.spec.Drain)
	}
	p.refreshReadyLocked()
}

// rollLocked starts replacing every worker of an older generation, unless
// a replacement is under way already, which then takes the new generation
// into account.
func (p *Pool) rollLocked(reason string) {
	p.gen++
	p.since = time.Now()
	p.rollWhy = reason
	p.logger.Info("replacing workers one at a time", zap.String("reason", reason))
	p.refreshReadyLocked()
	if p.rolling {
		return
	}
	p.rolling = true
	go p.roll()
}

// roll replaces outdated workers one at a time: it starts a new worker for
// the slot, waits until it is ready, swaps it in and lets the old one
// drain and stop.
func (p *Pool) roll() {
	for {
		p.mu.Lock()
		old := p.outdatedLocked()
		if p.closed || old == nil {
			p.rolling = false
			if !p.closed {
				p.logger.Info("all workers replaced")
			}
			p.mu.Unlock()
			return
		}
		fresh := p.newWorkerLocked(old.Index)
		p.incoming[fresh] = true
		reason := p.rollWhy
		p.mu.Unlock()

		go fresh.run()
		ready := p.waitFor(fresh, old)

		p.mu.Lock()
		delete(p.incoming, fresh)
		if p.closed {
			// Close stopped the new worker along with the others
			p.rolling = false
			p.mu.Unlock()
			return
		}
		pos := slices.Index(p.workers, old)
		if !ready || pos < 0 {
			// superseded, or the slot was scaled away meanwhile
			p.retire(fresh, "replacement no longer needed", 0)
		} else {
			p.workers[pos] = fresh
			p.retire(old, reason, p.spec.Drain)
		}
		p.refreshReadyLocked()
		p.mu.Unlock()
	}
}

// outdatedLocked returns the first worker of an older generation, or nil.
func (p *Pool) outdatedLocked() *Worker {
	for _, w := range p.workers {
		if w.gen != p.gen {
			return w
		}
	}
	return nil
}

// waitFor waits until the new worker w is ready to take the place of old,
// and reports false if the pool closed, moved on to a newer generation or
// dropped old's slot first.
func (p *Pool) waitFor(w, old *Worker) bool {
	for {
		p.mu.Lock()
		changed := p.changed
		current := !p.closed && w.gen == p.gen && slices.Contains(p.workers, old)
		p.mu.Unlock()
		if !current {
			return false
		}
		if w.isReady() {
			return true
		}
		<-changed
	}
}

// retire stops w in the background.
func (p *Pool) retire(w *Worker, reason string, drain time.Duration) {
	p.stopping.Add(1)
	w.stop(reason, drain)
	go func() {
		defer p.stopping.Done()
		<-w.done
	}()
}

// Close stops every worker, for reason: each leaves rotation at once,
// lets its requests in flight finish for at most drain, then gets SIGTERM
// and, after the stop grace, SIGKILL. With wait, Close returns once every
// process has exited; otherwise it returns at once.
func (p *Pool) Close(reason string, drain time.Duration, wait bool) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		if wait {
			p.stopping.Wait()
		}
		return
	}
	p.closed = true
	workers := p.workers
	p.workers = nil
	for _, w := range workers {
		p.retire(w, reason, drain)
	}
	for w := range p.incoming {
		p.retire(w, reason, 0)
	}
	p.refreshReadyLocked()
	p.mu.Unlock()
	p.logger.Info("stopping worker pool", zap.String("reason", reason))

	finish := func() {
		p.stopping.Wait()
		p.cancel()
		p.client.CloseIdleConnections()
	}
	if wait {
		finish()
	} else {
		go finish()
	}
}

// Ready returns the workers that take traffic, in index order. The slice
// is shared: do not modify it.
func (p *Pool) Ready() []*Worker { return p.ready.Load().workers }

// ReadyWorkers returns the ready workers and their dial addresses, from
// one snapshot, in index order. The slices are shared: do not modify them.
func (p *Pool) ReadyWorkers() ([]*Worker, []string) {
	rs := p.ready.Load()
	return rs.workers, rs.addrs
}

// WarmUp returns how long a newly ready worker gets a reduced share of the
// traffic; 0 means none.
func (p *Pool) WarmUp() time.Duration { return time.Duration(p.warmUp.Load()) }

// ReadyAddrs returns the dial addresses of the ready workers, in index
// order. The slice is shared: do not modify it.
func (p *Pool) ReadyAddrs() []string { return p.ready.Load().addrs }

// Lookup returns the ready worker at dial address addr, or nil.
func (p *Pool) Lookup(addr string) *Worker { return p.ready.Load().byAddr[addr] }

// WaitReady waits until the pool has a ready worker, ctx is done or max
// has passed, and reports whether a worker is ready.
func (p *Pool) WaitReady(ctx context.Context, max time.Duration) bool {
	timer := time.NewTimer(max)
	defer timer.Stop()
	for {
		p.mu.Lock()
		changed := p.changed
		p.mu.Unlock()
		if len(p.Ready()) > 0 {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		}
	}
}

// refreshReady rebuilds the ready set and wakes those waiting on it.
func (p *Pool) refreshReady() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refreshReadyLocked()
}

func (p *Pool) refreshReadyLocked() {
	rs := &readySet{byAddr: make(map[string]*Worker)}
	for _, w := range p.workers {
		if !w.isReady() {
			continue
		}
		addr := w.Addr()
		if addr == "" {
			continue
		}
		rs.workers = append(rs.workers, w)
		rs.addrs = append(rs.addrs, addr)
		rs.byAddr[addr] = w
	}
	p.ready.Store(rs)
	close(p.changed)
	p.changed = make(chan struct{})
}

// Live reports whether the pool has a worker that is ready or on its way
// there: not every worker is failed or stopped. A pool that is not live
// cannot serve a request soon.
func (p *Pool) Live() bool {
	if len(p.Ready()) > 0 {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started && !p.closed {
		return true
	}
	if len(p.workers) == 0 && !p.closed {
		// stopped for idleness, or scaled to zero: it wakes on demand
		return p.spec.Scaling != nil
	}
	for _, w := range p.workers {
		switch w.currentState() {
		case StateStarting, StateReady, StateUnhealthy, StateBackoff:
			return true
		}
	}
	return len(p.incoming) > 0
}

// Status is a snapshot of a pool, for health output.
type Status struct {
	Project string         `json:"project"`
	Ready   int            `json:"ready"`
	Workers []WorkerStatus `json:"workers"`
}

// Status returns a snapshot of the pool and its workers.
func (p *Pool) Status() Status {
	p.mu.Lock()
	workers := append([]*Worker(nil), p.workers...)
	for w := range p.incoming {
		workers = append(workers, w)
	}
	project := p.spec.Project
	p.mu.Unlock()
	st := Status{Project: project, Ready: len(p.Ready()), Workers: []WorkerStatus{}}
	for _, w := range workers {
		st.Workers = append(st.Workers, w.Status())
	}
	return st
}
