package selection

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestPolicy(t *testing.T) {
	tests := []struct {
		strategy, header string
		name             string
		config           string
	}{
		{RoundRobin, "", "round_robin", `{}`},
		{RoundRobin, "X-Ignored", "round_robin", `{}`},
		{LeastBusy, "", "least_conn", `{}`},
		{Sticky, "X-Session", "header", `{"field":"X-Session","fallback":{"policy":"least_conn"}}`},
	}
	for _, tc := range tests {
		name, raw, err := Policy(tc.strategy, tc.header)
		if err != nil {
			t.Errorf("Policy(%q, %q): %v", tc.strategy, tc.header, err)
			continue
		}
		if name != tc.name {
			t.Errorf("Policy(%q, %q) name = %q, want %q", tc.strategy, tc.header, name, tc.name)
		}
		var got, want any
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Errorf("Policy(%q, %q) config %s: %v", tc.strategy, tc.header, raw, err)
			continue
		}
		if err := json.Unmarshal([]byte(tc.config), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Policy(%q, %q) config = %s, want %s", tc.strategy, tc.header, raw, tc.config)
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	for _, tc := range []struct{ strategy, header string }{
		{Sticky, ""},
		{"random", ""},
		{"", ""},
		{"ROUND_ROBIN", ""},
	} {
		if name, raw, err := Policy(tc.strategy, tc.header); err == nil {
			t.Errorf("Policy(%q, %q) = %q, %s; want an error", tc.strategy, tc.header, name, raw)
		}
	}
}

func testPool(n int) reverseproxy.UpstreamPool {
	var pool reverseproxy.UpstreamPool
	for i := range n {
		pool = append(pool, &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: "127.0.0.1:" + strconv.Itoa(10001+i)})
	}
	return pool
}

func TestLoad(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	pool := testPool(3)

	for _, tc := range []struct {
		strategy string
		want     any
	}{
		{RoundRobin, &reverseproxy.RoundRobinSelection{}},
		{LeastBusy, &reverseproxy.LeastConnSelection{}},
		{Sticky, &reverseproxy.HeaderHashSelection{}},
	} {
		sel, err := Load(ctx, tc.strategy, "X-Session")
		if err != nil {
			t.Fatalf("Load(%q): %v", tc.strategy, err)
		}
		if reflect.TypeOf(sel) != reflect.TypeOf(tc.want) {
			t.Errorf("Load(%q) = %T, want %T", tc.strategy, sel, tc.want)
		}
		if up := sel.Select(pool, httptest.NewRequest(http.MethodGet, "/", nil), nil); up == nil {
			t.Errorf("Load(%q): selected nothing", tc.strategy)
		}
	}

	// round robin goes through every upstream
	rr, err := Load(ctx, RoundRobin, "")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]bool)
	for range 3 {
		seen[rr.Select(pool, httptest.NewRequest(http.MethodGet, "/", nil), nil).Dial] = true
	}
	if len(seen) != 3 {
		t.Errorf("round robin chose %v in three requests", seen)
	}

	// sticky chooses by the header
	sticky, err := Load(ctx, Sticky, "X-Session")
	if err != nil {
		t.Fatal(err)
	}
	choose := func(session string) string {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if session != "" {
			r.Header.Set("X-Session", session)
		}
		up := sticky.Select(pool, r, nil)
		if up == nil {
			t.Fatalf("sticky chose nothing for %q", session)
		}
		return up.Dial
	}
	for _, s := range []string{"a", "b", "c", "d"} {
		first := choose(s)
		for range 5 {
			if got := choose(s); got != first {
				t.Errorf("session %q went to %s, then %s", s, first, got)
			}
		}
	}
	// without the header it falls back to the least busy worker
	// (new(Host) counts no requests, so any upstream is fine)
	if choose("") == "" {
		t.Errorf("no fallback choice")
	}

	if _, err := Load(ctx, "nope", ""); err == nil {
		t.Errorf("Load of an unknown strategy did not fail")
	}
	if _, err := Load(ctx, Sticky, ""); err == nil {
		t.Errorf("Load of sticky without a header did not fail")
	}
}

// fakeTracker counts Begin and End.
type fakeTracker struct {
	id     string
	mu     sync.Mutex
	begins int
	ends   int
}

func (f *fakeTracker) Begin() { f.mu.Lock(); f.begins++; f.mu.Unlock() }
func (f *fakeTracker) End()   { f.mu.Lock(); f.ends++; f.mu.Unlock() }
func (f *fakeTracker) ID() string {
	return f.id
}

func (f *fakeTracker) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.begins, f.ends
}

func checkCounts(t *testing.T, f *fakeTracker, begins, ends int) {
	t.Helper()
	if b, e := f.counts(); b != begins || e != ends {
		t.Errorf("tracker %s: %d begins, %d ends; want %d, %d", f.id, b, e, begins, ends)
	}
}

func TestLease(t *testing.T) {
	a, b := &fakeTracker{id: "a"}, &fakeTracker{id: "b"}
	var l Lease
	if l.Current() != nil {
		t.Fatalf("new lease bound to %v", l.Current())
	}
	l.Release() // nothing to release
	checkCounts(t, a, 0, 0)

	l.Move(a)
	checkCounts(t, a, 1, 0)
	if l.Current() != a {
		t.Errorf("Current() = %v, want a", l.Current())
	}

	// moving to the same tracker is a no-op
	l.Move(a)
	checkCounts(t, a, 1, 0)

	l.Move(b)
	checkCounts(t, a, 1, 1)
	checkCounts(t, b, 1, 0)
	if l.Current() != b {
		t.Errorf("Current() = %v, want b", l.Current())
	}

	l.Move(a)
	checkCounts(t, a, 2, 1)
	checkCounts(t, b, 1, 1)

	l.Release()
	checkCounts(t, a, 2, 2)
	checkCounts(t, b, 1, 1)
	if l.Current() != nil {
		t.Errorf("Current() = %v after Release", l.Current())
	}

	// releasing twice is safe
	l.Release()
	checkCounts(t, a, 2, 2)
	checkCounts(t, b, 1, 1)

	// and a released lease can be bound again
	l.Move(b)
	l.Release()
	checkCounts(t, b, 2, 2)
}

func TestLeaseConcurrent(t *testing.T) {
	a, b := &fakeTracker{id: "a"}, &fakeTracker{id: "b"}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l Lease
			for i := range 200 {
				if i%2 == 0 {
					l.Move(a)
				} else {
					l.Move(b)
				}
			}
			l.Release()
			l.Release()
		}()
	}
	wg.Wait()
	ab, ae := a.counts()
	bb, be := b.counts()
	if ab != ae || bb != be || ab == 0 || bb == 0 {
		t.Errorf("unbalanced: a %d/%d, b %d/%d", ab, ae, bb, be)
	}
}

func TestLeaseContext(t *testing.T) {
	if LeaseFrom(context.Background()) != nil {
		t.Errorf("lease in an empty context")
	}
	l := new(Lease)
	if got := LeaseFrom(WithLease(context.Background(), l)); got != l {
		t.Errorf("LeaseFrom = %p, want %p", got, l)
	}
}

// fixedSelector always chooses up.
type fixedSelector struct{ up *reverseproxy.Upstream }

func (s fixedSelector) Select(reverseproxy.UpstreamPool, *http.Request, http.ResponseWriter) *reverseproxy.Upstream {
	return s.up
}

func TestRecorder(t *testing.T) {
	up := &reverseproxy.Upstream{Dial: "127.0.0.1:1"}
	tracker := &fakeTracker{id: "7"}
	var lookups []string
	rec := &Recorder{
		Inner: fixedSelector{up},
		Lookup: func(addr string) Tracker {
			lookups = append(lookups, addr)
			if addr == "127.0.0.1:1" {
				return tracker
			}
			return nil
		},
		Placeholder: "http.oxian_hv.worker",
	}

	t.Run("lease and placeholder", func(t *testing.T) {
		lookups = nil
		lease := new(Lease)
		repl := caddy.NewReplacer()
		ctx := context.WithValue(WithLease(context.Background(), lease), caddy.ReplacerCtxKey, repl)
		r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)

		if got := rec.Select(nil, r, httptest.NewRecorder()); got != up {
			t.Fatalf("Select = %v, want the inner choice", got)
		}
		if lease.Current() != tracker {
			t.Errorf("lease bound to %v, want the tracker", lease.Current())
		}
		checkCounts(t, tracker, 1, 0)
		if v, ok := repl.Get("http.oxian_hv.worker"); !ok || v != "7" {
			t.Errorf("placeholder = %v, %v; want 7", v, ok)
		}
		if len(lookups) != 1 || lookups[0] != "127.0.0.1:1" {
			t.Errorf("lookups %q", lookups)
		}

		// a retry choosing the same worker counts it once
		rec.Select(nil, r, nil)
		checkCounts(t, tracker, 1, 0)
		lease.Release()
		checkCounts(t, tracker, 1, 1)
	})

	t.Run("no replacer", func(t *testing.T) {
		lease := new(Lease)
		r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(WithLease(context.Background(), lease))
		if got := rec.Select(nil, r, nil); got != up {
			t.Fatalf("Select = %v", got)
		}
		if lease.Current() != tracker {
			t.Errorf("lease not bound")
		}
		lease.Release()
	})

	t.Run("no placeholder", func(t *testing.T) {
		noPH := *rec
		noPH.Placeholder = ""
		lease := new(Lease)
		repl := caddy.NewReplacer()
		ctx := context.WithValue(WithLease(context.Background(), lease), caddy.ReplacerCtxKey, repl)
		r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)
		noPH.Select(nil, r, nil)
		if _, ok := repl.Get("http.oxian_hv.worker"); ok {
			t.Errorf("placeholder set without a name")
		}
		if lease.Current() != tracker {
			t.Errorf("lease not bound")
		}
		lease.Release()
	})

	t.Run("no lease", func(t *testing.T) {
		lookups = nil
		begins, ends := tracker.counts()
		repl := caddy.NewReplacer()
		r := httptest.NewRequest(http.MethodGet, "/", nil).
			WithContext(context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl))
		if got := rec.Select(nil, r, nil); got != up {
			t.Fatalf("Select = %v, want the inner choice", got)
		}
		checkCounts(t, tracker, begins, ends)
		if _, ok := repl.Get("http.oxian_hv.worker"); ok {
			t.Errorf("placeholder set without a lease")
		}
	})

	t.Run("unknown worker", func(t *testing.T) {
		other := *rec
		other.Inner = fixedSelector{&reverseproxy.Upstream{Dial: "127.0.0.1:2"}}
		lease := new(Lease)
		repl := caddy.NewReplacer()
		ctx := context.WithValue(WithLease(context.Background(), lease), caddy.ReplacerCtxKey, repl)
		r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)
		if got := other.Select(nil, r, nil); got == nil || got.Dial != "127.0.0.1:2" {
			t.Fatalf("Select = %v", got)
		}
		if lease.Current() != nil {
			t.Errorf("lease bound to %v for an unknown address", lease.Current())
		}
		if _, ok := repl.Get("http.oxian_hv.worker"); ok {
			t.Errorf("placeholder set for an unknown address")
		}
	})

	t.Run("inner chooses nothing", func(t *testing.T) {
		none := *rec
		none.Inner = fixedSelector{nil}
		none.Lookup = func(string) Tracker {
			t.Errorf("Lookup called without a choice")
			return nil
		}
		lease := new(Lease)
		r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(WithLease(context.Background(), lease))
		if got := none.Select(nil, r, nil); got != nil {
			t.Errorf("Select = %v, want nil", got)
		}
		if lease.Current() != nil {
			t.Errorf("lease bound without a choice")
		}
	})
}

func TestRecorderMovesLeaseOnRetry(t *testing.T) {
	a, b := &fakeTracker{id: "0"}, &fakeTracker{id: "1"}
	trackers := map[string]Tracker{"127.0.0.1:10001": a, "127.0.0.1:10002": b}
	next := &reverseproxy.Upstream{Dial: "127.0.0.1:10001"}
	rec := &Recorder{
		Inner:       selectorFunc(func() *reverseproxy.Upstream { return next }),
		Lookup:      func(addr string) Tracker { return trackers[addr] },
		Placeholder: "worker",
	}
	lease := new(Lease)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(WithLease(context.Background(), lease), caddy.ReplacerCtxKey, repl)
	r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)

	rec.Select(nil, r, nil)
	checkCounts(t, a, 1, 0)
	next = &reverseproxy.Upstream{Dial: "127.0.0.1:10002"}
	rec.Select(nil, r, nil)
	checkCounts(t, a, 1, 1)
	checkCounts(t, b, 1, 0)
	if v, _ := repl.Get("worker"); v != "1" {
		t.Errorf("placeholder = %v after retry, want 1", v)
	}
	lease.Release()
	checkCounts(t, b, 1, 1)
}

// selectorFunc adapts a function to reverseproxy.Selector.
type selectorFunc func() *reverseproxy.Upstream

func (f selectorFunc) Select(reverseproxy.UpstreamPool, *http.Request, http.ResponseWriter) *reverseproxy.Upstream {
	return f()
}

// holderWriter is a response writer that carries a lease.
type holderWriter struct {
	http.ResponseWriter
	lease *Lease
}

func (h holderWriter) Lease() *Lease { return h.lease }

func TestRecorderPrefersLeaseOnResponseWriter(t *testing.T) {
	tracker := &fakeTracker{id: "3"}
	rec := &Recorder{
		Inner:       fixedSelector{&reverseproxy.Upstream{Dial: "127.0.0.1:1"}},
		Lookup:      func(string) Tracker { return tracker },
		Placeholder: "worker",
	}
	ctxLease, writerLease := new(Lease), new(Lease)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(WithLease(context.Background(), ctxLease), caddy.ReplacerCtxKey, repl)
	r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)
	w := holderWriter{ResponseWriter: httptest.NewRecorder(), lease: writerLease}

	if up := rec.Select(nil, r, w); up == nil {
		t.Fatal("Select chose nothing")
	}
	if writerLease.Current() != tracker {
		t.Errorf("the writer's lease is not bound")
	}
	if ctxLease.Current() != nil {
		t.Errorf("the context's lease is bound though the writer carries one")
	}
	checkCounts(t, tracker, 1, 0)
	if v, _ := repl.Get("worker"); v != "3" {
		t.Errorf("placeholder = %v, want 3", v)
	}
	writerLease.Release()
	checkCounts(t, tracker, 1, 1)
}
