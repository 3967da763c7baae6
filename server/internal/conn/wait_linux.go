package conn

import (
	"net"
	"syscall"
)

// waitReadable blocks until nc has bytes or EOF to read, an error, or its
// read deadline passes, without holding a read buffer. It peeks one byte
// before waiting: the poller only reports new readiness, so data that
// arrived before the call must be seen by trying.
func waitReadable(nc net.Conn) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var b [1]byte
	var sockErr error
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EAGAIN, syscall.EINTR:
			return false
		case nil:
			return true
		}
		// A socket error such as ECONNRESET is reported once: the peek
		// took it, so it is handed on instead of the read that would
		// otherwise see a clean EOF.
		sockErr = err
		return true
	})
	if err != nil {
		return err
	}
	return sockErr
}
