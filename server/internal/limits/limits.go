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

// FieldError is a request's value over a limit of the daemon: it names
// the field, so that the RPC layer can point a form at it, and the flag
// that sets the limit with its value, so that a person knows what to
// change. It wraps the sentinel of the package that owns the limit
// (listener.ErrInvalidSpec).
type FieldError struct {
	// Field is the field as the API spells it: "max_connections".
	Field string
	// Flag is the daemon flag that sets the limit:
	// "--listener-max-connections".
	Flag string
	// Limit is the most the field may be; Got is what it was.
	Limit, Got int
	// Err is the owning package's sentinel.
	Err error
}

// Reason says what the field must be and what it was.
func (e *FieldError) Reason() string {
	return fmt.Sprintf("must be at most %d (%s), got %d", e.Limit, e.Flag, e.Got)
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason() }

func (e *FieldError) Unwrap() error { return e.Err }
