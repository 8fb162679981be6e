package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTestServer serves newMux(cfg) with a few defaults filled in.
func newTestServer(t *testing.T, cfg config) *httptest.Server {
	t.Helper()
	if cfg.worker == "" {
		cfg.worker = "3"
	}
	if cfg.project == "" {
		cfg.project = "demo"
	}
	if cfg.pid == 0 {
		cfg.pid = 4242
	}
	if cfg.port == 0 {
		cfg.port = 9101
	}
	srv := httptest.NewServer(newMux(cfg))
	t.Cleanup(srv.Close)
	return srv
}

// get fetches url and returns the response with its body read.
func get(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestWhoami(t *testing.T) {
	srv := newTestServer(t, config{})

	resp, body := get(t, http.MethodGet, srv.URL+"/whoami")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	var got struct {
		Worker  string `json:"worker"`
		Project string `json:"project"`
		PID     int    `json:"pid"`
		Port    int    `json:"port"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	if got.Worker != "3" || got.Project != "demo" || got.PID != 4242 || got.Port != 9101 {
		t.Errorf("whoami = %+v", got)
	}
	if resp.Header.Get("X-Worker") != "3" || resp.Header.Get("X-Worker-Pid") != "4242" {
		t.Errorf("headers = %v", resp.Header)
	}

	// the headers are on every route, including the fallback
	resp, body = get(t, http.MethodGet, srv.URL+"/some/where")
	if resp.Header.Get("X-Worker") != "3" {
		t.Errorf("fallback X-Worker = %q", resp.Header.Get("X-Worker"))
	}
	if !strings.Contains(body, `"path":"/some/where"`) {
		t.Errorf("fallback body = %q", body)
	}
}

func TestHealth(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "unhealthy")
	srv := newTestServer(t, config{unhealthyFile: flag})

	resp, body := get(t, http.MethodGet, srv.URL+"/_health")
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Fatalf("healthy: status %d, body %q", resp.StatusCode, body)
	}
	resp, body = get(t, http.MethodHead, srv.URL+"/_health")
	if resp.StatusCode != http.StatusOK || body != "" {
		t.Fatalf("HEAD: status %d, body %q", resp.StatusCode, body)
	}

	// while the file exists the route answers 503
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	resp, _ = get(t, http.MethodGet, srv.URL+"/_health")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("with unhealthy file: status %d, want 503", resp.StatusCode)
	}
	resp, _ = get(t, http.MethodHead, srv.URL+"/_health")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("HEAD with unhealthy file: status %d, want 503", resp.StatusCode)
	}

	// and recovers once it is gone
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	resp, _ = get(t, http.MethodGet, srv.URL+"/_health")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after removing file: status %d, want 200", resp.StatusCode)
	}
}

func TestHealthCustomPathAndStatus(t *testing.T) {
	srv := newTestServer(t, config{healthPath: "/ready", healthStatus: http.StatusTeapot})

	resp, _ := get(t, http.MethodGet, srv.URL+"/ready")
	if resp.StatusCode != http.StatusTeapot {
		t.Fatalf("status = %d, want 418", resp.StatusCode)
	}
}

func TestSlow(t *testing.T) {
	srv := newTestServer(t, config{})

	start := time.Now()
	resp, body := get(t, http.MethodGet, srv.URL+"/slow?ms=50")
	if elapsed := time.Since(start); elapsed < 50*time.Millisecond {
		t.Errorf("answered after %v, want at least 50ms", elapsed)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != `{"slept_ms":50}` {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}

	resp, _ = get(t, http.MethodGet, srv.URL+"/slow?ms=abc")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad ms: status %d, want 400", resp.StatusCode)
	}
}

func TestSSE(t *testing.T) {
	srv := newTestServer(t, config{})

	resp, body := get(t, http.MethodGet, srv.URL+"/sse?events=3&interval_ms=10")
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	if body != "data: 1\n\ndata: 2\n\ndata: 3\n\n" {
		t.Fatalf("body = %q", body)
	}
}

func TestSSEStopsOnShutdown(t *testing.T) {
	stop := make(chan struct{})
	srv := newTestServer(t, config{stop: stop})

	resp, err := http.Get(srv.URL + "/sse?interval_ms=5")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: 1\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(stop)
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("stream still open after stop")
	}
}

func TestHeadersAndBig(t *testing.T) {
	srv := newTestServer(t, config{})

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/headers", nil)
	req.Header.Set("X-Test", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Path    string            `json:"path"`
		Headers map[string]string `json:"headers"`
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != "/headers" || got.Headers["X-Test"] != "yes" || got.Headers["Host"] == "" {
		t.Errorf("headers = %+v", got)
	}

	resp, body := get(t, http.MethodGet, srv.URL+"/big?kb=100")
	if len(body) != 100*1024 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("big: %d bytes, Content-Type %q", len(body), resp.Header.Get("Content-Type"))
	}
}

func TestExit(t *testing.T) {
	exited := make(chan int, 1)
	srv := newTestServer(t, config{exit: func(code int) { exited <- code }})

	resp, _ := get(t, http.MethodGet, srv.URL+"/exit?code=7")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	select {
	case code := <-exited:
		if code != 7 {
			t.Errorf("exit code %d, want 7", code)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("exit was not called")
	}
}

func TestWebSocketEcho(t *testing.T) {
	srv := newTestServer(t, config{})

	// handshake
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"+
		"Sec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("Sec-WebSocket-Accept = %q", got)
	}
	if resp.Header.Get("X-Worker") != "3" {
		t.Errorf("X-Worker = %q", resp.Header.Get("X-Worker"))
	}

	// a text message split over two masked frames comes back whole
	writeFrame(t, conn, false, opText, []byte("hel"))
	writeFrame(t, conn, true, opContinuation, []byte("lo"))
	op, payload := readFrame(t, br)
	if op != opText || string(payload) != "echo:hello" {
		t.Fatalf("got op %d payload %q", op, payload)
	}

	// a ping gets a pong, a close gets a close
	writeFrame(t, conn, true, opPing, []byte("p"))
	if op, payload := readFrame(t, br); op != opPong || string(payload) != "p" {
		t.Fatalf("got op %d payload %q, want pong", op, payload)
	}
	writeFrame(t, conn, true, opClose, binary.BigEndian.AppendUint16(nil, closeNormal))
	if op, _ := readFrame(t, br); op != opClose {
		t.Fatalf("got op %d, want close", op)
	}
}

// writeFrame sends a small masked client frame.
func writeFrame(t *testing.T, w io.Writer, fin bool, op byte, payload []byte) {
	t.Helper()
	b0 := op
	if fin {
		b0 |= 0x80
	}
	mask := [4]byte{1, 2, 3, 4}
	frame := append([]byte{b0, 0x80 | byte(len(payload))}, mask[:]...)
	for i, c := range payload {
		frame = append(frame, c^mask[i%4])
	}
	if _, err := w.Write(frame); err != nil {
		t.Fatal(err)
	}
}

// readFrame reads a small unmasked server frame.
func readFrame(t *testing.T, r io.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, h[1]&0x7F)
	if _, err := io.ReadFull(r, payload); err != nil {
		t.Fatal(err)
	}
	return h[0] & 0x0F, payload
}

func TestLoadConfig(t *testing.T) {
	env := map[string]string{
		"PORT":                     "9100",
		"OXIAN_HV_WORKER":          "2",
		"TESTWORKER_START_DELAY":   "150ms",
		"TESTWORKER_HEALTH_STATUS": "500",
	}
	cfg, err := loadConfig([]string{"-port", "9200"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.port != 9200 || cfg.worker != "2" || cfg.startDelay != 150*time.Millisecond ||
		cfg.healthStatus != 500 || cfg.healthPath != "/_health" {
		t.Errorf("config = %+v", cfg)
	}

	// no port at all is an error
	if _, err := loadConfig(nil, func(string) string { return "" }); err == nil {
		t.Error("want an error without a port")
	}
}
