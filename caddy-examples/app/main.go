// Command app is the example worker from the README: a tiny "hello" JSON
// API. oxian_hv starts one copy per worker and tells each where to listen
// through $PORT (a -port flag overrides it); $OXIAN_HV_WORKER and
// $OXIAN_HV_PROJECT name the worker and its project.
//
// Routes:
//
//	GET  /_health     {"status":"ok"}
//	GET  /            {"message":"hello","worker":"<index>","pid":<pid>}
//	GET  /api/hello   same as /
//	GET  /api/wait    waits 20 ms (or ?ms=N), then a short JSON body
//	GET  /api/events  server-sent events, the time once a second
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

func run() error {
	portFlag := flag.Int("port", 0, "port to listen on (overrides $PORT)")
	flag.Parse()

	// the flag wins over $PORT
	port := *portFlag
	if port == 0 {
		env := os.Getenv("PORT")
		if env == "" {
			return errors.New("no port: set the PORT environment variable or pass -port N")
		}
		p, err := strconv.Atoi(env)
		if err != nil {
			return fmt.Errorf("invalid PORT %q: not a number", env)
		}
		port = p
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("invalid port %d: must be between 1 and 65535", port)
	}
	worker := os.Getenv("OXIAN_HV_WORKER")
	project := os.Getenv("OXIAN_HV_PROJECT")

	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}

	stop := make(chan struct{})
	srv := &http.Server{
		Handler:           newMux(worker, stop),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// end open event streams as soon as shutdown begins
	srv.RegisterOnShutdown(func() { close(stop) })

	fmt.Printf("app worker %s (project %s) listening on %s\n", worker, project, addr)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	// finish in-flight requests, for at most 5 seconds
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// newMux builds the app's routes. stop is closed when the server shuts
// down, ending open event streams.
func newMux(worker string, stop <-chan struct{}) *http.ServeMux {
	// the hello body never changes, so encode it once
	hello := mustJSON(struct {
		Message string `json:"message"`
		Worker  string `json:"worker"`
		PID     int    `json:"pid"`
	}{"hello", worker, os.Getpid()})
	health := mustJSON(map[string]string{"status": "ok"})

	mux := http.NewServeMux()
	// GET patterns also match HEAD; the server drops the body for HEAD
	mux.HandleFunc("GET /_health", func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, health)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, hello)
	})
	mux.HandleFunc("GET /api/hello", func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, hello)
	})
	mux.HandleFunc("GET /api/wait", func(w http.ResponseWriter, r *http.Request) {
		ms := 20
		if s := r.URL.Query().Get("ms"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
				return
			}
			ms = n
		}

		// wait, unless the client goes away first
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		writeBody(w, mustJSON(struct {
			Message  string `json:"message"`
			Worker   string `json:"worker"`
			WaitedMS int    `json:"waited_ms"`
		}{"waited", worker, ms}))
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		rc := http.NewResponseController(w)

		// one event right away, then one a second until the client leaves
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", time.Now().Format(time.RFC3339)); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			case <-stop:
				return
			}
		}
	})
	return mux
}

// mustJSON encodes v, which is known to encode.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// writeBody answers 200 with a JSON body.
func writeBody(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}
