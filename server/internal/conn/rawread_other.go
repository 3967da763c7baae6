//go:build !linux

package conn

import "net"

// rawReader returns nil where reading the descriptor directly is not
// implemented: every connection then reads through net.Conn.Read, with
// the small buffer readSizer gives a read that may wait.
func rawReader(net.Conn) func(max int) ([]byte, error) { return nil }
