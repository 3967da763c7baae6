// Package ids makes the names the gateway gives to what it creates: ids of
// listeners and connections, and the incarnation that names a sequence
// space. They are random, so an id from before a restart (or from another
// node) never names something of now, and they stay within the id pattern
// of the API (^[A-Za-z0-9._~-]{1,64}$) and readable in a terminal.
package ids

import (
	"crypto/rand"
	"encoding/base32"
)

// encoding is lowercase base32 without padding: letters and digits only,
// none of them easily confused in a terminal, and no case to get wrong.
var encoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomChars returns n characters of encoding from crypto/rand: 5 bits each.
func randomChars(n int) string {
	b := make([]byte, (n*5+7)/8)
	rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return encoding.EncodeToString(b)[:n]
}

// IDChars is how many random characters follow an id's kind: 50 bits, so
// that among a million ids of one kind the chance of any two alike is below
// one in two thousand, and a clash is caught by the caller anyway.
const IDChars = 10

// Kinds of id, the letter before the '-'.
const (
	Listener   = 'l'
	Connection = 'c'
	// Handler names a Handle stream.
	Handler = 'h'
)

// New returns an id of a kind: the kind's letter, '-', and IDChars random
// characters, such as "c-k3v7q2m5xa". Callers that keep ids in a map check
// the new one is free: a clash is unlikely, not impossible.
func New(kind byte) string {
	return string(kind) + "-" + randomChars(IDChars)
}

// IncarnationChars is the length of an incarnation: 80 bits, so that two
// starts never share one.
const IncarnationChars = 16

// Incarnation returns a new random incarnation: IncarnationChars characters
// without '-', so that "INCARNATION-SEQUENCE" splits at its only '-'.
func Incarnation() string {
	return randomChars(IncarnationChars)
}
