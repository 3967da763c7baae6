package servertest

import (
	"bytes"
	"sync"
)

// LogSink is an io.Writer for a gateway's logs that the test reads while
// the gateway still writes: slog.New(slog.NewTextHandler(&sink, nil)).
// The zero value is ready to use.
type LogSink struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

// Write appends p.
func (l *LogSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
