package oxianhv

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/oxian-hv/oxian-hv/workerpool"
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

	// new workers of a scaled pool get a growing share while they warm up
	if warm := pool.WarmUp(); warm > 0 && len(addrs) > 1 {
		workers, all := pool.ReadyWorkers()
		now := time.Now()
		share := func(i int) float64 { return workerpool.WarmShare(workers[i].ReadySince(), now, warm) }
		addrs = warmAddrs(all, share, rand.Float64)
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

// warmAddrs leaves out, by chance, workers that are still warming up: the
// worker at addrs[i] stays with the probability share(i). It never leaves
// out every worker.
func warmAddrs(addrs []string, share func(i int) float64, chance func() float64) []string {
	var kept []string
	for i, addr := range addrs {
		if s := share(i); s < 1 && chance() >= s {
			continue
		}
		kept = append(kept, addr)
	}
	if len(kept) == 0 {
		return addrs
	}
	return kept
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
