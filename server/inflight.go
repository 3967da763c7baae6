package server

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// inflight tracks the gRPC calls running now, REST calls included (they
// reach gRPC over the internal connection), so that a shutdown can say
// what it is waiting for.
type inflight struct {
	mu      sync.Mutex // guards next and running
	next    uint64
	running map[uint64]call
}

type call struct {
	method string
	start  time.Time
}

// maxListedCalls bounds the calls one shutdown log line names: enough to
// see which call holds it, short enough for one line under load.
const maxListedCalls = 8

func newInflight() *inflight { return &inflight{running: make(map[uint64]call)} }

// begin records a call to method begun at start; the returned func ends it.
func (f *inflight) begin(method string, start time.Time) (end func()) {
	f.mu.Lock()
	f.next++
	id := f.next
	f.running[id] = call{method: method, start: start}
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		delete(f.running, id)
		f.mu.Unlock()
	}
}

// describe returns how many calls are running and the oldest of them, as
// "GatewayService/Send for 3.2s", oldest first.
func (f *inflight) describe() (int, []string) {
	f.mu.Lock()
	calls := make([]call, 0, len(f.running))
	for _, c := range f.running {
		calls = append(calls, c)
	}
	f.mu.Unlock()
	slices.SortFunc(calls, func(a, b call) int { return a.start.Compare(b.start) })
	out := make([]string, 0, min(len(calls), maxListedCalls))
	for _, c := range calls[:min(len(calls), maxListedCalls)] {
		out = append(out, fmt.Sprintf("%s for %s", shortMethod(c.method), time.Since(c.start).Round(100*time.Millisecond)))
	}
	return len(calls), out
}

// shortMethod drops the package from a full method name:
// "/tcpgate.v1.GatewayService/Send" is "GatewayService/Send".
func shortMethod(full string) string {
	svc, method, ok := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if !ok {
		return full
	}
	return svc[strings.LastIndexByte(svc, '.')+1:] + "/" + method
}
