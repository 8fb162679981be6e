package oxianhv

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

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
	// The name of the project served by this handler's pool. It names the
	// pool in logs, health output and the worker environment
	// (`OXIAN_HV_PROJECT`). Default: `default`.
	Project string `json:"project,omitempty"`

	WorkerConfig

	logger    *zap.Logger
	handle    *poolHandle
	transport *reverseproxy.HTTPTransport
	rp        *reverseproxy.Handler
	metrics   *requestMetrics
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oxian_hv",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the config, registers the pool with the `oxian` app and
// sets up the reverse proxy. It starts no process.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()

	// check the config
	if h.Project == "" {
		h.Project = defaultProject
	}
	h.applyDefaults()
	if err := h.WorkerConfig.validate(); err != nil {
		return fmt.Errorf("project %s: %v", h.Project, err)
	}

	// register the pool; the app starts it with the config
	appIface, err := ctx.App("oxian")
	if err != nil {
		return fmt.Errorf("getting oxian app: %v", err)
	}
	h.handle, err = appIface.(*App).register(h.poolSpec())
	if err != nil {
		return err
	}

	// set up the reverse proxy
	rp, err := h.newReverseProxy(ctx)
	if err != nil {
		return fmt.Errorf("project %s: setting up reverse proxy: %v", h.Project, err)
	}
	h.rp = rp

	registerMetrics(ctx, h.logger)
	h.metrics = newRequestMetrics(h.Project)
	return nil
}

// poolSpec turns the config into a pool spec.
func (h *Handler) poolSpec() workerpool.Spec {
	wc := h.WorkerConfig
	return workerpool.Spec{
		Project:  h.Project,
		Command:  wc.Command,
		Dir:      wc.Dir,
		Env:      wc.Env,
		Workers:  wc.Workers.Resolve(),
		BasePort: wc.WorkerBasePort,
		Health: workerpool.HealthSpec{
			Path:         wc.Health.Path,
			Method:       wc.Health.Method,
			Interval:     time.Duration(wc.Health.Interval),
			Timeout:      time.Duration(wc.Health.Timeout),
			StartTimeout: time.Duration(wc.Health.StartTimeout),
			Fails:        wc.Health.Fails,
		},
		StopGrace: time.Duration(wc.StopGrace),
		Drain:     time.Duration(wc.DrainTimeout),
	}
}

// newReverseProxy builds and provisions the Caddy reverse proxy that
// carries requests to the pool's workers.
func (h *Handler) newReverseProxy(ctx caddy.Context) (*reverseproxy.Handler, error) {
	// the transport carries the connect, headers and idle timeouts
	headerLimit := h.Proxy.Timeout
	if h.Timeouts.Headers > 0 && h.Timeouts.Headers < headerLimit {
		headerLimit = h.Timeouts.Headers
	}
	transport := &reverseproxy.HTTPTransport{
		DialTimeout:           h.Timeouts.Connect,
		ResponseHeaderTimeout: headerLimit,
		ReadTimeout:           h.Timeouts.Idle,
		WriteTimeout:          h.Timeouts.Idle,
	}

	// the strategy is one of Caddy's policies, wrapped to count requests
	// per worker
	inner, err := selection.Load(ctx, h.Strategy, h.StickyHeader)
	if err != nil {
		return nil, err
	}
	handle := h.handle
	recorder := &selection.Recorder{
		Inner: inner,
		Lookup: func(addr string) selection.Tracker {
			if p := handle.pool.Load(); p != nil {
				if w := p.Lookup(addr); w != nil {
					return w
				}
			}
			return nil
		},
		Placeholder: "http.oxian_hv.worker",
	}

	// retries cover failed connections and the wait for a ready worker
	tryDuration := h.Proxy.Timeout
	if h.Timeouts.Total > 0 && h.Timeouts.Total < tryDuration {
		tryDuration = h.Timeouts.Total
	}
	if err := transport.Provision(ctx); err != nil {
		return nil, fmt.Errorf("setting up transport: %v", err)
	}
	h.transport = transport
	rp := &reverseproxy.Handler{
		Transport: &workerTransport{
			HTTPTransport:  transport,
			project:        h.Project,
			headersTimeout: time.Duration(h.Timeouts.Headers),
			proxyTimeout:   time.Duration(h.Proxy.Timeout),
			logger:         h.logger,
		},
		DynamicUpstreams: &poolSource{handle: h.handle},
		LoadBalancing: &reverseproxy.LoadBalancing{
			SelectionPolicy: recorder,
			TryDuration:     tryDuration,
			TryInterval:     caddy.Duration(retryInterval),
		},
		StreamCloseDelay: h.Proxy.StreamCloseDelay,
		HealthChecks: &reverseproxy.HealthChecks{
			Passive: &reverseproxy.PassiveHealthChecks{
				FailDuration: caddy.Duration(failDuration),
				MaxFails:     1,
			},
		},
	}
	if err := rp.Provision(ctx); err != nil {
		return nil, err
	}
	return rp, nil
}

// Cleanup releases the reverse proxy and its transport; the app releases
// the pool.
func (h *Handler) Cleanup() error {
	var err error
	if h.rp != nil {
		err = h.rp.Cleanup()
	}
	if h.transport != nil {
		err = errors.Join(err, h.transport.Cleanup())
	}
	return err
}

// ServeHTTP answers the health path, or proxies the request to a worker.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path == h.Health.Path && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return h.serveHealth(w, r)
	}
	began := time.Now()
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set("http.oxian_hv.project", h.Project)

	// request id and context headers
	rw := &responseWriter{ResponseWriter: w}
	if *h.Proxy.PassRequestID {
		rw.requestID, rw.requestIDValue = requestID(r)
		repl.Set("http.oxian_hv.request_id", rw.requestID)
	}
	h.addLogFields(r, rw.requestID)

	// a pool whose workers all failed cannot answer soon: say so at once
	if pool := h.handle.pool.Load(); pool != nil && !pool.Live() {
		w.Header().Set("Retry-After", failedRetryAfter)
		err := h.writeError(w, r, rw.requestID, http.StatusServiceUnavailable,
			fmt.Sprintf("no worker of project %s is ready: all its workers failed", h.Project), nil)
		h.metrics.observe("", http.StatusServiceUnavailable, false, time.Since(began))
		return err
	}

	// timeouts.total bounds everything; proxy.timeout is kept by the
	// proxy's retry limit and the worker transport
	if h.Timeouts.Total > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.Timeouts.Total))
		defer cancel()
		r = r.WithContext(ctx)
	}

	// proxy, counting the request on its worker until the body is sent
	defer rw.lease.Release()
	err := h.rp.ServeHTTP(rw, r, next)
	worker := ""
	if t := rw.lease.Current(); t != nil {
		worker = t.ID()
		h.addWorkerLogField(r, worker)
	}

	// a request that never got a response gets a clear answer
	status := rw.status
	if err != nil && status == 0 {
		status, err = h.answerProxyError(w, r, rw.requestID, err)
	}
	h.metrics.observe(worker, status, err != nil, time.Since(began))
	return err
}

// answerProxyError writes the response for an error of the proxy that
// came before any response was written, and returns its status and the
// error left for Caddy to handle, if any.
func (h *Handler) answerProxyError(w http.ResponseWriter, r *http.Request, requestID string, err error) (int, error) {
	var herr caddyhttp.HandlerError
	if !errors.As(err, &herr) {
		return http.StatusInternalServerError, err
	}
	switch herr.StatusCode {
	case http.StatusServiceUnavailable:
		return herr.StatusCode, h.writeUnavailable(w, r, requestID,
			fmt.Sprintf("none got ready within %s", time.Duration(h.Proxy.Timeout)), herr.Err)
	case http.StatusGatewayTimeout:
		return herr.StatusCode, h.writeError(w, r, requestID, herr.StatusCode,
			"the request ran out of time (timeouts.total)", herr.Err)
	case http.StatusBadGateway:
		return herr.StatusCode, h.writeError(w, r, requestID, herr.StatusCode,
			"the worker failed to answer", herr.Err)
	}
	return herr.StatusCode, err
}

// writeUnavailable answers 503 with Retry-After: the pool has no ready
// worker, for the reason given.
func (h *Handler) writeUnavailable(w http.ResponseWriter, r *http.Request, requestID, why string, cause error) error {
	w.Header().Set("Retry-After", retryAfter)
	return h.writeError(w, r, requestID, http.StatusServiceUnavailable,
		fmt.Sprintf("no worker of project %s is ready: %s", h.Project, why), cause)
}

// writeError answers with status and a JSON body that says what happened.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, requestID string, status int, msg string, cause error) error {
	fields := []zap.Field{
		zap.String("project", h.Project),
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("uri", r.RequestURI),
	}
	if cause != nil {
		fields = append(fields, zap.Error(cause))
	}
	h.logger.Warn(msg, fields...)

	if requestID != "" {
		w.Header().Set(requestIDHeader, requestID)
	}
	body := map[string]string{"error": msg, "project": h.Project}
	if requestID != "" {
		body["request_id"] = requestID
	}
	writeJSON(w, status, body)
	return nil
}

// addLogFields adds the project, the request id and the configured context
// headers to the request's access log entry.
func (h *Handler) addLogFields(r *http.Request, requestID string) {
	if !accessLogged(r) {
		return
	}
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	extra.Set(zap.String("oxian_project", h.Project))
	if requestID != "" {
		extra.Set(zap.String("request_id", requestID))
	}
	for _, name := range h.Proxy.ForwardHeaders {
		if v := r.Header.Get(name); v != "" {
			extra.Set(zap.String("oxian_hv."+strings.ToLower(name), v))
		}
	}
}

// addWorkerLogField adds the worker that served the request to its access
// log entry.
func (h *Handler) addWorkerLogField(r *http.Request, worker string) {
	if !accessLogged(r) {
		return
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("oxian_worker", worker))
	}
	if c := h.logger.Check(zapcore.DebugLevel, "request served"); c != nil {
		c.Write(zap.String("project", h.Project), zap.String("worker", worker), zap.String("uri", r.RequestURI))
	}
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
