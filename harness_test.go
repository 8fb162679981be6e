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
	"sync"
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
	port   int
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
	s := &server{
		t:      t,
		port:   port,
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 20 * time.Second},
	}
	s.load(directives)
	t.Cleanup(func() { stopCaddy(t) })
	return s
}

// load runs a new config on the server's port, as a config reload does.
func (s *server) load(directives string) {
	s.t.Helper()
	// any host name, on loopback only
	caddyfile := fmt.Sprintf("{\n\tauto_https off\n\tadmin off\n}\nhttp://:%d {\n\tbind 127.0.0.1\n%s\n}\n",
		s.port, directives)
	if err := caddy.Load(adaptCaddyfile(s.t, caddyfile), true); err != nil {
		s.t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
}

// load is GET traffic from a few clients until stopped.
type load struct {
	retryConnErrors bool

	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	served  int
	failed  int
	retried int
	samples []string
}

// fetch sends a GET and reads the whole response.
func fetch(client *http.Client, url string) (*http.Response, []byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// startLoad sends GET path from clients goroutines until the returned
// load is stopped; each request is bounded by the client's timeout.
func (s *server) startLoad(path string, clients int) *load {
	return s.startLoadRetrying(path, clients, false)
}

// startLoadRetrying is startLoad whose clients, with retryConnErrors, try
// a request once more when its connection failed before any response.
//
// That is for config reloads: on Linux, Caddy opens a new listening socket
// for the new config and closes the old one, and a connection the kernel
// queued on the old socket in the moment between is reset. That happens
// before any handler sees the request, with or without this module.
func (s *server) startLoadRetrying(path string, clients int, retryConnErrors bool) *load {
	l := &load{stop: make(chan struct{}), retryConnErrors: retryConnErrors}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			// one kept-alive connection per client, as a browser or a load
			// balancer in front would hold
			client := &http.Client{
				Timeout:   10 * time.Second,
				Transport: &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1},
			}
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, body, err := fetch(client, s.base+path)
				if err != nil && l.retryConnErrors {
					// a connection Caddy's listener dropped gets one more try
					l.mu.Lock()
					l.retried++
					l.mu.Unlock()
					resp, body, err = fetch(client, s.base+path)
				}
				l.mu.Lock()
				switch {
				case err != nil:
					l.failed++
					l.samples = append(l.samples, err.Error())
				case resp.StatusCode != http.StatusOK:
					l.failed++
					l.samples = append(l.samples, fmt.Sprintf("status %d: %s", resp.StatusCode, body))
				default:
					l.served++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// count returns the requests served so far.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.served
}

// finish stops the load and fails the test if any request failed.
func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.failed > 0 {
		t.Fatalf("%d of %d requests failed; first: %v", l.failed, l.failed+l.served, l.samples[:min(3, len(l.samples))])
	}
	if l.served == 0 {
		t.Fatal("the load served no request")
	}
	t.Logf("%d requests served, none failed (%d retried after a connection error)", l.served, l.retried)
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
