package conn

import (
	"bytes"
	"io"
	"net"
	"os"
	"syscall"
)

// rawReader returns a read that takes a buffer only once the socket has
// bytes, for a connection whose descriptor can be read directly (plain
// TCP); nil otherwise (TLS), whose bytes pass through crypto/tls.
func rawReader(nc net.Conn) func(max int) ([]byte, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(max int) ([]byte, error) { return readRaw(rc, max) }
}

// readRaw reads up to max bytes from rc into a slice of their own. The
// read system call is made inside the poller's callback, with a pooled
// buffer taken for the call and put back at once: when the socket is empty
// the poller waits with no buffer held, so an idle connection holds none,
// and a busy one makes the same system calls as net.Conn.Read (one read,
// and one more that finds the socket empty before each wait).
func readRaw(rc syscall.RawConn, max int) ([]byte, error) {
	var (
		chunk   []byte
		readErr error
	)
	err := rc.Read(func(fd uintptr) bool {
		bp := getReadBuffer(max)
		var n int
		var err error
		for {
			n, err = syscall.Read(int(fd), (*bp)[:max])
			if err != syscall.EINTR {
				break
			}
		}
		if n > 0 {
			chunk = bytes.Clone((*bp)[:n]) // no zeroing, unlike make
		}
		putReadBuffer(bp)
		switch {
		case err == syscall.EAGAIN:
			return false // nothing yet: wait for readability, holding no buffer
		case err != nil:
			readErr = os.NewSyscallError("read", err)
		case n == 0:
			readErr = io.EOF
		}
		return true
	})
	if err != nil {
		// A deadline, or the connection closed under the wait.
		return nil, err
	}
	return chunk, readErr
}
