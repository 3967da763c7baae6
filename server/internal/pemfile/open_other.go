//go:build !unix

package pemfile

import "os"

// openFlags: without O_NONBLOCK, on systems that have no FIFOs to block on.
const openFlags = os.O_RDONLY
