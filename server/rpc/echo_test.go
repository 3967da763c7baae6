package rpc

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuoteAndClip(t *testing.T) {
	long := strings.Repeat("x", 3<<20)
	// 127 ASCII bytes and a 3-byte rune across the cut at MaxEcho.
	across := strings.Repeat("a", MaxEcho-1) + "€" + "tail"
	tests := []struct {
		name      string
		in        string
		quote     string
		clip      string
		clipBytes int // of the value kept, before "…"; -1: not cut
	}{
		{"short", "l1", `"l1"`, "l1", -1},
		{"exactly MaxEcho", strings.Repeat("y", MaxEcho), `"` + strings.Repeat("y", MaxEcho) + `"`, strings.Repeat("y", MaxEcho), -1},
		{"3 MiB", long, `"` + strings.Repeat("x", MaxEcho) + `…" (3145728 bytes)`, strings.Repeat("x", MaxEcho) + "…", MaxEcho},
		{"cut before a rune", across, `"` + strings.Repeat("a", MaxEcho-1) + `…" (` + "134 bytes)", strings.Repeat("a", MaxEcho-1) + "…", MaxEcho - 1},
		{"invalid UTF-8", "\xff\xfe", `"\xff\xfe"`, "\xff\xfe", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.quote {
				t.Errorf("Quote = %.200q, want %.200q", got, tt.quote)
			}
			got := Clip(tt.in)
			if got != tt.clip {
				t.Errorf("Clip = %.200q, want %.200q", got, tt.clip)
			}
			if tt.clipBytes >= 0 && (len(got) != tt.clipBytes+len("…") || !utf8.ValidString(got)) {
				t.Errorf("Clip kept %d bytes (valid UTF-8: %v), want %d and the ellipsis", len(got)-len("…"), utf8.ValidString(got), tt.clipBytes)
			}
		})
	}
}
