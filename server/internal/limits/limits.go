// Package limits is the error of a daemon limit reached, so that the RPC
// layer can tell a caller which flag sets the limit and its value without
// reading the message.
package limits

import "fmt"

// Error is a limit reached while doing something. It wraps the sentinel of
// the package that owns the limit (listener.ErrLimit,
// hub.ErrTooManySubscribers), so errors.Is keeps working.
type Error struct {
	// Doing says what was being done: "starting listener".
	Doing string
	// Name is the limit's setting as the docs spell it: "max_listeners".
	Name string
	// Flag is the daemon flag that sets it: "--max-listeners".
	Flag string
	// Limit is the value that was reached.
	Limit int
	// Err is the owning package's sentinel.
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (%d, %s) reached: %v", e.Doing, e.Name, e.Limit, e.Flag, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
