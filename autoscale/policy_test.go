package autoscale

import (
	"math"
	"strings"
	"testing"
	"time"
)

// t0 is the fake clock's epoch; tests pass explicit At times.
var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// at returns t0+d.
func at(d time.Duration) time.Time { return t0.Add(d) }

// fakeClock is advanced by hand.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.now = c.now.Add(d)
	return c.now
}

func mustNew(t *testing.T, cfg Config) *Policy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return p
}

// step observes o and checks the target, that the reason contains want,
// and the burst flag.
func step(t *testing.T, p *Policy, o Observation, target int, want string, burst bool) Decision {
	t.Helper()
	d := p.Observe(o)
	if d.Target != target || !strings.Contains(d.Reason, want) || d.Burst != burst {
		t.Fatalf("at +%s %+v:\n got  %+v\n want Target %d, Reason containing %q, Burst %v",
			o.At.Sub(t0), o, d, target, want, burst)
	}
	return d
}

func TestNewValidation(t *testing.T) {
	bad := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"zero config", Config{}, []string{"max must be at least 1, got 0"}},
		{"negative min", Config{Min: -1, Max: 1}, []string{"min must not be negative"}},
		{"max below min", Config{Min: 3, Max: 2}, []string{"max (2) must not be below min (3)"}},
		{"negative target", Config{Max: 1, TargetInflightPerWorker: -1}, []string{"target_inflight_per_worker"}},
		{"NaN target", Config{Max: 1, TargetInflightPerWorker: math.NaN()}, []string{"target_inflight_per_worker"}},
		{"infinite target", Config{Max: 1, TargetInflightPerWorker: math.Inf(1)}, []string{"target_inflight_per_worker"}},
		{"negative max_avg_latency", Config{Max: 1, MaxAvgLatency: -time.Millisecond},
			[]string{"max_avg_latency must not be negative, got -1ms"}},
		{"negative scale_up_cooldown", Config{Max: 1, ScaleUpCooldown: -1}, []string{"scale_up_cooldown"}},
		{"negative scale_down_cooldown", Config{Max: 1, ScaleDownCooldown: -1}, []string{"scale_down_cooldown"}},
		{"negative stable_window", Config{Max: 1, StableWindow: -1}, []string{"stable_window"}},
		{"negative burst_window", Config{Max: 1, BurstWindow: -1}, []string{"burst_window"}},
		{"negative idle_ttl", Config{Max: 1, IdleTTL: -time.Second}, []string{"idle_ttl must not be negative"}},
		{"burst_threshold below 1", Config{Max: 1, BurstThreshold: 0.5}, []string{"burst_threshold must be at least 1"}},
		{"negative max_starting", Config{Max: 1, MaxStarting: -1}, []string{"max_starting"}},
		{"burst window above stable", Config{Max: 1, StableWindow: 5 * time.Second, BurstWindow: 10 * time.Second},
			[]string{"burst_window (10s) must not exceed stable_window (5s)"}},
		{"burst window above default stable", Config{Max: 1, BurstWindow: 90 * time.Second},
			[]string{"burst_window (1m30s) must not exceed stable_window (1m0s)"}},
		{"all problems reported", Config{Min: -1, Max: 0, IdleTTL: -1, ScaleUpCooldown: -1},
			[]string{"min must", "max must", "idle_ttl", "scale_up_cooldown"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if err == nil {
				t.Fatalf("New(%+v) = %v, nil; want an error", tc.cfg, p)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "autoscale: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}

	for _, cfg := range []Config{
		{Max: 1},
		{Min: 0, Max: 1, IdleTTL: time.Minute},
		{Min: 4, Max: 4},
		{Max: 3, BurstThreshold: 1, StableWindow: 6 * time.Second, BurstWindow: 6 * time.Second},
	} {
		if _, err := New(cfg); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	got := mustNew(t, Config{Min: 1, Max: 4}).Config()
	want := Config{
		Min: 1, Max: 4,
		TargetInflightPerWorker: 10,
		ScaleUpCooldown:         30 * time.Second,
		ScaleDownCooldown:       60 * time.Second,
		StableWindow:            60 * time.Second,
		BurstWindow:             6 * time.Second,
		BurstThreshold:          2,
		MaxStarting:             2,
	}
	if got != want {
		t.Errorf("defaults:\n got  %+v\n want %+v", got, want)
	}

	short := mustNew(t, Config{Max: 1, StableWindow: 3 * time.Second}).Config()
	if short.BurstWindow != 3*time.Second {
		t.Errorf("BurstWindow with a 3s StableWindow = %s, want it clamped to 3s", short.BurstWindow)
	}

	set := Config{Min: 2, Max: 8, TargetInflightPerWorker: 4, MaxAvgLatency: time.Second,
		ScaleUpCooldown: time.Second, ScaleDownCooldown: 2 * time.Second, StableWindow: 30 * time.Second,
		BurstWindow: 3 * time.Second, BurstThreshold: 3, MaxStarting: 5, IdleTTL: time.Minute}
	if got := mustNew(t, set).Config(); got != set {
		t.Errorf("explicit values changed:\n got  %+v\n want %+v", got, set)
	}
}

func TestScaleUpCooldown(t *testing.T) {
	p := mustNew(t, Config{Min: 1, Max: 10})
	// 30 in flight on 2 workers: 15 each, above the target of 10 (but
	// not a burst, which needs more than 20).
	step(t, p, Observation{At: at(0), Ready: 2, Inflight: 30}, 3, "inflight 15.0 per worker > target 10", false)
	// Still over target, but inside the 30s cooldown.
	step(t, p, Observation{At: at(10 * time.Second), Ready: 3, Inflight: 45}, 3, "cooldown 20s left", false)
	step(t, p, Observation{At: at(29 * time.Second), Ready: 3, Inflight: 45}, 3, "cooldown 1s left", false)
	// Cooldown over: stable average (30+45+45+45)/4 = 41.25 needs 5 workers.
	step(t, p, Observation{At: at(30 * time.Second), Ready: 3, Inflight: 45}, 5, "per worker > target 10", false)
}

func TestScaleDownCooldown(t *testing.T) {
	t.Run("steps", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10})
		// A fresh policy waits a full cooldown before shrinking.
		step(t, p, Observation{At: at(0), Ready: 4}, 4, "load fits in 3 workers; cooldown 1m0s left", false)
		step(t, p, Observation{At: at(59 * time.Second), Ready: 4}, 4, "cooldown 1s left", false)
		step(t, p, Observation{At: at(60 * time.Second), Ready: 4}, 3, "load fits in 3 workers", false)
		step(t, p, Observation{At: at(61 * time.Second), Ready: 3}, 3, "cooldown 59s left", false)
		step(t, p, Observation{At: at(119 * time.Second), Ready: 3}, 3, "cooldown 1s left", false)
		step(t, p, Observation{At: at(120 * time.Second), Ready: 3}, 2, "load fits in 2 workers", false)
		step(t, p, Observation{At: at(180 * time.Second), Ready: 2}, 1, "load fits in 1 worker", false)
		step(t, p, Observation{At: at(240 * time.Second), Ready: 1}, 1, "at min 1", false)
	})
	t.Run("after a scale-up", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10})
		step(t, p, Observation{At: at(0), Ready: 1, Inflight: 15}, 2, "inflight 15.0 per worker", false)
		// Load gone at once: (15+0)/2 = 7.5 fits in 1 worker, but the
		// last scale was a second ago.
		step(t, p, Observation{At: at(time.Second), Ready: 2}, 2, "load fits in 1 worker; cooldown 59s left", false)
		step(t, p, Observation{At: at(60 * time.Second), Ready: 2}, 1, "load fits in 1 worker", false)
	})
	t.Run("not while starting", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10, ScaleDownCooldown: time.Second})
		step(t, p, Observation{At: at(0), Ready: 3, Starting: 1}, 4, "waiting for 1 starting", false)
		step(t, p, Observation{At: at(5 * time.Second), Ready: 4}, 3, "load fits in 3 workers", false)
	})
}

func TestScaleDownHysteresis(t *testing.T) {
	for _, tc := range []struct {
		min, ready, inflight int
		target               int
		reason               string
	}{
		{1, 4, 24, 3, "load fits in 3 workers"}, // 24 <= 10*3*0.8
		{1, 4, 25, 4, "steady: inflight 6.2 per worker"},
		{1, 2, 8, 1, "load fits in 1 worker"}, // 8 <= 10*1*0.8
		{1, 2, 9, 2, "steady"},
		{4, 4, 0, 4, "at min 4"},
		{0, 1, 0, 1, "only idle_ttl goes to 0"},
	} {
		p := mustNew(t, Config{Min: tc.min, Max: 10})
		o := Observation{At: at(0), Ready: tc.ready, Inflight: tc.inflight}
		p.Observe(o)
		// A minute later the window holds only the second sample.
		o.At = at(time.Minute)
		if d := p.Observe(o); d.Target != tc.target || !strings.Contains(d.Reason, tc.reason) {
			t.Errorf("min %d, %d ready, %d in flight: got %+v, want Target %d, Reason containing %q",
				tc.min, tc.ready, tc.inflight, d, tc.target, tc.reason)
		}
	}
}

func TestLatencyTrigger(t *testing.T) {
	cfg := Config{Min: 1, Max: 10, MaxAvgLatency: 100 * time.Millisecond}
	t.Run("scales up", func(t *testing.T) {
		p := mustNew(t, cfg)
		// 10 requests averaging 180ms; load (2 per worker) is below target.
		step(t, p, Observation{At: at(0), Ready: 2, Inflight: 4, Completed: 10, LatencySum: 1800 * time.Millisecond},
			3, "latency 180ms > 100ms", false)
		// Judged on what came after the scale-up: 150ms, inside the cooldown.
		step(t, p,
			Observation{At: at(10 * time.Second), Ready: 3, Inflight: 4, Completed: 10, LatencySum: 1500 * time.Millisecond},
			3, "latency 150ms > 100ms; cooldown 20s left", false)
		// After the cooldown: (1500+600)ms/20 = 105ms, still too slow.
		step(t, p,
			Observation{At: at(30 * time.Second), Ready: 3, Inflight: 4, Completed: 10, LatencySum: 600 * time.Millisecond},
			4, "latency 105ms > 100ms", false)
		// Fast again: no scale-up (and a scale-down waits for its cooldown).
		step(t, p,
			Observation{At: at(60 * time.Second), Ready: 4, Inflight: 4, Completed: 10, LatencySum: 500 * time.Millisecond},
			4, "cooldown", false)
	})
	t.Run("ignores slow requests on idle workers", func(t *testing.T) {
		// 0.5 in flight per worker: nothing queues, more workers cannot help.
		p := mustNew(t, cfg)
		d := p.Observe(Observation{At: at(0), Ready: 4, Inflight: 2, Completed: 5, LatencySum: 5 * time.Second})
		if d.Target != 4 || strings.Contains(d.Reason, "latency") {
			t.Errorf("got %+v, want no latency scale-up", d)
		}
	})
	t.Run("off", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10})
		d := p.Observe(Observation{At: at(0), Ready: 2, Inflight: 4, Completed: 10, LatencySum: 10 * time.Second})
		if d.Target != 2 {
			t.Errorf("got %+v with max_avg_latency off, want 2", d)
		}
	})
	t.Run("no completions", func(t *testing.T) {
		p := mustNew(t, cfg)
		d := p.Observe(Observation{At: at(0), Ready: 2, Inflight: 4})
		if d.Target != 2 {
			t.Errorf("got %+v without completed requests, want 2", d)
		}
	})
	t.Run("old samples leave the window", func(t *testing.T) {
		p := mustNew(t, cfg)
		step(t, p, Observation{At: at(0), Ready: 2, Inflight: 4, Completed: 10, LatencySum: 3 * time.Second},
			3, "latency 300ms", false)
		// 61s later: the slow sample is out of the stable window.
		step(t, p,
			Observation{At: at(61 * time.Second), Ready: 3, Inflight: 4, Completed: 10, LatencySum: 500 * time.Millisecond},
			2, "load fits in 2 workers", false)
	})
}

func TestBurst(t *testing.T) {
	p := mustNew(t, Config{Min: 1, Max: 10, ScaleDownCooldown: 5 * time.Second, MaxStarting: 10})
	step(t, p, Observation{At: at(0), Ready: 2, Inflight: 25}, 3, "inflight 12.5 per worker > target 10", false)
	// A surge 2s later, inside the up cooldown: the 6s window averages
	// (25+95)/2 = 60, 30 per ready worker > 2*10.
	step(t, p, Observation{At: at(2 * time.Second), Ready: 2, Starting: 1, Inflight: 95},
		6, "burst: inflight 30.0 per worker > 20", true)
	// Load gone; still burst mode while the new workers start.
	step(t, p, Observation{At: at(3 * time.Second), Ready: 2, Starting: 4}, 6, "waiting for 4 starting", true)
	// Load fits in fewer workers and the down cooldown (5s) is over, but
	// burst mode lasts a stable window (60s) after its last trigger.
	step(t, p, Observation{At: at(10 * time.Second), Ready: 6}, 6, "load fits in 5 workers; burst mode", true)
	step(t, p, Observation{At: at(61 * time.Second), Ready: 6}, 6, "burst mode", true)
	step(t, p, Observation{At: at(62 * time.Second), Ready: 6}, 5, "load fits in 5 workers", false)
	step(t, p, Observation{At: at(63 * time.Second), Ready: 5}, 5, "cooldown 4s left", false)
	step(t, p, Observation{At: at(67 * time.Second), Ready: 5}, 4, "load fits in 4 workers", false)
}

func TestBurstCappedAtMax(t *testing.T) {
	p := mustNew(t, Config{Min: 1, Max: 4, MaxStarting: 10})
	step(t, p, Observation{At: at(0), Ready: 1, Inflight: 200}, 4, "burst: inflight 200.0 per worker > 20", true)
	step(t, p, Observation{At: at(time.Second), Ready: 4, Inflight: 200}, 4, "at max 4", true)
}

func TestStartingCap(t *testing.T) {
	p := mustNew(t, Config{Min: 1, Max: 10})
	// Wants 5 workers but at most 2 may start at once.
	step(t, p, Observation{At: at(0), Ready: 1, Inflight: 50},
		3, "burst: inflight 50.0 per worker > 20; starting cap 2", true)
	step(t, p, Observation{At: at(time.Second), Ready: 1, Starting: 2, Inflight: 50}, 3, "starting cap 2", true)
	step(t, p, Observation{At: at(2 * time.Second), Ready: 2, Starting: 1, Inflight: 50}, 4, "starting cap 2", true)
	step(t, p, Observation{At: at(3 * time.Second), Ready: 4, Inflight: 50}, 5, "burst", true)
	// More starting than the cap (the caller started them): nothing more.
	step(t, p, Observation{At: at(4 * time.Second), Ready: 1, Starting: 3, Inflight: 500}, 4, "starting cap 2", true)
}

func TestIdleAndWake(t *testing.T) {
	cfg := Config{Min: 2, Max: 10, IdleTTL: 5 * time.Minute}
	t.Run("idle to zero below min, then wake", func(t *testing.T) {
		p := mustNew(t, cfg)
		step(t, p, Observation{At: at(0), Ready: 2, LastRequest: at(0)}, 2, "at min 2", false)
		step(t, p, Observation{At: at(5*time.Minute - time.Second), Ready: 2, LastRequest: at(0)}, 2, "at min 2", false)
		step(t, p, Observation{At: at(5 * time.Minute), Ready: 2, LastRequest: at(0)}, 0, "idle for 5m0s", false)
		step(t, p, Observation{At: at(6 * time.Minute), LastRequest: at(0)}, 0, "idle for 6m0s", false)
		// A request arrives: wake to Min.
		step(t, p, Observation{At: at(7 * time.Minute), Inflight: 1, LastRequest: at(7 * time.Minute)}, 2, "wake", false)
		step(t, p,
			Observation{At: at(7*time.Minute + time.Second), Starting: 2, Inflight: 1, LastRequest: at(7 * time.Minute)},
			2, "at min 2", false)
	})
	t.Run("wake on a request that came and went", func(t *testing.T) {
		p := mustNew(t, cfg)
		step(t, p, Observation{At: at(0), Ready: 2, LastRequest: at(-time.Hour)}, 2, "", false)
		step(t, p, Observation{At: at(5 * time.Minute), Ready: 2, LastRequest: at(-time.Hour)}, 0, "idle for 5m0s", false)
		step(t, p, Observation{At: at(6 * time.Minute), LastRequest: at(-time.Hour)}, 0, "idle for 6m0s", false)
		// Between ticks a request arrived and failed (no worker): wake.
		step(t, p, Observation{At: at(7 * time.Minute), LastRequest: at(390 * time.Second)}, 2, "wake", false)
	})
	t.Run("wake sized by load, within the starting cap", func(t *testing.T) {
		p := mustNew(t, Config{Min: 0, Max: 10, IdleTTL: time.Minute})
		step(t, p, Observation{At: at(0), Ready: 1}, 1, "", false)
		step(t, p, Observation{At: at(time.Minute), Ready: 1}, 0, "idle for 1m0s", false)
		step(t, p, Observation{At: at(2 * time.Minute), Inflight: 45, LastRequest: at(2 * time.Minute)},
			2, "wake; starting cap 2", false)
	})
	t.Run("in-flight stream keeps the pool awake", func(t *testing.T) {
		p := mustNew(t, cfg)
		step(t, p, Observation{At: at(0), Ready: 2, Inflight: 1, LastRequest: at(0)}, 2, "", false)
		step(t, p, Observation{At: at(time.Hour), Ready: 2, Inflight: 1, LastRequest: at(0)}, 2, "", false)
		step(t, p, Observation{At: at(time.Hour + time.Second), Ready: 2, LastRequest: at(time.Hour)}, 2, "", false)
		step(t, p, Observation{At: at(time.Hour + 5*time.Minute), Ready: 2, LastRequest: at(time.Hour)},
			0, "idle for 5m0s", false)
	})
	t.Run("never served counts from the first observation", func(t *testing.T) {
		p := mustNew(t, cfg)
		step(t, p, Observation{At: at(0), Ready: 2}, 2, "", false)
		step(t, p, Observation{At: at(4 * time.Minute), Ready: 2}, 2, "", false)
		step(t, p, Observation{At: at(5 * time.Minute), Ready: 2}, 0, "idle for 5m0s", false)
	})
	t.Run("idle stop ends burst mode", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10, IdleTTL: 10 * time.Second})
		step(t, p, Observation{At: at(0), Ready: 1, Inflight: 100, LastRequest: at(0)}, 3, "burst", true)
		step(t, p, Observation{At: at(10 * time.Second), Ready: 3, LastRequest: at(0)}, 0, "idle for 10s", false)
		step(t, p, Observation{At: at(11 * time.Second), Inflight: 1, LastRequest: at(11 * time.Second)}, 1, "wake", false)
		step(t, p, Observation{At: at(12 * time.Second), Starting: 1, Inflight: 1, LastRequest: at(11 * time.Second)},
			1, "", false)
	})
	t.Run("off", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 10})
		step(t, p, Observation{At: at(0), Ready: 1}, 1, "at min 1", false)
		step(t, p, Observation{At: at(24 * time.Hour), Ready: 1}, 1, "at min 1", false)
	})
	t.Run("min 0 without idle_ttl starts empty and wakes on demand", func(t *testing.T) {
		p := mustNew(t, Config{Min: 0, Max: 10})
		step(t, p, Observation{At: at(0)}, 0, "", false)
		step(t, p, Observation{At: at(time.Second), Inflight: 1, LastRequest: at(time.Second)}, 1, "wake", false)
	})
}

func TestBounds(t *testing.T) {
	t.Run("above max", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 3})
		step(t, p, Observation{At: at(0), Ready: 5, Inflight: 100}, 3, "above max 3", false)
	})
	t.Run("at max", func(t *testing.T) {
		p := mustNew(t, Config{Min: 1, Max: 3})
		step(t, p, Observation{At: at(0), Ready: 3, Inflight: 60}, 3, "inflight 20.0 per worker > target 10; at max 3", false)
	})
	t.Run("below min", func(t *testing.T) {
		p := mustNew(t, Config{Min: 3, Max: 5})
		step(t, p, Observation{At: at(0), Ready: 1}, 3, "below min 3", false)
	})
	t.Run("below min within the starting cap", func(t *testing.T) {
		p := mustNew(t, Config{Min: 4, Max: 5})
		step(t, p, Observation{At: at(0)}, 2, "below min 4; starting cap 2", false)
		step(t, p, Observation{At: at(time.Second), Starting: 2}, 2, "below min 4; starting cap 2", false)
		step(t, p, Observation{At: at(2 * time.Second), Ready: 2}, 4, "below min 4", false)
	})
	t.Run("below min ignores the up cooldown", func(t *testing.T) {
		p := mustNew(t, Config{Min: 3, Max: 10})
		step(t, p, Observation{At: at(0), Ready: 3, Inflight: 40}, 4, "inflight 13.3 per worker", false)
		// Two workers died 5s later.
		step(t, p, Observation{At: at(5 * time.Second), Ready: 1}, 3, "below min 3", false)
	})
	t.Run("never below min", func(t *testing.T) {
		p := mustNew(t, Config{Min: 2, Max: 5, ScaleDownCooldown: time.Second})
		for i := range 10 {
			d := p.Observe(Observation{At: at(time.Duration(i) * time.Minute), Ready: 2})
			if d.Target != 2 {
				t.Fatalf("minute %d: got %+v, want 2", i, d)
			}
		}
	})
}

func TestClockGoingBackwards(t *testing.T) {
	p := mustNew(t, Config{Min: 1, Max: 10})
	step(t, p, Observation{At: at(10 * time.Second), Ready: 2, Inflight: 30}, 3, "per worker", false)
	// An observation dated before the previous one counts as no time passed.
	step(t, p, Observation{At: at(5 * time.Second), Ready: 3, Inflight: 60}, 3, "cooldown 30s left", false)
}

func TestRingWraps(t *testing.T) {
	p := mustNew(t, Config{Max: 1, StableWindow: 24 * time.Hour, BurstWindow: time.Second})
	const n = maxSamples + 904
	for i := range n {
		p.Observe(Observation{
			At: at(time.Duration(i) * time.Second), Ready: 1, Inflight: i, Completed: 1, LatencySum: time.Millisecond,
		})
	}
	if p.samples.n != maxSamples || len(p.samples.buf) != maxSamples {
		t.Fatalf("ring holds %d in %d slots, want %d", p.samples.n, len(p.samples.buf), maxSamples)
	}
	avg, completed, sum := p.samples.window(time.Time{})
	if want := float64(n-maxSamples+n-1) / 2; avg != want || completed != maxSamples ||
		sum != maxSamples*time.Millisecond {
		t.Errorf("window = %v, %d, %s; want %v, %d, %s", avg, completed, sum, want, maxSamples, maxSamples*time.Millisecond)
	}
	// The window drops samples outside it.
	avg, _, _ = p.samples.window(at(time.Duration(n-3) * time.Second))
	if want := float64(n-2+n-1) / 2; avg != want {
		t.Errorf("last two samples average %v, want %v", avg, want)
	}
}

// pool simulates a worker pool that follows the policy's decisions:
// workers become ready startDelay after being started.
type pool struct {
	t          *testing.T
	p          *Policy
	clock      fakeClock
	startDelay time.Duration
	ready      int
	starting   []time.Time // when each starting worker becomes ready
	lastReq    time.Time
	changes    []change
}

type change struct {
	at       time.Time
	from, to int
	burst    bool
	reason   string
}

func (s *pool) tick(inflight int) Decision {
	now := s.clock.Advance(time.Second)
	for len(s.starting) > 0 && !s.starting[0].After(now) {
		s.starting = s.starting[1:]
		s.ready++
	}
	if inflight > 0 {
		s.lastReq = now
	}
	cur := s.ready + len(s.starting)
	d := s.p.Observe(Observation{
		At: now, Ready: s.ready, Starting: len(s.starting), Inflight: inflight, LastRequest: s.lastReq,
	})
	switch {
	case d.Target > cur:
		for range d.Target - cur {
			s.starting = append(s.starting, now.Add(s.startDelay))
		}
	case d.Target < cur:
		for range cur - d.Target {
			if len(s.starting) > 0 {
				s.starting = s.starting[:len(s.starting)-1]
			} else {
				s.ready--
			}
		}
	}
	if d.Target != cur {
		s.changes = append(s.changes, change{now, cur, d.Target, d.Burst, d.Reason})
	}
	return d
}

func TestSimulatedLoad(t *testing.T) {
	cfg := Config{Min: 1, Max: 5}
	s := &pool{t: t, p: mustNew(t, cfg), clock: fakeClock{t0}, startDelay: 3 * time.Second, ready: 1}
	c := s.p.Config()

	// Demand ramps from 12 to 80 concurrent requests over 170s, holds,
	// then stops.
	reachedMax := false
	for i := range 300 {
		s.tick(min(12+i*2/5, 80))
		if s.ready == cfg.Max {
			reachedMax = true
		}
	}
	if !reachedMax {
		t.Fatalf("never reached max %d under load; changes: %+v", cfg.Max, s.changes)
	}
	for range 600 {
		s.tick(0)
	}

	var lastUp, lastScale time.Time
	ups, calmUps, downs := 0, 0, 0
	for _, ch := range s.changes {
		t.Logf("+%-5s %d -> %d burst=%-5v %s", ch.at.Sub(t0), ch.from, ch.to, ch.burst, ch.reason)
		if ch.to > cfg.Max || ch.to < cfg.Min {
			t.Errorf("target %d outside [%d, %d]", ch.to, cfg.Min, cfg.Max)
		}
		if ch.to > ch.from {
			ups++
			if !ch.burst {
				calmUps++
				if !lastUp.IsZero() && ch.at.Sub(lastUp) < c.ScaleUpCooldown {
					t.Errorf("scale-up at +%s only %s after the previous one", ch.at.Sub(t0), ch.at.Sub(lastUp))
				}
			}
			lastUp = ch.at
		} else {
			downs++
			if ch.to != ch.from-1 {
				t.Errorf("scale-down %d -> %d is more than one step", ch.from, ch.to)
			}
			if ch.burst {
				t.Errorf("scale-down at +%s in burst mode", ch.at.Sub(t0))
			}
			if ch.at.Sub(lastScale) < c.ScaleDownCooldown {
				t.Errorf("scale-down at +%s only %s after the previous scale", ch.at.Sub(t0), ch.at.Sub(lastScale))
			}
		}
		lastScale = ch.at
	}
	if calmUps < 2 {
		t.Errorf("only %d scale-ups outside burst mode; the scenario should exercise the up cooldown", calmUps)
	}
	if downs != cfg.Max-cfg.Min {
		t.Errorf("%d scale-downs, want %d", downs, cfg.Max-cfg.Min)
	}
	if got := s.ready + len(s.starting); got != cfg.Min {
		t.Errorf("after the load stopped the pool has %d workers, want %d", got, cfg.Min)
	}
}
