package oxianhv

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/oxian-hv/oxian-hv/selection"
	"github.com/oxian-hv/oxian-hv/workerpool"
)

// project is one project of a handler at run time: its settings with the
// handler's defaults applied, its pool, and the reverse proxy to it.
type project struct {
	name        string
	cfg         WorkerConfig
	basePath    string
	stripPrefix string
	webConfig   *WebConfig
	web         caddyhttp.MiddlewareHandler
	waitLimit   caddy.Duration

	logger    *zap.Logger
	handle    *poolHandle
	transport *reverseproxy.HTTPTransport
	rp        *reverseproxy.Handler
	metrics   *requestMetrics
}

// provision checks the project's settings, registers its pool with the
// app and sets up its reverse proxy. It starts no process, unless now is
// set: then the pool starts at once if the config runs already.
func (p *project) provision(ctx caddy.Context, app *App, now bool) error {
	p.cfg.applyDefaults()
	if err := p.cfg.validate(); err != nil {
		return fmt.Errorf("project %s: %v", p.name, err)
	}

	// register the pool; the app starts it with the config
	var err error
	if now {
		p.handle, err = app.registerNow(p.poolSpec())
	} else {
		p.handle, err = app.register(p.poolSpec())
	}
	if err != nil {
		return err
	}

	// set up the reverse proxy
	rp, err := p.newReverseProxy(ctx)
	if err != nil {
		return fmt.Errorf("project %s: setting up reverse proxy: %v", p.name, err)
	}
	p.rp = rp
	p.metrics = newRequestMetrics(p.name)

	// the front end
	if err := validateWeb(p.webConfig); err != nil {
		return fmt.Errorf("project %s: %v", p.name, err)
	}
	p.web, err = newWebHandler(ctx, p.webConfig)
	if err != nil {
		return fmt.Errorf("project %s: %v", p.name, err)
	}
	return nil
}

// poolSpec turns the config into a pool spec.
func (p *project) poolSpec() workerpool.Spec { return p.specFor(p.cfg) }

// specFor turns worker settings of the project into a pool spec.
func (p *project) specFor(wc WorkerConfig) workerpool.Spec {
	return workerpool.Spec{
		Project:  p.name,
		Command:  wc.Command,
		Dir:      wc.Dir,
		Env:      wc.Env,
		Workers:  initialWorkers(wc),
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
		Scaling:   wc.scaling(),
		WarmUp:    warmUp(wc),
	}
}

// warmUp is the warm-up of new workers: only pools that scale with the
// load get one, since only they add workers under load.
func warmUp(wc WorkerConfig) time.Duration {
	if !wc.Autoscale.Enabled {
		return 0
	}
	return time.Duration(cmp.Or(wc.Autoscale.WarmUp, caddy.Duration(defaultWarmUp)))
}

// initialWorkers is how many workers a pool starts with: `workers`, within
// the autoscaling bounds.
func initialWorkers(wc WorkerConfig) int {
	n := wc.workerCount()
	if s := wc.scaling(); s != nil {
		n = min(max(n, s.Min), s.Max)
	}
	return n
}

// newReverseProxy builds and provisions the Caddy reverse proxy that
// carries requests to the pool's workers.
func (p *project) newReverseProxy(ctx caddy.Context) (*reverseproxy.Handler, error) {
	// the transport carries the connect, headers and idle timeouts
	headerLimit := p.cfg.Proxy.Timeout
	if p.cfg.Timeouts.Headers > 0 && p.cfg.Timeouts.Headers < headerLimit {
		headerLimit = p.cfg.Timeouts.Headers
	}
	transport := &reverseproxy.HTTPTransport{
		DialTimeout:           p.cfg.Timeouts.Connect,
		ResponseHeaderTimeout: headerLimit,
		ReadTimeout:           p.cfg.Timeouts.Idle,
		WriteTimeout:          p.cfg.Timeouts.Idle,
	}

	// the strategy is one of Caddy's policies, wrapped to count requests
	// per worker
	inner, err := selection.Load(ctx, p.cfg.Strategy, p.cfg.StickyHeader)
	if err != nil {
		return nil, err
	}
	handle := p.handle
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
	}

	// retries cover failed connections and the wait for a ready worker
	tryDuration := min(p.cfg.Proxy.Timeout, p.cfg.Queue.MaxWait)
	if p.cfg.Timeouts.Total > 0 && p.cfg.Timeouts.Total < tryDuration {
		tryDuration = p.cfg.Timeouts.Total
	}
	p.waitLimit = tryDuration
	if err := transport.Provision(ctx); err != nil {
		return nil, fmt.Errorf("setting up transport: %v", err)
	}
	p.transport = transport
	rp := &reverseproxy.Handler{
		Transport: &workerTransport{
			HTTPTransport:  transport,
			project:        p.name,
			headersTimeout: time.Duration(p.cfg.Timeouts.Headers),
			proxyTimeout:   time.Duration(p.cfg.Proxy.Timeout),
			logger:         p.logger,
		},
		DynamicUpstreams: &poolSource{handle: p.handle},
		LoadBalancing: &reverseproxy.LoadBalancing{
			SelectionPolicy: recorder,
			TryDuration:     tryDuration,
			TryInterval:     caddy.Duration(retryInterval),
		},
		StreamCloseDelay: p.cfg.Proxy.StreamCloseDelay,
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

// cleanup releases the reverse proxy and its transport; the app releases
// the pool.
func (p *project) cleanup() error {
	var err error
	if p.rp != nil {
		err = p.rp.Cleanup()
	}
	if p.transport != nil {
		err = errors.Join(err, p.transport.Cleanup())
	}
	return err
}

// serve proxies the request to a worker of the project.
func (p *project) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rs *requestState) error {
	began := time.Now()

	// request id and context headers
	rw := &rs.rw
	rw.ResponseWriter = w
	if *p.cfg.Proxy.PassRequestID {
		rw.requestID, rw.requestIDValue = requestID(r)
	}
	p.addLogFields(r, rw.requestID)

	// wake a pool stopped for idleness; a pool whose workers all failed
	// cannot answer soon: say so at once
	pool := p.handle.pool.Load()
	if pool != nil {
		pool.RequestStarted(began)
		defer func() { pool.RequestDone(began, time.Since(began)) }()
		if len(pool.Ready()) == 0 {
			pool.Wake()
		}
		if !pool.Live() {
			w.Header().Set("Retry-After", failedRetryAfter)
			err := p.writeError(w, r, rw.requestID, http.StatusServiceUnavailable,
				fmt.Sprintf("no worker of project %s is ready: all its workers failed", p.name), nil)
			p.metrics.observe("", http.StatusServiceUnavailable, false, time.Since(began))
			return err
		}
	}

	// with no ready worker, the request waits in a bounded queue
	if pool != nil && len(pool.Ready()) == 0 {
		if !pool.EnterQueue(p.cfg.Queue.MaxItems) {
			err := p.writeUnavailable(w, r, rw.requestID,
				fmt.Sprintf("the queue is full (%d requests wait)", p.cfg.Queue.MaxItems), nil)
			p.metrics.observe("", http.StatusServiceUnavailable, false, time.Since(began))
			return err
		}
		var left sync.Once
		leave := func() {
			left.Do(func() {
				pool.LeaveQueue()
				rw.queued = time.Since(began)
				metricQueueWait.WithLabelValues(p.name).Observe(rw.queued.Seconds())
			})
		}
		rw.lease.OnBind = leave
		defer leave()
	}
	rw.serverTiming, rw.began = p.cfg.ServerTiming, began

	// timeouts.total bounds everything; proxy.timeout is kept by the
	// proxy's retry limit and the worker transport
	if p.cfg.Timeouts.Total > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(p.cfg.Timeouts.Total))
		defer cancel()
		r = r.WithContext(ctx)
	}

	// proxy, counting the request on its worker until the body is sent
	defer rw.lease.Release()
	err := p.rp.ServeHTTP(rw, r, next)
	worker := ""
	if t := rw.lease.Current(); t != nil {
		worker = t.ID()
		p.addWorkerLogField(r, worker)
	}

	// a request that never got a response gets a clear answer
	status := rw.status
	if err != nil && status == 0 {
		status, err = p.answerProxyError(w, r, rw.requestID, err)
	}
	p.metrics.observe(worker, status, err != nil, time.Since(began))
	return err
}

// answerProxyError writes the response for an error of the proxy that
// came before any response was written, and returns its status and the
// error left for Caddy to handle, if any.
func (p *project) answerProxyError(w http.ResponseWriter, r *http.Request, requestID string, err error) (int, error) {
	var herr caddyhttp.HandlerError
	if !errors.As(err, &herr) {
		return http.StatusInternalServerError, err
	}
	switch herr.StatusCode {
	case http.StatusServiceUnavailable:
		return herr.StatusCode, p.writeUnavailable(w, r, requestID,
			fmt.Sprintf("none got ready within %s", time.Duration(p.waitLimit)), herr.Err)
	case http.StatusGatewayTimeout:
		return herr.StatusCode, p.writeError(w, r, requestID, herr.StatusCode,
			"the request ran out of time (timeouts.total)", herr.Err)
	case http.StatusBadGateway:
		return herr.StatusCode, p.writeError(w, r, requestID, herr.StatusCode,
			"the worker failed to answer", herr.Err)
	}
	return herr.StatusCode, err
}

// writeUnavailable answers 503 with Retry-After: the pool has no ready
// worker, for the reason given.
func (p *project) writeUnavailable(w http.ResponseWriter, r *http.Request, requestID, why string, cause error) error {
	w.Header().Set("Retry-After", retryAfter)
	return p.writeError(w, r, requestID, http.StatusServiceUnavailable,
		fmt.Sprintf("no worker of project %s is ready: %s", p.name, why), cause)
}

// writeError answers with status and a JSON body that says what happened.
func (p *project) writeError(
	w http.ResponseWriter, r *http.Request, requestID string, status int, msg string, cause error,
) error {
	fields := []zap.Field{
		zap.String("project", p.name),
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("uri", r.RequestURI),
	}
	if cause != nil {
		fields = append(fields, zap.Error(cause))
	}
	p.logger.Warn(msg, fields...)

	if requestID != "" {
		w.Header().Set(requestIDHeader, requestID)
	}
	body := map[string]string{"error": msg, "project": p.name}
	if requestID != "" {
		body["request_id"] = requestID
	}
	writeJSON(w, status, body)
	return nil
}

// addLogFields adds the project, the request id and the configured context
// headers to the request's access log entry.
func (p *project) addLogFields(r *http.Request, requestID string) {
	if !accessLogged(r) {
		return
	}
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	extra.Set(zap.String("oxian_project", p.name))
	if requestID != "" {
		extra.Set(zap.String("request_id", requestID))
	}
	for _, name := range p.cfg.Proxy.ForwardHeaders {
		if v := r.Header.Get(name); v != "" {
			extra.Set(zap.String("oxian_hv."+strings.ToLower(name), v))
		}
	}
}

// addWorkerLogField adds the worker that served the request to its access
// log entry.
func (p *project) addWorkerLogField(r *http.Request, worker string) {
	if !accessLogged(r) {
		return
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("oxian_worker", worker))
	}
	if c := p.logger.Check(zapcore.DebugLevel, "request served"); c != nil {
		c.Write(zap.String("project", p.name), zap.String("worker", worker), zap.String("uri", r.RequestURI))
	}
}
