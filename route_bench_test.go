package oxianhv

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// routeSink keeps the compiler from dropping the routing.
var routeSink *project

// BenchmarkRoute1Project routes with one project picked by its host, and
// a default rule.
func BenchmarkRoute1Project(b *testing.B) {
	benchmarkRoute(b, 1, func(i int) *WhenConfig {
		return &WhenConfig{HostEquals: fmt.Sprintf("tenant-%d.example.com", i)}
	})
}

// BenchmarkRoute1000Projects routes with 1000 projects, each picked by its
// host, and a default rule: the host index makes this as cheap as one.
func BenchmarkRoute1000Projects(b *testing.B) {
	benchmarkRoute(b, 1000, func(i int) *WhenConfig {
		return &WhenConfig{HostEquals: fmt.Sprintf("tenant-%d.example.com", i)}
	})
}

// BenchmarkRoute1000ProjectsUnindexed routes with 1000 projects picked by
// host suffix rules, which are tried in order: what the index saves.
func BenchmarkRoute1000ProjectsUnindexed(b *testing.B) {
	benchmarkRoute(b, 1000, func(i int) *WhenConfig {
		return &WhenConfig{HostSuffix: fmt.Sprintf("tenant-%d.example.com", i)}
	})
}

// benchmarkRoute routes requests for the host of the middle project, of
// the last one, and of none (the default rule), over n projects each
// picked by the rule when(i).
func benchmarkRoute(b *testing.B, n int, when func(i int) *WhenConfig) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: b.Context()})
	defer cancel()

	// the projects and their rules, then the default
	projects := make(map[string]*project, n)
	rules := make([]SelectRule, 0, n+1)
	for i := range n {
		name := fmt.Sprintf("tenant-%d", i)
		projects[name] = &project{name: name}
		rules = append(rules, SelectRule{Project: name, When: when(i)})
	}
	rules = append(rules, SelectRule{Project: "tenant-0", Default: true})
	rt, err := newRouter(ctx, rules, projects)
	if err != nil {
		b.Fatal(err)
	}

	for _, tc := range []struct{ name, host, want string }{
		{"middle", fmt.Sprintf("tenant-%d.example.com", n/2), fmt.Sprintf("tenant-%d", n/2)},
		{"last", fmt.Sprintf("tenant-%d.example.com", n-1), fmt.Sprintf("tenant-%d", n-1)},
		{"default", "unknown.example.org", "tenant-0"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "http://"+tc.host+"/api/hello", nil)
			r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, &caddyhttp.Server{})
			if p, err := rt.route(r); err != nil || p == nil || p.name != tc.want {
				b.Fatalf("%s routed to %v (%v), want %s", tc.host, p, err, tc.want)
			}

			b.ReportAllocs()
			for b.Loop() {
				routeSink, _ = rt.route(r)
			}
		})
	}
}
