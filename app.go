package oxianhv

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

func init() {
	caddy.RegisterModule(new(App))
}

// pools holds the running worker pools of the process, keyed by project
// name. It outlives config reloads: a reload that keeps a project keeps its
// pool, and the pool applies the new settings, keeping its processes
// unless their command, directory or environment changed.
var pools = caddy.NewUsagePool()

// sweepOnce makes the first start of the process look for workers left
// behind by an earlier run.
var sweepOnce sync.Once

// App is the `oxian` app: it owns the worker pools that the `oxian_hv`
// handlers of a config use. Handlers register their pools while they are
// provisioned; the app starts them, or takes over the running pool from
// the previous config, when Caddy starts the config, so that validating a
// config starts no process. It needs no configuration of its own.
type App struct {
	logger *zap.Logger

	mu       sync.Mutex
	handles  map[string]*poolHandle
	acquired []string
	started  chan struct{}
	running  bool
}

// poolHandle is a handler's way to its pool, which exists only once the
// app has started.
type poolHandle struct {
	spec    workerpool.Spec
	pool    atomic.Pointer[workerpool.Pool]
	started <-chan struct{}
}

// current returns the pool, waiting for the app to start for at most as
// long as ctx allows; nil means the app has not started.
func (ph *poolHandle) current(ctx context.Context) *workerpool.Pool {
	if p := ph.pool.Load(); p != nil {
		return p
	}
	select {
	case <-ph.started:
	case <-ctx.Done():
	}
	return ph.pool.Load()
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "oxian",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up the app.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.handles = make(map[string]*poolHandle)
	a.started = make(chan struct{})
	return nil
}

// register records the pool a handler needs and returns the handle
// through which it reaches it. Handlers of the same project share its
// pool, so they must agree on what it runs.
func (a *App) register(spec workerpool.Spec) (*poolHandle, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ph, ok := a.handles[spec.Project]; ok {
		if ph.spec.Identity() != spec.Identity() || ph.spec.Workers != spec.Workers {
			return nil, fmt.Errorf("project %s is configured twice with different workers; "+
				"give each oxian_hv its own project name", spec.Project)
		}
		return ph, nil
	}
	ph := &poolHandle{spec: spec, started: a.started}
	a.handles[spec.Project] = ph
	return ph, nil
}

// Start starts the registered pools, or takes over those the previous
// config already runs and applies the new settings to them.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer close(a.started)

	sweepOnce.Do(func() { workerpool.SweepLeftovers(a.logger) })

	for _, ph := range a.handles {
		if err := a.acquireLocked(ph); err != nil {
			return err
		}
	}
	a.running = true
	return nil
}

// acquireLocked starts the pool of ph, or takes it over from the previous
// config.
func (a *App) acquireLocked(ph *poolHandle) error {
	spec := ph.spec
	val, loaded, err := pools.LoadOrNew(spec.Project, func() (caddy.Destructor, error) {
		return &poolEntry{Pool: workerpool.New(spec, a.logger, poolHooks(spec.Project))}, nil
	})
	if err != nil {
		return fmt.Errorf("starting pool of project %s: %v", spec.Project, err)
	}
	a.acquired = append(a.acquired, spec.Project)
	pool := val.(*poolEntry).Pool
	if loaded {
		pool.Reconfigure(spec)
		a.logger.Info("keeping running worker pool",
			zap.String("project", spec.Project),
			zap.Int("workers", spec.Workers))
	} else {
		pool.Start()
	}
	ph.pool.Store(pool)
	return nil
}

// registerNow registers a pool while the config runs, for a project
// created on demand, and starts it at once if the app has started.
func (a *App) registerNow(spec workerpool.Spec) (*poolHandle, error) {
	ph, err := a.register(spec)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running && ph.pool.Load() == nil {
		if err := a.acquireLocked(ph); err != nil {
			return nil, err
		}
	}
	return ph, nil
}

// Stop begins the shutdown of the pools when Caddy exits: each stops
// taking requests, lets those in flight finish for at most its drain
// timeout, and stops its workers. On a config reload it does nothing:
// pools stop when no config uses them any more.
func (a *App) Stop() error {
	if !caddy.Exiting() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ph := range a.handles {
		if p := ph.pool.Load(); p != nil {
			p.Close("shutdown", ph.spec.Drain, false)
		}
	}
	return nil
}

// Cleanup lets go of the pools this config used; a pool that no config
// uses any more drains and stops.
func (a *App) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, key := range a.acquired {
		if _, err := pools.Delete(key); err != nil {
			a.logger.Error("releasing worker pool", zap.Error(err))
		}
	}
	a.acquired = nil
	return nil
}

// poolEntry puts a pool in the usage pool.
type poolEntry struct {
	*workerpool.Pool
}

// Destruct stops the pool once no config uses it: when Caddy exits it
// waits for the workers to end; after a reload that dropped the project it
// lets them drain in the background.
func (pe *poolEntry) Destruct() error {
	drain := pe.Spec().Drain
	if caddy.Exiting() {
		pe.Close("shutdown", drain, true)
		return nil
	}
	pe.Close("project left the config", drain, false)
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*poolEntry)(nil)
)
