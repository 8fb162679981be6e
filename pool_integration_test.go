package oxianhv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	s := startCaddy(t, pool("workers 3", "health {\n interval 200ms\n}"))
	s.waitReady(3)

	counts := map[string]int{}
	for range 30 {
		counts[s.worker("/whoami")]++
	}
	if len(counts) != 3 {
		t.Fatalf("want 3 workers to answer, got %v", counts)
	}
	for w, n := range counts {
		if n != 10 {
			t.Errorf("worker %s answered %d of 30 requests, want 10 (%v)", w, n, counts)
		}
	}
}

func TestLeastBusyAvoidsWorkerWithOpenStream(t *testing.T) {
	s := startCaddy(t, pool("workers 2", "strategy least_busy"))
	s.waitReady(2)

	// hold an SSE stream open on one worker
	resp, err := s.client.Get(s.base + "/sse?events=0&interval_ms=50")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	busy := resp.Header.Get("X-Worker")
	reader := bufio.NewReader(resp.Body)
	if _, err := reader.ReadString('\n'); err != nil {
		t.Fatalf("reading first event: %v", err)
	}

	// the stream counts as in flight for as long as it is open
	inflight := map[string]int64{}
	for _, w := range s.workers() {
		inflight[strconv.Itoa(w.Index)] = w.Inflight
	}
	if inflight[busy] != 1 {
		t.Fatalf("worker %s holds the stream but shows %d requests in flight (%v)", busy, inflight[busy], inflight)
	}

	// every other request goes to the idle worker
	for range 20 {
		if w := s.worker("/whoami"); w == busy {
			t.Fatalf("request went to worker %s, which holds an open stream", busy)
		}
	}

	// once the stream ends, the worker is counted idle again
	resp.Body.Close()
	eventually(t, 5*time.Second, "stream no longer in flight", func() bool {
		for _, w := range s.workers() {
			if w.Inflight != 0 {
				return false
			}
		}
		return true
	})
}

func TestStickyKeysStayWhenAWorkerLeaves(t *testing.T) {
	dir := t.TempDir()
	s := startCaddy(t, pool(
		"workers 3",
		"strategy sticky",
		"sticky_header X-Session",
		"env TESTWORKER_UNHEALTHY_FILE "+filepath.Join(dir, "down-{port}"),
		"health {\n interval 50ms\n fails 1000\n}",
	))
	s.waitReady(3)

	// each key keeps its worker
	owner := map[string]string{}
	for i := range 40 {
		key := fmt.Sprintf("session-%d", i)
		owner[key] = s.worker("/whoami", "X-Session", key)
		if again := s.worker("/whoami", "X-Session", key); again != owner[key] {
			t.Fatalf("key %s went to worker %s, then to %s", key, owner[key], again)
		}
	}

	// take one worker out of rotation (its health answers 503)
	var gone workerpoolStatus
	for _, w := range s.workers() {
		if w.Index == 1 {
			gone = workerpoolStatus{index: "1", port: w.Port}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("down-%d", gone.port)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.waitReady(2)

	// only the keys of the worker that left move
	moved := 0
	for key, was := range owner {
		now := s.worker("/whoami", "X-Session", key)
		switch {
		case was == gone.index:
			moved++
			if now == gone.index {
				t.Errorf("key %s still reaches worker %s, which is out of rotation", key, now)
			}
		case now != was:
			t.Errorf("key %s moved from worker %s to %s though its worker stayed", key, was, now)
		}
	}
	if moved == 0 {
		t.Fatalf("no key was on worker %s; the test proves nothing (%v)", gone.index, owner)
	}

	// requests without the header still get answers
	s.worker("/whoami")
}

type workerpoolStatus struct {
	index string
	port  int
}

func TestKilledWorkerIsRestartedWhileOthersServe(t *testing.T) {
	s := startCaddy(t, pool("workers 2", "health {\n interval 100ms\n}"))
	s.waitReady(2)

	var victim int
	for _, w := range s.workers() {
		if w.Index == 0 {
			victim = w.PID
		}
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	// traffic keeps flowing while the worker is down
	failures := 0
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, body := s.get("/whoami")
		if resp.StatusCode != http.StatusOK {
			failures++
			t.Logf("status %d: %s", resp.StatusCode, body)
		}
		ws := s.workers()
		if ws[0].PID != victim && ws[0].PID != 0 && ws[0].State == "ready" && ws[0].Restarts == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker 0 not back in rotation: %+v", ws[0])
		}
	}
	if failures > 0 {
		t.Errorf("%d requests failed while a worker was restarted", failures)
	}

	// the restarted worker takes traffic again
	eventually(t, 5*time.Second, "worker 0 answers", func() bool { return s.worker("/whoami") == "0" })
}

func TestHealthGating(t *testing.T) {
	dir := t.TempDir()

	// both workers start unhealthy: listening, but answering 503; the
	// files are there before the workers get their ports
	base := 9500
	for port := base; port < base+100; port++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("down-%d", port)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := startCaddy(t, pool(
		"workers 2",
		fmt.Sprintf("worker_base_port %d", base),
		"env TESTWORKER_UNHEALTHY_FILE "+filepath.Join(dir, "down-{port}"),
		"health {\n interval 50ms\n}",
	))
	eventually(t, 10*time.Second, "workers listening and probed", func() bool {
		ws := s.workers()
		return len(ws) == 2 && ws[0].LastError != "" && ws[1].Port != 0
	})
	ws := s.workers()
	if report, status := s.health(); status != http.StatusServiceUnavailable || report.Projects[0].Ready != 0 {
		t.Fatalf("workers answering 503 count as ready: %d %+v", status, report)
	}

	// a worker that turns healthy gets all the traffic; the other none
	if err := os.Remove(filepath.Join(dir, fmt.Sprintf("down-%d", ws[1].Port))); err != nil {
		t.Fatal(err)
	}
	s.waitReady(1)
	for range 10 {
		if w := s.worker("/whoami"); w != "1" {
			t.Fatalf("request reached worker %s, which never passed a health probe", w)
		}
	}

	// a ready worker answering 503 leaves rotation; the pool answers 503
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("down-%d", ws[1].Port)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.waitReady(0)
	report, status := s.health()
	if status != http.StatusServiceUnavailable || report.Status != "unavailable" {
		t.Fatalf("health with no ready worker: status %d, report %+v", status, report)
	}
}

func TestSlowStartingWorkerGetsRequestsOnlyWhenReady(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "env TESTWORKER_START_DELAY 700ms"))

	// the first request waits for the worker instead of failing
	start := time.Now()
	resp, body := s.get("/whoami")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: status %d: %s", resp.StatusCode, body)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Logf("first request took only %s; the worker may have started early", waited)
	}
	ws := s.workers()
	if ws[0].State != "ready" {
		t.Fatalf("worker answered but is %s", ws[0].State)
	}
}

func TestHealthReport(t *testing.T) {
	s := startCaddy(t, "\toxian_hv {\n\t\tproject shop\n\t\tcommand "+testworkerBin+"\n\t\tworkers 2\n\t}")
	s.waitReady(2)

	resp, body := s.get("/_health")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var raw struct {
		Status   string `json:"status"`
		Projects []struct {
			Project string           `json:"project"`
			Ready   int              `json:"ready"`
			Workers []map[string]any `json:"workers"`
		} `json:"projects"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Status != "ok" || len(raw.Projects) != 1 || raw.Projects[0].Project != "shop" || raw.Projects[0].Ready != 2 {
		t.Fatalf("unexpected report: %s", body)
	}
	for _, w := range raw.Projects[0].Workers {
		for _, field := range []string{"index", "pid", "port", "state", "inflight", "restarts"} {
			if _, ok := w[field]; !ok {
				t.Errorf("worker entry lacks %q: %v", field, w)
			}
		}
	}

	// the health path is answered by the hypervisor, never by a worker
	if resp.Header.Get("X-Worker") != "" {
		t.Fatalf("health path was proxied to worker %s", resp.Header.Get("X-Worker"))
	}

	// HEAD works too
	req, _ := http.NewRequest(http.MethodHead, s.base+"/_health", nil)
	head, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusOK {
		t.Fatalf("HEAD health: status %d", head.StatusCode)
	}

	// the workers know their project and index
	_, who := s.get("/whoami")
	if !strings.Contains(who, `"project":"shop"`) {
		t.Fatalf("worker does not know its project: %s", who)
	}
}

func TestHeadHealthProbes(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "health {\n method HEAD\n interval 50ms\n}"))
	s.waitReady(1)
	s.worker("/whoami")
}

func TestRequestIDRoundTrip(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "proxy {\n forward_headers X-Tenant-Id\n}"))
	s.waitReady(1)

	headersSeen := func(resp *http.Response, body string) map[string]string {
		t.Helper()
		var got struct {
			Headers map[string]string `json:"headers"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("decoding %q: %v", body, err)
		}
		return got.Headers
	}

	// a sane client id is kept, reaches the worker and comes back
	resp, body := s.get("/headers", "X-Request-Id", "abc-123", "X-Tenant-Id", "t1")
	if got := headersSeen(resp, body)["X-Request-Id"]; got != "abc-123" {
		t.Fatalf("worker saw request id %q, want abc-123", got)
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "abc-123" {
		t.Fatalf("response carries request id %q, want [abc-123]", got)
	}
	if got := headersSeen(resp, body)["X-Tenant-Id"]; got != "t1" {
		t.Fatalf("worker saw tenant %q, want t1", got)
	}

	// two ids are one too many: the worker sees one fresh id
	req, _ := http.NewRequest(http.MethodGet, s.base+"/headers", nil)
	req.Header.Add("X-Request-Id", "first")
	req.Header.Add("X-Request-Id", "second")
	twice, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	twiceBody, _ := io.ReadAll(twice.Body)
	twice.Body.Close()
	if got := headersSeen(twice, string(twiceBody))["X-Request-Id"]; len(got) != 32 ||
		got != twice.Header.Get("X-Request-Id") {
		t.Fatalf("two client ids: worker saw %q, response carries %q", got, twice.Header.Values("X-Request-Id"))
	}

	// a missing or insane id is replaced by a fresh one, the same on both sides
	for _, bad := range []string{"", "has space", strings.Repeat("x", 200), "tab\there"} {
		resp, body := s.get("/headers", "X-Request-Id", bad)
		sent := headersSeen(resp, body)["X-Request-Id"]
		back := resp.Header.Get("X-Request-Id")
		if sent == "" || sent == bad || sent != back || len(sent) != 32 {
			t.Errorf("client id %q: worker saw %q, response carries %q", bad, sent, back)
		}
	}
}

func TestProxyTimeoutAnswers504(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "proxy {\n timeout 300ms\n}"))
	s.waitReady(1)

	start := time.Now()
	resp, body := s.get("/slow?ms=3000")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504: %s", resp.StatusCode, body)
	}
	if !strings.Contains(body, "no response from a worker within 300ms") {
		t.Fatalf("504 body does not say what happened: %s", body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("504 came after %s", took)
	}

	// a long body that started in time is not cut by proxy.timeout
	resp, body = s.get("/sse?events=5&interval_ms=100")
	if resp.StatusCode != http.StatusOK || strings.Count(body, "data:") != 5 {
		t.Fatalf("stream cut: status %d, body %q", resp.StatusCode, body)
	}
}

func TestTotalAndHeaderTimeouts(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "timeouts {\n headers 300ms\n total 2s\n}"))
	s.waitReady(1)

	// no headers within timeouts.headers: 504 at once, not retried
	start := time.Now()
	resp, body := s.get("/slow?ms=3000")
	if resp.StatusCode != http.StatusGatewayTimeout ||
		!strings.Contains(body, "no response from a worker within 300ms (timeouts.headers)") {
		t.Fatalf("headers timeout: status %d, want 504: %s", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("headers timeout answered after %s: the slow request was retried", took)
	}

	// a stream longer than timeouts.total is cut short
	resp, err := s.client.Get(s.base + "/sse?events=0&interval_ms=100")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	n := 0
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if strings.HasPrefix(scanner.Text(), "data:") {
			n++
		}
	}
	resp.Body.Close()
	if took := time.Since(start); took > 5*time.Second || n == 0 {
		t.Fatalf("total timeout: stream ran %s with %d events", took, n)
	}
}

func TestStreamingAndWebSocket(t *testing.T) {
	s := startCaddy(t, pool("workers 2"))
	s.waitReady(2)

	// events arrive as they are sent, not at the end
	resp, err := s.client.Get(s.base + "/sse?events=3&interval_ms=400")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: 1") {
		t.Fatalf("first event: %q, %v", line, err)
	}
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Fatalf("first event took %s: the stream is buffered", took)
	}

	// a WebSocket echoes through the proxy
	wsURL := strings.Replace(s.base, "http://", "ws://", 1) + "/ws"
	conn, err := websocket.Dial(wsURL, "", s.base)
	if err != nil {
		t.Fatalf("dialing websocket: %v", err)
	}
	defer conn.Close()
	for _, msg := range []string{"hello", "again"} {
		if err := websocket.Message.Send(conn, msg); err != nil {
			t.Fatal(err)
		}
		var reply string
		if err := websocket.Message.Receive(conn, &reply); err != nil {
			t.Fatal(err)
		}
		if reply != "echo:"+msg {
			t.Fatalf("websocket reply %q, want %q", reply, "echo:"+msg)
		}
	}
}

func TestRetriesOnAnotherWorkerUnderLoad(t *testing.T) {
	s := startCaddy(t, pool("workers 3", "health {\n interval 100ms\n}"))
	s.waitReady(3)

	// load while one worker dies: no request may fail
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed, served := 0, 0
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := s.client.Get(s.base + "/whoami")
				mu.Lock()
				if err != nil || resp.StatusCode != http.StatusOK {
					failed++
				} else {
					served++
				}
				mu.Unlock()
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	eventually(t, 10*time.Second, "load running", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return served > 50
	})
	victim := s.workers()[2].PID
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "worker 2 restarted", func() bool {
		w := s.workers()[2]
		return w.State == "ready" && w.PID != victim
	})
	close(stop)
	wg.Wait()
	if failed > 0 {
		t.Fatalf("%d of %d requests failed while a worker died", failed, failed+served)
	}
	t.Logf("%d requests served while a worker died and came back", served)
}

func TestProxyTimeoutCountsTheWaitForAWorker(t *testing.T) {
	s := startCaddy(t, pool("workers 1", "env TESTWORKER_START_DELAY 500ms", "proxy {\n timeout 1200ms\n}"))

	// a request that waited for the worker to start has only the rest of
	// proxy.timeout for its answer
	start := time.Now()
	resp, body := s.get("/slow?ms=5000")
	took := time.Since(start)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, "within 1.2s (proxy.timeout)") {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if took < 1100*time.Millisecond || took > 1800*time.Millisecond {
		t.Fatalf("504 after %s, want about 1.2s", took)
	}

	// a late attempt that gets its headers in time streams its whole body
	stopCaddy(t)
	s = startCaddy(t, pool("workers 1", "env TESTWORKER_START_DELAY 500ms", "proxy {\n timeout 1200ms\n}"))
	resp, body = s.get("/sse?events=4&interval_ms=300")
	if resp.StatusCode != http.StatusOK || strings.Count(body, "data:") != 4 {
		t.Fatalf("late stream: status %d, body %q", resp.StatusCode, body)
	}
}

func TestAccessLogCarriesContextFields(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	s := startCaddy(t, fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t}\n", logFile)+
		pool("project shop", "workers 1", "proxy {\n forward_headers X-Tenant-Id X-Correlation-Id\n}"))
	s.waitReady(1)
	s.worker("/whoami", "X-Tenant-Id", "acme", "X-Correlation-Id", "corr-7", "X-Request-Id", "req-42")

	// the entry names the project, the worker, the request id and the
	// context headers
	var entry map[string]any
	eventually(t, 10*time.Second, "access log entry", func() bool {
		data, err := os.ReadFile(logFile)
		if err != nil {
			return false
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if strings.Contains(line, `"/whoami"`) {
				return json.Unmarshal([]byte(line), &entry) == nil
			}
		}
		return false
	})
	for field, want := range map[string]string{
		"oxian_project":             "shop",
		"oxian_worker":              "0",
		"request_id":                "req-42",
		"oxian_hv.x-tenant-id":      "acme",
		"oxian_hv.x-correlation-id": "corr-7",
	} {
		if got, _ := entry[field].(string); got != want {
			t.Errorf("access log field %s = %q, want %q (entry %v)", field, got, want, entry)
		}
	}
}
