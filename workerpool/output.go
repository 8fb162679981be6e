package workerpool

import (
	"bytes"
	"sort"
	"sync"

	"go.uber.org/zap"
)

// maxLogLine bounds one logged line of worker output; longer lines are
// logged in pieces.
const maxLogLine = 16 << 10

// lineLogger is an io.Writer that logs worker output one line at a time.
type lineLogger struct {
	mu     sync.Mutex
	logger *zap.Logger
	stream string
	buf    []byte
}

func newLineLogger(logger *zap.Logger, stream string) *lineLogger {
	return &lineLogger{logger: logger, stream: stream}
}

// setLogger swaps the logger, once the process has a pid to log.
func (ll *lineLogger) setLogger(logger *zap.Logger) {
	ll.mu.Lock()
	ll.logger = logger
	ll.mu.Unlock()
}

// Write logs each complete line in p and keeps the rest for later.
func (ll *lineLogger) Write(p []byte) (int, error) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	ll.buf = append(ll.buf, p...)
	for {
		i := bytes.IndexByte(ll.buf, '\n')
		if i < 0 {
			if len(ll.buf) >= maxLogLine {
				ll.emit(ll.buf[:maxLogLine])
				ll.buf = append(ll.buf[:0], ll.buf[maxLogLine:]...)
				continue
			}
			break
		}
		for len(ll.buf[:i]) > maxLogLine {
			ll.emit(ll.buf[:maxLogLine])
			ll.buf = ll.buf[maxLogLine:]
			i -= maxLogLine
		}
		ll.emit(ll.buf[:i])
		ll.buf = ll.buf[i+1:]
	}
	if len(ll.buf) == 0 {
		ll.buf = nil
	}
	return len(p), nil
}

// flush logs what is left of an unfinished last line.
func (ll *lineLogger) flush() {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if len(ll.buf) > 0 {
		ll.emit(ll.buf)
		ll.buf = nil
	}
}

func (ll *lineLogger) emit(line []byte) {
	line = bytes.TrimRight(line, "\r")
	ll.logger.Info("worker output", zap.String("stream", ll.stream), zap.ByteString("line", line))
}

// sortedKeys returns the keys of m in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
