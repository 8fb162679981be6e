package oxianhv

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/oxian-hv/oxian-hv/autoscale"
)

// Defaults of the worker pool settings.
const (
	defaultProject        = "default"
	defaultBasePort       = 9101
	defaultStrategy       = "round_robin"
	defaultHealthPath     = "/_health"
	defaultHealthMethod   = "GET"
	defaultHealthInterval = 5 * time.Second
	defaultHealthTimeout  = 2 * time.Second
	defaultStartTimeout   = 60 * time.Second
	defaultHealthFails    = 3
	defaultProxyTimeout   = 30 * time.Second
	defaultConnectTimeout = 3 * time.Second
	defaultStopGrace      = 10 * time.Second
	defaultDrainTimeout   = 30 * time.Second
	defaultStreamClose    = 5 * time.Minute
	defaultQueueItems     = 1000
	defaultWarmUp         = 2 * time.Second
)

// The load-balancing strategies a pool can use.
const (
	StrategyRoundRobin = "round_robin"
	StrategyLeastBusy  = "least_busy"
	StrategySticky     = "sticky"
)

// WorkerCount is a number of workers: a positive integer, or `auto` (JSON
// and Caddyfile) for one worker per CPU core. The zero value means unset,
// which is `auto` unless a project inherits another count.
type WorkerCount int

// workersAuto marks the count `auto` once parsed.
const workersAuto WorkerCount = -1

// Resolve returns the number of workers to run.
func (wc WorkerCount) Resolve() int {
	if wc <= 0 {
		return runtime.NumCPU()
	}
	return int(wc)
}

// MarshalJSON writes `auto` or the number.
func (wc WorkerCount) MarshalJSON() ([]byte, error) {
	if wc <= 0 {
		return []byte(`"auto"`), nil
	}
	return []byte(strconv.Itoa(int(wc))), nil
}

// UnmarshalJSON reads a number or the string `auto`.
func (wc *WorkerCount) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		return wc.parse(s)
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("workers: want a number or \"auto\", got %s", b)
	}
	if n < 1 {
		return fmt.Errorf("workers: must be at least 1 (or \"auto\"), got %d", n)
	}
	*wc = WorkerCount(n)
	return nil
}

// parse reads `auto` or a positive integer.
func (wc *WorkerCount) parse(s string) error {
	if strings.EqualFold(s, "auto") {
		*wc = workersAuto
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("workers: want a number or \"auto\", got %q", s)
	}
	if n < 1 {
		return fmt.Errorf("workers: must be at least 1 (or \"auto\"), got %d", n)
	}
	*wc = WorkerCount(n)
	return nil
}

// AutoscaleConfig moves a pool's worker count between `min` and `max`:
// up when the requests in flight per ready worker (averaged over
// `stable_window`) exceed `target_inflight_per_worker`, or the average
// latency exceeds `max_avg_latency`; at once, past the up cooldown, on a
// sudden surge (over `burst_window`), which also holds off scaling down;
// down one worker at a time when the load fits in fewer.
type AutoscaleConfig struct {
	// Turns load-based scaling on. Default: off.
	Enabled bool `json:"enabled,omitempty"`

	// The fewest workers under load. Default: `1`.
	Min int `json:"min,omitempty"`

	// The most workers. Default: `workers` (within `worker.pool.max`).
	Max int `json:"max,omitempty"`

	// The requests in flight a ready worker should carry. Default: `10`.
	TargetInflightPerWorker float64 `json:"target_inflight_per_worker,omitempty"`

	// Scale up when the average latency exceeds this. Default: off.
	MaxAvgLatency caddy.Duration `json:"max_avg_latency,omitempty"`

	// The least time between two scale-ups outside a surge. Default: `30s`.
	ScaleUpCooldown caddy.Duration `json:"scale_up_cooldown,omitempty"`

	// The least time between a change and the next scale-down. Default:
	// `60s`.
	ScaleDownCooldown caddy.Duration `json:"scale_down_cooldown,omitempty"`

	// Stop all workers of a pool idle this long. Default: off.
	IdleTTL caddy.Duration `json:"idle_ttl,omitempty"`

	// The most workers starting at once. Default: `2`.
	MaxStarting int `json:"max_starting,omitempty"`

	// The window the load is averaged over. Default: `60s`.
	StableWindow caddy.Duration `json:"stable_window,omitempty"`

	// The short window that notices a surge. Default: `6s`.
	BurstWindow caddy.Duration `json:"burst_window,omitempty"`

	// How long a newly ready worker gets a reduced share of the traffic,
	// growing from none to a full share, so that a burst does not land
	// on a cold process. Default: `2s`.
	WarmUp caddy.Duration `json:"warm_up,omitempty"`
}

// QueueConfig bounds the requests waiting for a ready worker, as while a
// pool wakes from idle.
type QueueConfig struct {
	// The most requests waiting; more get 503 at once. Default: `1000`.
	MaxItems int `json:"max_items,omitempty"`

	// The longest a request waits; it then gets 503. Default:
	// `proxy.timeout`.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`
}

// scaling returns the settings of the pool's scaling policy, or nil if
// neither autoscaling nor idle stop is on.
func (wc *WorkerConfig) scaling() *autoscale.Config {
	as := wc.Autoscale
	idle := time.Duration(cmp.Or(wc.IdleTTL, as.IdleTTL))
	if !as.Enabled && idle <= 0 {
		return nil
	}
	n := wc.workerCount()
	cfg := &autoscale.Config{
		Min: n, Max: n,
		TargetInflightPerWorker: math.MaxInt32, // only idle stop
		IdleTTL:                 idle,
	}
	if as.Enabled {
		cfg.Min = cmp.Or(as.Min, 1)
		cfg.Max = cmp.Or(as.Max, max(n, cfg.Min))
		if limit := wc.Worker.Pool.Max; limit > 0 {
			cfg.Max = min(cfg.Max, limit)
		}
		cfg.TargetInflightPerWorker = as.TargetInflightPerWorker
		cfg.MaxAvgLatency = time.Duration(as.MaxAvgLatency)
		cfg.ScaleUpCooldown = time.Duration(as.ScaleUpCooldown)
		cfg.ScaleDownCooldown = time.Duration(as.ScaleDownCooldown)
		cfg.MaxStarting = as.MaxStarting
		cfg.StableWindow = time.Duration(as.StableWindow)
		cfg.BurstWindow = time.Duration(as.BurstWindow)
	}
	return cfg
}

// WorkerLimitsConfig holds limits on a project's workers.
type WorkerLimitsConfig struct {
	// Limits on the pool.
	Pool PoolLimitsConfig `json:"pool,omitempty"`
}

// PoolLimitsConfig bounds the size of a pool.
type PoolLimitsConfig struct {
	// The most workers the pool may run, whatever `workers` says (`auto`
	// included). Default: no limit.
	Max int `json:"max,omitempty"`
}

// workerCount returns how many workers to run: the count, within the
// pool's limit.
func (wc *WorkerConfig) workerCount() int {
	n := wc.Workers.Resolve()
	if max := wc.Worker.Pool.Max; max > 0 && n > max {
		n = max
	}
	return n
}

// HealthConfig says how the hypervisor checks that a worker is ready.
type HealthConfig struct {
	// The path probed on each worker. The hypervisor also answers this path
	// itself, with the state of its pools as JSON. Default: `/_health`.
	Path string `json:"path,omitempty"`

	// The HTTP method of probes: `GET` or `HEAD`. Default: `GET`.
	Method string `json:"method,omitempty"`

	// How often a ready worker is probed. While a worker starts, it is
	// probed much more often, so that it gets traffic as soon as it
	// answers. Default: `5s`.
	Interval caddy.Duration `json:"interval,omitempty"`

	// How long one probe may take before it counts as failed. Default: `2s`.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// How long a new worker may take to answer its first successful probe
	// before it is stopped and started again. Default: `60s`.
	StartTimeout caddy.Duration `json:"start_timeout,omitempty"`

	// How many probes in a row may fail (no answer, a timeout, or a
	// status other than 2xx and 503) before the worker is replaced. Any
	// failed probe takes the worker out of rotation at once; a 503 answer
	// takes it out of rotation without counting towards replacement, so an
	// app can step aside while it is busy. Default: `3`.
	Fails int `json:"fails,omitempty"`
}

// ProxyConfig holds settings of the proxying to workers.
type ProxyConfig struct {
	// How long a request may wait for response headers from a worker,
	// counting the wait for a ready worker and any retries on other
	// workers. A request that gets no response headers in time ends with
	// `504 Gateway Timeout`. It does not limit how long a response body
	// may stream. Default: `30s`.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Whether the request id in `X-Request-Id` is passed to the worker and
	// returned in the response. A client's id is kept when it is at most
	// 128 printable ASCII characters; otherwise a new random id replaces
	// it. Default: `true`.
	PassRequestID *bool `json:"pass_request_id,omitempty"`

	// How long WebSocket connections and other upgraded streams stay open
	// after a config reload replaced the handler that opened them; they are
	// closed when it passes. Default: `5m`.
	StreamCloseDelay caddy.Duration `json:"stream_close_delay,omitempty"`

	// Request headers that carry context (correlation, user or tenant ids).
	// They are passed to the workers unchanged and are added to the access
	// log entry of the request as `oxian_hv.<header>` fields. Default: none.
	ForwardHeaders []string `json:"forward_headers,omitempty"`
}

// TimeoutsConfig bounds the phases of a proxied request.
type TimeoutsConfig struct {
	// How long connecting to a worker may take. A request whose connection
	// fails is retried on another worker. Maps to the `dial_timeout` of
	// Caddy's HTTP transport. Default: `3s`.
	Connect caddy.Duration `json:"connect,omitempty"`

	// How long one attempt may wait for response headers after the request
	// was written to a worker; on expiry the request ends with `504`. Maps
	// to the transport's `response_header_timeout`. `proxy.timeout` bounds
	// all attempts together. Default: no limit.
	Headers caddy.Duration `json:"headers,omitempty"`

	// How long the connection to a worker may stay silent, reading or
	// writing, before it is closed. Streaming responses (SSE) must send
	// something more often than this. Maps to the transport's
	// `read_timeout` and `write_timeout`. Default: no limit.
	Idle caddy.Duration `json:"idle,omitempty"`

	// How long a whole request may take, body included. Before response
	// headers it ends with `504`; after them the response is cut short.
	// Default: no limit.
	Total caddy.Duration `json:"total,omitempty"`
}

// WorkerConfig is what a pool runs and how it treats its workers.
type WorkerConfig struct {
	// The program and its arguments that start one worker. `{port}` in
	// any argument is replaced by the worker's port. Required.
	Command []string `json:"command,omitempty"`

	// The working directory of the workers. Default: Caddy's own.
	Dir string `json:"dir,omitempty"`

	// Environment variables for the workers, on top of Caddy's own. Each
	// worker also gets `PORT`, `OXIAN_HV_WORKER` (its index, from 0) and
	// `OXIAN_HV_PROJECT` (its project's name).
	Env map[string]string `json:"env,omitempty"`

	// How many workers to run: a number, or `auto` for one per CPU core.
	// Default: `auto`.
	Workers WorkerCount `json:"workers,omitempty"`

	// The first port handed to workers; each worker gets the next free
	// port from here upward. Ports in use by anything else are skipped,
	// and no port is handed to two workers of any pool. Workers must
	// listen on 127.0.0.1. Default: `9101`.
	WorkerBasePort int `json:"worker_base_port,omitempty"`

	// How long a worker may take to exit after SIGTERM before its process
	// group is killed. Default: `10s`.
	StopGrace caddy.Duration `json:"stop_grace,omitempty"`

	// How long a worker that is being stopped (scaled down, replaced after
	// a config change, shut down with Caddy) may finish its requests in
	// flight before it gets SIGTERM. Default: `30s`.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	// How requests are spread over the ready workers: `round_robin`,
	// `least_busy` (fewest requests in flight, counting a request until its
	// response body has been sent), or `sticky` (requests with the same
	// `sticky_header` value go to the same worker while it lives, using
	// rendezvous hashing; requests without the header are sent as with
	// `least_busy`). Default: `round_robin`.
	Strategy string `json:"strategy,omitempty"`

	// The request header whose value pins requests to a worker with the
	// `sticky` strategy. Required with `sticky`.
	StickyHeader string `json:"sticky_header,omitempty"`

	// Limits on the pool of workers.
	Worker WorkerLimitsConfig `json:"worker,omitempty"`

	// Moves the worker count with the load. Default: off; `workers` run.
	Autoscale AutoscaleConfig `json:"autoscale,omitempty"`

	// How long a pool may go without requests before all its workers are
	// stopped; the next request starts one again. A request counts until
	// its response body has been sent, so an open SSE stream or WebSocket
	// keeps its worker. Overrides `autoscale.idle_ttl`. Default: off.
	IdleTTL caddy.Duration `json:"idle_ttl,omitempty"`

	// Bounds on the requests that wait for a ready worker.
	Queue QueueConfig `json:"queue,omitempty"`

	// Adds a `Server-Timing` header with the time the request waited for
	// a ready worker (`queue;dur=<ms>`). Default: off.
	ServerTiming bool `json:"server_timing,omitempty"`

	// How workers are checked for readiness.
	Health HealthConfig `json:"health,omitempty"`

	// How requests are proxied to the workers.
	Proxy ProxyConfig `json:"proxy,omitempty"`

	// Limits on the phases of a proxied request.
	Timeouts TimeoutsConfig `json:"timeouts,omitempty"`
}

// applyDefaults fills unset fields with their defaults.
func (wc *WorkerConfig) applyDefaults() {
	if wc.WorkerBasePort == 0 {
		wc.WorkerBasePort = defaultBasePort
	}
	if wc.StopGrace == 0 {
		wc.StopGrace = caddy.Duration(defaultStopGrace)
	}
	if wc.DrainTimeout == 0 {
		wc.DrainTimeout = caddy.Duration(defaultDrainTimeout)
	}
	if wc.Strategy == "" {
		wc.Strategy = defaultStrategy
	}
	h := &wc.Health
	if h.Path == "" {
		h.Path = defaultHealthPath
	}
	if h.Method == "" {
		h.Method = defaultHealthMethod
	}
	h.Method = strings.ToUpper(h.Method)
	if h.Interval == 0 {
		h.Interval = caddy.Duration(defaultHealthInterval)
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultHealthTimeout)
	}
	if h.StartTimeout == 0 {
		h.StartTimeout = caddy.Duration(defaultStartTimeout)
	}
	if h.Fails == 0 {
		h.Fails = defaultHealthFails
	}
	if wc.Proxy.StreamCloseDelay == 0 {
		wc.Proxy.StreamCloseDelay = caddy.Duration(defaultStreamClose)
	}
	if wc.Proxy.Timeout == 0 {
		wc.Proxy.Timeout = caddy.Duration(defaultProxyTimeout)
	}
	if wc.Proxy.PassRequestID == nil {
		yes := true
		wc.Proxy.PassRequestID = &yes
	}
	if wc.Queue.MaxItems == 0 {
		wc.Queue.MaxItems = defaultQueueItems
	}
	if wc.Queue.MaxWait == 0 {
		wc.Queue.MaxWait = wc.Proxy.Timeout
	}
	if wc.Timeouts.Connect == 0 {
		wc.Timeouts.Connect = caddy.Duration(defaultConnectTimeout)
	}
}

// validate checks the settings once defaults are applied; errors name the
// field at fault.
func (wc *WorkerConfig) validate() error {
	if len(wc.Command) == 0 || strings.TrimSpace(wc.Command[0]) == "" {
		return fmt.Errorf("command: required: the program (and arguments) that starts one worker")
	}
	if wc.Workers < 0 && wc.Workers != workersAuto {
		return fmt.Errorf("workers: must be at least 1 (or \"auto\"), got %d", wc.Workers)
	}
	if s := wc.scaling(); s != nil {
		if _, err := autoscale.New(*s); err != nil {
			return err
		}
	}
	if wc.Queue.MaxItems < 0 {
		return fmt.Errorf("queue.max_items: must not be negative, got %d", wc.Queue.MaxItems)
	}
	if wc.Worker.Pool.Max < 0 {
		return fmt.Errorf("worker.pool.max: must not be negative, got %d", wc.Worker.Pool.Max)
	}
	if wc.WorkerBasePort < 1 || wc.WorkerBasePort > 65535 {
		return fmt.Errorf("worker_base_port: %d is out of range 1-65535", wc.WorkerBasePort)
	}
	if top := wc.WorkerBasePort + wc.workerCount() - 1; top > 65535 {
		return fmt.Errorf("worker_base_port: %d leaves no room for %d workers below port 65535",
			wc.WorkerBasePort, wc.workerCount())
	}

	// strategy
	switch wc.Strategy {
	case StrategyRoundRobin, StrategyLeastBusy:
	case StrategySticky:
		if strings.TrimSpace(wc.StickyHeader) == "" {
			return fmt.Errorf("sticky_header: required with strategy sticky: the request header that pins a client to a worker")
		}
	default:
		return fmt.Errorf("strategy: unknown strategy %q; want one of %s, %s, %s",
			wc.Strategy, StrategyRoundRobin, StrategyLeastBusy, StrategySticky)
	}

	// health
	if !strings.HasPrefix(wc.Health.Path, "/") {
		return fmt.Errorf("health.path: must start with '/', got %q", wc.Health.Path)
	}
	if wc.Health.Method != "GET" && wc.Health.Method != "HEAD" {
		return fmt.Errorf("health.method: want GET or HEAD, got %q", wc.Health.Method)
	}
	if wc.Health.Fails < 0 {
		return fmt.Errorf("health.fails: must be at least 1, got %d", wc.Health.Fails)
	}

	// durations
	for _, d := range []struct {
		name  string
		value caddy.Duration
	}{
		{"health.interval", wc.Health.Interval},
		{"health.timeout", wc.Health.Timeout},
		{"health.start_timeout", wc.Health.StartTimeout},
		{"proxy.timeout", wc.Proxy.Timeout},
		{"timeouts.connect", wc.Timeouts.Connect},
		{"timeouts.headers", wc.Timeouts.Headers},
		{"timeouts.idle", wc.Timeouts.Idle},
		{"timeouts.total", wc.Timeouts.Total},
		{"stop_grace", wc.StopGrace},
		{"drain_timeout", wc.DrainTimeout},
		{"proxy.stream_close_delay", wc.Proxy.StreamCloseDelay},
		{"idle_ttl", wc.IdleTTL},
		{"autoscale.warm_up", wc.Autoscale.WarmUp},
		{"queue.max_wait", wc.Queue.MaxWait},
	} {
		if d.value < 0 {
			return fmt.Errorf("%s: must not be negative, got %s", d.name, time.Duration(d.value))
		}
	}

	// headers
	for _, h := range wc.Proxy.ForwardHeaders {
		if !validHeaderName(h) {
			return fmt.Errorf("proxy.forward_headers: %q is not a valid header name", h)
		}
	}
	if wc.StickyHeader != "" && !validHeaderName(wc.StickyHeader) {
		return fmt.Errorf("sticky_header: %q is not a valid header name", wc.StickyHeader)
	}
	return nil
}

// validHeaderName reports whether s is an HTTP header field name (an RFC
// 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
