package rpc

import (
	"strconv"
	"unicode/utf8"
)

// MaxEcho bounds how much of a request value an error message or a log
// line quotes: enough for any valid id (64 bytes), a host name and port,
// or the start of a path, and little enough that a 3 MiB id or a 1 MB
// path cannot turn one refusal into megabytes of log.
const MaxEcho = 128

// Quote quotes a request value for an error message, as strconv.Quote
// does, cut after MaxEcho bytes (at a character boundary) with the value's
// full length said after it:
//
//	"xxxxxxxx…" (3145728 bytes)
//
// Invalid UTF-8 is escaped, never written raw.
func Quote(s string) string {
	c := Clip(s)
	if len(c) == len(s) {
		return strconv.Quote(s)
	}
	return strconv.Quote(c) + " (" + strconv.Itoa(len(s)) + " bytes)"
}

// Clip is Quote's cut without the quotes, for a structured log attribute,
// which the log handler quotes and escapes itself: s itself when it is at
// most MaxEcho bytes, else its first MaxEcho bytes or fewer (at a character
// boundary) and "…".
func Clip(s string) string {
	if len(s) <= MaxEcho {
		return s
	}
	cut := MaxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
