package oxianhv

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
	}{
		{
			name: "full config",
			input: `oxian_hv {
				project          shop
				command          ./app serve --port {http.request.port}
				dir              /srv/shop
				env              APP_ENV production
				env              LISTEN 127.0.0.1:{http.request.port}
				workers          4
				worker_base_port 9200
				stop_grace       15s
				drain_timeout    40s
				strategy         sticky
				sticky_header    X-Session
				health {
					path          /ready
					method        head
					interval      10s
					timeout       1s
					start_timeout 2m
					fails         5
				}
				proxy {
					timeout         45s
					stream_close_delay 10m
					pass_request_id false
					forward_headers X-Tenant X-User
					forward_headers X-Trace
				}
				timeouts {
					connect 1s
					headers 20s
					idle    1m
					total   5m
				}
			}`,
			want: Handler{
				Project: "shop",
				WorkerConfig: WorkerConfig{
					Command: []string{"./app", "serve", "--port", "{port}"},
					Dir:     "/srv/shop",
					Env: map[string]string{
						"APP_ENV": "production",
						"LISTEN":  "127.0.0.1:{port}",
					},
					Workers:        4,
					WorkerBasePort: 9200,
					StopGrace:      caddy.Duration(15 * time.Second),
					DrainTimeout:   caddy.Duration(40 * time.Second),
					Strategy:       StrategySticky,
					StickyHeader:   "X-Session",
					Health: HealthConfig{
						Path:         "/ready",
						Method:       "HEAD",
						Interval:     caddy.Duration(10 * time.Second),
						Timeout:      caddy.Duration(time.Second),
						StartTimeout: caddy.Duration(2 * time.Minute),
						Fails:        5,
					},
					Proxy: ProxyConfig{
						Timeout:          caddy.Duration(45 * time.Second),
						StreamCloseDelay: caddy.Duration(10 * time.Minute),
						PassRequestID:    &no,
						ForwardHeaders:   []string{"X-Tenant", "X-User", "X-Trace"},
					},
					Timeouts: TimeoutsConfig{
						Connect: caddy.Duration(time.Second),
						Headers: caddy.Duration(20 * time.Second),
						Idle:    caddy.Duration(time.Minute),
						Total:   caddy.Duration(5 * time.Minute),
					},
				},
			},
		},
		{
			name:  "shorthand command",
			input: `oxian_hv ./app --port {http.request.port}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Command: []string{"./app", "--port", "{port}"},
			}},
		},
		{
			name: "shorthand command with block",
			input: `oxian_hv node server.js {
				workers 2
			}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Command: []string{"node", "server.js"},
				Workers: 2,
			}},
		},
		{
			name: "workers auto",
			input: `oxian_hv {
				command ./app
				workers auto
			}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Command: []string{"./app"},
				Workers: workersAuto,
			}},
		},
		{
			name: "pass_request_id without argument",
			input: `oxian_hv {
				proxy {
					pass_request_id
				}
			}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Proxy: ProxyConfig{PassRequestID: &yes},
			}},
		},
		{
			name: "port placeholder inside an argument",
			input: `oxian_hv {
				command ./app --listen=127.0.0.1:{http.request.port}
			}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Command: []string{"./app", "--listen=127.0.0.1:{port}"},
			}},
		},
		{
			name: "empty blocks",
			input: `oxian_hv ./app {
				health
				proxy {
				}
				timeouts
			}`,
			want: Handler{WorkerConfig: WorkerConfig{
				Command: []string{"./app"},
			}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  []string // substrings of the error
	}{
		// unknown subdirectives
		{
			name:  "unknown top-level subdirective",
			input: "oxian_hv {\n foo bar\n}",
			want: []string{"unknown subdirective 'foo' in oxian_hv",
				"allowed: project, base_path, projects, select, provider, on_demand, web, on_request, " +
					"command, dir, env, workers, worker_base_port, stop_grace, drain_timeout, strategy, sticky_header, " +
					"worker, autoscale, idle_ttl, queue, server_timing, health, proxy, timeouts"},
		},
		{
			name:  "unknown health subdirective",
			input: "oxian_hv {\n health {\n  foo 1\n }\n}",
			want: []string{"unknown subdirective 'foo' in health",
				"allowed: path, method, interval, timeout, start_timeout, fails"},
		},
		{
			name:  "unknown proxy subdirective",
			input: "oxian_hv {\n proxy {\n  foo\n }\n}",
			want: []string{"unknown subdirective 'foo' in proxy",
				"allowed: timeout, stream_close_delay, pass_request_id, forward_headers"},
		},
		{
			name:  "unknown timeouts subdirective",
			input: "oxian_hv {\n timeouts {\n  read 1s\n }\n}",
			want:  []string{"unknown subdirective 'read' in timeouts", "allowed: connect, headers, idle, total"},
		},
		{
			name:  "health subdirective at top level",
			input: "oxian_hv {\n interval 1s\n}",
			want:  []string{"unknown subdirective 'interval' in oxian_hv"},
		},

		// bad numbers
		{
			name:  "bad worker_base_port",
			input: "oxian_hv {\n worker_base_port nine\n}",
			want:  []string{"worker_base_port", `"nine"`},
		},
		{
			name:  "worker_base_port out of range",
			input: "oxian_hv {\n worker_base_port 70000\n}",
			want:  []string{"worker_base_port", `"70000"`},
		},
		{
			name:  "bad health fails",
			input: "oxian_hv {\n health {\n  fails many\n }\n}",
			want:  []string{"health.fails", `"many"`},
		},
		{
			name:  "zero health fails",
			input: "oxian_hv {\n health {\n  fails 0\n }\n}",
			want:  []string{"health.fails", `"0"`},
		},

		// bad workers
		{
			name:  "workers zero",
			input: "oxian_hv {\n workers 0\n}",
			want:  []string{"workers: must be at least 1", "Testfile:2"},
		},
		{
			name:  "workers negative",
			input: "oxian_hv {\n workers -1\n}",
			want:  []string{"workers: must be at least 1"},
		},
		{
			name:  "workers not a number",
			input: "oxian_hv {\n workers lots\n}",
			want:  []string{"workers:", `"lots"`},
		},

		// bad durations
		{
			name:  "bad stop_grace",
			input: "oxian_hv {\n stop_grace soon\n}",
			want:  []string{"stop_grace: invalid duration", `"soon"`},
		},
		{
			name:  "bad health interval",
			input: "oxian_hv {\n health {\n  interval 5x\n }\n}",
			want:  []string{"health.interval: invalid duration", `"5x"`},
		},
		{
			name:  "bad proxy timeout",
			input: "oxian_hv {\n proxy {\n  timeout abc\n }\n}",
			want:  []string{"proxy.timeout: invalid duration"},
		},
		{
			name:  "bad timeouts total",
			input: "oxian_hv {\n timeouts {\n  total forever\n }\n}",
			want:  []string{"timeouts.total: invalid duration"},
		},

		// negative durations
		{
			name:  "negative stop_grace",
			input: "oxian_hv {\n stop_grace -1s\n}",
			want:  []string{"stop_grace: must not be negative, got -1s"},
		},
		{
			name:  "negative health interval",
			input: "oxian_hv {\n health {\n  interval -5s\n }\n}",
			want:  []string{"health.interval: must not be negative, got -5s"},
		},
		{
			name:  "negative health timeout",
			input: "oxian_hv {\n health {\n  timeout -1s\n }\n}",
			want:  []string{"health.timeout: must not be negative"},
		},
		{
			name:  "negative health start_timeout",
			input: "oxian_hv {\n health {\n  start_timeout -1m\n }\n}",
			want:  []string{"health.start_timeout: must not be negative"},
		},
		{
			name:  "negative proxy timeout",
			input: "oxian_hv {\n proxy {\n  timeout -30s\n }\n}",
			want:  []string{"proxy.timeout: must not be negative"},
		},
		{
			name:  "negative timeouts connect",
			input: "oxian_hv {\n timeouts {\n  connect -1s\n }\n}",
			want:  []string{"timeouts.connect: must not be negative"},
		},
		{
			name:  "negative timeouts idle",
			input: "oxian_hv {\n timeouts {\n  idle -1s\n }\n}",
			want:  []string{"timeouts.idle: must not be negative"},
		},

		// other bad values
		{
			name:  "bad strategy",
			input: "oxian_hv {\n strategy random\n}",
			want:  []string{"strategy: unknown strategy", `"random"`},
		},
		{
			name:  "bad health method",
			input: "oxian_hv {\n health {\n  method POST\n }\n}",
			want:  []string{"health.method: want GET or HEAD", `"POST"`},
		},
		{
			name:  "bad pass_request_id",
			input: "oxian_hv {\n proxy {\n  pass_request_id maybe\n }\n}",
			want:  []string{"proxy.pass_request_id: want true or false", `"maybe"`},
		},
		{
			name:  "bad env name",
			input: "oxian_hv {\n env A=B c\n}",
			want:  []string{"env: invalid variable name", `"A=B"`},
		},

		// wrong argument counts
		{name: "project without argument", input: "oxian_hv {\n project\n}", want: []string{"wrong argument count"}},
		{name: "project with two arguments", input: "oxian_hv {\n project a b\n}", want: []string{"wrong argument count"}},
		{name: "command without argument", input: "oxian_hv {\n command\n}", want: []string{"wrong argument count"}},
		{name: "dir without argument", input: "oxian_hv {\n dir\n}", want: []string{"wrong argument count"}},
		{name: "env with one argument", input: "oxian_hv {\n env KEY\n}", want: []string{"wrong argument count"}},
		{name: "env with three arguments", input: "oxian_hv {\n env KEY a b\n}", want: []string{"wrong argument count"}},
		{name: "workers without argument", input: "oxian_hv {\n workers\n}", want: []string{"wrong argument count"}},
		{
			name:  "worker_base_port without argument",
			input: "oxian_hv {\n worker_base_port\n}",
			want:  []string{"wrong argument count"},
		},
		{name: "stop_grace without argument", input: "oxian_hv {\n stop_grace\n}", want: []string{"wrong argument count"}},
		{name: "strategy without argument", input: "oxian_hv {\n strategy\n}", want: []string{"wrong argument count"}},
		{
			name:  "sticky_header without argument",
			input: "oxian_hv {\n sticky_header\n}",
			want:  []string{"wrong argument count"},
		},
		{name: "health with argument", input: "oxian_hv {\n health /x\n}", want: []string{"wrong argument count"}},
		{
			name:  "health path without argument",
			input: "oxian_hv {\n health {\n  path\n }\n}",
			want:  []string{"wrong argument count"},
		},
		{
			name:  "health interval with two arguments",
			input: "oxian_hv {\n health {\n  interval 1s 2s\n }\n}",
			want:  []string{"wrong argument count"},
		},
		{name: "proxy with argument", input: "oxian_hv {\n proxy 30s\n}", want: []string{"wrong argument count"}},
		{
			name:  "proxy timeout without argument",
			input: "oxian_hv {\n proxy {\n  timeout\n }\n}",
			want:  []string{"wrong argument count"},
		},
		{
			name:  "pass_request_id with two arguments",
			input: "oxian_hv {\n proxy {\n  pass_request_id true false\n }\n}",
			want:  []string{"wrong argument count"},
		},
		{
			name:  "forward_headers without argument",
			input: "oxian_hv {\n proxy {\n  forward_headers\n }\n}",
			want:  []string{"wrong argument count"},
		},
		{name: "timeouts with argument", input: "oxian_hv {\n timeouts 1s\n}", want: []string{"wrong argument count"}},
		{
			name:  "timeouts connect without argument",
			input: "oxian_hv {\n timeouts {\n  connect\n }\n}",
			want:  []string{"wrong argument count"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil {
				t.Fatalf("expected an error, got none; handler: %+v", h)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestCaddyfileAdapter runs the directive through the real Caddyfile
// adapter: it must work in a site block without `route` or `order`, and the
// shorthand `{port}` must reach the worker command unchanged.
func TestCaddyfileAdapter(t *testing.T) {
	input := ":8080 {\n\toxian_hv {\n\t\tcommand ./app --port {port}\n\t\tworkers 2\n\t}\n}\n"

	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("caddyfile adapter is not registered")
	}
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w)
	}

	got := string(out)
	for _, want := range []string{
		`"handler":"oxian_hv"`,
		`"command":["./app","--port","{port}"]`,
		`"workers":2`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("adapted config does not contain %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "{http.request.port}") {
		t.Errorf("adapted config still holds the request port placeholder:\n%s", got)
	}
}

// TestCaddyfileDirectiveOrder checks that oxian_hv is sorted before
// reverse_proxy in a site block, whatever the order they are written in.
func TestCaddyfileDirectiveOrder(t *testing.T) {
	input := ":8080 {\n\treverse_proxy /api/* localhost:9000\n\toxian_hv ./app --port {port}\n}\n"

	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	got := string(out)
	ours := strings.Index(got, `"handler":"oxian_hv"`)
	proxy := strings.Index(got, `"handler":"reverse_proxy"`)
	if ours < 0 || proxy < 0 {
		t.Fatalf("adapted config lacks a handler:\n%s", got)
	}
	if ours > proxy {
		t.Errorf("oxian_hv is not ordered before reverse_proxy:\n%s", got)
	}
}

// TestCaddyfileAdapterError checks that parse errors surface through the
// adapter with the subdirective named.
func TestCaddyfileAdapterError(t *testing.T) {
	input := ":8080 {\n\toxian_hv ./app {\n\t\tworkers lots\n\t}\n}\n"

	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err == nil {
		t.Fatal("expected an error, got none")
	}
	if !strings.Contains(err.Error(), "workers:") {
		t.Errorf("error %q does not name the subdirective", err)
	}
}
