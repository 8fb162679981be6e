package oxianhv

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// poolSize returns the number of workers of the single pool and how many
// are ready.
func (s *server) poolSize() (workers, ready int) {
	s.t.Helper()
	report, _ := s.health()
	if len(report.Projects) != 1 {
		return 0, 0
	}
	return len(report.Projects[0].Workers), report.Projects[0].Ready
}

func TestIdleStopThenWake(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "idle_ttl 500ms"))
	s.waitReady(1)
	first := s.pids()

	// idle: every worker stops, and stays stopped with no request
	eventually(t, 10*time.Second, "idle stop", func() bool {
		n, _ := s.poolSize()
		return n == 0
	})
	eventually(t, 10*time.Second, "the idle worker's process exits", func() bool { return !pidAlive(first[0]) })
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if n, _ := s.poolSize(); n != 0 {
			t.Fatalf("a worker stopped for idleness came back without a request (%d workers)", n)
		}
		time.Sleep(50 * time.Millisecond) // sampling an absence over a second
	}

	// the next request wakes the pool and is answered
	start := time.Now()
	if w := s.worker("/whoami"); w != "0" {
		t.Fatalf("woken pool answered from worker %q", w)
	}
	t.Logf("first request after idle answered in %s", time.Since(start))
	if n, ready := s.poolSize(); n != 1 || ready != 1 {
		t.Fatalf("after waking: %d workers, %d ready", n, ready)
	}
}

func TestStreamLongerThanIdleTTLKeepsItsWorker(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "idle_ttl 400ms"))
	s.waitReady(1)
	pid := s.pids()[0]

	// a stream of 1.6 s, four times the idle time
	resp, err := s.client.Get(s.base + "/sse?events=9&interval_ms=200")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := 0
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if strings.HasPrefix(scanner.Text(), "data:") {
			events++
			if n, _ := s.poolSize(); n != 1 {
				t.Fatalf("the worker was stopped while its stream was open (after %d events)", events)
			}
		}
	}
	if events != 9 {
		t.Fatalf("stream cut after %d events", events)
	}
	if !pidAlive(pid) {
		t.Fatal("the streaming worker's process exited")
	}
}

func TestQueueOverflowAndTimeout(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "idle_ttl 300ms", "env TESTWORKER_START_DELAY 1500ms",
		"queue {\n max_items 2\n max_wait 700ms\n}", "server_timing"))
	eventually(t, 20*time.Second, "first start done, then idle", func() bool {
		n, _ := s.poolSize()
		report, _ := s.health()
		return n == 0 && len(report.Projects) == 1
	})

	// the pool wakes slowly: two requests may wait, the others are turned away
	var wg sync.WaitGroup
	var full, timedOut, other atomic.Int64
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := s.get("/whoami")
			switch {
			case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "the queue is full"):
				full.Add(1)
			case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "none got ready within 700ms"):
				timedOut.Add(1)
			default:
				other.Add(1)
				t.Logf("unexpected answer %d: %s", resp.StatusCode, body)
			}
			if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After: %s", body)
			}
		}()
	}
	wg.Wait()
	if full.Load() != 3 || timedOut.Load() != 2 || other.Load() != 0 {
		t.Fatalf("queue full %d, timed out %d, other %d; want 3, 2, 0", full.Load(), timedOut.Load(), other.Load())
	}

	// with time to wait for the slow start, a request passes and says how
	// long it waited
	s.load(pool("workers 1", "idle_ttl 300ms", "env TESTWORKER_START_DELAY 1500ms",
		"queue {\n max_items 2\n max_wait 10s\n}", "server_timing"))
	eventually(t, 20*time.Second, "idle", func() bool {
		n, _ := s.poolSize()
		return n == 0
	})
	resp, body := s.get("/whoami")
	timing := resp.Header.Get("Server-Timing")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(timing, "queue;dur=") {
		t.Fatalf("status %d, Server-Timing %q: %s", resp.StatusCode, timing, body)
	}
	var waited, spawn float64
	if _, err := fmt.Sscanf(timing, "queue;dur=%g, spawn;dur=%g", &waited, &spawn); err != nil ||
		waited < 1000 || spawn < 1000 {
		t.Fatalf("Server-Timing %q does not show the wait for the slow start and its spawn time (%v)", timing, err)
	}
}

func TestAutoscaleUpUnderLoadAndBackDown(t *testing.T) {
	s := startCaddy(t, pool("workers 1", `autoscale {
		min 1
		max 3
		target_inflight_per_worker 1
		scale_up_cooldown 300ms
		scale_down_cooldown 300ms
		stable_window 1s
		burst_window 500ms
	}`, "health {\n interval 200ms\n}"))
	s.waitReady(1)

	// load of slow requests from six clients: the pool grows to its max
	l := s.startLoad("/slow?ms=150", 6)
	eventually(t, 20*time.Second, "scaled up to 3", func() bool {
		_, ready := s.poolSize()
		return ready == 3
	})
	l.finish(t)

	// without load it shrinks, one step at a time, to its min
	seen := map[int]bool{}
	eventually(t, 30*time.Second, "scaled down to 1", func() bool {
		n, _ := s.poolSize()
		seen[n] = true
		return n == 1
	})
	if !seen[2] {
		t.Logf("the step through 2 workers was not sampled (saw %v)", seen)
	}
}

func TestCaddyfileElasticSettings(t *testing.T) {
	d := caddyfile.NewTestDispenser(`oxian_hv {
		command ./app
		idle_ttl 3m
		server_timing
		queue {
			max_items 50
			max_wait 5s
		}
		autoscale {
			min 2
			max 8
			target_inflight_per_worker 25
			max_avg_latency 150ms
			scale_up_cooldown 10s
			scale_down_cooldown 1m
			max_starting 3
			stable_window 30s
			burst_window 3s
			warm_up 1s
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	as := h.Autoscale
	if !as.Enabled || as.Min != 2 || as.Max != 8 || as.TargetInflightPerWorker != 25 ||
		time.Duration(as.MaxAvgLatency) != 150*time.Millisecond || as.MaxStarting != 3 ||
		time.Duration(as.WarmUp) != time.Second || time.Duration(h.IdleTTL) != 3*time.Minute ||
		h.Queue.MaxItems != 50 || !h.ServerTiming {
		t.Fatalf("parsed %+v", h.WorkerConfig)
	}
	s := h.WorkerConfig.scaling()
	if s == nil || s.Min != 2 || s.Max != 8 || s.IdleTTL != 3*time.Minute || s.StableWindow != 30*time.Second {
		t.Fatalf("scaling %+v", s)
	}

	// bad bounds are reported with the field
	bad := h.WorkerConfig
	bad.Autoscale.Min, bad.Autoscale.Max = 5, 2
	bad.applyDefaults()
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "max") {
		t.Fatalf("min above max: %v", err)
	}
}

func TestHealthOfAnIdlePool(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "idle_ttl 300ms"))
	s.waitReady(1)
	eventually(t, 10*time.Second, "idle stop", func() bool {
		n, _ := s.poolSize()
		return n == 0
	})
	report, status := s.health()
	if status != http.StatusOK || report.Status != "idle" {
		t.Fatalf("health of an idle pool: %d %+v", status, report)
	}
}
