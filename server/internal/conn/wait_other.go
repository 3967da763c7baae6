//go:build !linux

package conn

import "net"

// waitReadable returns at once where peeking is not implemented: the read
// then waits with its buffer, which costs memory per idle connection only.
func waitReadable(net.Conn) error { return nil }
