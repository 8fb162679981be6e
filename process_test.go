package oxianhv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// caddyBin is Caddy with the module, built once for the tests that run it
// as a separate process.
var (
	caddyBinOnce sync.Once
	caddyBin     string
	caddyBinErr  error
)

func buildCaddy(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the caddy binary")
	}
	caddyBinOnce.Do(func() {
		caddyBin = filepath.Join(filepath.Dir(testworkerBin), "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBinErr = fmt.Errorf("building caddy: %v\n%s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBin
}

// caddyProcess is the caddy binary running a Caddyfile.
type caddyProcess struct {
	cmd    *exec.Cmd
	base   string
	output *lockedWriter
	exited chan error
}

// runCaddy starts the caddy binary with a site on a free port serving the
// directives, and waits until n workers are ready.
func runCaddy(t *testing.T, dir string, directives string, n int) *caddyProcess {
	t.Helper()
	bin := buildCaddy(t)
	port := freePort(t)
	caddyfile := filepath.Join(dir, "Caddyfile")
	body := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n",
		port, directives)
	if err := os.WriteFile(caddyfile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}

	cp := &caddyProcess{
		cmd:    exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile"),
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		output: &lockedWriter{w: new(bytes.Buffer)},
		exited: make(chan error, 1),
	}
	cp.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cp.cmd.Stdout, cp.cmd.Stderr = cp.output, cp.output
	if err := cp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cp.exited <- cp.cmd.Wait() }()
	t.Cleanup(func() {
		_ = cp.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("caddy output:\n%s", cp.output.String())
		}
	})

	eventually(t, 60*time.Second, fmt.Sprintf("%d ready workers", n), func() bool {
		report, err := cp.health()
		return err == nil && len(report.Projects) == 1 && report.Projects[0].Ready == n
	})
	return cp
}

// health fetches the hypervisor's health report.
func (cp *caddyProcess) health() (healthReport, error) {
	var report healthReport
	resp, err := http.Get(cp.base + "/_health")
	if err != nil {
		return report, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&report)
	return report, err
}

// workerPIDs returns the pids of the ready workers.
func (cp *caddyProcess) workerPIDs(t *testing.T) []int {
	t.Helper()
	report, err := cp.health()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, w := range report.Projects[0].Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

// lockedWriter serializes writes of two streams into one buffer, and
// reads of it.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

// String returns what was written so far.
func (lw *lockedWriter) String() string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.String()
}

func (lw *lockedWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.Write(p)
}

func pidAlive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestKilledCaddyLeavesNoWorkerBehind(t *testing.T) {
	dir := t.TempDir()

	// each worker starts a child of its own that ignores the parent-death
	// signal: only the sweep of the next start can find it
	directives := fmt.Sprintf("\toxian_hv {\n"+
		"\t\tcommand /bin/sh -c \"sleep 300 & echo $! > %s/child-$PORT; exec %s\"\n"+
		"\t\tworkers 2\n\t}",
		dir, testworkerBin)
	first := runCaddy(t, dir, directives, 2)
	workers := first.workerPIDs(t)
	var children []int
	eventually(t, 10*time.Second, "worker children recorded", func() bool {
		matches, _ := filepath.Glob(filepath.Join(dir, "child-*"))
		return len(matches) == 2
	})
	matches, _ := filepath.Glob(filepath.Join(dir, "child-*"))
	for _, m := range matches {
		data, _ := os.ReadFile(m)
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatalf("reading %s: %v", m, err)
		}
		children = append(children, pid)
	}

	// kill caddy outright: the workers die with it
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.exited
	eventually(t, 10*time.Second, "workers die with caddy", func() bool {
		for _, pid := range workers {
			if pidAlive(pid) {
				return false
			}
		}
		return true
	})

	// the next start sweeps what the workers left, and runs its own
	for _, m := range matches {
		_ = os.Remove(m)
	}
	second := runCaddy(t, dir, directives, 2)
	eventually(t, 10*time.Second, "leftover children swept", func() bool {
		for _, pid := range children {
			if pidAlive(pid) {
				return false
			}
		}
		return true
	})
	if !strings.Contains(second.output.String(), "killed leftover worker process") {
		t.Errorf("the sweep was not logged")
	}
	_ = second.cmd.Process.Signal(syscall.SIGTERM)
	<-second.exited
}

func TestShutdownLetsRequestsFinish(t *testing.T) {
	dir := t.TempDir()
	cp := runCaddy(t, dir, pool("workers 1", "stop_grace 5s"), 1)
	workers := cp.workerPIDs(t)

	// a slow request is in flight when caddy is told to stop
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get(cp.base + "/slow?ms=1500")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: string(body), err: err}
	}()
	eventually(t, 10*time.Second, "request in flight", func() bool {
		report, err := cp.health()
		return err == nil && len(report.Projects[0].Workers) == 1 && report.Projects[0].Workers[0].Inflight == 1
	})
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// it completes, then caddy and its worker exit
	select {
	case res := <-done:
		if res.err != nil || res.status != http.StatusOK || !strings.Contains(res.body, "slept_ms") {
			t.Fatalf("in-flight request: status %d, body %q, error %v", res.status, res.body, res.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("in-flight request did not complete during shutdown")
	}
	select {
	case err := <-cp.exited:
		if err != nil {
			t.Fatalf("caddy exited with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("caddy did not exit after SIGTERM")
	}
	for _, pid := range workers {
		if pidAlive(pid) {
			t.Fatalf("worker %d outlived caddy", pid)
		}
	}
	log := cp.output.String()
	for _, want := range []string{`"msg":"worker stopped"`, `"reason":"shutdown"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}
