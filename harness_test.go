package oxianhv

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

// testworkerBin is the test worker program, built once for all tests.
var testworkerBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "oxian-hv-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "making temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	testworkerBin = filepath.Join(dir, "testworker")
	build := exec.Command("go", "build", "-o", testworkerBin, "./internal/testworker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building test worker:", err)
		return 1
	}
	return m.Run()
}

// server is a Caddy running in this process with one site on a free
// loopback port.
type server struct {
	t      *testing.T
	base   string
	client *http.Client
}

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCaddy runs a config whose only site serves the given directives on
// a free port; it stops it, and waits for every worker to exit, when the
// test ends.
func startCaddy(t *testing.T, directives string) *server {
	t.Helper()
	port := freePort(t)
	caddyfile := fmt.Sprintf("{\n\tauto_https off\n\tadmin off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", port, directives)
	cfgJSON := adaptCaddyfile(t, caddyfile)
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	s := &server{
		t:      t,
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 20 * time.Second},
	}
	t.Cleanup(func() { stopCaddy(t) })
	return s
}

// adaptCaddyfile turns a Caddyfile into JSON config that neither persists
// nor opens the admin endpoint.
func adaptCaddyfile(t *testing.T, caddyfile string) []byte {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfgJSON, _, err := adapter.Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// stopCaddy stops the running config and waits until no pool runs.
func stopCaddy(t *testing.T) {
	t.Helper()
	pids := runningPIDs()
	if err := caddy.Stop(); err != nil {
		t.Errorf("stopping caddy: %v", err)
	}
	eventually(t, 20*time.Second, "workers exit after stop", func() bool {
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	})
}

// runningPIDs returns the pids of all workers of all pools.
func runningPIDs() []int {
	var pids []int
	pools.Range(func(_, v any) bool {
		for _, w := range v.(*poolEntry).Status().Workers {
			if w.PID > 0 {
				pids = append(pids, w.PID)
			}
		}
		return true
	})
	return pids
}

// eventually waits for cond, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get sends a GET with optional header pairs and returns the response with
// its body read.
func (s *server) get(path string, headers ...string) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("reading body of GET %s: %v", path, err)
	}
	return resp, string(body)
}

// worker sends a GET and returns the index of the worker that answered,
// failing on any status but 200.
func (s *server) worker(path string, headers ...string) string {
	s.t.Helper()
	resp, body := s.get(path, headers...)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("GET %s: status %d: %s", path, resp.StatusCode, body)
	}
	return resp.Header.Get("X-Worker")
}

// health returns the hypervisor's health report and its status code.
func (s *server) health() (healthReport, int) {
	s.t.Helper()
	resp, body := s.get("/_health")
	var report healthReport
	if err := json.Unmarshal([]byte(body), &report); err != nil {
		s.t.Fatalf("decoding health report %q: %v", body, err)
	}
	return report, resp.StatusCode
}

// workers returns the worker statuses of the single pool.
func (s *server) workers() []workerpool.WorkerStatus {
	s.t.Helper()
	report, _ := s.health()
	if len(report.Projects) != 1 {
		s.t.Fatalf("want 1 project in health report, got %d", len(report.Projects))
	}
	return report.Projects[0].Workers
}

// waitReady waits until n workers are ready.
func (s *server) waitReady(n int) {
	s.t.Helper()
	eventually(s.t, 30*time.Second, fmt.Sprintf("%d ready workers", n), func() bool {
		report, _ := s.health()
		return len(report.Projects) == 1 && report.Projects[0].Ready == n
	})
}

// pool renders an oxian_hv block running the test worker.
func pool(settings ...string) string {
	return fmt.Sprintf("\toxian_hv {\n\t\tcommand %s\n\t\t%s\n\t}", testworkerBin, strings.Join(settings, "\n\t\t"))
}
