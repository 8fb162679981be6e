package oxianhv

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

// The metrics, in Caddy's Prometheus registry (served at the admin
// endpoint's /metrics). They are created once for the process, so their
// values survive config reloads.
var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "oxian_hv",
		Name:      "requests_total",
		Help:      "Requests proxied to workers, by project, worker and status code.",
	}, []string{"project", "worker", "code"})

	metricErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "oxian_hv",
		Name:      "request_errors_total",
		Help:      "Requests that ended in an error of the hypervisor or a 5xx status, by project and worker.",
	}, []string{"project", "worker"})

	metricDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "oxian_hv",
		Name:      "request_duration_seconds",
		Help:      "Time from the arrival of a request to the end of its response body, by project and worker.",
		Buckets:   prometheus.DefBuckets,
	}, []string{"project", "worker"})

	metricRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "oxian_hv",
		Name:      "worker_restarts_total",
		Help:      "Worker processes that ended and were started again, by project and worker.",
	}, []string{"project", "worker"})

	metricFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "oxian_hv",
		Name:      "worker_failures_total",
		Help:      "Times a worker was marked failed after failing quickly too often, by project and worker.",
	}, []string{"project", "worker"})

	metricSpawn = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "oxian_hv",
		Name:      "worker_spawn_duration_seconds",
		Help:      "Time from spawning a worker process to its first passed health probe, by project.",
		Buckets:   []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"project"})

	metricScaleEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "oxian_hv",
		Name:      "scale_events_total",
		Help: "Changes of a pool's worker count by autoscaling, idle stop and wake, " +
			"by project and direction (up, down).",
	}, []string{"project", "direction"})

	metricQueueWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "oxian_hv",
		Name:      "queue_wait_seconds",
		Help:      "Time requests waited for a ready worker, by project.",
		Buckets:   []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"project"})

	poolCollector = &poolStateCollector{
		inflight: prometheus.NewDesc("oxian_hv_requests_in_flight",
			"Requests in flight on a worker, counted until the response body has been sent.",
			[]string{"project", "worker"}, nil),
		ready: prometheus.NewDesc("oxian_hv_ready_workers",
			"Workers that pass their health probe and take traffic, by project.",
			[]string{"project"}, nil),
		workers: prometheus.NewDesc("oxian_hv_workers",
			"Workers by project and state.",
			[]string{"project", "state"}, nil),
	}
)

// registerMetrics adds the collectors to the config's registry.
func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{
		metricRequests, metricErrors, metricDuration,
		metricRestarts, metricFailures, metricSpawn, metricScaleEvents, metricQueueWait, poolCollector,
	} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				logger.Warn("registering metrics", zap.Error(err))
			}
		}
	}
}

// poolHooks feeds a project's worker events into the metrics.
func poolHooks(project string) workerpool.Hooks {
	return workerpool.Hooks{
		Ready: func(_ int, startup time.Duration) {
			metricSpawn.WithLabelValues(project).Observe(startup.Seconds())
		},
		Restarting: func(worker int) {
			metricRestarts.WithLabelValues(project, strconv.Itoa(worker)).Inc()
		},
		Failed: func(worker int) {
			metricFailures.WithLabelValues(project, strconv.Itoa(worker)).Inc()
		},
		Scaled: func(from, to int, _ string) {
			direction := "up"
			if to < from {
				direction = "down"
			}
			metricScaleEvents.WithLabelValues(project, direction).Inc()
		},
	}
}

// requestMetrics records the requests of one project. It keeps the metric
// children it used, so that a request costs map lookups rather than the
// hashing of label values.
type requestMetrics struct {
	project   string
	requests  sync.Map // requestKey -> prometheus.Counter
	durations sync.Map // worker -> prometheus.Observer
	errors    sync.Map // worker -> prometheus.Counter
}

type requestKey struct {
	worker string
	status int
}

func newRequestMetrics(project string) *requestMetrics {
	return &requestMetrics{project: project}
}

// observe records a finished request; worker is "" if none was chosen.
func (rm *requestMetrics) observe(worker string, status int, failed bool, took time.Duration) {
	if worker == "" {
		worker = "none"
	}

	key := requestKey{worker, status}
	counter, ok := rm.requests.Load(key)
	if !ok {
		counter, _ = rm.requests.LoadOrStore(key, metricRequests.WithLabelValues(rm.project, worker, strconv.Itoa(status)))
	}
	counter.(prometheus.Counter).Inc()

	duration, ok := rm.durations.Load(worker)
	if !ok {
		duration, _ = rm.durations.LoadOrStore(worker, metricDuration.WithLabelValues(rm.project, worker))
	}
	duration.(prometheus.Observer).Observe(took.Seconds())

	if failed || status >= 500 {
		errs, ok := rm.errors.Load(worker)
		if !ok {
			errs, _ = rm.errors.LoadOrStore(worker, metricErrors.WithLabelValues(rm.project, worker))
		}
		errs.(prometheus.Counter).Inc()
	}
}

// poolStateCollector reports the live state of every pool when scraped.
type poolStateCollector struct {
	inflight, ready, workers *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *poolStateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inflight
	ch <- c.ready
	ch <- c.workers
}

// Collect implements prometheus.Collector.
func (c *poolStateCollector) Collect(ch chan<- prometheus.Metric) {
	pools.Range(func(_, v any) bool {
		st := v.(*poolEntry).Status()
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, float64(st.Ready), st.Project)
		// a slot being replaced has two workers with one index: add them up
		states := map[workerpool.State]int{}
		inflight := map[int]int64{}
		for _, w := range st.Workers {
			states[w.State]++
			inflight[w.Index] += w.Inflight
		}
		for index, n := range inflight {
			ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue,
				float64(n), st.Project, strconv.Itoa(index))
		}
		for state, n := range states {
			ch <- prometheus.MustNewConstMetric(c.workers, prometheus.GaugeValue, float64(n), st.Project, string(state))
		}
		return true
	})
}
