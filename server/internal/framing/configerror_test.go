package framing_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// TestConfigErrorUnder: the error of an invalid framing names the framing's
// field apart from where the framing sits, so that a framing nested in a
// request (a Send's await_reply.framing) is named by its whole path
// without editing the message, and a listener's keeps "framing.".
func TestConfigErrorUnder(t *testing.T) {
	tests := []struct {
		name  string
		cfg   framing.Config
		field string
	}{
		{"delimiter missing", framing.Config{Mode: framing.Delimiter}, "delimiter"},
		{"mode 99", framing.Config{Mode: 99}, "mode"},
		{"prefix_bytes 3", framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 3}, "prefix_bytes"},
		{"fixed_size missing", framing.Config{Mode: framing.Fixed}, "fixed_size"},
		{"max_frame_bytes negative", framing.Config{MaxFrameBytes: -1}, "max_frame_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.Normalize()
			var ce *framing.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Normalize() = %v, want a *framing.ConfigError", err)
			}
			if ce.Field != tt.field || ce.At != framing.DefaultAt || ce.Path() != "framing."+tt.field {
				t.Errorf("error at %q, field %q, path %q; want at %q, field %q, path %q",
					ce.At, ce.Field, ce.Path(), framing.DefaultAt, tt.field, "framing."+tt.field)
			}

			nested := ce.Under("await_reply.framing")
			want := "await_reply.framing." + tt.field
			if nested.Path() != want {
				t.Errorf("Under(await_reply.framing).Path() = %q, want %q", nested.Path(), want)
			}
			if msg := nested.Error(); !strings.HasPrefix(msg, want+": "+ce.Reason) {
				t.Errorf("nested error %q, want it to start with %q", msg, want+": "+ce.Reason)
			}
			if !errors.Is(nested, framing.ErrInvalidConfig) {
				t.Errorf("nested error %v does not wrap ErrInvalidConfig", nested)
			}
			// Under places a copy: the error Normalize returned still
			// names the listener's field.
			if ce.Path() != "framing."+tt.field {
				t.Errorf("after Under, the original error's path is %q, want %q", ce.Path(), "framing."+tt.field)
			}
		})
	}
}
