package oxianhv

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// readyWait is how long one look for upstreams waits for a worker to become
// ready when the pool has none; the proxy's retry loop looks again until
// `proxy.timeout` runs out.
const readyWait = 100 * time.Millisecond

// canceledUpstream is handed to the proxy when the request is already
// canceled and no worker is ready: the transport refuses it at once with
// the context's error, which ends the proxy's retry loop instead of
// polling for a worker nobody waits for any more.
const canceledUpstream = "127.0.0.1:1"

// poolSource gives Caddy's reverse proxy the ready workers of a pool as its
// upstreams.
type poolSource struct {
	handle *poolHandle
}

// GetUpstreams returns the pool's ready workers. When none is ready it
// waits briefly for one; an empty list makes the proxy retry.
func (ps *poolSource) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	ctx := r.Context()
	pool := ps.handle.current(ctx)
	if pool == nil {
		return canceled(r), nil
	}
	addrs := pool.ReadyAddrs()
	if len(addrs) == 0 {
		if ctx.Err() != nil || !pool.WaitReady(ctx, readyWait) {
			return canceled(r), nil
		}
		addrs = pool.ReadyAddrs()
	}

	// the proxy writes state into each upstream, so every call needs its
	// own; two allocations serve them all
	backing := make([]reverseproxy.Upstream, len(addrs))
	ups := make([]*reverseproxy.Upstream, len(addrs))
	for i, addr := range addrs {
		backing[i].Dial = addr
		ups[i] = &backing[i]
	}
	return ups, nil
}

// canceled returns no upstreams, or, if the request is already canceled,
// the one upstream that ends the proxy's retry loop.
func canceled(r *http.Request) []*reverseproxy.Upstream {
	if r.Context().Err() != nil {
		return []*reverseproxy.Upstream{{Dial: canceledUpstream}}
	}
	return nil
}

// Interface guards
var _ reverseproxy.UpstreamSource = (*poolSource)(nil)
