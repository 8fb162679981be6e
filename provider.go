package oxianhv

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(HTTPProvider{})
}

// Provider decides, for each request, which project serves it and how.
// Providers are modules in the namespace `http.handlers.oxian_hv.providers`,
// so a plugin compiled into Caddy can bring its own.
//
// EXPERIMENTAL: This interface is subject to change.
type Provider interface {
	// Decide returns the decision for r. It must return by the time r's
	// context is done.
	Decide(r *http.Request) (*Decision, error)
}

// Decision is what a provider says of a request.
type Decision struct {
	// The project that serves the request. A project that the config does
	// not name is created on demand from `on_demand.template`. Required
	// unless `target` is set.
	Project string `json:"project,omitempty"`

	// The command, directory and environment of a project created on
	// demand, over the template's. A later decision that changes them
	// replaces the project's workers one at a time.
	Command []string          `json:"command,omitempty"`
	Dir     string            `json:"dir,omitempty"`
	Env     map[string]string `json:"env,omitempty"`

	// A path prefix to remove before the request reaches a worker.
	StripPathPrefix string `json:"strip_path_prefix,omitempty"`

	// How long the workers of a project created on demand may sit idle
	// before they are stopped, over the template's `idle_ttl`.
	IdleTTL caddy.Duration `json:"idle_ttl,omitempty"`

	// Proxy the request to this URL (`http://host:port`) and spawn nothing.
	Target string `json:"target,omitempty"`

	// A pool whose workers started before this time is replaced, one
	// worker at a time, as with a rolling restart.
	InvalidateCacheAt *time.Time `json:"invalidate_cache_at,omitempty"`
}

// validate checks a decision.
func (d *Decision) validate() error {
	switch {
	case d.Project == "" && d.Target == "":
		return errors.New("the decision names neither a project nor a target")
	case d.Target != "":
		if _, err := devProxyJSON(d.Target); err != nil {
			return fmt.Errorf("target: %v", err)
		}
	}
	if !validProjectName(d.Project) && d.Project != "" {
		return fmt.Errorf("invalid project name %q", d.Project)
	}
	return nil
}

// OnDemandConfig lets a provider name projects the config does not have.
type OnDemandConfig struct {
	// The settings of a project created on demand, over the handler's
	// top-level settings. The provider's command, directory and
	// environment go over these.
	Template ProjectConfig `json:"template,omitempty"`

	// How many projects may be created on demand. A decision for one more
	// gets 503. Default: `100`.
	MaxProjects int `json:"max_projects,omitempty"`
}

// HTTPProvider asks an HTTP endpoint which project serves a request. It
// POSTs `{"method", "host", "path", "headers"}` as JSON, with the request
// headers named in `headers`, and expects `200` with a JSON Decision:
// `{"project": "...", "command": [...], "dir": "...", "env": {...},
// "strip_path_prefix": "...", "idle_ttl": "5m", "target": "http://...",
// "invalidate_cache_at": "2026-01-02T15:04:05Z"}`. Decisions are cached.
//
// EXPERIMENTAL: This module is subject to change.
type HTTPProvider struct {
	// The endpoint's URL. Required.
	URL string `json:"url,omitempty"`

	// How long the endpoint may take to answer. A request whose decision
	// does not come in time gets `504`. Default: `2s`.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Request headers sent to the endpoint along with the method, host and
	// path. Default: none.
	Headers []string `json:"headers,omitempty"`

	// How long a decision is reused for requests with the same cache key;
	// `0` asks for every request. Default: `0`.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`

	// The cache key, with placeholders. Default:
	// `{http.request.host}{http.request.uri.path}`.
	CacheKey string `json:"cache_key,omitempty"`

	client *http.Client
	cache  *decisionCache
}

// CaddyModule returns the Caddy module information.
func (HTTPProvider) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oxian_hv.providers.http",
		New: func() caddy.Module { return new(HTTPProvider) },
	}
}

// Provision sets up the provider.
func (hp *HTTPProvider) Provision(caddy.Context) error {
	u, err := url.Parse(hp.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("provider.url: want an http:// or https:// URL, got %q", hp.URL)
	}
	if hp.Timeout < 0 || hp.CacheTTL < 0 {
		return fmt.Errorf("provider: timeout and cache_ttl must not be negative")
	}
	if hp.Timeout == 0 {
		hp.Timeout = caddy.Duration(2 * time.Second)
	}
	if hp.CacheKey == "" {
		hp.CacheKey = "{http.request.host}{http.request.uri.path}"
	}
	for _, h := range hp.Headers {
		if !validHeaderName(h) {
			return fmt.Errorf("provider.headers: %q is not a valid header name", h)
		}
	}
	hp.client = &http.Client{Timeout: time.Duration(hp.Timeout)}
	hp.cache = &decisionCache{
		entries: make(map[string]cachedDecision),
		asking:  make(map[string]*askCall),
	}
	return nil
}

// providerRequest is what the endpoint gets.
type providerRequest struct {
	Method  string            `json:"method"`
	Host    string            `json:"host"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers,omitempty"`
}

// Decide asks the endpoint, or the cache. With caching on, concurrent
// requests with the same key that miss the cache share one question.
func (hp *HTTPProvider) Decide(r *http.Request) (*Decision, error) {
	q := hp.question(r)
	if hp.CacheTTL <= 0 {
		return hp.ask(r.Context(), q)
	}

	// the cache, or a question already on its way
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	key := repl.ReplaceAll(hp.CacheKey, "")
	call, first := hp.cache.join(key)
	if first {
		// ask apart from this request, so that the others waiting on the
		// answer do not lose it if this client goes away
		go func() {
			ctx := context.WithoutCancel(r.Context())
			d, err := hp.ask(ctx, q)
			hp.cache.finish(key, call, d, err, time.Duration(hp.CacheTTL))
		}()
	}
	select {
	case <-call.done:
		return call.decision, call.err
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
}

// question returns what the endpoint is asked about r.
func (hp *HTTPProvider) question(r *http.Request) providerRequest {
	q := providerRequest{Method: r.Method, Host: r.Host, Path: r.URL.Path}
	for _, name := range hp.Headers {
		if v := r.Header.Get(name); v != "" {
			if q.Headers == nil {
				q.Headers = make(map[string]string)
			}
			q.Headers[name] = v
		}
	}
	return q
}

// ask puts q to the endpoint, within the provider's timeout.
func (hp *HTTPProvider) ask(ctx context.Context, q providerRequest) (*Decision, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hp.Timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hp.URL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")

	// the answer
	resp, err := hp.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking %s: %w", hp.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %w", hp.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered status %d", hp.URL, resp.StatusCode)
	}
	d := new(Decision)
	if err := json.Unmarshal(data, d); err != nil {
		return nil, fmt.Errorf("decoding the answer of %s: %v", hp.URL, err)
	}
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("the answer of %s: %v", hp.URL, err)
	}
	return d, nil
}

// maxCachedDecisions bounds the decision cache.
const maxCachedDecisions = 10000

// decisionCache keeps decisions until they expire, and the questions on
// their way.
type decisionCache struct {
	mu      sync.Mutex
	entries map[string]cachedDecision
	asking  map[string]*askCall
}

// askCall is a question on its way; done closes when it is answered.
type askCall struct {
	done     chan struct{}
	decision *Decision
	err      error
}

// join returns the cached decision as a finished call, the call already
// asking for key, or a new call that the caller (first) must ask.
func (dc *decisionCache) join(key string) (call *askCall, first bool) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if e, ok := dc.entries[key]; ok && time.Now().Before(e.expires) {
		call = &askCall{done: make(chan struct{}), decision: e.decision}
		close(call.done)
		return call, false
	}
	if call, ok := dc.asking[key]; ok {
		return call, false
	}
	call = &askCall{done: make(chan struct{})}
	dc.asking[key] = call
	return call, true
}

// finish records the answer of call, caches a decision, and wakes those
// waiting.
func (dc *decisionCache) finish(key string, call *askCall, d *Decision, err error, ttl time.Duration) {
	if err == nil {
		dc.put(key, d, ttl)
	}
	dc.mu.Lock()
	delete(dc.asking, key)
	dc.mu.Unlock()
	call.decision, call.err = d, err
	close(call.done)
}

type cachedDecision struct {
	decision *Decision
	expires  time.Time
}

func (dc *decisionCache) put(key string, d *Decision, ttl time.Duration) {
	dc.mu.Lock()
	defer dc.mu.Unlock()

	// a full cache drops what expired, or else everything
	if len(dc.entries) >= maxCachedDecisions {
		now := time.Now()
		for k, e := range dc.entries {
			if now.After(e.expires) {
				delete(dc.entries, k)
			}
		}
		if len(dc.entries) >= maxCachedDecisions {
			clear(dc.entries)
		}
	}
	dc.entries[key] = cachedDecision{decision: d, expires: time.Now().Add(ttl)}
}

// decide asks the provider and answers the request itself when that fails:
// 504 if the provider took too long, 502 otherwise.
func (h *Handler) decide(w http.ResponseWriter, r *http.Request) (*Decision, bool) {
	d, err := h.provider.Decide(r)
	if err == nil {
		if d == nil {
			err = errors.New("the provider returned no decision")
		} else {
			err = d.validate()
		}
	}
	if err == nil {
		return d, true
	}
	status, msg := http.StatusBadGateway, "the project provider failed"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		status, msg = http.StatusGatewayTimeout, "the project provider did not answer in time"
	}
	h.writeHandlerError(w, r, status, msg, err)
	return nil, false
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// projectFor returns the project a decision names, creating it on demand,
// and applies the decision's overrides.
func (h *Handler) projectFor(d *Decision) (*project, error) {
	if p, ok := h.byName[d.Project]; ok {
		return p, nil
	}
	if h.OnDemand == nil {
		return nil, fmt.Errorf("project %q is not configured, and on_demand is off", d.Project)
	}

	h.dyn.mu.Lock()
	defer h.dyn.mu.Unlock()
	cfg := overlay(overlay(h.WorkerConfig, h.OnDemand.Template.WorkerConfig), WorkerConfig{
		Command: d.Command, Dir: d.Dir, Env: d.Env, IdleTTL: d.IdleTTL,
	})
	if p, ok := h.dyn.projects[d.Project]; ok {
		// a decision that changes what runs replaces the workers; one
		// that changes idle_ttl changes the pool's scaling
		cfg.applyDefaults()
		spec := p.specFor(cfg)
		if spec.Identity() != p.handle.spec.Identity() || !reflect.DeepEqual(spec.Scaling, p.handle.spec.Scaling) {
			if pool := p.handle.pool.Load(); pool != nil {
				pool.Reconfigure(spec)
				p.handle.spec = spec
			}
		}
		return p, nil
	}
	if len(h.dyn.projects) >= h.OnDemand.MaxProjects {
		return nil, errTooManyProjects
	}
	p := &project{
		name:        d.Project,
		cfg:         cfg,
		basePath:    cmp.Or(h.OnDemand.Template.Routing.BasePath, h.BasePath),
		stripPrefix: h.OnDemand.Template.StripPathPrefix,
		webConfig:   overlayWeb(h.Web, h.OnDemand.Template.Web),
		logger:      h.logger,
	}
	if err := p.provision(h.ctx, h.app, true); err != nil {
		return nil, err
	}
	h.dyn.projects[d.Project] = p
	h.logger.Info("created project on demand", zap.String("project", p.name), zap.Strings("command", p.cfg.Command))
	return p, nil
}

// errTooManyProjects is the error for a decision past the on-demand cap.
var errTooManyProjects = errors.New("too many projects created on demand")

// targetProxy returns the reverse proxy to a decision's target, made once
// per target.
func (h *Handler) targetProxy(target string) (caddyhttp.MiddlewareHandler, error) {
	h.dyn.mu.Lock()
	defer h.dyn.mu.Unlock()
	if rp, ok := h.dyn.targets[target]; ok {
		return rp, nil
	}
	if len(h.dyn.targets) >= maxTargets {
		return nil, fmt.Errorf("more than %d provider targets", maxTargets)
	}
	cfg, err := devProxyJSON(target)
	if err != nil {
		return nil, err
	}
	delete(cfg, "handler")
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	mod, err := h.ctx.LoadModuleByID("http.handlers.reverse_proxy", raw)
	if err != nil {
		return nil, fmt.Errorf("setting up proxy to %s: %v", target, err)
	}
	rp := mod.(caddyhttp.MiddlewareHandler)
	h.dyn.targets[target] = rp
	return rp, nil
}

// maxTargets bounds the proxies kept for provider targets.
const maxTargets = 1000
