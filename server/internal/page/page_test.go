package page

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestSize(t *testing.T) {
	for _, tt := range []struct{ in, want int }{
		{0, DefaultSize}, {1, 1}, {100, 100}, {MaxSize, MaxSize}, {MaxSize + 1, MaxSize}, {1 << 30, MaxSize},
	} {
		if got, err := Size(tt.in); err != nil || got != tt.want {
			t.Errorf("Size(%d) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	_, err := Size(-1)
	var fe *FieldError
	if !errors.Is(err, ErrInvalidSize) || !errors.As(err, &fe) || fe.Field != "page_size" {
		t.Fatalf("Size(-1) = %v, want ErrInvalidSize on page_size", err)
	}
}

func TestToken(t *testing.T) {
	f := FilterOf("connections", "l1", "0", "")
	tok := Token{After: 12345, Incarnation: "abcdefghijklmnop", Filter: f}.Encode()
	if !regexp.MustCompile(`^[A-Za-z0-9_-]+$`).MatchString(tok) {
		t.Fatalf("token %q is not base64url without padding", tok)
	}
	if after, err := Decode(tok, "abcdefghijklmnop", f); err != nil || after != 12345 {
		t.Fatalf("Decode = %d, %v; want 12345", after, err)
	}
	if after, err := Decode("", "abcdefghijklmnop", f); err != nil || after != 0 {
		t.Fatalf("Decode of no token = %d, %v; want 0 (the first page)", after, err)
	}
	for name, tt := range map[string]struct {
		token, incarnation string
		filter             Filter
		says               string
	}{
		"another incarnation": {tok, "qrstuvwxyzabcdef", f, "restarted"},
		"other filters":       {tok, "abcdefghijklmnop", FilterOf("connections", "l1", "1", ""), "filters"},
		"another list":        {tok, "abcdefghijklmnop", FilterOf("listeners"), "filters"},
		"not base64url":       {"a+b/", "abcdefghijklmnop", f, "not a next_page_token"},
		"padded":              {tok + "=", "abcdefghijklmnop", f, "not a next_page_token"},
		"cut short":           {tok[:10], "abcdefghijklmnop", f, "not a next_page_token"},
		"another version":     {"Ag" + tok[2:], "abcdefghijklmnop", f, "not a next_page_token"},
		"too long":            {strings.Repeat("A", 1<<20), "abcdefghijklmnop", f, "not a next_page_token"},
	} {
		_, err := Decode(tt.token, tt.incarnation, tt.filter)
		var fe *FieldError
		if !errors.Is(err, ErrInvalidToken) || !errors.As(err, &fe) || fe.Field != "page_token" || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s: Decode = %v, want ErrInvalidToken on page_token saying %q", name, err, tt.says)
		}
		if len(err.Error()) > 200 {
			t.Errorf("%s: the error quotes the token: %d bytes", name, len(err.Error()))
		}
	}
}

func TestFilterOf(t *testing.T) {
	if FilterOf("ab", "c") == FilterOf("a", "bc") {
		t.Fatal(`FilterOf("ab", "c") == FilterOf("a", "bc")`)
	}
	// Each part counts, and so does its place.
	base := FilterOf("connections", "l-1", "1", "127.")
	for _, other := range []Filter{
		FilterOf("listeners", "l-1", "1", "127."),
		FilterOf("connections", "l-2", "1", "127."),
		FilterOf("connections", "l-1", "2", "127."),
		FilterOf("connections", "l-1", "1", "127.0"),
		FilterOf("connections", "1", "l-1", "127."),
		FilterOf("connections", "l-1", "1"),
	} {
		if other == base {
			t.Errorf("FilterOf of other parts = the digest of %v", []string{"connections", "l-1", "1", "127."})
		}
	}
}
