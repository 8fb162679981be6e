package oxianhv

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

// adminServer is a Caddy running in this process with its admin endpoint
// open on a free loopback port and one site on another.
type adminServer struct {
	t      *testing.T
	admin  string
	site   string
	client *http.Client
}

// startAdminCaddy runs a config with the admin endpoint enabled and one
// site serving directives. When the test ends it closes the admin
// endpoint, stops Caddy and waits for every worker to exit.
func startAdminCaddy(t *testing.T, directives string) *adminServer {
	t.Helper()
	adminPort, sitePort := freePort(t), freePort(t)
	for adminPort == sitePort {
		sitePort = freePort(t)
	}
	caddyfile := fmt.Sprintf("{\n\tauto_https off\n\tadmin 127.0.0.1:%d\n}\nhttp://127.0.0.1:%d {\n%s\n}\n",
		adminPort, sitePort, directives)
	if err := caddy.Load(adaptAdminCaddyfile(t, caddyfile, true), true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	s := &adminServer{
		t:      t,
		admin:  fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		site:   fmt.Sprintf("http://127.0.0.1:%d", sitePort),
		client: &http.Client{Timeout: 20 * time.Second},
	}
	t.Cleanup(func() {
		s.client.CloseIdleConnections()
		// caddy.Stop leaves the admin endpoint running: close it by
		// loading the same config with the admin endpoint disabled,
		// which keeps the pool, so that stopCaddy waits for its workers
		if err := caddy.Load(adaptAdminCaddyfile(t, caddyfile, false), true); err != nil {
			t.Errorf("loading config without admin endpoint: %v", err)
		}
		stopCaddy(t)
		eventually(t, 15*time.Second, "admin endpoint closed", func() bool {
			conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", adminPort), time.Second)
			if err != nil {
				return true
			}
			conn.Close()
			return false
		})
	})
	return s
}

// adaptAdminCaddyfile turns a Caddyfile into JSON config that does not
// persist, with the admin endpoint kept open or disabled.
func adaptAdminCaddyfile(t *testing.T, caddyfile string, admin bool) []byte {
	t.Helper()
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	adminCfg, _ := cfg["admin"].(map[string]any)
	if adminCfg == nil {
		t.Fatalf("adapted config has no admin section: %s", cfgJSON)
	}
	adminCfg["config"] = map[string]any{"persist": false}
	if !admin {
		adminCfg["disabled"] = true
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// do sends a request to the admin endpoint and returns the status, the
// headers and the body.
func (s *adminServer) do(method, path, body string) (int, http.Header, string) {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.admin+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("reading body of %s %s: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// expect sends a request to the admin endpoint, fails unless it answers
// status, and returns the body.
func (s *adminServer) expect(status int, method, path, body string) string {
	s.t.Helper()
	got, _, b := s.do(method, path, body)
	if got != status {
		s.t.Fatalf("%s %s %q: status %d, want %d: %s", method, path, body, got, status, b)
	}
	return b
}

// list returns the statuses of all pools.
func (s *adminServer) list() []adminPoolStatus {
	s.t.Helper()
	body := s.expect(http.StatusOK, http.MethodGet, "/oxian/pools", "")
	var statuses []adminPoolStatus
	if err := json.Unmarshal([]byte(body), &statuses); err != nil {
		s.t.Fatalf("decoding pool list %q: %v", body, err)
	}
	return statuses
}

// shop returns the status of the project shop.
func (s *adminServer) shop() adminPoolStatus {
	s.t.Helper()
	body := s.expect(http.StatusOK, http.MethodGet, "/oxian/pools/shop", "")
	var st adminPoolStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		s.t.Fatalf("decoding pool status %q: %v", body, err)
	}
	return st
}

// settled reports whether the pool runs exactly n workers, all ready.
func settled(st adminPoolStatus, n int) bool {
	if st.Ready != n || len(st.Workers) != n || st.WorkersWanted != n {
		return false
	}
	for _, w := range st.Workers {
		if w.State != workerpool.StateReady || w.PID <= 0 {
			return false
		}
	}
	return true
}

// statusPIDs returns the pids of the pool's workers, sorted.
func statusPIDs(st adminPoolStatus) []int {
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

// alive reports whether a process with pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// scale asks for n workers of the project shop.
func (s *adminServer) scale(n int) {
	s.t.Helper()
	body := s.expect(http.StatusOK, http.MethodPost, "/oxian/pools/shop/scale", fmt.Sprintf(`{"workers": %d}`, n))
	var got struct {
		Project string `json:"project"`
		Workers int    `json:"workers"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		s.t.Fatalf("decoding scale answer %q: %v", body, err)
	}
	if got.Project != "shop" || got.Workers != n {
		s.t.Fatalf("scale answer %q, want project shop and %d workers", body, n)
	}
}

func TestAdminAPI(t *testing.T) {
	s := startAdminCaddy(t, pool("workers 2", "project shop"))

	var list []adminPoolStatus
	eventually(t, 30*time.Second, "2 ready workers in the admin pool list", func() bool {
		list = s.list()
		return len(list) == 1 && settled(list[0], 2)
	})
	if list[0].Project != "shop" {
		t.Fatalf("pool list names project %q, want shop", list[0].Project)
	}
	for _, w := range list[0].Workers {
		if !alive(w.PID) {
			t.Fatalf("worker %d reports pid %d, which does not run", w.Index, w.PID)
		}
	}
	if st := s.shop(); st.Project != "shop" || len(st.Workers) != 2 || st.WorkersWanted != 2 {
		t.Fatalf("status of shop: %+v", st)
	}

	t.Run("unknown project", func(t *testing.T) {
		for _, req := range [][3]string{
			{http.MethodGet, "/oxian/pools/nope", ""},
			{http.MethodPost, "/oxian/pools/nope/restart", ""},
			{http.MethodPost, "/oxian/pools/nope/scale", `{"workers": 1}`},
		} {
			body := s.expect(http.StatusNotFound, req[0], req[1], req[2])
			if !strings.Contains(body, "nope") {
				t.Errorf("%s %s: 404 body %q does not name the project", req[0], req[1], body)
			}
		}
		s.expect(http.StatusNotFound, http.MethodGet, "/oxian/pools/shop/nothing", "")
	})

	t.Run("scale", func(t *testing.T) {
		s.scale(3)
		var st adminPoolStatus
		eventually(t, 30*time.Second, "3 ready workers", func() bool {
			st = s.shop()
			return settled(st, 3)
		})
		before := statusPIDs(st)

		s.scale(1)
		eventually(t, 30*time.Second, "1 ready worker", func() bool {
			st = s.shop()
			return settled(st, 1)
		})
		kept := st.Workers[0].PID
		if !slices.Contains(before, kept) {
			t.Fatalf("scaling down started a new worker: pid %d not among %v", kept, before)
		}
		eventually(t, 20*time.Second, "scaled-down workers exit", func() bool {
			for _, pid := range before {
				if pid != kept && alive(pid) {
					return false
				}
			}
			return true
		})

		s.scale(2)
		eventually(t, 30*time.Second, "2 ready workers again", func() bool {
			return settled(s.shop(), 2)
		})
	})

	t.Run("restart", func(t *testing.T) {
		before := statusPIDs(s.shop())
		body := s.expect(http.StatusAccepted, http.MethodPost, "/oxian/pools/shop/restart", "")
		var got map[string]string
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("decoding restart answer %q: %v", body, err)
		}
		if got["project"] != "shop" || got["status"] != "restarting" {
			t.Fatalf("restart answer %q", body)
		}

		// requests to the site keep succeeding until every worker is new
		site := &http.Client{Timeout: 10 * time.Second}
		defer site.CloseIdleConnections()
		renewed := func() bool {
			st := s.shop()
			if !settled(st, 2) {
				return false
			}
			for _, pid := range statusPIDs(st) {
				if slices.Contains(before, pid) {
					return false
				}
			}
			return true
		}
		deadline := time.Now().Add(60 * time.Second)
		served := 0
		for !renewed() {
			if time.Now().After(deadline) {
				t.Fatalf("restart did not replace workers %v within 60s; now %+v", before, s.shop())
			}
			for range 5 {
				resp, err := site.Get(s.site + "/whoami")
				if err != nil {
					t.Fatalf("GET /whoami during restart: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET /whoami during restart: status %d: %s", resp.StatusCode, b)
				}
				served++
			}
		}
		t.Logf("%d requests served during the restart", served)
		eventually(t, 20*time.Second, "replaced workers exit", func() bool {
			for _, pid := range before {
				if alive(pid) {
					return false
				}
			}
			return true
		})
	})

	t.Run("bad scale requests", func(t *testing.T) {
		for body, want := range map[string]string{
			`{"workers":-1}`:        "between 0 and 1024",
			`{"workers":1025}`:      "between 0 and 1024",
			`{"workers":"x"}`:       "JSON",
			`not json`:              "JSON",
			`{}`:                    `lacks \"workers\"`,
			`{"workers":1,"x":2}`:   "unknown field",
			`{"workers":1} {"a":1}`: "single JSON object",
			``:                      "JSON",
		} {
			got := s.expect(http.StatusBadRequest, http.MethodPost, "/oxian/pools/shop/scale", body)
			if !strings.Contains(got, want) {
				t.Errorf("scale body %q: answer %q does not say %q", body, got, want)
			}
		}
		if st := s.shop(); st.WorkersWanted != 2 {
			t.Fatalf("bad scale requests changed the worker count to %d", st.WorkersWanted)
		}
	})

	t.Run("wrong methods", func(t *testing.T) {
		for _, req := range []struct{ method, path, allow string }{
			{http.MethodPost, "/oxian/pools", http.MethodGet},
			{http.MethodDelete, "/oxian/pools", http.MethodGet},
			{http.MethodPut, "/oxian/pools/shop", http.MethodGet},
			{http.MethodDelete, "/oxian/pools/shop", http.MethodGet},
			{http.MethodGet, "/oxian/pools/shop/restart", http.MethodPost},
			{http.MethodGet, "/oxian/pools/shop/scale", http.MethodPost},
			{http.MethodPut, "/oxian/pools/shop/scale", http.MethodPost},
		} {
			status, header, body := s.do(req.method, req.path, "")
			if status != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status %d, want 405: %s", req.method, req.path, status, body)
				continue
			}
			if got := header.Get("Allow"); got != req.allow {
				t.Errorf("%s %s: Allow %q, want %q", req.method, req.path, got, req.allow)
			}
		}
	})
}
