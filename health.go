package oxianhv

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sync/atomic"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

// maxRequestIDLen bounds a request id taken from a client.
const maxRequestIDLen = 128

// healthReport is the hypervisor's answer on its health path.
type healthReport struct {
	// Status is `ok` while at least one worker is ready, `idle` while the
	// pools are stopped for idleness (a request wakes them), `starting`
	// before the pools exist, and `unavailable` otherwise.
	Status   string              `json:"status"`
	Projects []workerpool.Status `json:"projects"`
}

// serveHealth answers with the state of the handler's pool: 200 while at
// least one worker is ready, 503 otherwise.
func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) error {
	report := healthReport{Status: "unavailable", Projects: []workerpool.Status{}}
	status := http.StatusServiceUnavailable
	h.dyn.mu.Lock()
	projects := append([]*project(nil), h.projects...)
	for _, p := range h.dyn.projects {
		projects = append(projects, p)
	}
	h.dyn.mu.Unlock()
	for _, p := range projects {
		pool := p.handle.pool.Load()
		if pool == nil {
			report.Status = "starting"
			report.Projects = append(report.Projects, workerpool.Status{Project: p.name, Workers: []workerpool.WorkerStatus{}})
			continue
		}
		ps := pool.Status()
		report.Projects = append(report.Projects, ps)
		switch {
		case ps.Ready > 0:
			report.Status = "ok"
			status = http.StatusOK
		case len(ps.Workers) == 0 && pool.Live():
			// stopped for idleness: the next request wakes it
			if report.Status != "ok" {
				report.Status = "idle"
			}
			status = http.StatusOK
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		return nil
	}
	writeJSON(w, status, report)
	return nil
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// requestID returns the request's id, keeping the client's X-Request-Id
// when it is sane (at most maxRequestIDLen printable ASCII characters)
// and generating one otherwise. The request carries it on to the worker.
//
// It returns the header value too, which the response can share.
func requestID(r *http.Request) (string, []string) {
	vals := r.Header[requestIDHeader]
	if len(vals) == 1 && saneRequestID(vals[0]) {
		return vals[0], vals
	}
	id := newRequestID()
	vals = []string{id}
	r.Header[requestIDHeader] = vals
	return id, vals
}

// saneRequestID reports whether a client's request id can be passed on.
func saneRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// request ids are a random prefix drawn at start and a counter: unique
// across processes, and cheap
var (
	requestIDPrefix  = newRequestIDPrefix()
	requestIDCounter atomic.Uint64
)

// newRequestIDPrefix returns 8 random bytes in hex.
func newRequestIDPrefix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newRequestID returns 32 hex digits: the prefix and the next count.
func newRequestID() string {
	var b [32]byte
	copy(b[:16], requestIDPrefix)
	n := requestIDCounter.Add(1)
	const digits = "0123456789abcdef"
	for i := 31; i >= 16; i-- {
		b[i] = digits[n&0xf]
		n >>= 4
	}
	return string(b[:])
}
