package oxianhv

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// newOnRequest loads the on_request handlers as one chain, or returns nil
// if there are none.
func newOnRequest(ctx caddy.Context, raws []json.RawMessage) (caddyhttp.MiddlewareHandler, error) {
	if len(raws) == 0 {
		return nil, nil
	}
	route := caddyhttp.Route{HandlersRaw: raws}
	sub := caddyhttp.Subroute{Routes: caddyhttp.RouteList{route}}
	raw := caddyconfig.JSON(sub, nil)
	mod, err := ctx.LoadModuleByID("http.handlers.subroute", raw)
	if err != nil {
		return nil, fmt.Errorf("on_request: %v", err)
	}
	return mod.(caddyhttp.MiddlewareHandler), nil
}

// runOnRequest runs the on_request handlers and reports whether the
// request goes on to a worker. A handler that answers the request itself
// (a denied forward_auth, a respond) ends it there; one that fails ends it
// with 500, and the worker never sees it.
func (h *Handler) runOnRequest(w http.ResponseWriter, r *http.Request, p *project) (bool, error) {
	reached := false
	end := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		reached = true
		return nil
	})
	err := h.onRequest.ServeHTTP(w, r, end)
	switch {
	case err != nil:
		h.logger.Error("on_request handler failed",
			zap.String("project", p.name),
			zap.String("method", r.Method),
			zap.String("uri", r.RequestURI),
			zap.Error(err))
		body := map[string]string{"error": "a request handler failed before the request reached a worker", "project": p.name}
		writeJSON(w, http.StatusInternalServerError, body)
		return false, nil
	case !reached:
		return false, nil
	}
	return true, nil
}
