// Package page is how the gateway's lists are cut into pages (AIP-158): the
// size of a page, and the token that continues a list where a page ended.
//
// A token names the creation serial of the last item a page returned, so
// that the next page starts after it whatever was added or removed
// meanwhile: removed items are skipped, never repeated, and items added
// later come on a later page. A serial only means something in the
// incarnation that made it and for the filters it was made for, so the
// token carries both, and a token of another incarnation (the gateway
// restarted) or for other filters is refused rather than silently
// continuing somewhere else.
package page

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
)

// DefaultSize is the size of a page that asks for none: enough for a
// screen, and about 20 KiB of connections.
const DefaultSize = 100

// MaxSize bounds a page: 1000 connections with IPv6 addresses and the
// longest ids are about 400 KiB, well within the 4 MiB a gRPC client reads
// by default.
const MaxSize = 1000

// Errors of paging; callers test them with errors.Is.
var (
	// ErrInvalidSize means a negative page_size.
	ErrInvalidSize = errors.New("invalid page size")
	// ErrInvalidToken means a page_token this gateway did not make for the
	// request's filters in its incarnation: the list must start again.
	ErrInvalidToken = errors.New("invalid page token")
)

// FieldError is what Size and Decode return: it wraps their sentinel and
// names the field, so that the RPC layer can point a form at it without
// reading the message.
type FieldError struct {
	// Field is the field as the API spells it: "page_token".
	Field string
	// Reason says what is wrong with it and what to do.
	Reason string
	// Err is the sentinel.
	Err error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func (e *FieldError) Unwrap() error { return e.Err }

// Size returns the size of a page asked for with n: DefaultSize for 0, at
// most MaxSize.
func Size(n int) (int, error) {
	switch {
	case n < 0:
		return 0, &FieldError{Field: "page_size", Reason: fmt.Sprintf("must not be negative, got %d (0 means %d, at most %d)", n, DefaultSize, MaxSize), Err: ErrInvalidSize}
	case n == 0:
		return DefaultSize, nil
	case n > MaxSize:
		return MaxSize, nil
	}
	return n, nil
}

// Filter is the digest of what a list was asked for: the list's name and
// every filter, so that a token is refused for another list or other
// filters. The page size is not part of it: a client may change it from
// page to page.
type Filter uint64

// FilterOf returns the digest of parts, the list's name first. Each part
// is length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
func FilterOf(parts ...string) Filter {
	h := fnv.New64a()
	var n [binary.MaxVarintLen64]byte
	for _, p := range parts {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
		h.Write([]byte(p))
	}
	return Filter(h.Sum64())
}

// tokenVersion starts every token, so that a later layout can tell its
// own tokens from these.
const tokenVersion = 1

// tokenFixed is the length of a token before its incarnation: the
// version, the serial and the filter.
const tokenFixed = 1 + 8 + 8

// maxTokenChars bounds what Decode looks at: a token of this package is
// far shorter, whatever a client sends.
const maxTokenChars = 256

// Token is where the next page of a list starts.
type Token struct {
	// After is the serial of the last item returned: the next page starts
	// with the first item created after it.
	After uint64
	// Incarnation is the incarnation the serials belong to.
	Incarnation string
	// Filter is the digest of the list and filters the page was made for.
	Filter Filter
}

// Encode returns t as an opaque token: base64url without padding, safe in
// a query string unescaped.
func (t Token) Encode() string {
	b := make([]byte, tokenFixed, tokenFixed+len(t.Incarnation))
	b[0] = tokenVersion
	binary.BigEndian.PutUint64(b[1:], t.After)
	binary.BigEndian.PutUint64(b[9:], uint64(t.Filter))
	b = append(b, t.Incarnation...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the serial to continue after from token, which must have
// been made by Encode in incarnation for filter; an empty token starts at
// the beginning (0). Any other token is a *FieldError wrapping
// ErrInvalidToken.
func Decode(token, incarnation string, filter Filter) (uint64, error) {
	if token == "" {
		return 0, nil
	}
	invalid := func(reason string) error {
		return &FieldError{Field: "page_token", Reason: reason + "; list again without page_token", Err: ErrInvalidToken}
	}
	if len(token) > maxTokenChars {
		return 0, invalid(fmt.Sprintf("%d characters: not a next_page_token of this gateway", len(token)))
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < tokenFixed || b[0] != tokenVersion {
		return 0, invalid("not a next_page_token of this gateway")
	}
	if string(b[tokenFixed:]) != incarnation {
		return 0, invalid("made before the gateway restarted (another incarnation)")
	}
	if Filter(binary.BigEndian.Uint64(b[9:])) != filter {
		return 0, invalid("made for another list or other filters; pass the filters of the first page")
	}
	return binary.BigEndian.Uint64(b[1:]), nil
}
