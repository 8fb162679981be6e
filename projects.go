package oxianhv

import (
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ProjectConfig is one project of a handler: its own worker settings,
// each overlaying the handler's top-level settings, and its routing.
type ProjectConfig struct {
	WorkerConfig

	// How requests reach the project.
	Routing RoutingConfig `json:"routing,omitempty"`

	// A path prefix removed from the request path before it reaches a
	// worker; the worker gets the prefix in `X-Forwarded-Prefix`. Default:
	// none.
	StripPathPrefix string `json:"strip_path_prefix,omitempty"`

	// The project's front end, overlaying the handler's `web`.
	Web *WebConfig `json:"web,omitempty"`
}

// RoutingConfig says which requests belong to a project.
type RoutingConfig struct {
	// The path under which the project's API lives. Requests for other
	// paths that select the project are passed to the next handler. With
	// no `select` rules, a request goes to the project whose base path is
	// the longest prefix of its path. Default: the handler's `base_path`.
	BasePath string `json:"base_path,omitempty"`
}

// SelectRule picks the project of the requests it matches. Rules are tried
// in order and the first that matches wins; all criteria of a rule must
// match.
type SelectRule struct {
	// The project the rule picks. Required.
	Project string `json:"project,omitempty"`

	// Makes this the rule used when no other rule matches. It has no
	// criteria; at most one rule may be the default.
	Default bool `json:"default,omitempty"`

	// Simple criteria on the request.
	When *WhenConfig `json:"when,omitempty"`

	// Any Caddy request matchers (`path`, `host`, `header_regexp`, `query`,
	// `remote_ip`, `expression`, ...). The rule matches if any of the
	// matcher sets does, and its `when` criteria match too.
	MatchRaw caddyhttp.RawMatcherSets `json:"match,omitempty" caddy:"namespace=http.matchers"`
}

// WhenConfig holds the simple criteria of a select rule.
type WhenConfig struct {
	// The request path is this prefix or lies below it (`/api` matches
	// `/api` and `/api/users`, not `/apis`).
	PathPrefix string `json:"path_prefix,omitempty"`

	// The request host, without port, is exactly this (case-insensitive).
	HostEquals string `json:"host_equals,omitempty"`

	// The request host starts with this.
	HostPrefix string `json:"host_prefix,omitempty"`

	// The request host ends with this.
	HostSuffix string `json:"host_suffix,omitempty"`

	// The request method is this (case-insensitive).
	Method string `json:"method,omitempty"`

	// Request headers and the values they must have. Each value is an RE2
	// regular expression that must match the whole header value, so a
	// plain word matches itself: `{"X-Api-Version": "beta",
	// "Authorization": "Bearer .*"}`.
	Header map[string]string `json:"header,omitempty"`
}

// overlay returns the settings of a project: the handler's defaults with
// every field the project sets put over them. Maps (env) are merged.
func overlay(defaults, own WorkerConfig) WorkerConfig {
	out := defaults
	overlayValue(reflect.ValueOf(&out).Elem(), reflect.ValueOf(own))
	return out
}

// overlayValue sets the fields of dst that src sets.
func overlayValue(dst, src reflect.Value) {
	for i := 0; i < src.NumField(); i++ {
		if !dst.Field(i).CanSet() {
			continue
		}
		sf, df := src.Field(i), dst.Field(i)
		switch {
		case sf.Kind() == reflect.Struct:
			overlayValue(df, sf)
		case sf.Kind() == reflect.Map && !sf.IsNil():
			merged := reflect.MakeMap(sf.Type())
			for _, m := range []reflect.Value{df, sf} {
				iter := m.MapRange()
				for iter.Next() {
					merged.SetMapIndex(iter.Key(), iter.Value())
				}
			}
			df.Set(merged)
		case !sf.IsZero():
			df.Set(sf)
		}
	}
}

// router picks the project of a request.
type router struct {
	rules []*compiledRule

	// rules whose only criterion is an exact host, by host: the index of
	// the first such rule; and the rules that must be tried in order
	byHost map[string]int
	scan   []int

	fallback *project

	// without rules: projects by base path, longest first
	byBase []*project
}

// compiledRule is a select rule ready to match.
type compiledRule struct {
	project  *project
	when     *WhenConfig
	headers  map[string]*regexp.Regexp
	matchers caddyhttp.MatcherSets
	host     string
}

// newRouter compiles the select rules over the handler's projects.
func newRouter(ctx caddy.Context, rules []SelectRule, projects map[string]*project) (*router, error) {
	rt := &router{byHost: make(map[string]int)}
	for i := range rules {
		rule := &rules[i]
		p, ok := projects[rule.Project]
		if !ok {
			return nil, fmt.Errorf("select[%d]: unknown project %q; configured: %s",
				i, rule.Project, strings.Join(slices.Sorted(maps.Keys(projects)), ", "))
		}

		// the default rule
		if rule.Default {
			if rule.When != nil || rule.MatchRaw != nil {
				return nil, fmt.Errorf("select[%d]: a default rule has no criteria", i)
			}
			if rt.fallback != nil {
				return nil, fmt.Errorf("select[%d]: more than one default rule", i)
			}
			rt.fallback = p
			continue
		}

		// criteria, with host names in lower case as requests are
		cr := &compiledRule{project: p, when: rule.When}
		if w := rule.When; w != nil {
			lowered := *w
			lowered.HostEquals = strings.ToLower(w.HostEquals)
			lowered.HostPrefix = strings.ToLower(w.HostPrefix)
			lowered.HostSuffix = strings.ToLower(w.HostSuffix)
			cr.when = &lowered
		}
		if rule.When == nil && rule.MatchRaw == nil {
			return nil, fmt.Errorf("select[%d]: a rule needs criteria (when, match) or default", i)
		}
		if w := rule.When; w != nil {
			if w.PathPrefix != "" && !strings.HasPrefix(w.PathPrefix, "/") {
				return nil, fmt.Errorf("select[%d].when.path_prefix: must start with '/', got %q", i, w.PathPrefix)
			}
			for name, pattern := range w.Header {
				if !validHeaderName(name) {
					return nil, fmt.Errorf("select[%d].when.header: %q is not a valid header name", i, name)
				}
				re, err := regexp.Compile(`^(?:` + pattern + `)$`)
				if err != nil {
					return nil, fmt.Errorf("select[%d].when.header %s: bad regular expression %q: %v", i, name, pattern, err)
				}
				if cr.headers == nil {
					cr.headers = make(map[string]*regexp.Regexp)
				}
				cr.headers[http.CanonicalHeaderKey(name)] = re
			}
		}
		if rule.MatchRaw != nil {
			mods, err := ctx.LoadModule(rule, "MatchRaw")
			if err != nil {
				return nil, fmt.Errorf("select[%d].match: %v", i, err)
			}
			if err := cr.matchers.FromInterface(mods); err != nil {
				return nil, fmt.Errorf("select[%d].match: %v", i, err)
			}
		}

		// a rule on the host alone is found by a map lookup
		if w := rule.When; w != nil && rule.MatchRaw == nil && w.HostEquals != "" &&
			(WhenConfig{HostEquals: w.HostEquals}).equal(w) {
			cr.host = strings.ToLower(w.HostEquals)
			if _, taken := rt.byHost[cr.host]; !taken {
				rt.byHost[cr.host] = len(rt.rules)
			}
		} else {
			rt.scan = append(rt.scan, len(rt.rules))
		}
		rt.rules = append(rt.rules, cr)
	}
	return rt, nil
}

// equal reports whether two sets of criteria are the same.
func (w WhenConfig) equal(o *WhenConfig) bool {
	return w.PathPrefix == o.PathPrefix && w.HostEquals == o.HostEquals &&
		w.HostPrefix == o.HostPrefix && w.HostSuffix == o.HostSuffix &&
		w.Method == o.Method && len(o.Header) == 0 && len(w.Header) == 0
}

// route returns the project of r, or nil if no rule picks one.
func (rt *router) route(r *http.Request) (*project, error) {
	if len(rt.rules) == 0 && rt.fallback == nil {
		return rt.routeByBase(r), nil
	}
	host := requestHost(r)

	// the first rule that matches, in order: a host rule from the index,
	// unless a rule that must be tried comes before it and matches
	first := len(rt.rules)
	if i, ok := rt.byHost[host]; ok {
		first = i
	}
	for _, i := range rt.scan {
		if i > first {
			break
		}
		ok, err := rt.rules[i].match(r, host)
		if err != nil {
			return nil, err
		}
		if ok {
			return rt.rules[i].project, nil
		}
	}
	if first < len(rt.rules) {
		return rt.rules[first].project, nil
	}
	return rt.fallback, nil
}

// routeByBase returns the project whose base path is the longest prefix
// of the request path.
func (rt *router) routeByBase(r *http.Request) *project {
	for _, p := range rt.byBase {
		if underPath(r.URL.Path, p.basePath) {
			return p
		}
	}
	return nil
}

// match reports whether the rule matches r.
func (cr *compiledRule) match(r *http.Request, host string) (bool, error) {
	if w := cr.when; w != nil {
		if w.PathPrefix != "" && !underPath(r.URL.Path, w.PathPrefix) {
			return false, nil
		}
		if w.HostEquals != "" && host != w.HostEquals {
			return false, nil
		}
		if w.HostPrefix != "" && !strings.HasPrefix(host, w.HostPrefix) {
			return false, nil
		}
		if w.HostSuffix != "" && !strings.HasSuffix(host, w.HostSuffix) {
			return false, nil
		}
		if w.Method != "" && !strings.EqualFold(r.Method, w.Method) {
			return false, nil
		}
		for name, re := range cr.headers {
			if !re.MatchString(r.Header.Get(name)) {
				return false, nil
			}
		}
	}
	if len(cr.matchers) > 0 {
		return cr.matchers.AnyMatchWithError(r)
	}
	return true, nil
}

// requestHost returns the request's host in lower case, without port
// (and without the brackets of an IPv6 address).
func requestHost(r *http.Request) string {
	host := r.Host
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i:], ']') < 0 {
		host = host[:i]
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.ToLower(host)
}

// underPath reports whether path is prefix or lies below it.
func underPath(path, prefix string) bool {
	if prefix == "" || prefix == "/" {
		return true
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// stripPrefix removes prefix from the request path, for the worker, and
// tells the worker in X-Forwarded-Prefix.
func stripPrefix(r *http.Request, prefix string) {
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" || !underPath(r.URL.Path, prefix) {
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, prefix)
	if rest == "" {
		rest = "/"
	}
	r.URL.Path = rest
	if r.URL.RawPath != "" {
		raw := strings.TrimPrefix(r.URL.RawPath, prefix)
		if raw == "" {
			raw = "/"
		}
		r.URL.RawPath = raw
	}
	r.Header.Set("X-Forwarded-Prefix", prefix)
}
