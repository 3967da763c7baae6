package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
)

// ProxyHeaderTimeout bounds the read of a connection's PROXY protocol
// header: a balancer writes it at once, so a connection that has not sent
// it whole by then is not from the balancer, and must not hold a
// goroutine for long before it is even admitted. A variable so that a
// test may shorten it; set it before the listener starts.
var ProxyHeaderTimeout = 5 * time.Second

// serveProxied reads the PROXY header of nc, a connection just accepted
// by a listener with a ProxyProtocol, on a goroutine of its own (a slow
// client holds up no other), then admits it as the client the header
// names: the per-IP limit counts that client, and its events and template
// variables carry its address. A connection whose header is missing,
// malformed, of a version not taken or late is admitted as the socket's
// peer and closed at once with ReasonProxyHeaderInvalid, what was wrong
// in its close event, as a failed TLS handshake is; nothing of it is read
// as data. With TLS, the handshake follows the header.
func (r *Registry) serveProxied(l *listener, nc net.Conn) {
	r.accepted.Add(1)
	l.total.Add(1)
	l.headers.Add(1)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer l.headers.Done()
		pc, err := readHeader(l.headerCtx, nc, l.proxy)
		switch {
		case errors.Is(err, errHeaderCut):
			r.admit(l, nc, event.CloseReason(l.cutReason.Load()), "")
		case err != nil:
			r.logBadHeader(l, nc, err)
			r.admit(l, nc, event.ReasonProxyHeaderInvalid, err.Error())
		case l.tls != nil:
			r.admit(l, tls.Server(pc, l.tls), event.ReasonUnspecified, "")
		default:
			r.admit(l, pc, event.ReasonUnspecified, "")
		}
	}()
}

// errHeaderCut means the listener stopped while the header was read.
var errHeaderCut = errors.New("listener stopped before the PROXY protocol header came")

// readHeader reads nc's PROXY header of a version mode takes, within
// ProxyHeaderTimeout or until ctx ends (errHeaderCut), and returns nc as
// the client the header names: nc itself when the header names none (v1
// UNKNOWN, v2 LOCAL), a *proxiedConn otherwise.
func readHeader(ctx context.Context, nc net.Conn, mode proxyproto.Mode) (net.Conn, error) {
	_ = nc.SetReadDeadline(time.Now().Add(ProxyHeaderTimeout))
	// A past deadline wakes the read at once.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Unix(1, 0)) })
	h, err := proxyproto.Read(nc, mode)
	if !stop() {
		return nil, errHeaderCut
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("no complete PROXY protocol header (%s) within %s of connecting: the listener takes only connections that begin with one, as a balancer sends it", mode, ProxyHeaderTimeout)
	}
	if err != nil {
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Time{})
	if h.Local {
		return nc, nil
	}
	return &proxiedConn{Conn: nc, remote: net.TCPAddrFromAddrPort(h.Source)}, nil
}

// logBadHeader logs a connection refused for its PROXY header, at most
// once every refusedLogInterval: a balancer set up without the header
// fails every connection, and one line a second says so.
func (r *Registry) logBadHeader(l *listener, nc net.Conn, err error) {
	now := time.Now().UnixNano()
	last := r.badHeaderLog.Load()
	if now-last < int64(refusedLogInterval) || !r.badHeaderLog.CompareAndSwap(last, now) {
		return
	}
	r.log.Warn("connection refused: bad PROXY protocol header", "listener_id", l.id, "remote_address", nc.RemoteAddr().String(), "error", err)
}

// proxiedConn is an accepted socket whose peer is the client its PROXY
// header named. The header was read to its last byte and no further, so
// reads go to the socket as they are; the socket's descriptor (for the
// connection's direct reads) and half-close stay reachable.
type proxiedConn struct {
	net.Conn
	remote net.Addr
}

// RemoteAddr returns the client's address, as the header named it.
func (c *proxiedConn) RemoteAddr() net.Addr { return c.remote }

// SyscallConn returns the socket's raw connection, for reads that take a
// buffer only once bytes are there (package conn).
func (c *proxiedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// CloseWrite shuts down the socket's sending side, as a forwarding
// listener passes on its target's end of stream.
func (c *proxiedConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return errors.ErrUnsupported
	}
	return cw.CloseWrite()
}
