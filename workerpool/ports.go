package workerpool

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// ports hands out worker ports, process-wide: no port is held by two
// workers of any pool, old or new, at the same time.
var ports = &portAllocator{held: make(map[int]bool)}

type portAllocator struct {
	mu   sync.Mutex
	held map[int]bool
}

// allocate returns the lowest port from base upward that no worker holds
// and that nothing else listens on.
func (pa *portAllocator) allocate(base int) (int, error) {
	pa.mu.Lock()
	defer pa.mu.Unlock()
	for port := base; port <= 65535; port++ {
		if pa.held[port] || !portFree(port) {
			continue
		}
		pa.held[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("allocating a worker port: no free port from %d to 65535", base)
}

// release gives a port back.
func (pa *portAllocator) release(port int) {
	pa.mu.Lock()
	delete(pa.held, port)
	pa.mu.Unlock()
}

// portFree reports whether a listener can bind the port on 127.0.0.1.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}
