package oxianhv

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/selection"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// proxy tuning that is not configurable
const (
	retryInterval   = 10 * time.Millisecond
	failDuration    = time.Second
	requestIDHeader = "X-Request-Id" // in canonical form

	// Retry-After of 503 answers: while workers start, and once all failed
	retryAfter       = "1"
	failedRetryAfter = "30"
)

// Handler runs a pool of worker processes and proxies requests to them with
// Caddy's reverse proxy. Workers are started when the config starts (never
// by `caddy validate`), get traffic once their health probe passes, and are
// restarted when they exit or keep failing probes. A config reload keeps
// the processes of a pool whose command, directory and environment did not
// change.
//
// The handler answers its health path (`health.path`) itself with the
// state of its pool as JSON.
//
// It sets these placeholders:
//
// Placeholder | Description
// ------------|-------------
// `{http.oxian_hv.project}` | The project serving the request
// `{http.oxian_hv.worker}` | The index of the worker serving the request
// `{http.oxian_hv.request_id}` | The request id passed to the worker
type Handler struct {
	// The name of the project served by this handler's pool, when it has
	// no `projects`. It names the pool in logs, health output and the
	// worker environment (`OXIAN_HV_PROJECT`). Default: `default`.
	Project string `json:"project,omitempty"`

	// The worker settings. With `projects`, they are the defaults each
	// project overlays.
	WorkerConfig

	// Named projects, each with its own pool. Default: one project named
	// by `project`, run with the top-level settings.
	Projects map[string]*ProjectConfig `json:"projects,omitempty"`

	// Rules that pick the project of a request, tried in order. Without
	// rules, a request goes to the project whose `routing.base_path` is the
	// longest prefix of its path. A request no rule picks goes to the next
	// handler.
	Select []SelectRule `json:"select,omitempty"`

	// What answers the paths outside a project's API base path, for
	// projects that set no `web` of their own (they may overlay it).
	// Default: such paths go to the next handler.
	Web *WebConfig `json:"web,omitempty"`

	// Caddy handlers run on each request after its project is chosen and
	// before it is proxied: `request_header`, `rewrite`, `vars`,
	// `forward_auth`, ... They can use `{http.oxian_hv.project}`. A handler
	// that fails ends the request with 500; one that answers the request
	// itself ends it there. Default: none.
	OnRequestRaw []json.RawMessage `json:"on_request,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// The API base path of projects that set none in `routing.base_path`.
	// Requests that select a project but lie outside its base path go to
	// the next handler. Default: `/`.
	BasePath string `json:"base_path,omitempty"`

	logger    *zap.Logger
	projects  []*project
	router    *router
	onRequest caddyhttp.MiddlewareHandler

	// the Caddyfile adapter's helper, while the Caddyfile is parsed
	caddyfileHelper *httpcaddyfile.Helper
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oxian_hv",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the config, registers the pools with the `oxian` app
// and sets up the reverse proxies. It starts no process.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	appIface, err := ctx.App("oxian")
	if err != nil {
		return fmt.Errorf("getting oxian app: %v", err)
	}
	app := appIface.(*App)

	// the projects, with the handler's settings as their defaults
	if err := h.setUpProjects(ctx, app); err != nil {
		return err
	}

	// the handlers run before proxying
	if h.OnRequestRaw != nil {
		h.onRequest, err = newOnRequest(ctx, h.OnRequestRaw)
		if err != nil {
			return err
		}
	}

	registerMetrics(ctx, h.logger)
	return nil
}

// Cleanup releases the projects' reverse proxies; the app releases the
// pools.
func (h *Handler) Cleanup() error {
	var errs []error
	for _, p := range h.projects {
		errs = append(errs, p.cleanup())
	}
	return errors.Join(errs...)
}

// ServeHTTP answers the health path, or proxies the request to a worker of
// its project.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path == h.healthPath() && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return h.serveHealth(w, r)
	}

	// the project, and whether the path is within its API
	p := h.projects[0]
	if h.router != nil {
		var err error
		p, err = h.router.route(r)
		if err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("selecting project: %v", err))
		}
	}
	if p == nil {
		return next.ServeHTTP(w, r)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set("http.oxian_hv.project", p.name)

	// outside the API: the front end, if any
	if !underPath(r.URL.Path, p.basePath) {
		return p.serveWeb(w, r, next)
	}

	// the API: strip, transform, proxy
	if p.stripPrefix != "" {
		stripPrefix(r, p.stripPrefix)
	}
	if h.onRequest != nil {
		proceed, err := h.runOnRequest(w, r, p)
		if !proceed || err != nil {
			return err
		}
	}
	return p.serve(w, r, next)
}

// setUpProjects provisions the projects and the router between them.
func (h *Handler) setUpProjects(ctx caddy.Context, app *App) error {
	if h.BasePath != "" && !strings.HasPrefix(h.BasePath, "/") {
		return fmt.Errorf("base_path: must start with '/', got %q", h.BasePath)
	}

	// one project from the top-level settings
	if len(h.Projects) == 0 {
		if len(h.Select) > 0 {
			return fmt.Errorf("select: rules need projects to pick from")
		}
		if h.Project == "" {
			h.Project = defaultProject
		}
		p := &project{name: h.Project, cfg: h.WorkerConfig, basePath: h.BasePath, webConfig: h.Web, logger: h.logger}
		if err := p.provision(ctx, app); err != nil {
			return err
		}
		h.projects = []*project{p}
		return nil
	}

	// named projects over the top-level defaults
	if h.Project != "" {
		return fmt.Errorf("project: names the single project of a handler without projects; with projects, drop it")
	}
	byName := make(map[string]*project)
	for _, name := range slices.Sorted(maps.Keys(h.Projects)) {
		pc := h.Projects[name]
		if pc == nil {
			pc = new(ProjectConfig)
		}
		if name == "" || strings.ContainsAny(name, " /\t\n") {
			return fmt.Errorf("projects: invalid project name %q", name)
		}
		p := &project{
			name:        name,
			cfg:         overlay(h.WorkerConfig, pc.WorkerConfig),
			basePath:    cmp.Or(pc.Routing.BasePath, h.BasePath),
			stripPrefix: pc.StripPathPrefix,
			webConfig:   overlayWeb(h.Web, pc.Web),
			logger:      h.logger,
		}
		for field, path := range map[string]string{"routing.base_path": p.basePath, "strip_path_prefix": p.stripPrefix} {
			if path != "" && !strings.HasPrefix(path, "/") {
				return fmt.Errorf("project %s: %s: must start with '/', got %q", name, field, path)
			}
		}
		if err := p.provision(ctx, app); err != nil {
			return err
		}
		h.projects = append(h.projects, p)
		byName[name] = p
	}

	// the router: select rules, or base paths
	rt, err := newRouter(ctx, h.Select, byName)
	if err != nil {
		return err
	}
	if len(h.Select) == 0 {
		var catchAll []string
		for _, p := range h.projects {
			if p.basePath == "" || p.basePath == "/" {
				catchAll = append(catchAll, p.name)
			}
			rt.byBase = append(rt.byBase, p)
		}
		if len(catchAll) > 1 {
			return fmt.Errorf("projects %s have no routing.base_path: give them base paths or add select rules",
				strings.Join(catchAll, ", "))
		}
		slices.SortStableFunc(rt.byBase, func(a, b *project) int {
			return len(strings.TrimSuffix(b.basePath, "/")) - len(strings.TrimSuffix(a.basePath, "/"))
		})
	}
	h.router = rt
	return nil
}

// healthPath is the path the hypervisor answers itself.
func (h *Handler) healthPath() string {
	if h.Health.Path != "" {
		return h.Health.Path
	}
	return defaultHealthPath
}

// accessLogged reports whether the server writes access logs at all, so
// that fields for them are not built in vain.
func accessLogged(r *http.Request) bool {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return !ok || srv.Logs != nil
}

// responseWriter sets the request id on the response, notes its status,
// and carries the request's lease.
type responseWriter struct {
	http.ResponseWriter
	requestID      string
	requestIDValue []string
	status         int
	lease          selection.Lease
}

// Lease returns the request's lease, for the selection policy.
func (rw *responseWriter) Lease() *selection.Lease { return &rw.lease }

// WriteHeader sets the request id and writes the header. Informational
// responses other than 101 pass through.
func (rw *responseWriter) WriteHeader(status int) {
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	if rw.status == 0 {
		rw.status = status
		if rw.requestIDValue != nil {
			rw.ResponseWriter.Header()[requestIDHeader] = rw.requestIDValue
		}
	}
	rw.ResponseWriter.WriteHeader(status)
}

// Write writes body bytes, and the header first if it was not written.
func (rw *responseWriter) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriter.Write(b)
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ selection.LeaseHolder       = (*responseWriter)(nil)
)
