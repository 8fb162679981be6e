// Package selection chooses which worker serves a request. It builds on
// Caddy's own load-balancing policies and records the worker each request
// is bound to, so that requests in flight are counted per worker until the
// response body has been sent.
package selection

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The strategies, as the module's config names them.
const (
	RoundRobin = "round_robin"
	LeastBusy  = "least_busy"
	Sticky     = "sticky"
)

// Policy returns the name and config of the Caddy selection policy that
// implements strategy: round_robin is Caddy's `round_robin`; least_busy is
// `least_conn`, which counts requests in flight; sticky is `header` on
// stickyHeader, which uses rendezvous hashing, falling back to
// `least_conn` for requests without the header.
func Policy(strategy, stickyHeader string) (string, json.RawMessage, error) {
	switch strategy {
	case RoundRobin:
		return "round_robin", json.RawMessage(`{}`), nil
	case LeastBusy:
		return "least_conn", json.RawMessage(`{}`), nil
	case Sticky:
		if stickyHeader == "" {
			return "", nil, fmt.Errorf("strategy sticky needs a header")
		}
		fallback := caddyconfig.JSONModuleObject(reverseproxy.LeastConnSelection{}, "policy", "least_conn", nil)
		sel := reverseproxy.HeaderHashSelection{Field: stickyHeader, FallbackRaw: fallback}
		raw, err := json.Marshal(sel)
		return "header", raw, err
	default:
		return "", nil, fmt.Errorf("unknown strategy %q", strategy)
	}
}

// Load returns the provisioned Caddy selection policy for strategy.
func Load(ctx caddy.Context, strategy, stickyHeader string) (reverseproxy.Selector, error) {
	name, raw, err := Policy(strategy, stickyHeader)
	if err != nil {
		return nil, err
	}
	mod, err := ctx.LoadModuleByID("http.reverse_proxy.selection_policies."+name, raw)
	if err != nil {
		return nil, fmt.Errorf("loading selection policy %s: %v", name, err)
	}
	return mod.(reverseproxy.Selector), nil
}

// Tracker is a worker as selection sees it: something requests are
// counted on.
type Tracker interface {
	// Begin counts a request in flight.
	Begin()
	// End counts a request in flight as finished.
	End()
	// ID names the worker, for placeholders and logs.
	ID() string
}

// Lease binds one request to the worker serving it. A retry moves the
// lease to the next worker; Release ends it.
type Lease struct {
	// OnBind, when set, is called once, when the lease is first bound to
	// a worker.
	OnBind func()

	mu  sync.Mutex
	cur Tracker
}

// Move binds the lease to t.
func (l *Lease) Move(t Tracker) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur == t {
		return
	}
	if l.cur != nil {
		l.cur.End()
	} else if l.OnBind != nil {
		l.OnBind()
		l.OnBind = nil
	}
	t.Begin()
	l.cur = t
}

// Current returns the worker the lease is bound to, or nil.
func (l *Lease) Current() Tracker {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// Release ends the lease.
func (l *Lease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil {
		l.cur.End()
		l.cur = nil
	}
}

// LeaseHolder is a response writer that carries the request's lease, which
// spares a context value per request.
type LeaseHolder interface {
	Lease() *Lease
}

type leaseKey struct{}

// WithLease returns ctx carrying l.
func WithLease(ctx context.Context, l *Lease) context.Context {
	return context.WithValue(ctx, leaseKey{}, l)
}

// LeaseFrom returns the lease in ctx, or nil.
func LeaseFrom(ctx context.Context) *Lease {
	l, _ := ctx.Value(leaseKey{}).(*Lease)
	return l
}

// Recorder is a selection policy that lets Inner choose and records the
// choice in the request's lease, which it finds on the response writer
// (a LeaseHolder) or else in the request context.
type Recorder struct {
	// Inner chooses the upstream.
	Inner reverseproxy.Selector

	// Lookup returns the worker behind a dial address, or nil.
	Lookup func(addr string) Tracker

	// Placeholder, when set, is set to the chosen worker's ID.
	Placeholder string
}

// Select implements reverseproxy.Selector.
func (rec *Recorder) Select(
	pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter,
) *reverseproxy.Upstream {
	up := rec.Inner.Select(pool, r, w)
	if up == nil {
		return nil
	}
	var lease *Lease
	if lh, ok := w.(LeaseHolder); ok {
		lease = lh.Lease()
	} else {
		lease = LeaseFrom(r.Context())
	}
	if lease == nil {
		return up
	}
	if t := rec.Lookup(up.Dial); t != nil {
		lease.Move(t)
		if rec.Placeholder != "" {
			if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
				repl.Set(rec.Placeholder, t.ID())
			}
		}
	}
	return up
}

// Interface guards
var _ reverseproxy.Selector = (*Recorder)(nil)
