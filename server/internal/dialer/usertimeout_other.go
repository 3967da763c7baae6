//go:build !linux

package dialer

import (
	"syscall"
	"time"
)

// userTimeout is nil off Linux: TCP_USER_TIMEOUT is Linux's.
func userTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
