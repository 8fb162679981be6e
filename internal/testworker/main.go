// Command testworker is a small HTTP worker used by the oxian_hv
// integration tests. It listens on 127.0.0.1 and the port given in $PORT
// (or -port), reports the worker index and project it was started with, and
// offers routes and environment knobs that simulate slow starts, failing
// health checks, crashes, long requests, server-sent events, WebSockets and
// large responses.
//
// Environment:
//
//	PORT                       port to listen on (overridden by -port)
//	OXIAN_HV_WORKER            worker index, reported by the routes
//	OXIAN_HV_PROJECT           project name, reported by /whoami
//	TESTWORKER_START_DELAY     Go duration to sleep before listening
//	TESTWORKER_HEALTH_STATUS   status code of the health route (default 200)
//	TESTWORKER_UNHEALTHY_FILE  while this file exists, health answers 503
//	TESTWORKER_EXIT_AFTER      Go duration after listening to exit with code 1
//	TESTWORKER_HEALTH_PATH     path of the health route (default /_health)
//
// Routes:
//
//	<health path>                  GET/HEAD: status above, {"status":"ok"}
//	/whoami                        {"worker","project","pid","port"}
//	/slow?ms=N                     waits N ms, then {"slept_ms":N}
//	/sse?events=N&interval_ms=M    N events "data: <i>" M ms apart (0 = forever)
//	/headers                       {"path":...,"headers":{name: first value}}
//	/ws                            WebSocket echo, text messages prefixed "echo:"
//	/exit?code=N                   answers, then exits with code N
//	/big?kb=N                      N KiB of application/octet-stream
//	anything else                  {"path":...,"worker":...}
//
// Every response carries the headers X-Worker and X-Worker-Pid.
package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// config is everything the worker reads from its flags and environment.
type config struct {
	port          int
	worker        string
	project       string
	pid           int
	startDelay    time.Duration
	exitAfter     time.Duration
	healthPath    string
	healthStatus  int
	unhealthyFile string

	// log receives one line per request; nil means no request log.
	log io.Writer
	// stop is closed when the server starts shutting down; it ends open
	// event streams. nil means never.
	stop <-chan struct{}
	// exit ends the process; it is replaced in tests.
	exit func(code int)
}

func main() {
	cfg, err := loadConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		os.Exit(1)
	}
}

// loadConfig parses the command line flags and the environment.
func loadConfig(args []string, getenv func(string) string) (config, error) {
	cfg := config{
		worker:        getenv("OXIAN_HV_WORKER"),
		project:       getenv("OXIAN_HV_PROJECT"),
		pid:           os.Getpid(),
		healthPath:    "/_health",
		healthStatus:  http.StatusOK,
		unhealthyFile: getenv("TESTWORKER_UNHEALTHY_FILE"),
	}

	fs := flag.NewFlagSet("testworker", flag.ContinueOnError)
	portFlag := fs.Int("port", 0, "port to listen on (overrides $PORT)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}

	// the flag wins over $PORT
	switch {
	case *portFlag != 0:
		cfg.port = *portFlag
	case getenv("PORT") != "":
		p, err := strconv.Atoi(getenv("PORT"))
		if err != nil {
			return cfg, fmt.Errorf("invalid PORT %q: not a number", getenv("PORT"))
		}
		cfg.port = p
	default:
		return cfg, errors.New("no port: set the PORT environment variable or pass -port N")
	}
	if cfg.port < 1 || cfg.port > 65535 {
		return cfg, fmt.Errorf("invalid port %d: must be between 1 and 65535", cfg.port)
	}

	if p := getenv("TESTWORKER_HEALTH_PATH"); p != "" {
		if !strings.HasPrefix(p, "/") {
			return cfg, fmt.Errorf("invalid TESTWORKER_HEALTH_PATH %q: must start with /", p)
		}
		cfg.healthPath = p
	}
	if s := getenv("TESTWORKER_HEALTH_STATUS"); s != "" {
		code, err := strconv.Atoi(s)
		if err != nil || code < 100 || code > 999 {
			return cfg, fmt.Errorf("invalid TESTWORKER_HEALTH_STATUS %q: want a status code", s)
		}
		cfg.healthStatus = code
	}
	var err error
	if cfg.startDelay, err = envDuration(getenv, "TESTWORKER_START_DELAY"); err != nil {
		return cfg, err
	}
	if cfg.exitAfter, err = envDuration(getenv, "TESTWORKER_EXIT_AFTER"); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// envDuration parses an optional Go duration from the environment.
func envDuration(getenv func(string) string, name string) (time.Duration, error) {
	s := getenv(name)
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid %s %q: want a non-negative Go duration such as 500ms", name, s)
	}
	return d, nil
}

// run serves until SIGTERM or SIGINT, then shuts down gracefully.
func run(cfg config) error {
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	// simulate a slow start, but still obey signals meanwhile
	if cfg.startDelay > 0 {
		select {
		case <-time.After(cfg.startDelay):
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "shutting down")
			return nil
		}
	}

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}

	stop := make(chan struct{})
	cfg.stop = stop
	cfg.log = os.Stdout
	cfg.exit = os.Exit
	srv := &http.Server{
		Handler:           newMux(cfg),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// end open event streams as soon as shutdown begins
	srv.RegisterOnShutdown(func() { close(stop) })

	fmt.Printf("testworker %s listening on %s\n", cfg.worker, addr)

	// simulate a crash
	if cfg.exitAfter > 0 {
		time.AfterFunc(cfg.exitAfter, func() {
			fmt.Fprintf(os.Stderr, "exiting with code 1 after %s (TESTWORKER_EXIT_AFTER)\n", cfg.exitAfter)
			os.Exit(1)
		})
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	fmt.Fprintln(os.Stderr, "shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		// the limit passed: drop whatever is left, still a clean exit
		fmt.Fprintln(os.Stderr, "shutdown:", err)
		srv.Close()
	}
	return nil
}

// newMux builds the worker's handler: all routes wrapped in the middleware
// that sets the X-Worker headers and logs each request.
func newMux(cfg config) http.Handler {
	if cfg.healthPath == "" {
		cfg.healthPath = "/_health"
	}
	if cfg.healthStatus == 0 {
		cfg.healthStatus = http.StatusOK
	}
	if cfg.exit == nil {
		cfg.exit = os.Exit
	}
	h := &handler{cfg: cfg}

	mux := http.NewServeMux()
	mux.HandleFunc("/whoami", h.whoami)
	mux.HandleFunc("/slow", h.slow)
	mux.HandleFunc("/sse", h.sse)
	mux.HandleFunc("/headers", h.headers)
	mux.HandleFunc("/ws", h.websocket)
	mux.HandleFunc("/exit", h.exit)
	mux.HandleFunc("/big", h.big)
	mux.HandleFunc("/", h.fallback)

	pid := strconv.Itoa(cfg.pid)
	var logMu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cfg.log != nil {
			logMu.Lock()
			fmt.Fprintf(cfg.log, "%s %s\n", r.Method, r.URL.Path)
			logMu.Unlock()
		}
		w.Header().Set("X-Worker", cfg.worker)
		w.Header().Set("X-Worker-Pid", pid)

		// the health path is configurable, so it is matched exactly here
		// rather than registered as a mux pattern
		if r.URL.Path == cfg.healthPath {
			h.health(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// handler holds the route handlers.
type handler struct {
	cfg config
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
		return
	}

	// the unhealthy file overrides the configured status
	status := h.cfg.healthStatus
	if h.cfg.unhealthyFile != "" {
		if _, err := os.Stat(h.cfg.unhealthyFile); err == nil {
			status = http.StatusServiceUnavailable
		}
	}
	text := "ok"
	if status >= 400 {
		text = "unhealthy"
	}
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, map[string]string{"status": text})
}

func (h *handler) whoami(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Worker  string `json:"worker"`
		Project string `json:"project"`
		PID     int    `json:"pid"`
		Port    int    `json:"port"`
	}{h.cfg.worker, h.cfg.project, h.cfg.pid, h.cfg.port})
}

func (h *handler) slow(w http.ResponseWriter, r *http.Request) {
	ms, ok := queryInt(w, r, "ms", 0)
	if !ok {
		return
	}

	// wait, unless the client goes away first
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"slept_ms": ms})
}

func (h *handler) sse(w http.ResponseWriter, r *http.Request) {
	events, ok := queryInt(w, r, "events", 0)
	if !ok {
		return
	}
	interval, ok := queryInt(w, r, "interval_ms", 100)
	if !ok {
		return
	}

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}

	// send the events, the first one right away
	tick := time.NewTicker(time.Duration(max(interval, 1)) * time.Millisecond)
	defer tick.Stop()
	for i := 1; events == 0 || i <= events; i++ {
		if i > 1 {
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			case <-h.cfg.stop:
				return
			}
		}
		if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

func (h *handler) headers(w http.ResponseWriter, r *http.Request) {
	hdrs := make(map[string]string, len(r.Header)+1)
	for name, values := range r.Header {
		if len(values) > 0 {
			hdrs[name] = values[0]
		}
	}
	// Go moves Host out of the header map; put it back for the caller
	if _, ok := hdrs["Host"]; !ok && r.Host != "" {
		hdrs["Host"] = r.Host
	}
	writeJSON(w, http.StatusOK, struct {
		Path    string            `json:"path"`
		Headers map[string]string `json:"headers"`
	}{r.URL.Path, hdrs})
}

func (h *handler) exit(w http.ResponseWriter, r *http.Request) {
	code, ok := queryInt(w, r, "code", 1)
	if !ok {
		return
	}
	if code > 255 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "code must be between 0 and 255"})
		return
	}

	// answer first, then exit once the response is on its way
	w.Header().Set("Connection", "close")
	writeJSON(w, http.StatusOK, map[string]int{"exiting": code})
	_ = http.NewResponseController(w).Flush()
	time.AfterFunc(10*time.Millisecond, func() {
		fmt.Fprintf(os.Stderr, "exiting with code %d (/exit)\n", code)
		h.cfg.exit(code)
	})
}

func (h *handler) big(w http.ResponseWriter, r *http.Request) {
	kb, ok := queryInt(w, r, "kb", 1024)
	if !ok {
		return
	}

	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(int64(kb)*1024, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}

	// stream a repeating pattern one chunk at a time
	chunk := make([]byte, 32*1024)
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	for left := int64(kb) * 1024; left > 0; {
		n := min(left, int64(len(chunk)))
		if _, err := w.Write(chunk[:n]); err != nil {
			return
		}
		left -= n
	}
}

func (h *handler) fallback(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"path": r.URL.Path, "worker": h.cfg.worker})
}

// queryInt reads a non-negative integer query parameter; on a bad value it
// answers 400 and reports false.
func queryInt(w http.ResponseWriter, r *http.Request, name string, def int) (int, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{
			"error": fmt.Sprintf("%s must be a non-negative integer", name),
		})
		return 0, false
	}
	return n, true
}

// writeJSON answers with v encoded as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// websocket frame opcodes (RFC 6455, section 5.2)
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// websocket close codes (RFC 6455, section 7.4.1)
const (
	closeNormal      = 1000
	closeProtocol    = 1002
	closeInvalidData = 1007
	closeTooBig      = 1009
)

// maxMessage bounds the size of one WebSocket message.
const maxMessage = 1 << 20

// wsGUID is the fixed key suffix of the opening handshake.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// websocket upgrades the request and echoes every message: text messages
// come back prefixed with "echo:", binary messages unchanged.
func (h *handler) websocket(w http.ResponseWriter, r *http.Request) {
	// check the opening handshake
	key := r.Header.Get("Sec-WebSocket-Key")
	switch {
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", "GET")
		http.Error(w, "websocket handshake must be a GET", http.StatusMethodNotAllowed)
		return
	case !headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket"):
		http.Error(w, "not a websocket handshake", http.StatusBadRequest)
		return
	case r.Header.Get("Sec-WebSocket-Version") != "13":
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "unsupported websocket version", http.StatusUpgradeRequired)
		return
	}
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		http.Error(w, "invalid Sec-WebSocket-Key", http.StatusBadRequest)
		return
	}

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "websocket not supported: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})

	// answer the handshake, keeping the headers the middleware set
	sum := sha1.Sum([]byte(key + wsGUID))
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
		base64.StdEncoding.EncodeToString(sum[:]))
	for name, values := range w.Header() {
		for _, v := range values {
			fmt.Fprintf(brw, "%s: %s\r\n", name, v)
		}
	}
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return
	}

	ws := &wsConn{br: brw.Reader, bw: brw.Writer}
	ws.echo()
}

// wsConn is the server side of a WebSocket connection.
type wsConn struct {
	br *bufio.Reader
	bw *bufio.Writer
}

// echo reads messages and echoes them until the connection closes.
func (c *wsConn) echo() {
	var (
		msg    []byte
		msgOp  byte
		inMsg  bool
		header [14]byte
	)
	for {
		// frame header: FIN, opcode, mask bit, payload length
		if _, err := io.ReadFull(c.br, header[:2]); err != nil {
			return
		}
		fin := header[0]&0x80 != 0
		rsv := header[0] & 0x70
		op := header[0] & 0x0F
		masked := header[1]&0x80 != 0
		length := uint64(header[1] & 0x7F)
		if rsv != 0 || !masked {
			c.close(closeProtocol, "bad frame header")
			return
		}
		switch length {
		case 126:
			if _, err := io.ReadFull(c.br, header[:2]); err != nil {
				return
			}
			length = uint64(binary.BigEndian.Uint16(header[:2]))
		case 127:
			if _, err := io.ReadFull(c.br, header[:8]); err != nil {
				return
			}
			length = binary.BigEndian.Uint64(header[:8])
		}
		var mask [4]byte
		if _, err := io.ReadFull(c.br, mask[:]); err != nil {
			return
		}

		// control frames are short and never fragmented
		control := op&0x8 != 0
		if control && (!fin || length > 125) {
			c.close(closeProtocol, "bad control frame")
			return
		}
		if length > maxMessage || (!control && uint64(len(msg))+length > maxMessage) {
			c.close(closeTooBig, "message too big")
			return
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(c.br, payload); err != nil {
			return
		}
		for i := range payload {
			payload[i] ^= mask[i%4]
		}

		switch op {
		case opPing:
			if c.write(opPong, payload) != nil {
				return
			}
			continue
		case opPong:
			continue
		case opClose:
			// answer the close handshake and hang up
			c.close(closeNormal, "")
			return
		case opText, opBinary:
			if inMsg {
				c.close(closeProtocol, "expected a continuation frame")
				return
			}
			msg, msgOp, inMsg = payload, op, true
		case opContinuation:
			if !inMsg {
				c.close(closeProtocol, "unexpected continuation frame")
				return
			}
			msg = append(msg, payload...)
		default:
			c.close(closeProtocol, "unknown opcode")
			return
		}
		if !fin {
			continue
		}

		// a whole message arrived: echo it
		inMsg = false
		reply := msg
		if msgOp == opText {
			if !utf8.Valid(msg) {
				c.close(closeInvalidData, "invalid utf-8")
				return
			}
			reply = append([]byte("echo:"), msg...)
		}
		msg = nil
		if c.write(msgOp, reply) != nil {
			return
		}
	}
}

// write sends one unmasked, unfragmented frame.
func (c *wsConn) write(op byte, payload []byte) error {
	header := []byte{0x80 | op}
	switch n := len(payload); {
	case n <= 125:
		header = append(header, byte(n))
	case n <= 0xFFFF:
		header = append(header, 126)
		header = binary.BigEndian.AppendUint16(header, uint16(n))
	default:
		header = append(header, 127)
		header = binary.BigEndian.AppendUint64(header, uint64(n))
	}
	if _, err := c.bw.Write(header); err != nil {
		return err
	}
	if _, err := c.bw.Write(payload); err != nil {
		return err
	}
	return c.bw.Flush()
}

// close sends a close frame with the given code and reason.
func (c *wsConn) close(code int, reason string) {
	payload := binary.BigEndian.AppendUint16(nil, uint16(code))
	_ = c.write(opClose, append(payload, reason...))
}

// headerHasToken reports whether a comma-separated header contains token,
// ignoring case.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}
