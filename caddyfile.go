package oxianhv

import (
	"reflect"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oxian_hv", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("oxian_hv", httpcaddyfile.Before, "reverse_proxy")
}

// The subdirectives allowed in each block, in the order they are documented.
var (
	workerSubdirectives = []string{
		"command", "dir", "env", "workers", "worker_base_port", "stop_grace", "drain_timeout", "strategy",
		"sticky_header", "worker", "autoscale", "idle_ttl", "queue", "server_timing", "health", "proxy", "timeouts",
	}
	healthSubdirectives   = []string{"path", "method", "interval", "timeout", "start_timeout", "fails"}
	proxySubdirectives    = []string{"timeout", "stream_close_delay", "pass_request_id", "forward_headers"}
	timeoutsSubdirectives = []string{"connect", "headers", "idle", "total"}
	topSubdirectives      = append(
		[]string{"project", "base_path", "projects", "select", "provider", "on_demand", "web", "on_request"},
		workerSubdirectives...)
	projectSubdirectives = append([]string{"base_path", "strip_path_prefix", "web"}, workerSubdirectives...)
	webSubdirectives     = []string{"dev_proxy_target", "static_dir", "static_cache_control"}
	selectSubdirectives  = []string{
		"path_prefix", "host_equals", "host_prefix", "host_suffix", "method", "header", "match",
	}
)

// requestPortPlaceholder is what the Caddyfile adapter turns the shorthand
// `{port}` into before directives see their tokens.
const requestPortPlaceholder = "{http.request.port}"

// parseCaddyfile sets up the handler from Caddyfile tokens, and checks the
// result as provisioning would, so that `caddy adapt` already reports bad
// settings.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := &Handler{caddyfileHelper: &h}
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	handler.caddyfileHelper = nil

	// check a copy with defaults applied; the config keeps only what was set
	check := handler.WorkerConfig
	if len(check.Command) == 0 && (len(handler.Projects) > 0 || handler.ProviderRaw != nil) {
		// projects, or the provider, bring their own commands
		check.Command = []string{"-"}
	}
	check.applyDefaults()
	if err := check.validate(); err != nil {
		return nil, h.Errf("oxian_hv: %v", err)
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oxian_hv [<command> [<args...>]] {
//	    project          <name>
//	    command          <program> [<args...>]
//	    dir              <path>
//	    env              <key> <value>
//	    workers          <n>|auto
//	    worker_base_port <port>
//	    stop_grace       <duration>
//	    drain_timeout    <duration>
//	    strategy         round_robin|least_busy|sticky
//	    sticky_header    <header>
//	    health {
//	        path          <path>
//	        method        GET|HEAD
//	        interval      <duration>
//	        timeout       <duration>
//	        start_timeout <duration>
//	        fails         <n>
//	    }
//	    proxy {
//	        timeout            <duration>
//	        stream_close_delay <duration>
//	        pass_request_id    [true|false]
//	        forward_headers    <header...>
//	    }
//	    timeouts {
//	        connect <duration>
//	        headers <duration>
//	        idle    <duration>
//	        total   <duration>
//	    }
//	}
//
// The command may be given on the directive line instead of with the
// `command` subdirective. `env` may be repeated, once per variable, and
// `forward_headers` may be repeated to add more headers. `pass_request_id`
// without an argument means `true`.
//
// The Caddyfile adapter expands the shorthand `{port}` to the request
// placeholder `{http.request.port}` before this directive sees it. A worker
// command runs outside of any request, so in `command` arguments and `env`
// values `{http.request.port}` is turned back into `{port}`, which the pool
// replaces with the worker's own port when it starts the worker.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	// command shorthand on the directive line
	if args := d.RemainingArgs(); len(args) > 0 {
		h.Command = workerPlaceholders(args)
	}

	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "project":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			h.Project = v

		case "base_path":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			h.BasePath = v

		case "projects":
			if err := h.unmarshalProjects(d); err != nil {
				return err
			}

		case "select":
			if err := h.unmarshalSelect(d); err != nil {
				return err
			}

		case "web":
			web, err := unmarshalWeb(d)
			if err != nil {
				return err
			}
			h.Web = web

		case "provider":
			if err := h.unmarshalProvider(d); err != nil {
				return err
			}

		case "on_demand":
			if err := h.unmarshalOnDemand(d); err != nil {
				return err
			}

		case "on_request":
			if err := h.unmarshalOnRequest(d); err != nil {
				return err
			}

		default:
			handled, err := h.WorkerConfig.unmarshalWorkerSubdirective(d)
			if err != nil {
				return err
			}
			if !handled {
				return unknownSubdirective(d, "oxian_hv", topSubdirectives)
			}
		}
	}
	return nil
}

// unmarshalWorkerSubdirective reads the subdirective at the dispenser if it
// is one of the worker settings, which the handler and each project share,
// and reports whether it was.
func (wc *WorkerConfig) unmarshalWorkerSubdirective(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "command":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		wc.Command = workerPlaceholders(args)

	case "dir":
		v, err := singleArg(d)
		if err != nil {
			return true, err
		}
		wc.Dir = v

	case "env":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return true, d.ArgErr()
		}
		key := args[0]
		if key == "" || strings.ContainsAny(key, "=\x00") {
			return true, d.Errf("env: invalid variable name %q", key)
		}
		if wc.Env == nil {
			wc.Env = make(map[string]string)
		}
		wc.Env[key] = strings.ReplaceAll(args[1], requestPortPlaceholder, "{port}")

	case "workers":
		v, err := singleArg(d)
		if err != nil {
			return true, err
		}
		if err := wc.Workers.parse(v); err != nil {
			return true, d.WrapErr(err)
		}

	case "worker_base_port":
		v, err := singleArg(d)
		if err != nil {
			return true, err
		}
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return true, d.Errf("worker_base_port: want a port number 1-65535, got %q", v)
		}
		wc.WorkerBasePort = port

	case "stop_grace":
		dur, err := durationArg(d, "stop_grace")
		if err != nil {
			return true, err
		}
		wc.StopGrace = dur

	case "drain_timeout":
		dur, err := durationArg(d, "drain_timeout")
		if err != nil {
			return true, err
		}
		wc.DrainTimeout = dur

	case "strategy":
		v, err := singleArg(d)
		if err != nil {
			return true, err
		}
		switch v {
		case StrategyRoundRobin, StrategyLeastBusy, StrategySticky:
		default:
			return true, d.Errf("strategy: unknown strategy %q; want one of %s, %s, %s",
				v, StrategyRoundRobin, StrategyLeastBusy, StrategySticky)
		}
		wc.Strategy = v

	case "sticky_header":
		v, err := singleArg(d)
		if err != nil {
			return true, err
		}
		wc.StickyHeader = v

	case "worker":
		if err := wc.unmarshalWorkerLimits(d); err != nil {
			return true, err
		}

	case "autoscale":
		if err := wc.unmarshalAutoscale(d); err != nil {
			return true, err
		}

	case "idle_ttl":
		dur, err := durationArg(d, "idle_ttl")
		if err != nil {
			return true, err
		}
		wc.IdleTTL = dur

	case "queue":
		if err := wc.unmarshalQueue(d); err != nil {
			return true, err
		}

	case "server_timing":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		wc.ServerTiming = true

	case "health":
		if err := wc.unmarshalHealth(d); err != nil {
			return true, err
		}

	case "proxy":
		if err := wc.unmarshalProxy(d); err != nil {
			return true, err
		}

	case "timeouts":
		if err := wc.unmarshalTimeouts(d); err != nil {
			return true, err
		}

	default:
		return false, nil
	}
	return true, nil
}

// unmarshalWorkerLimits reads the worker block:
//
//	worker {
//	    pool {
//	        max <n>
//	    }
//	}
func (wc *WorkerConfig) unmarshalWorkerLimits(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "pool" {
			return unknownSubdirective(d, "worker", []string{"pool"})
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		for inner := d.Nesting(); d.NextBlock(inner); {
			if d.Val() != "max" {
				return unknownSubdirective(d, "worker.pool", []string{"max"})
			}
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("worker.pool.max: want a number of at least 1, got %q", v)
			}
			wc.Worker.Pool.Max = n
		}
	}
	return nil
}

// unmarshalAutoscale reads the autoscale block:
//
//	autoscale {
//	    min                        <n>
//	    max                        <n>
//	    target_inflight_per_worker <n>
//	    max_avg_latency            <duration>
//	    scale_up_cooldown          <duration>
//	    scale_down_cooldown        <duration>
//	    idle_ttl                   <duration>
//	    max_starting               <n>
//	    stable_window              <duration>
//	    burst_window               <duration>
//	    warm_up                    <duration>
//	}
//
// The block turns autoscaling on; `enabled false` inside it turns it off.
func (wc *WorkerConfig) unmarshalAutoscale(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	as := &wc.Autoscale
	as.Enabled = true
	allowed := []string{"enabled", "min", "max", "target_inflight_per_worker", "max_avg_latency",
		"scale_up_cooldown", "scale_down_cooldown", "idle_ttl", "max_starting", "stable_window", "burst_window", "warm_up"}
	durations := map[string]*caddy.Duration{
		"max_avg_latency": &as.MaxAvgLatency, "scale_up_cooldown": &as.ScaleUpCooldown,
		"scale_down_cooldown": &as.ScaleDownCooldown, "idle_ttl": &as.IdleTTL,
		"stable_window": &as.StableWindow, "burst_window": &as.BurstWindow,
		"warm_up": &as.WarmUp,
	}
	counts := map[string]*int{"min": &as.Min, "max": &as.Max, "max_starting": &as.MaxStarting}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		switch {
		case durations[field] != nil:
			dur, err := durationArg(d, "autoscale."+field)
			if err != nil {
				return err
			}
			*durations[field] = dur
		case counts[field] != nil:
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("autoscale.%s: want a whole number, got %q", field, v)
			}
			*counts[field] = n
		case field == "target_inflight_per_worker":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				return d.Errf("autoscale.target_inflight_per_worker: want a positive number, got %q", v)
			}
			as.TargetInflightPerWorker = f
		case field == "enabled":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			on, err := strconv.ParseBool(v)
			if err != nil {
				return d.Errf("autoscale.enabled: want true or false, got %q", v)
			}
			as.Enabled = on
		default:
			return unknownSubdirective(d, "autoscale", allowed)
		}
	}
	return nil
}

// unmarshalQueue reads the queue block:
//
//	queue {
//	    max_items <n>
//	    max_wait  <duration>
//	}
func (wc *WorkerConfig) unmarshalQueue(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "max_items":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("queue.max_items: want a number of at least 1, got %q", v)
			}
			wc.Queue.MaxItems = n
		case "max_wait":
			dur, err := durationArg(d, "queue.max_wait")
			if err != nil {
				return err
			}
			wc.Queue.MaxWait = dur
		default:
			return unknownSubdirective(d, "queue", []string{"max_items", "max_wait"})
		}
	}
	return nil
}

// unmarshalHealth reads the health block.
func (wc *WorkerConfig) unmarshalHealth(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "path":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			wc.Health.Path = v

		case "method":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			method := strings.ToUpper(v)
			if method != "GET" && method != "HEAD" {
				return d.Errf("health.method: want GET or HEAD, got %q", v)
			}
			wc.Health.Method = method

		case "interval":
			dur, err := durationArg(d, "health.interval")
			if err != nil {
				return err
			}
			wc.Health.Interval = dur

		case "timeout":
			dur, err := durationArg(d, "health.timeout")
			if err != nil {
				return err
			}
			wc.Health.Timeout = dur

		case "start_timeout":
			dur, err := durationArg(d, "health.start_timeout")
			if err != nil {
				return err
			}
			wc.Health.StartTimeout = dur

		case "fails":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("health.fails: want a number of at least 1, got %q", v)
			}
			wc.Health.Fails = n

		default:
			return unknownSubdirective(d, "health", healthSubdirectives)
		}
	}
	return nil
}

// unmarshalProxy reads the proxy block.
func (wc *WorkerConfig) unmarshalProxy(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "timeout":
			dur, err := durationArg(d, "proxy.timeout")
			if err != nil {
				return err
			}
			wc.Proxy.Timeout = dur

		case "stream_close_delay":
			dur, err := durationArg(d, "proxy.stream_close_delay")
			if err != nil {
				return err
			}
			wc.Proxy.StreamCloseDelay = dur

		case "pass_request_id":
			pass := true
			if d.NextArg() {
				v := d.Val()
				if d.NextArg() {
					return d.ArgErr()
				}
				switch v {
				case "true":
				case "false":
					pass = false
				default:
					return d.Errf("proxy.pass_request_id: want true or false, got %q", v)
				}
			}
			wc.Proxy.PassRequestID = &pass

		case "forward_headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			wc.Proxy.ForwardHeaders = append(wc.Proxy.ForwardHeaders, args...)

		default:
			return unknownSubdirective(d, "proxy", proxySubdirectives)
		}
	}
	return nil
}

// unmarshalTimeouts reads the timeouts block.
func (wc *WorkerConfig) unmarshalTimeouts(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var target *caddy.Duration
		switch d.Val() {
		case "connect":
			target = &wc.Timeouts.Connect
		case "headers":
			target = &wc.Timeouts.Headers
		case "idle":
			target = &wc.Timeouts.Idle
		case "total":
			target = &wc.Timeouts.Total
		default:
			return unknownSubdirective(d, "timeouts", timeoutsSubdirectives)
		}
		dur, err := durationArg(d, "timeouts."+d.Val())
		if err != nil {
			return err
		}
		*target = dur
	}
	return nil
}

// singleArg reads exactly one argument of the current subdirective.
func singleArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// durationArg reads exactly one non-negative duration argument of the
// subdirective called name in errors.
func durationArg(d *caddyfile.Dispenser, name string) (caddy.Duration, error) {
	v, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: invalid duration %q: %v", name, v, err)
	}
	if dur < 0 {
		return 0, d.Errf("%s: must not be negative, got %s", name, v)
	}
	return caddy.Duration(dur), nil
}

// unknownSubdirective returns an error naming the current token, which is
// not a subdirective of block, and the subdirectives that are allowed.
func unknownSubdirective(d *caddyfile.Dispenser, block string, allowed []string) error {
	return d.Errf("unknown subdirective '%s' in %s; allowed: %s",
		d.Val(), block, strings.Join(allowed, ", "))
}

// workerPlaceholders turns `{http.request.port}`, the adapter's expansion
// of the shorthand `{port}`, back into `{port}` in each argument.
func workerPlaceholders(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ReplaceAll(a, requestPortPlaceholder, "{port}")
	}
	return out
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// unmarshalProjects reads the projects block:
//
//	projects {
//	    <name> {
//	        <worker subdirectives>
//	        base_path         <path>
//	        strip_path_prefix <prefix>
//	    }
//	}
func (h *Handler) unmarshalProjects(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		if h.Projects == nil {
			h.Projects = make(map[string]*ProjectConfig)
		}
		if _, dup := h.Projects[name]; dup {
			return d.Errf("projects: project %s is defined twice", name)
		}
		pc := new(ProjectConfig)
		h.Projects[name] = pc
		if err := pc.unmarshalBlock(d, "project "+name); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalBlock reads the settings of a project, in the block that
// begins at the dispenser.
func (pc *ProjectConfig) unmarshalBlock(d *caddyfile.Dispenser, label string) error {
	for inner := d.Nesting(); d.NextBlock(inner); {
		switch d.Val() {
		case "base_path":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			pc.Routing.BasePath = v
		case "strip_path_prefix":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			pc.StripPathPrefix = v
		case "web":
			web, err := unmarshalWeb(d)
			if err != nil {
				return err
			}
			pc.Web = web
		default:
			handled, err := pc.WorkerConfig.unmarshalWorkerSubdirective(d)
			if err != nil {
				return err
			}
			if !handled {
				return unknownSubdirective(d, label, projectSubdirectives)
			}
		}
	}
	return nil
}

// unmarshalProvider reads the provider subdirective, `provider <source>`
// followed by the source module's own Caddyfile block.
func (h *Handler) unmarshalProvider(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	source := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "http.handlers.oxian_hv.providers."+source)
	if err != nil {
		return d.Errf("provider %s: %v", source, err)
	}
	h.ProviderRaw = caddyconfig.JSONModuleObject(mod, "source", source, nil)
	return nil
}

// unmarshalOnDemand reads the on_demand block:
//
//	on_demand {
//	    max_projects <n>
//	    template {
//	        <project subdirectives>
//	    }
//	}
func (h *Handler) unmarshalOnDemand(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	h.OnDemand = new(OnDemandConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "max_projects":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("on_demand.max_projects: want a number of at least 1, got %q", v)
			}
			h.OnDemand.MaxProjects = n
		case "template":
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := h.OnDemand.Template.unmarshalBlock(d, "on_demand template"); err != nil {
				return err
			}
		default:
			return unknownSubdirective(d, "on_demand", []string{"max_projects", "template"})
		}
	}
	return nil
}

// UnmarshalCaddyfile sets up the HTTP provider. Syntax:
//
//	provider http {
//	    url       <url>
//	    timeout   <duration>
//	    headers   <header...>
//	    cache_ttl <duration>
//	    cache_key <key with placeholders>
//	}
//
// The URL may also stand on the first line: `provider http <url>`.
func (hp *HTTPProvider) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the source name
	if d.NextArg() {
		hp.URL = d.Val()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch field := d.Val(); field {
		case "url", "cache_key":
			v, err := singleArg(d)
			if err != nil {
				return err
			}
			if field == "url" {
				hp.URL = v
			} else {
				hp.CacheKey = v
			}
		case "timeout", "cache_ttl":
			dur, err := durationArg(d, "provider."+field)
			if err != nil {
				return err
			}
			if field == "timeout" {
				hp.Timeout = dur
			} else {
				hp.CacheTTL = dur
			}
		case "headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			hp.Headers = append(hp.Headers, args...)
		default:
			return unknownSubdirective(d, "provider http", []string{"url", "timeout", "headers", "cache_ttl", "cache_key"})
		}
	}
	return nil
}

// unmarshalSelect reads the select block:
//
//	select {
//	    <project> {
//	        path_prefix <prefix>
//	        host_equals <host>
//	        host_prefix <prefix>
//	        host_suffix <suffix>
//	        method      <method>
//	        header      <name> <value|regexp>
//	        match {
//	            <caddy matchers>
//	        }
//	    }
//	    default <project>
//	}
func (h *Handler) unmarshalSelect(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() == "default" {
			name, err := singleArg(d)
			if err != nil {
				return err
			}
			h.Select = append(h.Select, SelectRule{Project: name, Default: true})
			continue
		}
		rule := SelectRule{Project: d.Val()}
		if d.NextArg() {
			return d.ArgErr()
		}
		when := new(WhenConfig)
		for inner := d.Nesting(); d.NextBlock(inner); {
			field := d.Val()
			switch field {
			case "path_prefix", "host_equals", "host_prefix", "host_suffix", "method":
				v, err := singleArg(d)
				if err != nil {
					return err
				}
				*map[string]*string{
					"path_prefix": &when.PathPrefix,
					"host_equals": &when.HostEquals,
					"host_prefix": &when.HostPrefix,
					"host_suffix": &when.HostSuffix,
					"method":      &when.Method,
				}[field] = v
			case "header":
				args := d.RemainingArgs()
				if len(args) != 2 {
					return d.ArgErr()
				}
				if when.Header == nil {
					when.Header = make(map[string]string)
				}
				when.Header[args[0]] = args[1]
			case "match":
				set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(d)
				if err != nil {
					return d.Errf("select %s: match: %v", rule.Project, err)
				}
				rule.MatchRaw = append(rule.MatchRaw, set)
			default:
				return unknownSubdirective(d, "select rule", selectSubdirectives)
			}
		}
		if !reflect.DeepEqual(*when, WhenConfig{}) {
			rule.When = when
		}
		h.Select = append(h.Select, rule)
	}
	return nil
}

// unmarshalWeb reads a web block:
//
//	web {
//	    dev_proxy_target     <url>
//	    static_dir           <dir>
//	    static_cache_control <value>
//	}
func unmarshalWeb(d *caddyfile.Dispenser) (*WebConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	web := new(WebConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		v, err := singleArg(d)
		if err != nil {
			return nil, err
		}
		switch field {
		case "dev_proxy_target":
			web.DevProxyTarget = v
		case "static_dir":
			web.StaticDir = v
		case "static_cache_control":
			web.StaticCacheControl = v
		default:
			return nil, unknownSubdirective(d, "web", webSubdirectives)
		}
	}
	return web, nil
}

// unmarshalOnRequest reads the on_request block, whose lines are ordinary
// Caddyfile handler directives, run in Caddy's directive order:
//
//	on_request {
//	    request_header X-Project {http.oxian_hv.project}
//	    rewrite * /v2{uri}
//	}
func (h *Handler) unmarshalOnRequest(d *caddyfile.Dispenser) error {
	if h.caddyfileHelper == nil {
		return d.Err("on_request: needs the Caddyfile adapter (use the oxian_hv directive in a site block)")
	}
	segment := d.NewFromNextSegment()
	sub, err := httpcaddyfile.ParseSegmentAsSubroute(h.caddyfileHelper.WithDispenser(segment))
	if err != nil {
		return d.Errf("on_request: %v", err)
	}
	h.OnRequestRaw = append(h.OnRequestRaw, caddyconfig.JSONModuleObject(sub, "handler", "subroute", nil))
	return nil
}
