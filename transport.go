package oxianhv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// workerTransport is Caddy's HTTP transport with one change: a worker that
// takes longer than `timeouts.headers` to answer gets a 504 response
// rather than an error, so that the proxy passes it on instead of sending
// the same slow request to the next worker. Failed connections stay errors
// and are retried on another worker.
type workerTransport struct {
	*reverseproxy.HTTPTransport
	project        string
	headersTimeout time.Duration
	logger         *zap.Logger
}

// RoundTrip sends req to a worker.
func (wt *workerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := wt.HTTPTransport.RoundTrip(req)
	if err == nil || req.Context().Err() != nil {
		return resp, err
	}
	var dialErr reverseproxy.DialError
	var netErr net.Error
	if errors.As(err, &dialErr) || !errors.As(err, &netErr) || !netErr.Timeout() {
		return resp, err
	}
	wt.logger.Warn("worker sent no response headers in time",
		zap.String("project", wt.project),
		zap.String("upstream", req.URL.Host),
		zap.Duration("timeout", wt.headersTimeout),
		zap.String("path", req.URL.Path))
	body := fmt.Sprintf(`{"error":"the worker sent no response headers within %s","project":%q}`+"\n",
		wt.headersTimeout, wt.project)
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
	}, nil
}
