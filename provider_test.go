package oxianhv

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeProvider is an HTTP provider endpoint that answers with decide.
type fakeProvider struct {
	*httptest.Server
	asked atomic.Int64
	mu    sync.Mutex
	last  providerRequest
}

func newFakeProvider(t *testing.T, decide func(q providerRequest) (int, any)) *fakeProvider {
	fp := new(fakeProvider)
	fp.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fp.asked.Add(1)
		var q providerRequest
		if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fp.mu.Lock()
		fp.last = q
		fp.mu.Unlock()
		status, body := decide(q)
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(fp.Close)
	return fp
}

func TestProviderPicksProjectsAndCaches(t *testing.T) {
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		if strings.HasPrefix(q.Path, "/b/") {
			return 200, Decision{Project: "b", StripPathPrefix: "/b"}
		}
		return 200, Decision{Project: "a"}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		command %s
		workers 1
		provider http {
			url %s
			headers X-Tenant
			cache_ttl 1m
		}
		projects {
			a {
			}
			b {
			}
		}
	}`, testworkerBin, fp.URL))
	eventually(t, 30*time.Second, "2 projects ready", func() bool {
		report, _ := s.health()
		return len(report.Projects) == 2 && report.Projects[0].Ready == 1 && report.Projects[1].Ready == 1
	})

	// the provider's project serves; its strip prefix applies
	_, body := s.get("/whoami", "X-Tenant", "acme")
	if !strings.Contains(body, `"project":"a"`) {
		t.Fatalf("/whoami: %s", body)
	}
	fp.mu.Lock()
	last := fp.last
	fp.mu.Unlock()
	if last.Method != "GET" || last.Path != "/whoami" || last.Headers["X-Tenant"] != "acme" || last.Host == "" {
		t.Fatalf("provider was asked %+v", last)
	}
	_, body = s.get("/b/whoami")
	if !strings.Contains(body, `"project":"b"`) {
		t.Fatalf("/b/whoami: %s", body)
	}

	// the same key again comes from the cache
	asked := fp.asked.Load()
	for range 5 {
		s.get("/whoami")
	}
	if n := fp.asked.Load(); n != asked {
		t.Fatalf("cached decisions were asked again: %d, then %d", asked, n)
	}
}

func TestProviderFailuresAnswerClearly(t *testing.T) {
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		switch q.Path {
		case "/broken":
			return 500, map[string]string{"oops": "x"}
		case "/nonsense":
			return 200, map[string]string{"hello": "world"}
		case "/slow":
			time.Sleep(time.Second) // well past the provider timeout
		}
		return 200, Decision{Project: "a"}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		command %s
		workers 1
		provider http %s {
			timeout 300ms
		}
		projects {
			a {
			}
		}
	}`, testworkerBin, fp.URL))
	s.waitReady(1)

	for path, want := range map[string]struct {
		status int
		text   string
	}{
		"/broken":   {http.StatusBadGateway, "answered status 500"},
		"/nonsense": {http.StatusBadGateway, "names neither a project nor a target"},
		"/slow":     {http.StatusGatewayTimeout, "did not answer in time"},
	} {
		start := time.Now()
		resp, body := s.get(path)
		if resp.StatusCode != want.status || !strings.Contains(body, want.text) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%s took %s", path, took)
		}
	}
}

func TestProviderOnDemandProjectsAndCap(t *testing.T) {
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		tenant := strings.Split(strings.TrimPrefix(q.Path, "/"), "/")[0]
		return 200, Decision{Project: tenant, StripPathPrefix: "/" + tenant, Env: map[string]string{"TENANT": tenant}}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		workers 1
		provider http %s
		on_demand {
			max_projects 2
			template {
				command %s
			}
		}
	}`, fp.URL, testworkerBin))

	// projects appear as they are named, up to the cap
	for _, tenant := range []string{"t1", "t2"} {
		resp, body := s.get("/" + tenant + "/whoami")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"project":"`+tenant+`"`) {
			t.Fatalf("%s: %d %s", tenant, resp.StatusCode, body)
		}
	}
	resp, body := s.get("/t3/whoami")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "too many projects created on demand") {
		t.Fatalf("past the cap: %d %s", resp.StatusCode, body)
	}
	report, _ := s.health()
	var names []string
	for _, p := range report.Projects {
		names = append(names, p.Project)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"t1", "t2"}) {
		t.Fatalf("health lists %v", names)
	}
}

func TestProviderTargetAndInvalidation(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "target got %s", r.URL.Path)
	}))
	defer target.Close()
	var invalidateAt atomic.Pointer[time.Time]
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		if q.Path == "/external" {
			return 200, Decision{Target: target.URL}
		}
		return 200, Decision{Project: "a", InvalidateCacheAt: invalidateAt.Load()}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		command %s
		workers 1
		provider http %s
		projects {
			a {
			}
		}
	}`, testworkerBin, fp.URL))
	s.waitReady(1)

	// a target is proxied to; no worker sees it
	resp, body := s.get("/external")
	if resp.StatusCode != http.StatusOK || body != "target got /external" {
		t.Fatalf("target: %d %q", resp.StatusCode, body)
	}

	// an invalidation time after the pool started replaces its worker, once
	before := s.pids()
	now := time.Now()
	invalidateAt.Store(&now)
	s.worker("/whoami")
	eventually(t, 20*time.Second, "worker replaced", func() bool {
		ws := s.workers()
		return len(ws) == 1 && ws[0].State == "ready" && ws[0].PID != before[0]
	})
	after := s.pids()
	for range 3 {
		s.worker("/whoami")
	}
	time.Sleep(300 * time.Millisecond) // room for a wrong second replacement to begin
	if got := s.pids(); !slices.Equal(got, after) || len(s.workers()) != 1 {
		t.Fatalf("workers replaced again for the same invalidation: %v, then %v", after, got)
	}
}

func TestProviderChangingCommandReplacesOnDemandWorkers(t *testing.T) {
	var version atomic.Int64
	version.Store(1)
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		return 200, Decision{Project: "t1", Env: map[string]string{"VERSION": fmt.Sprint(version.Load())}}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		workers 1
		provider http %s
		on_demand {
			template {
				command %s
			}
		}
	}`, fp.URL, testworkerBin))

	// the project appears with the first decision
	s.worker("/whoami")
	first := s.pids()

	// a decision with another environment replaces its worker
	version.Store(2)
	s.worker("/whoami")
	eventually(t, 20*time.Second, "worker replaced", func() bool {
		ws := s.workers()
		return len(ws) == 1 && ws[0].State == "ready" && ws[0].PID != first[0]
	})
	if got := environValueOf(s.pids()[0], "VERSION"); got != "2" {
		t.Fatalf("new worker runs VERSION=%q", got)
	}
}

// environValueOf reads one variable of a process's environment (Linux).
func environValueOf(pid int, key string) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestProviderSharesOneQuestionAmongConcurrentMisses(t *testing.T) {
	fp := newFakeProvider(t, func(q providerRequest) (int, any) {
		time.Sleep(200 * time.Millisecond) // long enough for the requests to pile up
		return 200, Decision{Project: "a"}
	})
	s := startCaddy(t, fmt.Sprintf(`	oxian_hv {
		command %s
		workers 1
		provider http %s {
			cache_ttl 1m
		}
		projects {
			a {
			}
		}
	}`, testworkerBin, fp.URL))
	s.waitReady(1)

	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := s.client.Get(s.base + "/same/path")
			if err != nil || resp.StatusCode != http.StatusOK {
				failed.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if n := fp.asked.Load(); n != 1 {
		t.Fatalf("the provider was asked %d times for one key", n)
	}
}
