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
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EINTR
	})
}
