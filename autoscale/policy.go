// Package autoscale decides how many workers a pool should run.
//
// # Model
//
// The caller samples its pool on a regular tick (about once a second; well
// below BurstWindow) into an [Observation] and passes it to
// [Policy.Observe], which returns a [Decision]: the worker count the pool
// should move to now, and a short human reason. The policy is pure: it
// starts no goroutines and never reads the clock. Time comes only from
// Observation.At, so tests drive it with a fake clock. It assumes the
// caller acts on each decision: a Target above the current count
// (Ready+Starting) means "start that many more", below it means "stop
// that many".
//
// The policy keeps the observations of the last StableWindow and derives
// three signals from them, after Knative's KPA (stable and panic windows),
// with Oxian's latency trigger on top:
//
//   - stable load: the average in-flight count over StableWindow (60s);
//   - burst load: the average in-flight count over BurstWindow (6s),
//     which reacts to a sudden surge;
//   - latency: the average latency of the requests completed in
//     StableWindow (but since the last scale-up, so a scale-up is judged
//     on what came after it).
//
// "In-flight per worker" always divides by the ready workers (at least 1):
// starting workers serve nothing yet.
//
// The rules, in the order Observe applies them:
//
//  1. Idle. With IdleTTL > 0, no request in flight and no request for
//     IdleTTL (a pool that never served one counts from its first
//     observation), the target is 0, reason "idle for 5m0s". This goes
//     below Min: as the spec says, idle workers stop and restart on demand.
//     The pool stays at 0 until a request arrives (Inflight > 0, or a
//     LastRequest newer than the one it went idle on); it then wakes to
//     max(1, Min, ceil(Inflight/target)), reason "wake", ignoring
//     cooldowns. A pool at zero for any other reason (Min 0) also wakes
//     when Inflight > 0, so Inflight must count requests waiting for a
//     worker.
//  2. Bounds. Above Max the target is Max at once. Below Min the target is
//     at least Min, ignoring the up cooldown.
//  3. Burst. When the burst-window in-flight per ready worker exceeds
//     TargetInflightPerWorker*BurstThreshold, the pool enters burst mode
//     until StableWindow after the last sample that did so (Knative's
//     panic mode). In burst mode the target is at least
//     ceil(burst in-flight / target), the up cooldown is ignored, and the
//     pool never scales down.
//  4. Scale up when the stable in-flight per ready worker exceeds the
//     target, to max(ceil(stable in-flight / target), Ready+1); or when the
//     average latency exceeds MaxAvgLatency, to Ready+1. The latency
//     trigger needs some queueing to act on: it only counts while the
//     stable in-flight is at least one per ready worker, since extra
//     workers cannot speed up requests that are slow on an idle worker.
//     The largest signal wins. Scale-ups respect ScaleUpCooldown (since
//     the last scale-up) except in burst mode, and the target is capped at
//     Max ("at max"). Workers already starting count as capacity on the
//     way: the "+1" is over the ready workers, so the policy waits for
//     them rather than piling on more.
//  5. Starting cap. No increase takes the starting workers above
//     MaxStarting (cold-start stampedes, Passenger #1160): the increase is
//     cut so that Starting+added ≤ MaxStarting ("starting cap"); the next
//     tick adds more once some are ready.
//  6. Scale down one worker at a time, when the stable in-flight would fit
//     in one fewer worker with 20% headroom (avg ≤ target*(current-1)*0.8),
//     no worker is starting, the pool is not in burst mode, and
//     ScaleDownCooldown has passed since the last scale in either direction
//     (and since the first observation, so a fresh policy does not shrink a
//     pool on its first quiet sample). Load never takes the pool below
//     max(Min, 1): only idle shutdown reaches zero.
//
// A Policy is not safe for concurrent use; one ticker goroutine should own
// it.
package autoscale

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults for the zero values of [Config].
const (
	DefaultTargetInflightPerWorker = 10.0
	DefaultScaleUpCooldown         = 30 * time.Second
	DefaultScaleDownCooldown       = 60 * time.Second
	DefaultStableWindow            = 60 * time.Second
	DefaultBurstWindow             = 6 * time.Second
	DefaultBurstThreshold          = 2.0
	DefaultMaxStarting             = 2
)

// scaleDownHeadroom is the hysteresis of scale-down: the load must fit in
// one fewer worker at this fraction of the target.
const scaleDownHeadroom = 0.8

// maxSamples bounds the observations kept, whatever the tick rate.
const maxSamples = 4096

// Config configures a [Policy]. Zero values get the defaults documented on
// each field (see the Default constants); negative values are errors.
type Config struct {
	// Min and Max bound the worker count. Load never takes the pool
	// below max(Min, 1); idle shutdown (IdleTTL) takes it to 0 regardless
	// of Min. Min 0 lets a pool start empty and wake on the first request.
	Min, Max int

	// TargetInflightPerWorker is the in-flight requests a ready worker
	// should carry on average (default 10).
	TargetInflightPerWorker float64

	// MaxAvgLatency scales up when the average latency over StableWindow
	// exceeds it (0 = off).
	MaxAvgLatency time.Duration

	// ScaleUpCooldown is the least time between two scale-ups outside
	// burst mode (default 30s). ScaleDownCooldown is the least time
	// between any scale and the next scale-down (default 60s).
	ScaleUpCooldown, ScaleDownCooldown time.Duration

	// StableWindow is the averaging window (default 60s), and how long
	// burst mode lasts after its last trigger.
	StableWindow time.Duration

	// BurstWindow is the short window that reacts to a sudden surge
	// (default 6s, or StableWindow if that is shorter). It must not exceed
	// StableWindow.
	BurstWindow time.Duration

	// BurstThreshold enters burst mode when the burst-window in-flight per
	// worker exceeds TargetInflightPerWorker*BurstThreshold (default 2; at
	// least 1).
	BurstThreshold float64

	// MaxStarting caps the workers starting at once (default 2).
	MaxStarting int

	// IdleTTL stops the whole pool (target 0, below Min) when no request
	// has been in flight or arrived for that long (0 = off).
	IdleTTL time.Duration
}

// withDefaults returns c with its zero values replaced by the defaults.
func (c Config) withDefaults() Config {
	if c.TargetInflightPerWorker == 0 {
		c.TargetInflightPerWorker = DefaultTargetInflightPerWorker
	}
	if c.ScaleUpCooldown == 0 {
		c.ScaleUpCooldown = DefaultScaleUpCooldown
	}
	if c.ScaleDownCooldown == 0 {
		c.ScaleDownCooldown = DefaultScaleDownCooldown
	}
	if c.StableWindow == 0 {
		c.StableWindow = DefaultStableWindow
	}
	if c.BurstWindow == 0 {
		c.BurstWindow = min(DefaultBurstWindow, c.StableWindow)
	}
	if c.BurstThreshold == 0 {
		c.BurstThreshold = DefaultBurstThreshold
	}
	if c.MaxStarting == 0 {
		c.MaxStarting = DefaultMaxStarting
	}
	return c
}

// validate reports every problem of c, naming the fields as the config
// does (snake_case).
func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("autoscale: "+format, args...))
	}
	if c.Min < 0 {
		bad("min must not be negative, got %d", c.Min)
	}
	if c.Max < 1 {
		bad("max must be at least 1, got %d", c.Max)
	} else if c.Min > c.Max {
		bad("max (%d) must not be below min (%d)", c.Max, c.Min)
	}
	if !finite(c.TargetInflightPerWorker) || c.TargetInflightPerWorker < 0 {
		bad("target_inflight_per_worker must be positive, got %g", c.TargetInflightPerWorker)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"max_avg_latency", c.MaxAvgLatency},
		{"scale_up_cooldown", c.ScaleUpCooldown},
		{"scale_down_cooldown", c.ScaleDownCooldown},
		{"stable_window", c.StableWindow},
		{"burst_window", c.BurstWindow},
		{"idle_ttl", c.IdleTTL},
	} {
		if d.v < 0 {
			bad("%s must not be negative, got %s", d.name, d.v)
		}
	}
	if !finite(c.BurstThreshold) || (c.BurstThreshold != 0 && c.BurstThreshold < 1) {
		bad("burst_threshold must be at least 1, got %g", c.BurstThreshold)
	}
	if c.MaxStarting < 0 {
		bad("max_starting must not be negative, got %d", c.MaxStarting)
	}
	if d := c.withDefaults(); c.BurstWindow > 0 && c.StableWindow >= 0 && d.BurstWindow > d.StableWindow {
		bad("burst_window (%s) must not exceed stable_window (%s)", d.BurstWindow, d.StableWindow)
	}
	return errors.Join(errs...)
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Observation is one sample of a pool, taken by the caller every tick.
type Observation struct {
	At time.Time // when the sample was taken; must not go backwards

	Ready, Starting int // workers serving, and workers started but not yet ready

	// Inflight counts the requests in flight: from the start of proxying
	// until the response body has been sent, including requests waiting
	// for a worker.
	Inflight int

	Completed   int           // requests completed since the previous observation
	LatencySum  time.Duration // summed latency of those completed requests
	LastRequest time.Time     // start or end of the latest request; zero if none yet
}

// Decision is the worker count the pool should move to now.
type Decision struct {
	Target int    // desired Ready+Starting
	Reason string // short, for humans and logs
	Burst  bool   // burst mode is on
}

// Policy turns observations into decisions. See the package doc for the
// rules.
type Policy struct {
	cfg     Config
	samples ring

	started bool
	first   time.Time // At of the first observation
	last    time.Time // At of the latest observation

	lastUp, lastDown time.Time
	burstUntil       time.Time

	idle    bool
	idleRef time.Time // the last activity when the pool went idle
}

// New returns a policy for cfg, or an error naming each invalid field.
func New(cfg Config) (*Policy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Policy{cfg: cfg.withDefaults()}, nil
}

// Config returns the effective configuration, defaults filled in.
func (p *Policy) Config() Config { return p.cfg }

// Observe records o and returns the desired worker count now.
func (p *Policy) Observe(o Observation) Decision {
	c := p.cfg
	now := o.At
	if !p.started {
		p.started = true
		p.first = now
		p.lastDown = now // a fresh policy waits ScaleDownCooldown before shrinking
	} else if now.Before(p.last) {
		now = p.last // a clock going backwards: treat as no time passed
	}
	p.last = now

	ready, starting, inflight := max(o.Ready, 0), max(o.Starting, 0), max(o.Inflight, 0)
	current := ready + starting
	p.samples.push(sample{
		at:         now,
		inflight:   inflight,
		completed:  max(o.Completed, 0),
		latencySum: max(o.LatencySum, 0),
	})
	p.samples.dropUntil(now.Add(-c.StableWindow))

	// 1. Idle shutdown and wake.
	activity := o.LastRequest
	if activity.Before(p.first) {
		activity = p.first
	}
	if p.idle {
		if inflight == 0 && !o.LastRequest.After(p.idleRef) {
			return Decision{Target: 0, Reason: "idle for " + roundDuration(now.Sub(activity))}
		}
		p.idle = false
		return p.wake(now, current, starting, inflight)
	}
	if c.IdleTTL > 0 && inflight == 0 && now.Sub(activity) >= c.IdleTTL {
		p.idle = true
		p.idleRef = activity
		p.burstUntil = time.Time{}
		return Decision{Target: 0, Reason: "idle for " + roundDuration(now.Sub(activity))}
	}
	if current == 0 && inflight > 0 {
		return p.wake(now, current, starting, inflight)
	}

	// 2. Above Max: shrink at once.
	if current > c.Max {
		p.lastDown = now
		return Decision{Target: c.Max, Reason: fmt.Sprintf("above max %d", c.Max), Burst: now.Before(p.burstUntil)}
	}

	target := c.TargetInflightPerWorker
	perReady := func(inflight float64) float64 { return inflight / float64(max(ready, 1)) }
	stable, _, _ := p.samples.window(now.Add(-c.StableWindow))
	surge, _, _ := p.samples.window(now.Add(-c.BurstWindow))
	latencyFrom := now.Add(-c.StableWindow)
	if p.lastUp.After(latencyFrom) {
		latencyFrom = p.lastUp
	}
	_, completed, latencySum := p.samples.window(latencyFrom)

	// 3. Burst mode.
	burstNow := perReady(surge) > target*c.BurstThreshold
	if burstNow {
		p.burstUntil = now.Add(c.StableWindow)
	}
	burst := now.Before(p.burstUntil)

	// 4. Scale-up signals; the largest wins (burst first on a tie).
	want, why := 0, ""
	consider := func(n int, reason string) {
		if n > want {
			want, why = n, reason
		}
	}
	if burst {
		if burstNow {
			reason := fmt.Sprintf("burst: inflight %.1f per worker > %g", perReady(surge), target*c.BurstThreshold)
			consider(ceilDiv(surge, target), reason)
		} else {
			consider(ceilDiv(surge, target), fmt.Sprintf("burst mode: inflight %.1f per worker", perReady(surge)))
		}
	}
	if perReady(stable) > target {
		consider(max(ceilDiv(stable, target), ready+1),
			fmt.Sprintf("inflight %.1f per worker > target %g", perReady(stable), target))
	}
	if c.MaxAvgLatency > 0 && completed > 0 && perReady(stable) >= 1 {
		if avg := latencySum / time.Duration(completed); avg > c.MaxAvgLatency {
			consider(ready+1, fmt.Sprintf("latency %s > %s", roundLatency(avg), roundLatency(c.MaxAvgLatency)))
		}
	}
	if want > current && current >= c.Max {
		return Decision{Target: current, Reason: fmt.Sprintf("%s; at max %d", why, c.Max), Burst: burst}
	}
	if want > current && !burst && !p.lastUp.IsZero() && now.Sub(p.lastUp) < c.ScaleUpCooldown {
		if current >= c.Min {
			left := c.ScaleUpCooldown - now.Sub(p.lastUp)
			return Decision{Target: current, Reason: why + "; cooldown " + roundDuration(left) + " left"}
		}
		want, why = 0, "" // only the Min bound ignores the cooldown
	}
	if current < c.Min {
		consider(c.Min, fmt.Sprintf("below min %d", c.Min))
	}
	if want > current {
		want = min(want, c.Max)
		// 5. Starting cap.
		room := c.MaxStarting - starting
		if room <= 0 {
			return Decision{Target: current, Reason: fmt.Sprintf("%s; starting cap %d", why, c.MaxStarting), Burst: burst}
		}
		if want-current > room {
			want = current + room
			why += fmt.Sprintf("; starting cap %d", c.MaxStarting)
		}
		p.lastUp = now
		return Decision{Target: want, Reason: why, Burst: burst}
	}
	if why != "" && starting > 0 {
		return Decision{Target: current, Reason: fmt.Sprintf("%s; waiting for %d starting", why, starting), Burst: burst}
	}

	// 6. Scale down, one step at a time.
	floor := max(c.Min, 1)
	fits := current > floor && stable <= target*float64(current-1)*scaleDownHeadroom
	if !fits {
		if current == floor && stable <= target*float64(current-1)*scaleDownHeadroom {
			if c.Min == 0 {
				return Decision{Target: current, Reason: "at 1 worker (only idle_ttl goes to 0)", Burst: burst}
			}
			return Decision{Target: current, Reason: fmt.Sprintf("at min %d", c.Min), Burst: burst}
		}
		reason := fmt.Sprintf("steady: inflight %.1f per worker", perReady(stable))
		return Decision{Target: current, Reason: reason, Burst: burst}
	}
	why = "load fits in " + workers(current-1)
	switch lastScale := later(p.lastUp, p.lastDown); {
	case burst:
		return Decision{Target: current, Reason: why + "; burst mode", Burst: true}
	case starting > 0:
		return Decision{Target: current, Reason: fmt.Sprintf("%s; waiting for %d starting", why, starting)}
	case now.Sub(lastScale) < c.ScaleDownCooldown:
		left := c.ScaleDownCooldown - now.Sub(lastScale)
		return Decision{Target: current, Reason: why + "; cooldown " + roundDuration(left) + " left"}
	}
	p.lastDown = now
	return Decision{Target: current - 1, Reason: why}
}

// wake returns the decision for a pool woken by a request: at least
// max(1, Min, ceil(inflight/target)), within Max and the starting cap,
// ignoring cooldowns.
func (p *Policy) wake(now time.Time, current, starting, inflight int) Decision {
	c := p.cfg
	want := min(max(1, c.Min, ceilDiv(float64(inflight), c.TargetInflightPerWorker)), c.Max)
	if want <= current {
		return Decision{Target: current, Reason: "wake"}
	}
	why := "wake"
	room := max(c.MaxStarting-starting, 0)
	if want-current > room {
		want = current + room
		why += fmt.Sprintf("; starting cap %d", c.MaxStarting)
	}
	if want > current {
		p.lastUp = now
	}
	return Decision{Target: want, Reason: why}
}

// workers formats a worker count: "1 worker", "3 workers".
func workers(n int) string {
	if n == 1 {
		return "1 worker"
	}
	return fmt.Sprintf("%d workers", n)
}

func ceilDiv(x, y float64) int { return int(math.Ceil(x / y)) }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// roundDuration formats d for a reason: whole seconds from a second up.
func roundDuration(d time.Duration) string {
	if d >= time.Second {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}

// roundLatency formats a latency: whole milliseconds from a millisecond up.
func roundLatency(d time.Duration) string {
	if d >= time.Millisecond {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// sample is what the policy keeps of an observation.
type sample struct {
	at         time.Time
	inflight   int
	completed  int
	latencySum time.Duration
}

// ring holds the samples of the stable window, oldest first. It grows up
// to maxSamples, then overwrites its oldest sample.
type ring struct {
	buf     []sample
	head, n int
}

func (r *ring) at(i int) *sample { return &r.buf[(r.head+i)%len(r.buf)] }

func (r *ring) push(s sample) {
	if r.n == len(r.buf) {
		if len(r.buf) >= maxSamples {
			r.buf[r.head] = s
			r.head = (r.head + 1) % len(r.buf)
			return
		}
		buf := make([]sample, min(max(16, 2*len(r.buf)), maxSamples))
		for i := range r.n {
			buf[i] = *r.at(i)
		}
		r.buf, r.head = buf, 0
	}
	*r.at(r.n) = s
	r.n++
}

// dropUntil drops the samples taken at or before t.
func (r *ring) dropUntil(t time.Time) {
	for r.n > 0 && !r.at(0).at.After(t) {
		r.head = (r.head + 1) % len(r.buf)
		r.n--
	}
}

// window returns, over the samples taken after t, the average in-flight
// count and the completed requests with their summed latency.
func (r *ring) window(t time.Time) (avgInflight float64, completed int, latencySum time.Duration) {
	n, sum := 0, 0
	for i := r.n - 1; i >= 0; i-- {
		s := r.at(i)
		if !s.at.After(t) {
			break
		}
		n++
		sum += s.inflight
		completed += s.completed
		latencySum += s.latencySum
	}
	if n == 0 {
		return 0, completed, latencySum
	}
	return float64(sum) / float64(n), completed, latencySum
}
