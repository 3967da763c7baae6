package main

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// FuzzParseFraming: --framing never panics, and whatever it accepts prints
// back (framingString) to a spec that parses to the same framing.
func FuzzParseFraming(f *testing.F) {
	for _, s := range []string{"raw", "line", "delim:0d0a", "delim:", "len:4", "len:2le", "len:le", "fixed:16", "fixed:-1", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		fr, err := parseFraming(spec)
		if err != nil {
			return
		}
		again, err := parseFraming(framingString(fr))
		if err != nil {
			t.Fatalf("%q parsed, but its rendering %q does not: %v", spec, framingString(fr), err)
		}
		if !proto.Equal(fr, again) {
			t.Fatalf("%q -> %v -> %q -> %v", spec, fr, framingString(fr), again)
		}
	})
}

func TestParseFraming(t *testing.T) {
	tests := []struct {
		spec string
		want string // framingString of the result; "" for an error
	}{
		{"raw", "raw"}, {"line", "line"}, {"delim:00ff", "delim:00ff"}, {"len:2le", "len:2le"},
		{"len:8", "len:8"}, {"fixed:3", "fixed:3"},
		{"delim:", ""}, {"delim:zz", ""}, {"len:", ""}, {"len:999", ""}, {"fixed:x", ""}, {"lines", ""},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			fr, err := parseFraming(tt.spec)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("accepted, want an error")
				}
				return
			}
			if err != nil || framingString(fr) != tt.want {
				t.Fatalf("got %v, %v; want %s", fr, err, tt.want)
			}
		})
	}
}
