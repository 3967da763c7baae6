package rpc

import (
	"net"
	"sync"
)

// ConnTracker records the gRPC server's connections by remote address, so
// that a Subscribe stream whose client does not read can be ended: grpc-go
// has no way for a handler to reset one stream that HTTP/2 flow control
// holds (its final status would wait behind the data the client does not
// read, and GracefulStop with it), so the stream's connection is closed.
type ConnTracker struct {
	mu    sync.Mutex // guards conns
	conns map[string]net.Conn
}

// NewConnTracker returns an empty tracker.
func NewConnTracker() *ConnTracker {
	return &ConnTracker{conns: make(map[string]net.Conn)}
}

// Listener returns ln recording every connection it accepts until it is
// closed. Wrap the TCP listener, under any TLS, so that a close ends the
// connection whatever state TLS is in.
func (t *ConnTracker) Listener(ln net.Listener) net.Listener {
	return &trackedListener{Listener: ln, t: t}
}

// close closes the connection whose remote address is addr; false when
// there is none.
func (t *ConnTracker) close(addr net.Addr) bool {
	if t == nil || addr == nil {
		return false
	}
	t.mu.Lock()
	c := t.conns[addr.String()]
	t.mu.Unlock()
	if c == nil {
		return false
	}
	_ = c.Close()
	return true
}

type trackedListener struct {
	net.Listener
	t *ConnTracker
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: l.t, key: c.RemoteAddr().String()}
	l.t.mu.Lock()
	l.t.conns[tc.key] = tc
	l.t.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	t    *ConnTracker
	key  string
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		if c.t.conns[c.key] == net.Conn(c) {
			delete(c.t.conns, c.key)
		}
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}
