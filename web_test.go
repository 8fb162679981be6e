package oxianhv

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSite makes a small built front end.
func writeSite(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"index.html":    "<html>spa index</html>",
		"assets/app.js": "console.log('app')",
	} {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWebStaticSPAFallback(t *testing.T) {
	site := writeSite(t)
	s := startCaddy(t, pool("workers 1", "base_path /api",
		fmt.Sprintf("web {\n static_dir %s\n static_cache_control \"public, max-age=3600\"\n}", site)))
	s.waitReady(1)

	// API paths reach the workers
	if w := s.worker("/api/anything"); w != "0" {
		t.Fatalf("API request answered by worker %q", w)
	}

	// files are served, unknown paths get index.html, with the cache header
	for path, want := range map[string]string{
		"/assets/app.js":   "console.log('app')",
		"/":                "<html>spa index</html>",
		"/dashboard/users": "<html>spa index</html>",
	} {
		resp, body := s.get(path)
		if resp.StatusCode != http.StatusOK || body != want {
			t.Errorf("%s: %d %q, want %q", path, resp.StatusCode, body, want)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age=3600" {
			t.Errorf("%s: Cache-Control %q", path, cc)
		}
		if resp.Header.Get("X-Worker") != "" {
			t.Errorf("%s reached a worker", path)
		}
	}
}

func TestWebDevProxyPerProject(t *testing.T) {
	dev := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "dev server: %s (host %s)", r.URL.Path, r.Host)
	}))
	defer dev.Close()
	site := writeSite(t)

	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		command %s
		workers 1
		web {
			static_dir %s
		}
		projects {
			a {
				base_path /api
				web {
					dev_proxy_target %s
				}
			}
			b {
				base_path /b-api
			}
		}
		select {
			a {
				host_prefix a.
			}
			default b
		}
	}`, testworkerBin, site, dev.URL))
	eventually(t, 30*time.Second, "2 projects ready", func() bool {
		report, _ := s.health()
		return report.Status == "ok" && len(report.Projects) == 2 &&
			report.Projects[0].Ready == 1 && report.Projects[1].Ready == 1
	})
	get := func(host, path string) string {
		req, _ := http.NewRequest(http.MethodGet, s.base+path, nil)
		req.Host = host
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}

	// project a: its own dev server for the front end, its API to workers
	devHost := strings.TrimPrefix(dev.URL, "http://")
	if got := get("a.example.com", "/src/main.ts"); got != "dev server: /src/main.ts (host "+devHost+")" {
		t.Errorf("a's front end: %q", got)
	}
	if got := get("a.example.com", "/api/whoami"); !strings.Contains(got, `"path":"/api/whoami"`) {
		t.Errorf("a's API: %q", got)
	}

	// project b: the handler's static site
	if got := get("b.example.com", "/some/page"); got != "<html>spa index</html>" {
		t.Errorf("b's front end: %q", got)
	}
}

func TestOnRequestHandlers(t *testing.T) {
	s := startCaddy(t, pool("workers 1", `on_request {
		request_header X-Project {http.oxian_hv.project}
		request_header X-Processed-By hypervisor
	}`, "project shop"))
	s.waitReady(1)

	resp, body := s.get("/headers")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{`"X-Project":"shop"`, `"X-Processed-By":"hypervisor"`} {
		if !strings.Contains(body, want) {
			t.Errorf("worker did not see %s: %s", want, body)
		}
	}
}

func TestOnRequestFailureEndsWith500(t *testing.T) {
	s := startCaddy(t, pool("workers 1", `on_request {
		error "token service down" 503
	}`))
	s.waitReady(1)

	resp, body := s.get("/whoami")
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(body, "a request handler failed") {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Worker") != "" {
		t.Fatal("the worker saw a request whose on_request failed")
	}
}

func TestPlaceholdersReachLaterHandlers(t *testing.T) {
	s := startCaddy(t, "\theader >X-Served-By {http.oxian_hv.worker}\n"+
		"\theader >X-Project {http.oxian_hv.project}\n"+
		"\theader >X-Id {http.oxian_hv.request_id}\n"+
		pool("workers 2", "project shop"))
	s.waitReady(2)
	for range 4 {
		resp, _ := s.get("/whoami", "X-Request-Id", "rid-1")
		if got, want := resp.Header.Get("X-Served-By"), resp.Header.Get("X-Worker"); got == "" || got != want {
			t.Fatalf("X-Served-By %q, but worker %q answered", got, want)
		}
		if resp.Header.Get("X-Project") != "shop" || resp.Header.Get("X-Id") != "rid-1" {
			t.Fatalf("placeholders: project %q, request id %q", resp.Header.Get("X-Project"), resp.Header.Get("X-Id"))
		}
	}
}
