//go:build unix

package pemfile

import (
	"os"
	"syscall"
)

// openFlags open for reading without blocking: a FIFO's open returns at
// once instead of waiting for a writer, and the fstat that follows refuses
// it. O_NOCTTY keeps a terminal from becoming the gateway's.
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_NOCTTY
