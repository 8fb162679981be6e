package workerpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// testworkerBin is the test worker program, built once by TestMain.
var testworkerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "workerpool-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(1)
	}
	testworkerBin = filepath.Join(dir, "testworker")
	build := exec.Command("go", "build", "-o", testworkerBin, "../internal/testworker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the test worker:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// eventually polls cond until it holds or timeout passes, and fails the
// test with the message then.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// randomBase returns a base port in a range unlikely to be used by
// anything else; the allocator skips ports that are taken anyway.
func randomBase() int { return 20000 + rand.IntN(20000) }

// testSpec returns a spec that runs n test workers, with quick probes and
// short grace periods.
func testSpec(project string, n int) Spec {
	return Spec{
		Project:  project,
		Command:  []string{testworkerBin},
		Workers:  n,
		BasePort: randomBase(),
		Health: HealthSpec{
			Interval:     50 * time.Millisecond,
			Timeout:      time.Second,
			StartTimeout: 10 * time.Second,
		},
		StopGrace: 2 * time.Second,
		Drain:     time.Second,
	}
}

// testLogger logs to the test, at info level and above.
func testLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

// observedLogger logs to the test and into the returned observer.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	tl := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	return zap.New(zapcore.NewTee(core, tl.Core())), logs
}

// startPool starts a pool for spec and closes it when the test ends.
func startPool(t *testing.T, spec Spec, logger *zap.Logger, hooks Hooks) *Pool {
	t.Helper()
	p := New(spec, logger, hooks)
	t.Cleanup(func() { p.Close("test done", 0, true) })
	p.Start()
	return p
}

// waitReadyN waits until n workers are ready.
func waitReadyN(t *testing.T, p *Pool, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, func() bool { return len(p.Ready()) == n },
		"want %d ready workers, status %+v", n, p.Status())
}

// pids returns the pids of the pool's workers by index.
func pids(p *Pool) map[int]int {
	m := make(map[int]int)
	for _, ws := range p.Status().Workers {
		m[ws.Index] = ws.PID
	}
	return m
}

// workerStatus returns the status of the pool's worker at index.
func workerStatus(t *testing.T, p *Pool, index int) WorkerStatus {
	t.Helper()
	for _, ws := range p.Status().Workers {
		if ws.Index == index {
			return ws
		}
	}
	t.Fatalf("no worker %d in %+v", index, p.Status())
	return WorkerStatus{}
}

// processGone reports whether no process has pid (an exited child that
// was reaped is gone).
func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// whoamiResp is what the test worker's /whoami answers.
type whoamiResp struct {
	Worker  string `json:"worker"`
	Project string `json:"project"`
	PID     int    `json:"pid"`
	Port    int    `json:"port"`
}

// whoami asks the worker at addr who it is.
func whoami(t *testing.T, addr string) whoamiResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/whoami", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /whoami on %s: %v", addr, err)
	}
	defer resp.Body.Close()
	var who whoamiResp
	if err := json.NewDecoder(resp.Body).Decode(&who); err != nil {
		t.Fatalf("decoding /whoami of %s: %v", addr, err)
	}
	return who
}

// counter counts hook calls per worker, safely from any goroutine.
type counter struct {
	mu       sync.Mutex
	calls    map[int]int
	startups []time.Duration
}

func newCounter() *counter { return &counter{calls: make(map[int]int)} }

func (c *counter) add(worker int) {
	c.mu.Lock()
	c.calls[worker]++
	c.mu.Unlock()
}

func (c *counter) addStartup(worker int, d time.Duration) {
	c.mu.Lock()
	c.calls[worker]++
	c.startups = append(c.startups, d)
	c.mu.Unlock()
}

func (c *counter) get(worker int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[worker]
}

func (c *counter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.calls {
		n += v
	}
	return n
}

func (c *counter) durations() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.startups...)
}

// countMessages counts the logged entries with message msg whose field
// key has a value containing sub.
func countMessages(logs *observer.ObservedLogs, msg, key, sub string) int {
	n := 0
	for _, e := range logs.FilterMessage(msg).All() {
		for _, f := range e.Context {
			if f.Key != key {
				continue
			}
			v := f.String
			if f.Type == zapcore.ByteStringType {
				v = string(f.Interface.([]byte))
			}
			if strings.Contains(v, sub) {
				n++
			}
		}
	}
	return n
}
