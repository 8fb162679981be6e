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
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/selection"
	"github.com/oxian-hv/oxian-hv/workerpool"
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

// Handler runs pools of worker processes, one per project, and proxies
// requests to them with Caddy's reverse proxy. Workers are started when the
// config starts (never by `caddy validate`), get traffic once their health
// probe passes, and are restarted when they exit or keep failing probes. A
// config reload keeps the processes of a pool whose command, directory and
// environment did not change.
//
// A request's project comes from a provider, from `select` rules, or from
// the projects' base paths; paths outside the project's API base path go
// to its `web` front end or to the next handler.
//
// The handler answers its health path (`health.path`) itself with the
// state of its pools as JSON.
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

	// A provider that picks the project of each request, instead of
	// `select` rules: `{"source": "http", "url": ...}` for the built-in
	// HTTP provider, or a plugin's module. Default: none.
	ProviderRaw json.RawMessage `json:"provider,omitempty" caddy:"namespace=http.handlers.oxian_hv.providers inline_key=source"`

	// Lets the provider name projects the config does not have; they are
	// created from a template. Default: off.
	OnDemand *OnDemandConfig `json:"on_demand,omitempty"`

	// The API base path of projects that set none in `routing.base_path`.
	// Requests that select a project but lie outside its base path go to
	// the next handler. Default: `/`.
	BasePath string `json:"base_path,omitempty"`

	logger    *zap.Logger
	ctx       caddy.Context
	app       *App
	projects  []*project
	byName    map[string]*project
	router    *router
	onRequest caddyhttp.MiddlewareHandler
	provider  Provider

	// projects created on demand, and proxies to provider targets
	dyn *dynamicProjects

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
	h.ctx = ctx
	h.dyn = &dynamicProjects{
		projects: make(map[string]*project),
		targets:  make(map[string]caddyhttp.MiddlewareHandler),
	}
	appIface, err := ctx.App("oxian")
	if err != nil {
		return fmt.Errorf("getting oxian app: %v", err)
	}
	app := appIface.(*App)
	h.app = app

	// the projects, with the handler's settings as their defaults
	if err := h.setUpProjects(ctx, app); err != nil {
		return err
	}

	h.byName = make(map[string]*project)
	for _, p := range h.projects {
		h.byName[p.name] = p
	}

	// the provider
	if h.ProviderRaw != nil {
		if len(h.Select) > 0 {
			return fmt.Errorf("provider and select: use one or the other to pick projects")
		}
		mod, err := ctx.LoadModule(h, "ProviderRaw")
		if err != nil {
			return fmt.Errorf("loading provider: %v", err)
		}
		h.provider = mod.(Provider)
		if h.OnDemand != nil && h.OnDemand.MaxProjects == 0 {
			h.OnDemand.MaxProjects = 100
		}
		if h.OnDemand != nil && h.OnDemand.MaxProjects < 0 {
			return fmt.Errorf("on_demand.max_projects: must not be negative, got %d", h.OnDemand.MaxProjects)
		}
	} else if h.OnDemand != nil {
		return fmt.Errorf("on_demand: needs a provider to name the projects")
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
	if h.dyn != nil {
		h.dyn.mu.Lock()
		for _, p := range h.dyn.projects {
			errs = append(errs, p.cleanup())
		}
		h.dyn.mu.Unlock()
	}
	return errors.Join(errs...)
}

// ServeHTTP answers the health path, or proxies the request to a worker of
// its project.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path == h.healthPath() && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return h.serveHealth(w, r)
	}

	// the project: from the provider, the rules, or the only one
	var p *project
	var d *Decision
	switch {
	case h.provider != nil:
		var ok bool
		if d, ok = h.decide(w, r); !ok {
			return nil
		}
		if d.Target != "" {
			return h.serveTarget(w, r, next, d.Target)
		}
		var err error
		if p, err = h.projectFor(d); err != nil {
			status := http.StatusBadGateway
			if errors.Is(err, errTooManyProjects) {
				status = http.StatusServiceUnavailable
				w.Header().Set("Retry-After", failedRetryAfter)
			}
			h.writeHandlerError(w, r, status, fmt.Sprintf("project %s is not available", d.Project), err)
			return nil
		}
	case h.router != nil:
		var err error
		if p, err = h.router.route(r); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("selecting project: %v", err))
		}
	default:
		p = h.projects[0]
	}
	if p == nil {
		return next.ServeHTTP(w, r)
	}
	rs := &requestState{project: p.name}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Map(rs.placeholder)

	// outside the API: the front end, if any
	if !underPath(r.URL.Path, p.basePath) {
		return p.serveWeb(w, r, next)
	}

	// the API: strip, transform, proxy
	strip := p.stripPrefix
	if d != nil {
		strip = cmp.Or(d.StripPathPrefix, strip)
		h.invalidate(p, d)
	}
	if strip != "" {
		stripPrefix(r, strip)
	}
	if h.onRequest != nil {
		proceed, err := h.runOnRequest(w, r, p)
		if !proceed || err != nil {
			return err
		}
	}
	return p.serve(w, r, next, rs)
}

// requestState is what the handler knows of a request, for its
// placeholders; it holds the request's response writer too, to save an
// allocation.
type requestState struct {
	rw      responseWriter
	project string
}

// placeholder resolves the handler's placeholders, when they are asked
// for rather than on every request.
func (rs *requestState) placeholder(key string) (any, bool) {
	switch key {
	case "http.oxian_hv.project":
		return rs.project, true
	case "http.oxian_hv.request_id":
		return rs.rw.requestID, rs.rw.requestID != ""
	case "http.oxian_hv.worker":
		if t := rs.rw.lease.Current(); t != nil {
			return t.ID(), true
		}
	}
	return nil, false
}

// setUpProjects provisions the projects and the router between them.
func (h *Handler) setUpProjects(ctx caddy.Context, app *App) error {
	if h.BasePath != "" && !strings.HasPrefix(h.BasePath, "/") {
		return fmt.Errorf("base_path: must start with '/', got %q", h.BasePath)
	}

	// with a provider, projects may all come on demand
	if len(h.Projects) == 0 && h.ProviderRaw != nil {
		if h.Project != "" {
			return fmt.Errorf("project: with a provider, name projects in projects or on demand")
		}
		return nil
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
		if err := p.provision(ctx, app, false); err != nil {
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
		if !validProjectName(name) {
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
		if err := p.provision(ctx, app, false); err != nil {
			return err
		}
		h.projects = append(h.projects, p)
		byName[name] = p
	}

	// the router: select rules, or base paths; a provider needs neither
	if h.ProviderRaw != nil {
		return nil
	}
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

// dynamicProjects holds what a handler creates while it serves.
type dynamicProjects struct {
	mu       sync.Mutex
	projects map[string]*project
	targets  map[string]caddyhttp.MiddlewareHandler
}

// validProjectName reports whether name can name a project.
func validProjectName(name string) bool {
	return name != "" && len(name) <= 128 && !strings.ContainsAny(name, " /\\\t\n\r\x00")
}

// serveTarget proxies a request to a provider's target.
func (h *Handler) serveTarget(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, target string) error {
	rp, err := h.targetProxy(target)
	if err != nil {
		h.writeHandlerError(w, r, http.StatusBadGateway, "the provider's target is not available", err)
		return nil
	}
	return rp.ServeHTTP(w, r, next)
}

// invalidate replaces the workers of a pool that started before the
// decision's invalidate_cache_at.
func (h *Handler) invalidate(p *project, d *Decision) {
	if d.InvalidateCacheAt == nil {
		return
	}
	pool := p.handle.pool.Load()
	if pool == nil || !pool.Since().Before(*d.InvalidateCacheAt) || d.InvalidateCacheAt.After(time.Now()) {
		return
	}
	pool.Restart("the provider invalidated workers started before " + d.InvalidateCacheAt.Format(time.RFC3339))
}

// writeHandlerError answers with status and a JSON body, for errors that
// belong to no project, and logs them.
func (h *Handler) writeHandlerError(w http.ResponseWriter, r *http.Request, status int, msg string, cause error) {
	h.logger.Warn(msg,
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("uri", r.RequestURI),
		zap.Error(cause))
	writeJSON(w, status, map[string]string{"error": msg + ": " + cause.Error()})
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
	serverTiming   bool
	began          time.Time
	queued         time.Duration
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
		if rw.serverTiming {
			rw.addServerTiming()
		}
	}
	rw.ResponseWriter.WriteHeader(status)
}

// addServerTiming reports the wait for a ready worker and, when the worker
// that serves the request started while it waited, that worker's spawn
// time.
func (rw *responseWriter) addServerTiming() {
	timing := fmt.Sprintf("queue;dur=%.1f", float64(rw.queued.Microseconds())/1000)
	if w, ok := rw.lease.Current().(*workerpool.Worker); ok && rw.queued > 0 && w.ReadySince().After(rw.began) {
		timing += fmt.Sprintf(", spawn;dur=%.1f", float64(w.Startup().Microseconds())/1000)
	}
	rw.ResponseWriter.Header().Add("Server-Timing", timing)
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
