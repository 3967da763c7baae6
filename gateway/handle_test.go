package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// handleToken is the token of the Handle WebSocket tests' gateway.
const handleToken = "ws-secret-7"

// bearer is the Authorization header of handleToken.
var bearer = http.Header{"Authorization": {"Bearer " + handleToken}}

// startHandleGateway runs a gateway with a token and one line listener,
// l1 (see lineListener).
func startHandleGateway(t *testing.T, cfg server.Config) (*rest, string) {
	t.Helper()
	cfg.AuthToken = handleToken
	_, api := startREST(t, cfg)
	return api, lineListener(t, api, "l1")
}

// lineListener starts a line listener without an auto reply: a frame is
// answered by its Handle stream or not at all. It returns its address.
func lineListener(t *testing.T, api *rest, id string) string {
	t.Helper()
	resp, b := api.Do(http.MethodPost, "/v1/listeners",
		`{"listenerId":"`+id+`","host":"127.0.0.1","port":0,"framing":{"mode":"FRAMING_MODE_LINE"}}`, bearer)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("StartListener = %d %s", resp.StatusCode, b)
	}
	var sl tcpgatev1.StartListenerResponse
	servertest.Decode(t, string(b), &sl)
	return sl.GetListener().GetAddress()
}

// dialHandle opens /v1/handle with header and subprotocols, and returns
// the WebSocket, or the refusal's status and body.
func dialHandle(t *testing.T, api *rest, header http.Header, protocols ...string) (*websocket.Conn, *http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	url := "ws" + strings.TrimPrefix(api.Base, "http") + "/v1/handle"
	// A transport of its own: a kept-alive connection of api's is never
	// the WebSocket's.
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, HTTPHeader: header, Subprotocols: protocols})
	if err != nil {
		if resp == nil {
			t.Fatalf("dialing %s: %v", url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp, string(b)
	}
	c.SetReadLimit(16 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c, resp, ""
}

// wsSend writes one message of JSON.
func wsSend(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("writing %s: %v", msg, err)
	}
}

// wsRecv reads one HandleResponse, strictly: a field the API does not
// define fails the test. It returns the read error instead when the
// WebSocket closes.
func wsRecv(t *testing.T, c *websocket.Conn) (*tcpgatev1.HandleResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageText {
		t.Fatalf("a %v message, want text", typ)
	}
	resp := &tcpgatev1.HandleResponse{}
	if err := protojson.Unmarshal(b, resp); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return resp, nil
}

// wsEvent reads until the next event of kind.
func wsEvent(t *testing.T, c *websocket.Conn, kind tcpgatev1.HandleEventKind, pending *[]*tcpgatev1.HandleEvent) *tcpgatev1.HandleEvent {
	t.Helper()
	for {
		for len(*pending) > 0 {
			e := (*pending)[0]
			*pending = (*pending)[1:]
			if e.GetKind() == kind {
				return e
			}
		}
		resp, err := wsRecv(t, c)
		if err != nil {
			t.Fatalf("waiting for %v: %v", kind, err)
		}
		*pending = append(*pending, resp.GetEvents()...)
	}
}

// register sends the registration of listener l1, or of listeners, and
// reads its confirmation.
func register(t *testing.T, c *websocket.Conn, listeners ...string) *tcpgatev1.HandleRegistered {
	t.Helper()
	if len(listeners) == 0 {
		listeners = []string{"l1"}
	}
	ids, _ := json.Marshal(listeners)
	wsSend(t, c, `{"registration":{"listenerIds":`+string(ids)+`}}`)
	resp, err := wsRecv(t, c)
	if err != nil {
		t.Fatalf("registering: %v", err)
	}
	if resp.GetRegistered().GetStreamId() == "" || resp.GetRegistered().GetMaxInFlight() != 64 {
		t.Fatalf("first response = %v, want the registration", resp)
	}
	return resp.GetRegistered()
}

// closeOf is how the gateway closed c: its code and reason, the reason
// decoded as the status JSON.
func closeOf(t *testing.T, c *websocket.Conn) (websocket.StatusCode, map[string]any) {
	t.Helper()
	for {
		_, err := wsRecv(t, c)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("the WebSocket ended with %v, not a close", err)
		}
		if len(ce.Reason) > 123 {
			t.Fatalf("close reason of %d bytes: %q", len(ce.Reason), ce.Reason)
		}
		var st map[string]any
		if ce.Code >= 4000 {
			if err := json.Unmarshal([]byte(ce.Reason), &st); err != nil {
				t.Fatalf("close reason %q is not JSON: %v", ce.Reason, err)
			}
		}
		return ce.Code, st
	}
}

// TestHandleSocketKnSock: kn-sock's example server over the WebSocket: a
// client sends a line, the handler sees the connection open and the
// frame, answers "Message received", and the client reads it with the
// line's framing; the handler's close ends the stream with 1000. The
// token comes both ways: in Authorization, and as the subprotocol
// bearer.TOKEN, which the gateway selects in its answer.
func TestHandleSocketKnSock(t *testing.T) {
	api, _ := startHandleGateway(t, server.Config{})
	for _, tc := range []struct {
		name      string
		header    http.Header
		protocols []string
	}{
		{"Authorization", bearer, nil},
		{"subprotocol", nil, []string{"bearer." + handleToken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lid := "ks-" + strings.ToLower(tc.name[:4])
			addr := lineListener(t, api, lid)
			c, resp, body := dialHandle(t, api, tc.header, tc.protocols...)
			if c == nil {
				t.Fatalf("refused: %d %s", resp.StatusCode, body)
			}
			if got := c.Subprotocol(); len(tc.protocols) > 0 && got != tc.protocols[0] {
				t.Fatalf("subprotocol = %q, want %q", got, tc.protocols[0])
			}
			register(t, c, lid)

			tcp := servertest.Dial(t, addr)
			var pending []*tcpgatev1.HandleEvent
			opened := wsEvent(t, c, tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_OPENED, &pending)
			if opened.GetListenerId() != lid || opened.GetRemoteAddress() != tcp.LocalAddr().String() {
				t.Fatalf("opened = %v, want %s from %s", opened, lid, tcp.LocalAddr())
			}
			for _, line := range []string{"Hello, World!", "second"} {
				if _, err := tcp.Write([]byte(line + "\n")); err != nil {
					t.Fatal(err)
				}
				f := wsEvent(t, c, tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME, &pending)
				if f.GetText() != line || f.GetConnectionId() != opened.GetConnectionId() || f.GetFrameId() == 0 {
					t.Fatalf("frame = %v, want %q of %s", f, line, opened.GetConnectionId())
				}
				b, _ := protojson.Marshal(&tcpgatev1.HandleRequest{Reply: &tcpgatev1.HandleReply{FrameId: f.GetFrameId(), Payload: &tcpgatev1.HandleReply_Text{Text: seedReply}}})
				wsSend(t, c, string(b))
				if got := servertest.ReadN(t, tcp, len(seedReply)+1); string(got) != seedReply+"\n" {
					t.Fatalf("client read %q, want %q", got, seedReply+"\n")
				}
			}
			// A reply to a frame answered already is rejected, and the
			// stream goes on.
			wsSend(t, c, `{"reply":{"frameId":"1","text":"late"}}`)
			resp2, err := wsRecv(t, c)
			if err != nil || len(resp2.GetRejections()) != 1 || resp2.GetRejections()[0].GetReason() != tcpgatev1.ErrorReason_ERROR_REASON_NOT_HANDLED {
				t.Fatalf("after a reply to frame 1: %v, %v; want a NOT_HANDLED rejection", resp2, err)
			}
			// The handler closes the connection: the client sees EOF, the
			// handler the close.
			wsSend(t, c, `{"replies":[{"connectionId":"`+opened.GetConnectionId()+`","close":true}]}`)
			closed := wsEvent(t, c, tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_CLOSED, &pending)
			if closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_CLOSED_BY_HANDLER {
				t.Fatalf("closed = %v, want CLOSED_BY_HANDLER", closed)
			}
			if _, err := tcp.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("client read after the handler's close: %v, want EOF", err)
			}
			if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
				t.Fatalf("closing: %v", err)
			}
		})
	}
}

// TestHandleSocketRefused: what is refused before the upgrade gets the
// REST error JSON and its status; the token is never echoed.
func TestHandleSocketRefused(t *testing.T) {
	const dash = "http://dash.example"
	api, _ := startHandleGateway(t, server.Config{CORSOrigins: []string{dash}})
	for _, tc := range []struct {
		name      string
		header    http.Header
		protocols []string
		status    int
		reason    string
	}{
		{"no token", nil, nil, http.StatusUnauthorized, "UNAUTHENTICATED"},
		{"wrong token", http.Header{"Authorization": {"Bearer nope"}}, nil, http.StatusUnauthorized, "UNAUTHENTICATED"},
		{"wrong subprotocol token", nil, []string{"bearer.nope"}, http.StatusUnauthorized, "UNAUTHENTICATED"},
		{"token in another subprotocol", nil, []string{handleToken}, http.StatusUnauthorized, "UNAUTHENTICATED"},
		{"wrong Authorization, right subprotocol", http.Header{"Authorization": {"Bearer nope"}}, []string{"bearer." + handleToken}, http.StatusUnauthorized, "UNAUTHENTICATED"},
		{"foreign origin", http.Header{"Authorization": {"Bearer " + handleToken}, "Origin": {"http://evil.example"}}, nil, http.StatusForbidden, "REQUEST_FORBIDDEN"},
		{"foreign origin, subprotocol token", http.Header{"Origin": {"http://evil.example"}}, []string{"bearer." + handleToken}, http.StatusForbidden, "REQUEST_FORBIDDEN"},
		{"cross-site fetch", http.Header{"Authorization": {"Bearer " + handleToken}, "Sec-Fetch-Site": {"cross-site"}}, nil, http.StatusForbidden, "REQUEST_FORBIDDEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, body := dialHandle(t, api, tc.header, tc.protocols...)
			if c != nil {
				t.Fatal("the WebSocket opened")
			}
			if resp.StatusCode != tc.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("refusal = %d %s %s, want %d JSON", resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.status)
			}
			if !strings.Contains(body, `"reason":"`+tc.reason+`"`) || strings.Contains(body, handleToken) {
				t.Fatalf("body = %s, want reason %s and no token", body, tc.reason)
			}
		})
	}
	t.Run("allowed origin", func(t *testing.T) {
		// --cors-origins lets a page of dash in: the WebSocket library's
		// own check (same host only) does not contradict it.
		c, resp, body := dialHandle(t, api, http.Header{"Origin": {dash}}, "bearer."+handleToken)
		if c == nil {
			t.Fatalf("refused: %d %s", resp.StatusCode, body)
		}
		register(t, c)
		_ = c.Close(websocket.StatusNormalClosure, "")
	})
	t.Run("not a WebSocket", func(t *testing.T) {
		resp, b := api.Do(http.MethodGet, "/v1/handle", "", bearer)
		if resp.StatusCode != http.StatusUpgradeRequired || !strings.Contains(string(b), `"reason":"MALFORMED_REQUEST"`) || resp.Header.Get("Upgrade") != "websocket" {
			t.Fatalf("plain GET = %d %v %s, want 426 with the error JSON", resp.StatusCode, resp.Header, b)
		}
	})
}

// TestHandleSocketBadInput: after the upgrade, a stream error closes the
// WebSocket with 4000 plus the gRPC code and the status as JSON in the
// reason; a message over the limit closes it with 1009.
func TestHandleSocketBadInput(t *testing.T) {
	api, _ := startHandleGateway(t, server.Config{MaxSendBytes: 1024})
	for _, tc := range []struct {
		name     string
		register bool
		msg      string
		binary   bool
		code     websocket.StatusCode
		reason   string
		mention  string
	}{
		{name: "not JSON", msg: `{"registration":`, code: 4003, reason: "MALFORMED_REQUEST", mention: "JSON"},
		{name: "unknown field", msg: `{"registration":{"listenerIdz":["l1"]}}`, code: 4003, reason: "MALFORMED_REQUEST", mention: "listenerIdz"},
		{name: "binary message", msg: `{"registration":{"listenerIds":["l1"]}}`, binary: true, code: 4003, reason: "MALFORMED_REQUEST", mention: "text"},
		{name: "no registration", msg: `{"reply":{"frameId":"1","text":"x"}}`, code: 4003, reason: "INVALID_ARGUMENT", mention: "registration"},
		{name: "unknown listener", msg: `{"registration":{"listenerIds":["` + strings.Repeat("n", 64) + `"]}}`, code: 4005, reason: "LISTENER_NOT_FOUND", mention: "listener"},
		{name: "second registration", register: true, msg: `{"registration":{"listenerIds":["l1"]}}`, code: 4003, reason: "INVALID_ARGUMENT", mention: "registration"},
		{name: "over the read limit", register: true, msg: `{"reply":{"frameId":"1","text":"` + strings.Repeat("x", 2*1024+64<<10) + `"}}`, code: websocket.StatusMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, body := dialHandle(t, api, bearer)
			if c == nil {
				t.Fatalf("refused: %d %s", resp.StatusCode, body)
			}
			if tc.register {
				register(t, c)
			}
			typ := websocket.MessageText
			if tc.binary {
				typ = websocket.MessageBinary
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if err := c.Write(ctx, typ, []byte(tc.msg)); err != nil {
				t.Fatal(err)
			}
			code, st := closeOf(t, c)
			if code != tc.code {
				t.Fatalf("close code = %d (%v), want %d", code, st, tc.code)
			}
			if tc.reason == "" {
				return
			}
			msg, _ := st["message"].(string)
			if st["reason"] != tc.reason || st["code"] != float64(tc.code-4000) || !strings.Contains(msg, tc.mention) {
				t.Fatalf("close reason = %v, want code %d, reason %s, a message naming %q", st, tc.code-4000, tc.reason, tc.mention)
			}
		})
	}
}

// TestHandleSocketShutdown: a gateway shutting down ends its Handle
// WebSockets at once, each closed with 4014 (Unavailable) and the reason
// SHUTTING_DOWN, and Run returns: nothing waits on the hijacked
// connections past the shutdown.
func TestHandleSocketShutdown(t *testing.T) {
	g, api := startREST(t, server.Config{AuthToken: handleToken})
	lineListener(t, api, "l1")
	c, resp, body := dialHandle(t, api, bearer)
	if c == nil {
		t.Fatalf("refused: %d %s", resp.StatusCode, body)
	}
	register(t, c)
	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()
	code, st := closeOf(t, c)
	if code != 4014 || st["reason"] != "SHUTTING_DOWN" {
		t.Fatalf("closed with %d %v, want 4014 SHUTTING_DOWN", code, st)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stopping: %v", err)
	}
}

// TestHandleSocketShutdownUnregistered: a WebSocket that never sent its
// registration holds no shutdown either.
func TestHandleSocketShutdownUnregistered(t *testing.T) {
	g, api := startREST(t, server.Config{AuthToken: handleToken})
	c, resp, body := dialHandle(t, api, bearer)
	if c == nil {
		t.Fatalf("refused: %d %s", resp.StatusCode, body)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()
	code, st := closeOf(t, c)
	if code != 4014 || st["reason"] != "SHUTTING_DOWN" {
		t.Fatalf("closed with %d %v, want 4014 SHUTTING_DOWN", code, st)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stopping: %v", err)
	}
}
