package oxianhv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// jsonConfig wraps a handler's JSON in a whole Caddy config.
func jsonConfig(handler string) []byte {
	return []byte(fmt.Sprintf(`{
		"admin": {"disabled": true, "config": {"persist": false}},
		"apps": {"http": {"servers": {"srv": {
			"listen": ["127.0.0.1:0"],
			"routes": [{"handle": [%s]}]
		}}}}
	}`, handler))
}

func TestValidateRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, handler, want string
	}{
		{"no command", `{"handler":"oxian_hv"}`, "command: required"},
		{"empty command", `{"handler":"oxian_hv","command":[""]}`, "command: required"},
		{"unknown strategy", `{"handler":"oxian_hv","command":["x"],"strategy":"fastest"}`,
			`strategy: unknown strategy "fastest"`},
		{"sticky without header", `{"handler":"oxian_hv","command":["x"],"strategy":"sticky"}`,
			"sticky_header: required with strategy sticky"},
		{"zero workers", `{"handler":"oxian_hv","command":["x"],"workers":0}`, "workers: must be at least 1"},
		{"negative workers", `{"handler":"oxian_hv","command":["x"],"workers":-2}`, "workers: must be at least 1"},
		{"bad workers word", `{"handler":"oxian_hv","command":["x"],"workers":"many"}`, `workers: want a number or "auto"`},
		{"port too high", `{"handler":"oxian_hv","command":["x"],"worker_base_port":70000}`,
			"worker_base_port: 70000 is out of range"},
		{"port negative", `{"handler":"oxian_hv","command":["x"],"worker_base_port":-1}`,
			"worker_base_port: -1 is out of range"},
		{"no room for workers", `{"handler":"oxian_hv","command":["x"],"worker_base_port":65535,"workers":3}`,
			"leaves no room for 3 workers"},
		{"negative interval", `{"handler":"oxian_hv","command":["x"],"health":{"interval":"-1s"}}`,
			"health.interval: must not be negative"},
		{"negative proxy timeout", `{"handler":"oxian_hv","command":["x"],"proxy":{"timeout":"-5s"}}`,
			"proxy.timeout: must not be negative"},
		{"negative total", `{"handler":"oxian_hv","command":["x"],"timeouts":{"total":"-5s"}}`,
			"timeouts.total: must not be negative"},
		{"bad health method", `{"handler":"oxian_hv","command":["x"],"health":{"method":"POST"}}`,
			"health.method: want GET or HEAD"},
		{"bad health path", `{"handler":"oxian_hv","command":["x"],"health":{"path":"health"}}`,
			"health.path: must start with '/'"},
		{"bad forward header", `{"handler":"oxian_hv","command":["x"],"proxy":{"forward_headers":["bad header"]}}`,
			"proxy.forward_headers"},
		{"unknown field", `{"handler":"oxian_hv","command":["x"],"wrokers":2}`, "wrokers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := caddy.Validate(mustConfig(t, jsonConfig(tc.handler)))
			if err == nil {
				t.Fatalf("config was accepted: %s", tc.handler)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func mustConfig(t *testing.T, raw []byte) *caddy.Config {
	t.Helper()
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(raw, &cfg); err != nil {
		t.Fatalf("decoding config: %v", err)
	}
	return &cfg
}

func TestValidateStartsNoProcess(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "spawned")
	handler := fmt.Sprintf(`{"handler":"oxian_hv","workers":2,"command":["/bin/sh","-c","touch %s; exec %s"]}`,
		marker, testworkerBin)
	if err := caddy.Validate(mustConfig(t, jsonConfig(handler))); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("validating the config started a worker (marker: %v)", err)
	}
	if n := len(runningPIDs()); n != 0 {
		t.Fatalf("validating the config left %d workers running", n)
	}
}

func TestJSONConfig(t *testing.T) {
	// workers "auto" and every field by its JSON name
	raw := fmt.Sprintf(`{
		"handler": "oxian_hv",
		"project": "api",
		"command": [%q],
		"env": {"GREETING": "hi"},
		"workers": "auto",
		"worker_base_port": 9400,
		"strategy": "sticky",
		"sticky_header": "X-Session",
		"health": {"path": "/_health", "method": "HEAD", "interval": "200ms", `+
		`"timeout": "1s", "start_timeout": "20s", "fails": 2},
		"proxy": {"timeout": "10s", "pass_request_id": false, "forward_headers": ["X-Tenant-Id"]},
		"timeouts": {"connect": "1s", "headers": "5s", "idle": "30s", "total": "1m"}
	}`, testworkerBin)
	var h Handler
	if err := json.Unmarshal([]byte(raw), &h); err != nil {
		t.Fatal(err)
	}
	if h.Workers != workersAuto || h.Project != "api" || h.Health.Method != "HEAD" || *h.Proxy.PassRequestID {
		t.Fatalf("decoded wrongly: %+v", h)
	}

	// it runs, with one worker per CPU
	if err := caddy.Load(jsonConfig(raw), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	eventually(t, 30*time.Second, "workers ready", func() bool {
		ready := 0
		pools.Range(func(_, v any) bool {
			ready += v.(*poolEntry).Status().Ready
			return true
		})
		return ready == runtime.NumCPU()
	})
}

func TestWorkerCountJSON(t *testing.T) {
	for in, want := range map[string]WorkerCount{`"auto"`: workersAuto, `"AUTO"`: workersAuto, `4`: 4, `"3"`: 3} {
		var wc WorkerCount
		if err := json.Unmarshal([]byte(in), &wc); err != nil || wc != want {
			t.Errorf("%s: got %d, %v; want %d", in, wc, err, want)
		}
	}
	for wc, want := range map[WorkerCount]string{workersAuto: `"auto"`, 2: `2`} {
		if out, _ := json.Marshal(wc); string(out) != want {
			t.Errorf("%d: marshalled %s, want %s", wc, out, want)
		}
	}
}
