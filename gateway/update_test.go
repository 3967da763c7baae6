package gateway_test

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// askLine writes line to c and returns the reply line of n bytes.
func askLine(t *testing.T, c net.Conn, line string, n int) string {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(servertest.Wait))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the reply to %q: got %q, %v", line, buf, err)
	}
	return string(buf)
}

// TestUpdateListenerREST: PATCH /v1/listeners/{id} without an update mask
// changes the fields its body sets, with one (?updateMask=) only those
// named, and a field that needs a new socket is a 400 naming it. The
// connection open from the start answers by each new setting.
func TestUpdateListenerREST(t *testing.T) {
	_, api := startREST(t, server.Config{})
	var started tcpgatev1.StartListenerResponse
	api.Call(http.MethodPost, "/v1/listeners", `{"listenerId": "up", "host": "127.0.0.1",
		"framing": {"mode": "FRAMING_MODE_LINE"}, "autoReply": {"mode": "AUTO_REPLY_MODE_ECHO"}}`, &started)
	c := servertest.Dial(t, started.GetListener().GetAddress())
	if got := askLine(t, c, "a", 2); got != "a\n" {
		t.Fatalf("echo = %q", got)
	}

	tests := []struct {
		name, path, body string
		wantReply        string
		wantMax          uint32
	}{
		{"no mask: what the body sets", "/v1/listeners/up",
			`{"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": "one\n"}, "maxConnections": 4}`, "one\n", 4},
		{"a mask: only what it names", "/v1/listeners/up?updateMask=maxConnections",
			`{"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": "two\n"}, "maxConnections": 3}`, "one\n", 3},
		{"a mask of proto names", "/v1/listeners/up?updateMask=auto_reply",
			`{"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": "two\n"}, "maxConnections": 9}`, "two\n", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp tcpgatev1.UpdateListenerResponse
			api.Call(http.MethodPatch, tt.path, tt.body, &resp)
			l := resp.GetListener()
			if l.GetAddress() != started.GetListener().GetAddress() || l.GetMaxConnections() != tt.wantMax || l.GetAutoReply().GetText() != tt.wantReply {
				t.Errorf("listener %s max %d reply %q, want %s max %d reply %q", l.GetAddress(), l.GetMaxConnections(), l.GetAutoReply().GetText(),
					started.GetListener().GetAddress(), tt.wantMax, tt.wantReply)
			}
			if got := askLine(t, c, "x", len(tt.wantReply)); got != tt.wantReply {
				t.Errorf("the open connection's reply = %q, want %q", got, tt.wantReply)
			}
		})
	}

	for _, field := range []string{"port", "framing"} {
		body := map[string]string{"port": `{"port": 1}`, "framing": `{"framing": {"mode": "FRAMING_MODE_RAW"}}`}[field]
		resp, b := api.Do(http.MethodPatch, "/v1/listeners/up", body, nil)
		e := servertest.WantError(t, resp, b, http.StatusBadRequest, 3, field)
		if reason, meta, _ := e.Info(); reason != "FIELD_NOT_UPDATABLE" || meta[rpc.MetaField] != field {
			t.Errorf("PATCH %s: reason %q field %q, want FIELD_NOT_UPDATABLE %s", body, reason, meta[rpc.MetaField], field)
		}
	}
	if got := askLine(t, c, "y", 4); got != "two\n" {
		t.Errorf("after the refused updates the reply = %q, want two", got)
	}
}
