package oxianhv

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oxian-hv/oxian-hv/workerpool"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// maxScaleWorkers bounds the worker count the admin API accepts.
const maxScaleWorkers = 1024

// maxAdminBody bounds the body of an admin API request.
const maxAdminBody = 4 << 10

// adminAPI is the `admin.api.oxian` module: it adds routes to Caddy's admin
// endpoint to look at and steer the worker pools of the running config.
// Like every admin API module it is not configured; it works on the pools
// the running config uses.
//
// EXPERIMENTAL: the routes and their answers may change.
//
//   - `GET /oxian/pools` answers with a JSON array of the status of each
//     pool, sorted by project: the project, the number of ready workers,
//     the workers with their pid, port and state, and `workers_wanted`,
//     the number of workers the pool keeps running.
//   - `GET /oxian/pools/{project}` answers with the status of one pool, or
//     404 if no pool runs that project.
//   - `POST /oxian/pools/{project}/restart` replaces the pool's workers one
//     at a time: a new worker starts, and once it is ready it takes the old
//     one's place, which drains and stops. It answers 202 with
//     `{"project":...,"status":"restarting"}` at once.
//   - `POST /oxian/pools/{project}/scale` with the body `{"workers": N}`,
//     N from 0 to 1024, starts or stops workers until N run, and answers
//     with `{"project":...,"workers":N}`. The count holds until the next
//     config load, which applies the configured count again.
//
// Other methods get 405, bad requests 400.
type adminAPI struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oxian",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision sets up the module's logger.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	return nil
}

// Routes returns the routes of the module.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/oxian/pools", Handler: caddy.AdminHandlerFunc(a.handlePools)},
		{Pattern: "/oxian/pools/", Handler: caddy.AdminHandlerFunc(a.handlePools)},
	}
}

// adminPoolStatus is a pool's status as the admin API reports it.
type adminPoolStatus struct {
	workerpool.Status
	// WorkersWanted is the number of workers the pool keeps running.
	WorkersWanted int `json:"workers_wanted"`
}

// handlePools dispatches the requests below /oxian/pools.
func (a *adminAPI) handlePools(w http.ResponseWriter, r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/oxian/pools")
	if !ok {
		return apiNotFound(fmt.Errorf("no such route: %s", r.URL.Path))
	}
	rest = strings.Trim(rest, "/")
	if rest == "" {
		return a.handleList(w, r)
	}
	escaped, action, _ := strings.Cut(rest, "/")
	project, err := url.PathUnescape(escaped)
	if err != nil || project == "" {
		return caddy.APIError{
			HTTPStatus: http.StatusBadRequest,
			Err:        fmt.Errorf("bad project name in path %q", r.URL.EscapedPath()),
		}
	}
	switch action {
	case "":
		return a.handleGet(w, r, project)
	case "restart":
		return a.handleRestart(w, r, project)
	case "scale":
		return a.handleScale(w, r, project)
	}
	return apiNotFound(fmt.Errorf("no such route: %s (want /oxian/pools/{project}, .../restart or .../scale)", r.URL.Path))
}

// handleList answers with the status of every pool, sorted by project.
func (a *adminAPI) handleList(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	var all []*poolEntry
	pools.Range(func(_, v any) bool {
		if pe, ok := v.(*poolEntry); ok {
			all = append(all, pe)
		}
		return true
	})
	statuses := make([]adminPoolStatus, 0, len(all))
	for _, pe := range all {
		statuses = append(statuses, poolStatus(pe))
	}
	slices.SortFunc(statuses, func(x, y adminPoolStatus) int { return strings.Compare(x.Project, y.Project) })
	return writeAdminJSON(w, http.StatusOK, statuses)
}

// handleGet answers with the status of the project's pool.
func (a *adminAPI) handleGet(w http.ResponseWriter, r *http.Request, project string) error {
	if err := allowMethod(w, r, http.MethodGet); err != nil {
		return err
	}
	pe, err := lookupPool(project)
	if err != nil {
		return err
	}
	return writeAdminJSON(w, http.StatusOK, poolStatus(pe))
}

// handleRestart starts replacing the workers of the project's pool.
func (a *adminAPI) handleRestart(w http.ResponseWriter, r *http.Request, project string) error {
	if err := allowMethod(w, r, http.MethodPost); err != nil {
		return err
	}
	pe, err := lookupPool(project)
	if err != nil {
		return err
	}
	a.log().Info("restarting workers on admin request", zap.String("project", project))
	pe.Restart("restart requested through the admin API")
	return writeAdminJSON(w, http.StatusAccepted, map[string]string{"project": project, "status": "restarting"})
}

// scaleRequest is the body of a scale request.
type scaleRequest struct {
	Workers *int `json:"workers"`
}

// handleScale sets the number of workers of the project's pool.
func (a *adminAPI) handleScale(w http.ResponseWriter, r *http.Request, project string) error {
	if err := allowMethod(w, r, http.MethodPost); err != nil {
		return err
	}
	pe, err := lookupPool(project)
	if err != nil {
		return err
	}
	n, err := decodeScale(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	a.log().Info("scaling workers on admin request",
		zap.String("project", project),
		zap.Int("from", pe.Workers()),
		zap.Int("to", n))
	pe.Scale(n)
	return writeAdminJSON(w, http.StatusOK, map[string]any{"project": project, "workers": n})
}

// decodeScale reads the worker count of a scale request body.
func decodeScale(body io.Reader) (int, error) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	var req scaleRequest
	if err := dec.Decode(&req); err != nil {
		return 0, fmt.Errorf(`scale body must be JSON like {"workers": 2}: %v`, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return 0, errors.New(`scale body must be a single JSON object like {"workers": 2}`)
	}
	if req.Workers == nil {
		return 0, errors.New(`scale body lacks "workers"`)
	}
	if n := *req.Workers; n < 0 || n > maxScaleWorkers {
		return 0, fmt.Errorf("workers must be between 0 and %d, got %d", maxScaleWorkers, n)
	}
	return *req.Workers, nil
}

// log returns the module's logger.
func (a *adminAPI) log() *zap.Logger {
	if a.logger == nil {
		return caddy.Log().Named("admin.api.oxian")
	}
	return a.logger
}

// lookupPool returns the running pool of project, or a 404 error.
func lookupPool(project string) (*poolEntry, error) {
	var found *poolEntry
	pools.Range(func(k, v any) bool {
		if key, _ := k.(string); key == project {
			found, _ = v.(*poolEntry)
			return false
		}
		return true
	})
	if found == nil {
		return nil, apiNotFound(fmt.Errorf("no worker pool runs project %q", project))
	}
	return found, nil
}

// poolStatus returns the status of a pool for the admin API.
func poolStatus(pe *poolEntry) adminPoolStatus {
	return adminPoolStatus{Status: pe.Status(), WorkersWanted: pe.Workers()}
}

// allowMethod returns a 405 error, and sets the Allow header, unless the
// request uses method.
func allowMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	w.Header().Set("Allow", method)
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, method),
	}
}

// apiNotFound wraps err as a 404 admin API error.
func apiNotFound(err error) error {
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
}

// writeAdminJSON answers with status and v as JSON.
func writeAdminJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
	return nil
}

// Interface guards
var (
	_ caddy.Module      = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
