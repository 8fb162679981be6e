package oxianhv

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMetricsExposition(t *testing.T) {
	s := startAdminCaddy(t, pool("project metered", "workers 2", "health {\n interval 100ms\n}"))
	eventually(t, 30*time.Second, "2 ready workers", func() bool {
		for _, st := range s.list() {
			if st.Project == "metered" {
				return st.Ready == 2
			}
		}
		return false
	})

	// traffic, and one worker killed and restarted
	client := &http.Client{Timeout: 10 * time.Second}
	for range 10 {
		resp, err := client.Get(s.site + "/whoami")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var victim int
	for _, st := range s.list() {
		if st.Project == "metered" {
			victim = st.Workers[0].PID
		}
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	// the exposition shows each metric with the values that happened
	var body string
	eventually(t, 15*time.Second, "metrics reflect the restart", func() bool {
		body = s.expect(http.StatusOK, http.MethodGet, "/metrics", "")
		return metricValue(body, `oxian_hv_worker_restarts_total{project="metered",worker="0"}`) >= 1 &&
			metricValue(body, `oxian_hv_ready_workers{project="metered"}`) == 2
	})
	for metric, atLeast := range map[string]float64{
		`oxian_hv_requests_total{code="200",project="metered",worker="0"}`:      5,
		`oxian_hv_requests_total{code="200",project="metered",worker="1"}`:      5,
		`oxian_hv_request_duration_seconds_count{project="metered",worker="0"}`: 5,
		`oxian_hv_worker_spawn_duration_seconds_count{project="metered"}`:       3,
		`oxian_hv_workers{project="metered",state="ready"}`:                     2,
		`oxian_hv_requests_in_flight{project="metered",worker="0"}`:             0,
	} {
		if got := metricValue(body, metric); got < atLeast {
			t.Errorf("%s = %v, want at least %v", metric, got, atLeast)
		}
	}
	if !strings.Contains(body, "# TYPE oxian_hv_request_duration_seconds histogram") {
		t.Error("request duration is not a histogram")
	}
}

// metricValue returns the value of one sample line in a Prometheus text
// exposition, or -1 if it is absent.
func metricValue(body, sample string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}
