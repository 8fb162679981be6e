package oxianhv

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestOverlay(t *testing.T) {
	yes := true
	defaults := WorkerConfig{
		Command:  []string{"node", "app.js"},
		Env:      map[string]string{"A": "1", "B": "2"},
		Workers:  4,
		Strategy: StrategyLeastBusy,
		Health:   HealthConfig{Path: "/health", Interval: caddy.Duration(time.Second)},
		Proxy:    ProxyConfig{PassRequestID: &yes, ForwardHeaders: []string{"X-Tenant"}},
	}
	own := WorkerConfig{
		Env:     map[string]string{"B": "20", "C": "3"},
		Workers: 2,
		Health:  HealthConfig{Interval: caddy.Duration(2 * time.Second)},
	}
	got := overlay(defaults, own)
	want := defaults
	want.Env = map[string]string{"A": "1", "B": "20", "C": "3"}
	want.Workers = 2
	want.Health.Interval = caddy.Duration(2 * time.Second)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("overlay:\n got %+v\nwant %+v", got, want)
	}
	if defaults.Env["B"] != "2" {
		t.Fatal("overlay changed the defaults' env")
	}
}

// testRouter compiles rules over projects with the given names.
func testRouter(t *testing.T, rules []SelectRule, names ...string) *router {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	projects := map[string]*project{}
	for _, n := range names {
		projects[n] = &project{name: n}
	}
	rt, err := newRouter(ctx, rules, projects)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// routed returns the project name a request goes to, or "".
func routed(t *testing.T, rt *router, method, target string, headers ...string) string {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, &caddyhttp.Server{})
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	p, err := rt.route(r)
	if err != nil {
		t.Fatal(err)
	}
	if p == nil {
		return ""
	}
	return p.name
}

func TestSelectCriteria(t *testing.T) {
	rules := []SelectRule{
		{Project: "v2", When: &WhenConfig{PathPrefix: "/v2", Method: "GET"}},
		{Project: "admin", When: &WhenConfig{HostEquals: "admin.example.com"}},
		{Project: "docs", When: &WhenConfig{HostPrefix: "docs."}},
		{Project: "eu", When: &WhenConfig{HostSuffix: ".example.eu"}},
		{
			Project: "beta",
			When:    &WhenConfig{Header: map[string]string{"X-Api-Version": "beta", "Authorization": "Bearer .*"}},
		},
		{Project: "main", Default: true},
	}
	rt := testRouter(t, rules, "v2", "admin", "docs", "eu", "beta", "main")
	for _, tc := range []struct {
		method, target string
		headers        []string
		want           string
	}{
		{"GET", "http://x.com/v2/users", nil, "v2"},
		{"GET", "http://x.com/v2", nil, "v2"},
		{"POST", "http://x.com/v2/users", nil, "main"}, // both criteria are needed
		{"GET", "http://x.com/v2x", nil, "main"},       // a prefix is a path segment
		{"GET", "http://admin.example.com/", nil, "admin"},
		{"GET", "http://ADMIN.example.com:8443/", nil, "admin"},
		{"GET", "http://docs.example.com/", nil, "docs"},
		{"GET", "http://shop.example.eu/", nil, "eu"},
		{"GET", "http://x.com/", []string{"X-Api-Version", "beta", "Authorization", "Bearer abc"}, "beta"},
		{"GET", "http://x.com/", []string{"X-Api-Version", "beta"}, "main"},
		{"GET", "http://x.com/", []string{"X-Api-Version", "betamax", "Authorization", "Bearer abc"}, "main"},
		{"GET", "http://other.com/", nil, "main"},
	} {
		if got := routed(t, rt, tc.method, tc.target, tc.headers...); got != tc.want {
			t.Errorf("%s %s %v: routed to %q, want %q", tc.method, tc.target, tc.headers, got, tc.want)
		}
	}
}

func TestSelectRuleOrderWithHostIndex(t *testing.T) {
	// a rule that must be scanned comes before a host rule, another after
	rules := []SelectRule{
		{Project: "api", When: &WhenConfig{PathPrefix: "/api"}},
		{Project: "a", When: &WhenConfig{HostEquals: "a.test"}},
		{Project: "late", When: &WhenConfig{Method: "DELETE"}},
		{Project: "b", When: &WhenConfig{HostEquals: "a.test"}}, // shadowed by the first host rule
	}
	rt := testRouter(t, rules, "api", "a", "late", "b")
	for target, want := range map[string]string{
		"http://a.test/api/x": "api", // the earlier rule wins over the host rule
		"http://a.test/other": "a",
		"http://b.test/other": "",
	} {
		if got := routed(t, rt, "GET", target); got != want {
			t.Errorf("GET %s: %q, want %q", target, got, want)
		}
	}
	if got := routed(t, rt, "DELETE", "http://a.test/x"); got != "a" {
		t.Errorf("DELETE to a.test went to %q: a later rule beat the host rule", got)
	}
	if got := routed(t, rt, "DELETE", "http://c.test/x"); got != "late" {
		t.Errorf("DELETE to c.test went to %q, want late", got)
	}
}

func TestSelectWithCaddyMatchers(t *testing.T) {
	rules := []SelectRule{
		{Project: "q", MatchRaw: []caddy.ModuleMap{{"query": json.RawMessage(`{"tenant":["q"]}`)}}},
		{Project: "re", MatchRaw: []caddy.ModuleMap{{"path_regexp": json.RawMessage(`{"pattern":"^/t/[0-9]+$"}`)}}},
		{
			Project:  "both",
			When:     &WhenConfig{Method: "PUT"},
			MatchRaw: []caddy.ModuleMap{{"path": json.RawMessage(`["/put/*"]`)}},
		},
	}
	rt := testRouter(t, rules, "q", "re", "both")
	for _, tc := range []struct{ method, target, want string }{
		{"GET", "http://x/any?tenant=q", "q"},
		{"GET", "http://x/t/42", "re"},
		{"GET", "http://x/t/abc", ""},
		{"PUT", "http://x/put/1", "both"},
		{"GET", "http://x/put/1", ""},
	} {
		if got := routed(t, rt, tc.method, tc.target); got != tc.want {
			t.Errorf("%s %s: %q, want %q", tc.method, tc.target, got, tc.want)
		}
	}
}

func TestSelectRejectsBadRules(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	projects := map[string]*project{"a": {name: "a"}}
	for _, tc := range []struct {
		name  string
		rules []SelectRule
		want  string
	}{
		{"unknown project", []SelectRule{{Project: "zz", Default: true}}, `select[0]: unknown project "zz"; configured: a`},
		{"two defaults", []SelectRule{{Project: "a", Default: true}, {Project: "a", Default: true}},
			"more than one default rule"},
		{"no criteria", []SelectRule{{Project: "a"}}, "a rule needs criteria"},
		{"default with criteria", []SelectRule{{Project: "a", Default: true, When: &WhenConfig{Method: "GET"}}},
			"a default rule has no criteria"},
		{"bad regexp", []SelectRule{{Project: "a", When: &WhenConfig{Header: map[string]string{"X": "("}}}},
			"bad regular expression"},
		{"bad prefix", []SelectRule{{Project: "a", When: &WhenConfig{PathPrefix: "api"}}},
			"path_prefix: must start with '/'"},
	} {
		_, err := newRouter(ctx, tc.rules, projects)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestStripPrefix(t *testing.T) {
	for _, tc := range []struct{ prefix, path, want, header string }{
		{"/tenant-a", "/tenant-a/users", "/users", "/tenant-a"},
		{"/tenant-a/", "/tenant-a", "/", "/tenant-a"},
		{"/tenant-a", "/tenant-ab/users", "/tenant-ab/users", ""},
	} {
		r := httptest.NewRequest("GET", "http://x"+tc.path, nil)
		stripPrefix(r, tc.prefix)
		if r.URL.Path != tc.want || r.Header.Get("X-Forwarded-Prefix") != tc.header {
			t.Errorf("strip %s from %s: path %s, header %q", tc.prefix, tc.path, r.URL.Path, r.Header.Get("X-Forwarded-Prefix"))
		}
	}
}

func TestCaddyfileProjectsAndSelect(t *testing.T) {
	d := caddyfile.NewTestDispenser(`oxian_hv {
		command ./app --port {http.request.port}
		workers 2
		base_path /api
		projects {
			shop {
				env TENANT shop
				base_path /shop
				strip_path_prefix /shop
			}
			admin {
				command ./admin
				workers 1
			}
		}
		select {
			admin {
				host_equals admin.example.com
				header X-Role "ad.*"
			}
			shop {
				path_prefix /shop
				method GET
				match {
					query tenant=*
				}
			}
			default shop
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if h.BasePath != "/api" || len(h.Projects) != 2 || len(h.Select) != 3 {
		t.Fatalf("parsed %+v", h)
	}
	shop := h.Projects["shop"]
	if shop.Env["TENANT"] != "shop" || shop.Routing.BasePath != "/shop" || shop.StripPathPrefix != "/shop" {
		t.Fatalf("shop parsed as %+v", shop)
	}
	if a := h.Projects["admin"]; a.Command[0] != "./admin" || a.Workers != 1 {
		t.Fatalf("admin parsed as %+v", a)
	}
	rule := h.Select[0]
	if rule.Project != "admin" || rule.When.HostEquals != "admin.example.com" || rule.When.Header["X-Role"] != "ad.*" {
		t.Fatalf("first rule parsed as %+v", rule)
	}
	if r := h.Select[1]; r.When.PathPrefix != "/shop" || r.When.Method != "GET" || len(r.MatchRaw) != 1 {
		t.Fatalf("second rule parsed as %+v %+v", r, r.When)
	}
	if r := h.Select[2]; !r.Default || r.Project != "shop" {
		t.Fatalf("default rule parsed as %+v", r)
	}

	// an unknown subdirective in a project or a rule names the allowed ones
	for _, input := range []string{
		"oxian_hv {\n projects {\n a {\n bogus 1\n }\n }\n}",
		"oxian_hv {\n select {\n a {\n bogus 1\n }\n }\n}",
	} {
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), "unknown subdirective 'bogus'") ||
			!strings.Contains(err.Error(), "allowed:") {
			t.Errorf("%q: error %v", input, err)
		}
	}
}

func TestProjectsServeByRules(t *testing.T) {
	s := startCaddy(t, fmt.Sprintf(`	route {
		oxian_hv {
			command %s
			workers 1
			projects {
				tenant-a {
					base_path /tenant-a
					strip_path_prefix /tenant-a
				}
				tenant-b {
					base_path /tenant-b
					strip_path_prefix /tenant-b
				}
				beta {
				}
			}
			select {
				beta {
					header X-Api-Version beta
				}
				tenant-a {
					path_prefix /tenant-a
				}
				tenant-b {
					path_prefix /tenant-b
				}
			}
		}
		respond "next handler" 200
	}`, testworkerBin))
	eventually(t, 30*time.Second, "3 projects ready", func() bool {
		report, _ := s.health()
		ready := 0
		for _, p := range report.Projects {
			ready += p.Ready
		}
		return len(report.Projects) == 3 && ready == 3
	})

	// each project's workers know their project; tenant-a sees stripped paths
	var who struct {
		Project string `json:"project"`
	}
	_, body := s.get("/tenant-b/whoami")
	if err := json.Unmarshal([]byte(body), &who); err != nil || who.Project != "tenant-b" {
		t.Fatalf("/tenant-b/whoami answered %s", body)
	}
	var seen struct {
		Path    string            `json:"path"`
		Headers map[string]string `json:"headers"`
	}
	_, body = s.get("/tenant-a/headers")
	if err := json.Unmarshal([]byte(body), &seen); err != nil {
		t.Fatal(err)
	}
	if seen.Path != "/headers" || seen.Headers["X-Forwarded-Prefix"] != "/tenant-a" {
		t.Fatalf("tenant-a's worker saw path %q and prefix %q", seen.Path, seen.Headers["X-Forwarded-Prefix"])
	}

	// rule order: the header rule comes first, so even a tenant-a path
	// reaches beta, which does not strip it
	_, body = s.get("/whoami", "X-Api-Version", "beta")
	if !strings.Contains(body, `"project":"beta"`) {
		t.Fatalf("header rule did not pick beta: %s", body)
	}
	_, body = s.get("/tenant-a/whoami", "X-Api-Version", "beta")
	if !strings.Contains(body, `"path":"/tenant-a/whoami"`) {
		t.Fatalf("header rule did not win over the path rule: %s", body)
	}

	// no rule picks it: the next handler answers
	if resp, body := s.get("/elsewhere"); resp.StatusCode != http.StatusOK || body != "next handler" {
		t.Fatalf("unrouted request: %d %q", resp.StatusCode, body)
	}
}

func TestProjectsConfigErrors(t *testing.T) {
	for _, tc := range []struct{ handler, want string }{
		{`{"handler":"oxian_hv","command":["x"],"projects":{"a":{},"b":{}}}`, "projects a, b have no routing.base_path"},
		{`{"handler":"oxian_hv","projects":{"a":{}}}`, "project a: command: required"},
		{`{"handler":"oxian_hv","command":["x"],"project":"p","projects":{"a":{}}}`, "with projects, drop it"},
		{`{"handler":"oxian_hv","command":["x"],"select":[{"project":"a","default":true}]}`, "select: rules need projects"},
		{`{"handler":"oxian_hv","command":["x"],"projects":{"a":{"routing":{"base_path":"api"}}}}`,
			"routing.base_path: must start with '/'"},
		{`{"handler":"oxian_hv","command":["x"],"projects":{"a":{"strategy":"nope"}}}`,
			`project a: strategy: unknown strategy "nope"`},
	} {
		err := caddy.Validate(mustConfig(t, jsonConfig(tc.handler)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.handler, err, tc.want)
		}
	}
}

func TestRouteByLongestBasePath(t *testing.T) {
	rt := &router{byBase: []*project{
		{name: "deep", basePath: "/api/v2"},
		{name: "api", basePath: "/api"},
		{name: "rest", basePath: ""},
	}}
	for path, want := range map[string]string{
		"/api/v2/users": "deep",
		"/api/v3":       "api",
		"/api":          "api",
		"/apis":         "rest",
		"/":             "rest",
	} {
		if got := routed(t, rt, "GET", "http://x"+path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}

func TestRequestHost(t *testing.T) {
	for host, want := range map[string]string{
		"Example.COM":      "example.com",
		"example.com:8443": "example.com",
		"[::1]:8080":       "::1",
		"[::1]":            "::1",
		"127.0.0.1:80":     "127.0.0.1",
	} {
		if got := requestHost(&http.Request{Host: host}); got != want {
			t.Errorf("%q: %q, want %q", host, got, want)
		}
	}
}

func TestWorkerPoolMax(t *testing.T) {
	d := caddyfile.NewTestDispenser(`oxian_hv {
		command ./app
		workers auto
		projects {
			high-memory {
				base_path /hm
				worker {
					pool {
						max 2
					}
				}
			}
			cpu-intensive {
				base_path /cpu
				workers 16
				worker {
					pool {
						max 8
					}
				}
			}
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"high-memory": min(2, runtime.NumCPU()), "cpu-intensive": 8} {
		cfg := overlay(h.WorkerConfig, h.Projects[name].WorkerConfig)
		if got := cfg.workerCount(); got != want {
			t.Errorf("%s runs %d workers, want %d", name, got, want)
		}
	}
	err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("oxian_hv {\n worker {\n pool {\n max 0\n }\n }\n}"))
	if err == nil || !strings.Contains(err.Error(), "worker.pool.max: want a number of at least 1") {
		t.Errorf("max 0: %v", err)
	}
}
