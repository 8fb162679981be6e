package oxianhv

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// WebConfig serves the paths of a project that lie outside its API base
// path: the front end. A project's `web` overlays the handler's.
type WebConfig struct {
	// A development server (for example `http://localhost:5173`) that
	// non-API paths are proxied to, with Caddy's reverse proxy; WebSockets
	// (hot reload) work. Takes precedence over `static_dir`.
	DevProxyTarget string `json:"dev_proxy_target,omitempty"`

	// A directory of built front-end files, served with Caddy's file
	// server. A path that names no file gets `index.html`, as single-page
	// apps need.
	StaticDir string `json:"static_dir,omitempty"`

	// The `Cache-Control` header of responses from `static_dir`, for
	// example `public, max-age=3600`. Default: none.
	StaticCacheControl string `json:"static_cache_control,omitempty"`
}

// overlayWeb returns own with unset fields taken from defaults.
func overlayWeb(defaults, own *WebConfig) *WebConfig {
	switch {
	case own == nil:
		return defaults
	case defaults == nil:
		return own
	}
	out := *defaults
	if own.DevProxyTarget != "" || own.StaticDir != "" {
		// a project that names its own front end does not inherit the other kind
		out.DevProxyTarget, out.StaticDir = own.DevProxyTarget, own.StaticDir
	}
	if own.StaticCacheControl != "" {
		out.StaticCacheControl = own.StaticCacheControl
	}
	return &out
}

// newWebHandler builds the Caddy handler that serves web: a reverse proxy
// to the dev server, or a file server with the SPA fallback. It returns
// nil when web serves nothing.
func newWebHandler(ctx caddy.Context, web *WebConfig) (caddyhttp.MiddlewareHandler, error) {
	if web == nil || (web.DevProxyTarget == "" && web.StaticDir == "") {
		return nil, nil
	}
	var routes []map[string]any

	if web.DevProxyTarget != "" {
		proxy, err := devProxyJSON(web.DevProxyTarget)
		if err != nil {
			return nil, fmt.Errorf("web.dev_proxy_target: %v", err)
		}
		routes = append(routes, map[string]any{"handle": []any{proxy}})
	} else {
		if web.StaticCacheControl != "" {
			routes = append(routes, map[string]any{"handle": []any{map[string]any{
				"handler":  "headers",
				"response": map[string]any{"set": map[string][]string{"Cache-Control": {web.StaticCacheControl}}},
			}}})
		}

		// a file if there is one, else the app's index.html
		routes = append(routes,
			map[string]any{
				"match": []any{map[string]any{"file": map[string]any{
					"root":      web.StaticDir,
					"try_files": []string{"{http.request.uri.path}", "/index.html"},
				}}},
				"handle": []any{map[string]any{"handler": "rewrite", "uri": "{http.matchers.file.relative}"}},
			},
			map[string]any{"handle": []any{map[string]any{"handler": "file_server", "root": web.StaticDir}}},
		)
	}

	raw, err := json.Marshal(map[string]any{"routes": routes})
	if err != nil {
		return nil, err
	}
	mod, err := ctx.LoadModuleByID("http.handlers.subroute", raw)
	if err != nil {
		return nil, fmt.Errorf("setting up web: %v", err)
	}
	return mod.(caddyhttp.MiddlewareHandler), nil
}

// devProxyJSON returns the config of a reverse proxy to a dev server URL.
func devProxyJSON(target string) (map[string]any, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("bad URL %q: %v", target, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("want an http:// or https:// URL, got %q", target)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("want scheme://host[:port] with no path, got %q", target)
	}
	host := u.Host
	if u.Port() == "" {
		host += map[string]string{"http": ":80", "https": ":443"}[u.Scheme]
	}
	transport := map[string]any{"protocol": "http"}
	if u.Scheme == "https" {
		transport["tls"] = map[string]any{}
	}
	return map[string]any{
		"handler":   "reverse_proxy",
		"upstreams": []any{map[string]any{"dial": host}},
		"transport": transport,
		// dev servers check the host they are asked for
		"headers": map[string]any{"request": map[string]any{"set": map[string][]string{
			"Host": {"{http.reverse_proxy.upstream.hostport}"},
		}}},
	}, nil
}

// validateWeb checks a web config.
func validateWeb(web *WebConfig) error {
	if web == nil {
		return nil
	}
	if web.DevProxyTarget != "" {
		if _, err := devProxyJSON(web.DevProxyTarget); err != nil {
			return fmt.Errorf("web.dev_proxy_target: %v", err)
		}
	}
	if strings.ContainsRune(web.StaticDir, 0) {
		return fmt.Errorf("web.static_dir: invalid path")
	}
	return nil
}

// serveWeb answers a request outside the project's API base path: with
// the project's web handler, or by passing it on.
func (p *project) serveWeb(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if p.web == nil {
		return next.ServeHTTP(w, r)
	}
	return p.web.ServeHTTP(w, r, next)
}
