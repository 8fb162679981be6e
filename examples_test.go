package oxianhv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The tests below run the example Caddyfiles in caddy-examples/ as they
// are written, but for a few textual substitutions: a free port for the
// site, a prebuilt binary for `go run ./caddy-examples/app`, and a test
// server for the front-end dev server.

// exampleAppCommand is the worker command the examples use.
const exampleAppCommand = "go run ./caddy-examples/app"

// buildExampleApp builds the example app and returns its path.
func buildExampleApp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "app")
	build := exec.Command("go", "build", "-o", bin, "./caddy-examples/app")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the example app: %v\n%s", err, out)
	}
	return bin
}

// loadExample runs caddy-examples/<name> with its site on a free loopback
// port and the given substitutions (old, new, ...) made, each of which
// must apply. Caddy is stopped, and its workers awaited, when the test
// ends.
func loadExample(t *testing.T, name string, site string, substitutions ...string) *server {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("caddy-examples", name))
	if err != nil {
		t.Fatal(err)
	}
	caddyfile := string(raw)

	// the site on a free port, loopback only as the example has it
	port := freePort(t)
	if !strings.Contains(caddyfile, "\tbind 127.0.0.1\n") {
		t.Fatalf("%s: the site does not bind 127.0.0.1", name)
	}
	substitutions = append(substitutions, site+" {", fmt.Sprintf(":%d {", port))
	for i := 0; i+1 < len(substitutions); i += 2 {
		old, repl := substitutions[i], substitutions[i+1]
		if !strings.Contains(caddyfile, old) {
			t.Fatalf("%s: %q not found; did the example change?", name, old)
		}
		caddyfile = strings.ReplaceAll(caddyfile, old, repl)
	}

	if err := caddy.Load(adaptCaddyfile(t, caddyfile), true); err != nil {
		t.Fatalf("loading %s: %v\n%s", name, err, caddyfile)
	}
	t.Cleanup(func() { stopCaddy(t) })
	return &server{
		t:      t,
		port:   port,
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 20 * time.Second},
	}
}

// waitProjects waits until each project has the given number of ready
// workers, and returns the pids of each project's workers.
func (s *server) waitProjects(ready map[string]int) map[string][]int {
	s.t.Helper()
	var pids map[string][]int
	eventually(s.t, 30*time.Second, fmt.Sprintf("ready workers %v", ready), func() bool {
		report, _ := s.health()
		pids = map[string][]int{}
		got := map[string]int{}
		for _, p := range report.Projects {
			got[p.Project] = p.Ready
			for _, w := range p.Workers {
				pids[p.Project] = append(pids[p.Project], w.PID)
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(ready)
	})
	return pids
}

// getHost sends a GET for path with the given Host header.
func (s *server) getHost(host, path string) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Host = host
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("GET %s (host %s): %v", path, host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, string(body)
}

// hello asks the example app for path with the given Host header and
// returns the pid of the worker that answered.
func (s *server) hello(host, path string) int {
	s.t.Helper()
	resp, body := s.getHost(host, path)
	var answer struct {
		Message string `json:"message"`
		PID     int    `json:"pid"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &answer) != nil || answer.Message != "hello" {
		s.t.Fatalf("GET %s (host %s): %d %q, want the app's hello", path, host, resp.StatusCode, body)
	}
	return answer.PID
}

// processEnv returns an environment variable of a running process, on
// Linux; elsewhere it skips the check by returning want.
func processEnv(t *testing.T, pid int, name, want string) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		return want
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("reading the environment of pid %d: %v", pid, err)
	}
	for kv := range strings.SplitSeq(string(raw), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

func TestExampleMultiTenant(t *testing.T) {
	app := buildExampleApp(t)
	s := loadExample(t, "multi-tenant.Caddyfile", ":8081", exampleAppCommand, app)
	pids := s.waitProjects(map[string]int{"tenant-a": 2, "tenant-b": 2})

	// each tenant reaches its own pool, with its prefix stripped (the app
	// knows only /api/hello and /) and its own environment
	for _, tenant := range []string{"tenant-a", "tenant-b"} {
		for _, path := range []string{"/api/hello", "/api/hello", "/api/hello", "", "/"} {
			pid := s.hello("", "/"+tenant+path)
			if !slices.Contains(pids[tenant], pid) {
				t.Fatalf("/%s%s answered by pid %d, not one of %s's workers %v", tenant, path, pid, tenant, pids[tenant])
			}
			if got := processEnv(t, pid, "TENANT", tenant); got != tenant {
				t.Errorf("worker %d of %s has TENANT=%q", pid, tenant, got)
			}
			if got := processEnv(t, pid, "OXIAN_HV_PROJECT", tenant); got != tenant {
				t.Errorf("worker %d of %s has OXIAN_HV_PROJECT=%q", pid, tenant, got)
			}
		}
	}

	// paths of no tenant, prefixes being whole path segments, get the 404
	for _, path := range []string{"/tenant-c/api/hello", "/tenant-ab/api/hello", "/api/hello", "/"} {
		resp, body := s.get(path)
		if resp.StatusCode != http.StatusNotFound || body != "no such tenant" {
			t.Errorf("%s: %d %q, want 404 \"no such tenant\"", path, resp.StatusCode, body)
		}
	}
}

func TestExampleSPAAndAPI(t *testing.T) {
	app := buildExampleApp(t)
	s := loadExample(t, "spa-api.Caddyfile", ":8082", exampleAppCommand, app)
	pids := s.waitProjects(map[string]int{"app": 2, "admin": 1})

	// the API of each host reaches its own project; other hosts get the app
	for host, project := range map[string]string{
		"app.localhost":     "app",
		"app.example.com":   "app",
		"admin.localhost":   "admin",
		"localhost":         "app",
		"127.0.0.1":         "app",
		"www.example.com":   "app",
		"admin.example.com": "admin",
	} {
		for range 3 {
			if pid := s.hello(host, "/api/hello"); !slices.Contains(pids[project], pid) {
				t.Fatalf("%s/api/hello answered by pid %d, not one of %s's workers %v", host, pid, project, pids[project])
			}
		}
	}

	// admin serves every path from its workers
	if pid := s.hello("admin.localhost", "/"); !slices.Contains(pids["admin"], pid) {
		t.Fatalf("admin.localhost/ answered by pid %d, not one of admin's workers %v", pid, pids["admin"])
	}

	// the app's other paths are the SPA: its files, else index.html
	index, err := os.ReadFile("caddy-examples/spa/dist/index.html")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("caddy-examples/spa/dist/assets/app.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, path, want string }{
		{"app.localhost", "/", string(index)},
		{"app.localhost", "/index.html", string(index)},
		{"app.localhost", "/assets/app.js", string(script)},
		{"app.localhost", "/settings/profile", string(index)},
		{"app.localhost", "/apix", string(index)},
		{"localhost", "/dashboard", string(index)},
	} {
		resp, body := s.getHost(tc.host, tc.path)
		if resp.StatusCode != http.StatusOK || body != tc.want {
			t.Errorf("%s%s: %d %.60q, want %.60q", tc.host, tc.path, resp.StatusCode, body, tc.want)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=3600" {
			t.Errorf("%s%s: Cache-Control %q", tc.host, tc.path, cc)
		}
	}
}

func TestExampleDevProxy(t *testing.T) {
	// the front-end dev server: says what it got
	dev := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Dev-Server", "yes")
		fmt.Fprintf(w, "dev %s host=%s x-project=%q", r.URL.Path, r.Host, r.Header.Get("X-Project"))
	}))
	defer dev.Close()

	// The example app does not echo request headers, so this test runs
	// the test worker, whose /headers route does; a rewrite next to the
	// example's own on_request line sends /api/headers there.
	const onRequest = "request_header X-Project {http.oxian_hv.project}"
	s := loadExample(t, "dev-proxy.Caddyfile", ":8083",
		exampleAppCommand, testworkerBin,
		"http://127.0.0.1:5173", dev.URL,
		onRequest, onRequest+"\n\t\t\trewrite /api/headers /headers",
	)
	s.waitProjects(map[string]int{"myapp": 2})

	// the API reaches the workers, with X-Project set
	resp, body := s.get("/api/headers")
	var echoed struct {
		Headers map[string]string `json:"headers"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &echoed) != nil {
		t.Fatalf("/api/headers: %d %q", resp.StatusCode, body)
	}
	if got := echoed.Headers["X-Project"]; got != "myapp" {
		t.Errorf("the worker got X-Project %q, want myapp; headers %v", got, echoed.Headers)
	}
	for _, path := range []string{"/api", "/api/hello", "/api/users/7"} {
		if w := s.worker(path); w != "0" && w != "1" {
			t.Errorf("%s answered by worker %q", path, w)
		}
	}

	// every other path goes to the dev server, as it is, and without the
	// API's header; it is asked for its own host
	devHost := strings.TrimPrefix(dev.URL, "http://")
	for _, path := range []string{"/", "/src/main.ts", "/@vite/client", "/apis", "/settings/profile"} {
		resp, body := s.get(path)
		want := fmt.Sprintf("dev %s host=%s x-project=%q", path, devHost, "")
		if resp.StatusCode != http.StatusOK || body != want || resp.Header.Get("X-Dev-Server") != "yes" {
			t.Errorf("%s: %d %q, want %q from the dev server", path, resp.StatusCode, body, want)
		}
		if resp.Header.Get("X-Worker") != "" {
			t.Errorf("%s reached a worker", path)
		}
	}
}
