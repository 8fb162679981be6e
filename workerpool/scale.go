package workerpool

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/autoscale"
)

// scaleTick is how often a pool with a scaling policy looks at its load.
const scaleTick = 250 * time.Millisecond

// load counts what a scaling policy observes of a pool's requests.
type load struct {
	waiting     atomic.Int64 // requests waiting for a ready worker
	completed   atomic.Int64
	latencySum  atomic.Int64 // nanoseconds
	lastRequest atomic.Int64 // unix nanoseconds
}

// RequestStarted notes that a request for the pool arrived at began.
func (p *Pool) RequestStarted(began time.Time) {
	p.load.lastRequest.Store(began.UnixNano())
}

// RequestDone notes that a request for the pool that arrived at began
// ended after took.
func (p *Pool) RequestDone(began time.Time, took time.Duration) {
	p.load.completed.Add(1)
	p.load.latencySum.Add(int64(took))
	p.load.lastRequest.Store(began.Add(took).UnixNano())
}

// EnterQueue counts a request that waits for a ready worker, unless max
// (when positive) are waiting already; it reports whether it counted it.
func (p *Pool) EnterQueue(max int) bool {
	if n := p.load.waiting.Add(1); max > 0 && n > int64(max) {
		p.load.waiting.Add(-1)
		return false
	}
	return true
}

// LeaveQueue counts a waiting request as no longer waiting.
func (p *Pool) LeaveQueue() { p.load.waiting.Add(-1) }

// Waiting returns the requests waiting for a ready worker.
func (p *Pool) Waiting() int { return int(p.load.waiting.Load()) }

// Wake starts a worker at once if the pool has none, as after an idle
// stop; the scaling policy then takes it from there.
func (p *Pool) Wake() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !p.started || len(p.workers) > 0 {
		return
	}
	n := 1
	if p.spec.Scaling != nil {
		n = max(1, p.spec.Scaling.Min)
	}
	p.logger.Info("waking worker pool", zap.Int("workers", n))
	p.hooks.scaled(0, n, "wake")
	p.scaleLocked(n, "wake")
}

// startScalingLocked starts the scaling loop of the current spec, stopping
// any earlier one.
func (p *Pool) startScalingLocked() {
	if p.stopScaling != nil {
		p.stopScaling()
		p.stopScaling = nil
	}
	if p.spec.Scaling == nil {
		return
	}
	policy, err := autoscale.New(*p.spec.Scaling)
	if err != nil {
		p.logger.Error("not autoscaling: bad scaling settings", zap.Error(err))
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	p.stopScaling = cancel
	go p.scaleLoop(ctx, policy)
}

// scaleLoop asks the policy for the worker count on every tick until ctx
// is done.
func (p *Pool) scaleLoop(ctx context.Context, policy *autoscale.Policy) {
	ticker := time.NewTicker(scaleTick)
	defer ticker.Stop()
	var lastCompleted, lastLatency int64
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			completed, latency := p.load.completed.Load(), p.load.latencySum.Load()
			obs := p.observe(now)
			obs.Completed = int(completed - lastCompleted)
			obs.LatencySum = time.Duration(latency - lastLatency)
			lastCompleted, lastLatency = completed, latency
			d := policy.Observe(obs)
			p.applyDecision(d, obs.Ready+obs.Starting)
		}
	}
}

// observe samples the pool for the policy.
func (p *Pool) observe(now time.Time) autoscale.Observation {
	p.mu.Lock()
	defer p.mu.Unlock()
	obs := autoscale.Observation{At: now, Inflight: int(p.load.waiting.Load())}
	if last := p.load.lastRequest.Load(); last > 0 {
		obs.LastRequest = time.Unix(0, last)
	}
	for _, w := range p.workers {
		obs.Inflight += int(w.inflight.Load())
		switch w.currentState() {
		case StateReady:
			obs.Ready++
		case StateStarting, StateBackoff, StateUnhealthy:
			obs.Starting++
		}
	}
	return obs
}

// applyDecision moves the pool to the policy's worker count.
func (p *Pool) applyDecision(d autoscale.Decision, current int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || d.Target == len(p.workers) {
		return
	}
	from := len(p.workers)
	p.logger.Info("autoscaling worker pool",
		zap.Int("from", from),
		zap.Int("to", d.Target),
		zap.String("reason", d.Reason),
		zap.Bool("burst", d.Burst))
	p.hooks.scaled(from, d.Target, d.Reason)
	p.spec.Workers = d.Target
	p.scaleLocked(d.Target, "autoscale: "+d.Reason)
}

// WarmShare returns the share of traffic, from 0 to 1, that a worker ready
// since readySince gets at now, growing evenly over warmUp.
func WarmShare(readySince, now time.Time, warmUp time.Duration) float64 {
	if warmUp <= 0 || readySince.IsZero() {
		return 1
	}
	age := now.Sub(readySince)
	if age >= warmUp {
		return 1
	}
	return max(0, float64(age)/float64(warmUp))
}
