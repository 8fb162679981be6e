// Command coldstart measures scale from zero: the latency of the first
// request to an oxian_hv pool whose workers were all stopped for idleness,
// less the worker app's own time from exec to listening.
//
// Run it from the repository root:
//
//	go run ./bench/coldstart [-n 30]
//
// It builds cmd/caddy and caddy-examples/app into a temporary directory
// (or takes them from -caddy and -app),
// starts Caddy with one oxian_hv pool of that app (workers 1, idle_ttl
// 300ms), and then, n times:
//
//  1. waits until the hypervisor's health shows no workers (the idle stop)
//     and no process of the app is left;
//  2. starts the app alone, with PORT set to a free port, and times
//     cmd.Start() until a TCP connect and GET /_health succeed, polling
//     every -poll (200 µs), then kills it;
//  3. after -settle (50 ms) of quiet, times one GET /api/hello through
//     Caddy, on a new connection.
//
// The two measurements take turns so that both see the same machine.
//
// The difference of the two is the hypervisor's cold-start overhead; the
// target is at most 10 ms, at the median and at p90. Everything listens
// on 127.0.0.1, and everything it starts is stopped before it returns.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is the most cold-start overhead the hypervisor may add.
const target = 10 * time.Millisecond

type options struct {
	n        int
	caddy    string
	app      string
	poll     time.Duration
	idleTTL  time.Duration
	settle   time.Duration
	deadline time.Duration
	verbose  bool
	logLevel string
	keep     bool
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 30, "samples per measurement")
	flag.StringVar(&o.caddy, "caddy", "", "a built cmd/caddy (default: build one)")
	flag.StringVar(&o.app, "app", "", "a built caddy-examples/app (default: build one)")
	flag.DurationVar(&o.poll, "poll", 200*time.Microsecond, "poll interval while the app alone starts")
	flag.DurationVar(&o.idleTTL, "idle-ttl", 300*time.Millisecond, "idle_ttl of the pool")
	flag.DurationVar(&o.settle, "settle", 50*time.Millisecond,
		"quiet time before each cold request, after the last app process exited")
	flag.DurationVar(&o.deadline, "timeout", 3*time.Minute, "limit on the whole run")
	flag.BoolVar(&o.verbose, "v", false, "print every sample")
	flag.StringVar(&o.logLevel, "log-level", "ERROR",
		"Caddy's log level (INFO logs the worker's spawn and readiness, to caddy.log in the temporary directory)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	flag.Parse()
	if o.n < 1 {
		fmt.Fprintln(os.Stderr, "coldstart: -n must be at least 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.deadline)
	err := run(ctx, o)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "coldstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	tmp, err := os.MkdirTemp("", "oxian-coldstart-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("temporary directory:", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}

	// the binaries
	if o.app == "" {
		o.app = filepath.Join(tmp, "app")
		if err := build(ctx, o.app, "./caddy-examples/app"); err != nil {
			return err
		}
	}
	if o.caddy == "" {
		o.caddy = filepath.Join(tmp, "caddy")
		if err := build(ctx, o.caddy, "./cmd/caddy"); err != nil {
			return err
		}
	}
	for _, p := range []*string{&o.app, &o.caddy} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}

	// the app alone and through oxian_hv, in turns, so that both see the
	// same machine
	fmt.Printf("%d rounds: the app alone (polling every %s), then a cold request through oxian_hv (idle_ttl %s)\n",
		o.n, o.poll, o.idleTTL)
	alone, cold, queued, err := measure(ctx, o, tmp)
	if err != nil {
		return err
	}

	// 3. the report
	report(alone, cold, queued)
	return nil
}

// build compiles the package pkg into out.
func build(ctx context.Context, out, pkg string) error {
	fmt.Printf("building %s\n", pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w (run from the repository root)", pkg, err)
	}
	return nil
}

// freePort returns a port nothing listens on at the moment.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// appAlone starts the app on a free port and returns the time from
// cmd.Start() until GET /_health answers 200; it then kills the app.
func appAlone(ctx context.Context, app string, poll time.Duration) (time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return 0, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(app)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port))
	setDeathSignal(cmd)
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()

	limit := time.NewTimer(10 * time.Second)
	defer limit.Stop()
	for {
		if probe(addr) {
			return time.Since(began), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-limit.C:
			return 0, errors.New("not listening within 10s")
		default:
		}
		time.Sleep(poll)
	}
}

// probe connects to addr and reports whether GET /_health answers 200.
func probe(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, "GET /_health HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// caddyfile is the site: one pool of one worker, stopped after idle_ttl.
const caddyfile = `{
	admin off
	auto_https off
	persist_config off
	log {
		level %s
	}
}

:%d {
	bind 127.0.0.1
	oxian_hv {
		project coldstart
		command %s
		workers 1
		worker_base_port %d
		idle_ttl %s
		server_timing
		health {
			interval 5s
		}
	}
}
`

// measure starts Caddy with the pool and takes o.n rounds of an app start
// alone and a cold request. It returns the app's start times, the cold
// requests' latencies and the queue wait oxian_hv reported for each
// (Server-Timing), which is the wait for a ready worker.
func measure(ctx context.Context, o options, tmp string) (alone, cold, queued []time.Duration, err error) {
	sitePort, err := freePort()
	if err != nil {
		return nil, nil, nil, err
	}
	// the pool takes the lowest free port from here up
	basePort, err := freePort()
	if err != nil {
		return nil, nil, nil, err
	}
	conf := filepath.Join(tmp, "Caddyfile")
	text := fmt.Sprintf(caddyfile, o.logLevel, sitePort, o.app, basePort, o.idleTTL)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, nil, nil, err
	}
	logf, err := os.Create(filepath.Join(tmp, "caddy.log"))
	if err != nil {
		return nil, nil, nil, err
	}
	defer logf.Close()

	cmd := exec.Command(o.caddy, "run", "--config", conf, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = tmp
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		// Caddy stops its workers on SIGTERM; SIGKILL after 10 s
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if err != nil {
			if b, rerr := os.ReadFile(logf.Name()); rerr == nil && len(b) > 0 {
				fmt.Fprintf(os.Stderr, "caddy log:\n%s\n", lastLines(b, 20))
			}
		}
	}()

	site := "http://127.0.0.1:" + strconv.Itoa(sitePort)
	// health polls keep their connection; they do not count as requests
	// of the pool, so they do not keep it awake
	healthClient := &http.Client{Timeout: 2 * time.Second}
	// every cold request comes on a new connection, as from a new client
	coldClient := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}

	// Caddy up, and its first worker ready
	if err := waitFor(ctx, exited, 30*time.Second, func() (bool, error) {
		n, ok := workers(healthClient, site)
		return ok && n > 0, nil
	}); err != nil {
		return nil, nil, nil, fmt.Errorf("waiting for caddy and its first worker: %w", err)
	}

	for i := range o.n {
		// the pool stopped for idleness, and its app process gone
		if err := waitFor(ctx, exited, 10*time.Second, func() (bool, error) {
			n, ok := workers(healthClient, site)
			return ok && n == 0 && !appRunning(o.app), nil
		}); err != nil {
			return nil, nil, nil, fmt.Errorf("round %d: waiting for the idle stop: %w", i+1, err)
		}
		d, err := appAlone(ctx, o.app, o.poll)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("round %d: the app alone: %w", i+1, err)
		}
		alone = append(alone, d)
		if err := sleep(ctx, o.settle); err != nil {
			return nil, nil, nil, err
		}

		began := time.Now()
		resp, err := coldClient.Get(site + "/api/hello")
		if err != nil {
			return nil, nil, nil, fmt.Errorf("round %d: the cold request: %w", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(began)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("round %d: the cold request: reading the body: %w", i+1, err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"hello"`)) {
			return nil, nil, nil, fmt.Errorf("round %d: the cold request: %s: %s", i+1, resp.Status, bytes.TrimSpace(body))
		}
		q := queueWait(resp.Header.Get("Server-Timing"))
		cold = append(cold, took)
		queued = append(queued, q)
		if o.verbose {
			fmt.Printf("  %2d  app alone %s  cold %s  (queued %s)\n", i+1, ms(d), ms(took), ms(q))
		}
	}
	return alone, cold, queued, nil
}

// workers returns how many workers the hypervisor's health lists, and
// whether it answered.
func workers(c *http.Client, site string) (int, bool) {
	resp, err := c.Get(site + "/_health")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var h struct {
		Projects []struct {
			Workers []json.RawMessage `json:"workers"`
		} `json:"projects"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || len(h.Projects) == 0 {
		return 0, false
	}
	n := 0
	for _, p := range h.Projects {
		n += len(p.Workers)
	}
	return n, true
}

// appRunning reports whether a process of the app binary runs (Linux,
// through /proc; elsewhere it reports false).
func appRunning(app string) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if arg0, _, _ := bytes.Cut(b, []byte{0}); string(arg0) == app {
			return true
		}
	}
	return false
}

// waitFor polls cond every 5 ms until it holds, Caddy exits, ctx ends or
// limit passes.
func waitFor(ctx context.Context, exited <-chan struct{}, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-exited:
			return errors.New("caddy exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// queueWait parses `queue;dur=<ms>` out of a Server-Timing header.
func queueWait(h string) time.Duration {
	for metric := range strings.SplitSeq(h, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(metric), ";")
		if name != "queue" {
			continue
		}
		for p := range strings.SplitSeq(params, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(p), "dur="); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err == nil {
					return time.Duration(f * float64(time.Millisecond))
				}
			}
		}
	}
	return 0
}

// stats of a sample
type stats struct {
	min, median, p90, max time.Duration
}

func summarize(d []time.Duration) stats {
	s := slices.Clone(d)
	slices.Sort(s)
	// nearest rank
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return stats{min: s[0], median: rank(0.5), p90: rank(0.9), max: s[len(s)-1]}
}

func report(alone, cold, queued []time.Duration) {
	a, c, q := summarize(alone), summarize(cold), summarize(queued)
	after := make([]time.Duration, len(cold))
	for i := range cold {
		after[i] = cold[i] - queued[i]
	}
	r := summarize(after)

	fmt.Println()
	fmt.Printf("%-44s %9s %9s %9s %9s\n", "", "min", "median", "p90", "max")
	row := func(name string, s stats) {
		fmt.Printf("%-44s %9s %9s %9s %9s\n", name, ms(s.min), ms(s.median), ms(s.p90), ms(s.max))
	}
	row("app alone, exec -> listening", a)
	row("cold first request through oxian_hv", c)
	row("  of which queued for a ready worker", q)
	row("  of which the rest (proxy, app, client)", r)
	fmt.Println()
	verdict := func(d time.Duration) string {
		if d <= target {
			return "holds"
		}
		return "MISSES"
	}
	dm, dp := c.median-a.median, c.p90-a.p90
	fmt.Printf("cold-start overhead, median: %s - %s = %s  (target <= %s: %s)\n",
		ms(c.median), ms(a.median), ms(dm), ms(target), verdict(dm))
	fmt.Printf("cold-start overhead, p90:    %s - %s = %s  (target <= %s: %s)\n",
		ms(c.p90), ms(a.p90), ms(dp), ms(target), verdict(dp))
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000)
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}
