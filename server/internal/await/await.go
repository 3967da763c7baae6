// Package await names the replies a send can wait for. It is one type for
// every sender, so that a one-shot send (the dialer) and a send on a kept
// connection (conn), accepted or outbound, mean the same by a mode, and
// rpc translates AwaitMode once.
package await

// Mode says what reply a send waits for.
type Mode int

const (
	// None returns after the write.
	None Mode = iota
	// FirstRead returns what one read gets. On a kept connection, whose
	// reads are cut by its framing, it is the next frame, as Frame is (a
	// raw connection's frame is one read).
	FirstRead
	// Frame returns one frame: cut by the send's framing on a one-shot
	// send, by the connection's on a kept one.
	Frame
	// UntilClose returns everything read until the peer closes; a one-shot
	// send half-closes after its write to ask for it.
	UntilClose
)
