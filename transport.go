package oxianhv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// workerTransport is Caddy's HTTP transport with the response header
// deadlines of the module:
//
//   - A worker that sends no response headers within `timeouts.headers`, or
//     before `proxy.timeout` has passed since the request arrived, gets a
//     504 response rather than an error, so that the proxy passes it on
//     instead of sending the same slow request to the next worker.
//   - Failed connections stay errors and are retried on another worker.
//
// The transport's own response header timeout is the smaller of the two
// limits. An attempt that starts late (after a wait for a ready worker or
// after retries) has less time left before `proxy.timeout` than that, and
// only such an attempt gets a timer of its own.
type workerTransport struct {
	*reverseproxy.HTTPTransport
	project        string
	headersTimeout time.Duration
	proxyTimeout   time.Duration
	logger         *zap.Logger
}

// RoundTrip sends req to a worker.
func (wt *workerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// the time left before proxy.timeout, counted from the request's arrival
	limit := time.Duration(wt.ResponseHeaderTimeout)
	remaining := limit
	if start, ok := caddyhttp.GetVar(req.Context(), "start_time").(time.Time); ok {
		remaining = time.Until(start.Add(wt.proxyTimeout))
	}
	if remaining <= 0 {
		return wt.timedOut(req, wt.proxyTimeout, "proxy.timeout"), nil
	}

	// the common case: the transport's own limit ends first, or at most
	// lateSlack after proxy.timeout
	if remaining >= limit-lateSlack {
		resp, err := wt.HTTPTransport.RoundTrip(req)
		if err != nil && isHeaderTimeout(req, err) {
			if wt.headersTimeout > 0 && wt.headersTimeout <= wt.proxyTimeout {
				return wt.timedOut(req, wt.headersTimeout, "timeouts.headers"), nil
			}
			return wt.timedOut(req, wt.proxyTimeout, "proxy.timeout"), nil
		}
		return resp, err
	}

	// a late attempt: cancel it if no headers come before proxy.timeout
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(remaining, cancel)
	resp, err := wt.HTTPTransport.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() && req.Context().Err() == nil {
		cancel()
		if resp != nil {
			resp.Body.Close()
		}
		return wt.timedOut(req, wt.proxyTimeout, "proxy.timeout"), nil
	}
	if err != nil {
		cancel()
		if isHeaderTimeout(req, err) {
			return wt.timedOut(req, wt.proxyTimeout, "proxy.timeout"), nil
		}
		return nil, err
	}

	// the body still needs the context: cancel it when the body is closed;
	// the body of an upgraded connection is written to as well
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
		resp.Body = &cancelOnCloseRW{ReadWriteCloser: rwc, cancel: cancel}
	} else {
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	}
	return resp, nil
}

// lateSlack is how late an attempt may start and still rely on the
// transport's response header timeout alone: proxy.timeout may be
// overrun by this much, which spares a timer on nearly every request.
const lateSlack = 100 * time.Millisecond

// isHeaderTimeout reports whether err is a timeout waiting for a worker's
// response headers, rather than a failed connection or a canceled request.
func isHeaderTimeout(req *http.Request, err error) bool {
	if req.Context().Err() != nil {
		return false
	}
	var dialErr reverseproxy.DialError
	var netErr net.Error
	return !errors.As(err, &dialErr) && errors.As(err, &netErr) && netErr.Timeout()
}

// timedOut returns the 504 response for a worker that did not answer
// within limit, the value of the setting named.
func (wt *workerTransport) timedOut(req *http.Request, limit time.Duration, setting string) *http.Response {
	wt.logger.Warn("worker sent no response headers in time",
		zap.String("project", wt.project),
		zap.String("upstream", req.URL.Host),
		zap.String("setting", setting),
		zap.Duration("timeout", limit),
		zap.String("path", req.URL.Path))
	body := fmt.Sprintf(`{"error":"no response from a worker within %s (%s)","project":%q}`+"\n",
		limit, setting, wt.project)
	return &http.Response{
		Status:        "504 Gateway Timeout",
		StatusCode:    http.StatusGatewayTimeout,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// cancelOnClose cancels a context when the body it reads is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// cancelOnCloseRW is cancelOnClose for the body of an upgraded connection.
type cancelOnCloseRW struct {
	io.ReadWriteCloser
	cancel context.CancelFunc
}

func (c *cancelOnCloseRW) Close() error {
	err := c.ReadWriteCloser.Close()
	c.cancel()
	return err
}
