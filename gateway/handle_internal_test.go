package gateway

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// TestCloseReason: a close reason is the status as JSON within 123 bytes,
// whatever the message: cut at a character, marked with "…", still JSON.
func TestCloseReason(t *testing.T) {
	for _, msg := range []string{
		"short",
		strings.Repeat("x", 500),
		strings.Repeat("é", 200),
		strings.Repeat(`"\`, 100), // escapes double in JSON
		strings.Repeat("\x01", 100),
	} {
		err := rpc.Status(codes.FailedPrecondition, tcpgatev1.ErrorReason_ERROR_REASON_HANDLER_GROUP_CONFLICT, msg, nil)
		r := closeReason(err)
		var v struct {
			Code    int    `json:"code"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		if len(r) > maxCloseReason || !utf8.ValidString(r) || json.Unmarshal([]byte(r), &v) != nil {
			t.Fatalf("reason of %q: %d bytes %q", msg[:10], len(r), r)
		}
		if v.Code != int(codes.FailedPrecondition) || v.Reason != "HANDLER_GROUP_CONFLICT" {
			t.Fatalf("reason %q: code or reason lost", r)
		}
		if v.Message != msg && (!strings.HasSuffix(v.Message, "…") || !strings.HasPrefix(msg, strings.TrimSuffix(v.Message, "…"))) {
			t.Fatalf("message %q is not a marked cut of %q", v.Message, msg[:10])
		}
	}
	if code, r := closeOf(nil); code != 1000 || r != "" {
		t.Fatalf("closeOf(nil) = %d %q", code, r)
	}
}
